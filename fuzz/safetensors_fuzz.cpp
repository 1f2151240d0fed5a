// libFuzzer target for the safetensors reader: any input must either parse or throw
// ffnkit::Error (anything else escaping, or an ASan/UBSan report, is a bug). A parsed file must
// convert its floating-point tensors and survive a write -> read round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ffnkit/io/safetensors.hpp"

using namespace ffnkit::io;

namespace {
bool is_float(Dtype d) {
  return d == Dtype::kF16 || d == Dtype::kBF16 || d == Dtype::kF32 || d == Dtype::kF64;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  SafetensorsFile f;
  try {
    f = SafetensorsFile::from_bytes(std::vector<unsigned char>(data, data + size), "fuzz");
  } catch (const ffnkit::Error&) {
    return 0;
  }
  SafetensorsWriter w;
  for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
  for (const TensorView& t : f.tensors()) {
    if (is_float(t.dtype)) {
      const std::vector<double> d = t.to_double();
      (void)d;
    }
    w.add_raw(t.name, t.dtype, t.shape, t.bytes, t.nbytes);
  }
  const SafetensorsFile g = SafetensorsFile::from_bytes(w.to_bytes(), "rewritten");
  if (g.size() != f.size() || g.metadata() != f.metadata()) std::abort();
  for (std::size_t i = 0; i < f.size(); ++i) {
    const TensorView &a = f.tensors()[i], &b = g.tensors()[i];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.nbytes != b.nbytes ||
        (a.nbytes && std::memcmp(a.bytes, b.bytes, a.nbytes) != 0))
      std::abort();
  }
  return 0;
}
