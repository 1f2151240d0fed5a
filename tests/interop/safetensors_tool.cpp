// The C++ half of the Python interop test (safetensors_interop.py): `write PATH` writes a file
// with ffnkit's writer, `check PATH` reads one written by Python's safetensors and verifies every
// value. Both sides compute the expected values from the same closed formulas. `ffn PATH` loads
// the official-layout MLPs Python wrote and checks their forward against numpy's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ffnkit/io/layers.hpp"
#include "ffnkit/io/safetensors.hpp"

namespace {

using ffnkit::io::Dtype;

// f32 [3, 5]: (i - 7) * 0.375 - exact in every format. f16 [4] and bf16 [2, 3]: float(i) * 0.3f
// rounded by each side's own converter.
std::vector<float> ramp(int n, float scale, float shift) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = (static_cast<float>(i) + shift) * scale;
  return v;
}

// Rounding's hard cases: ties (1 + 2^-11, 1 + 3 2^-11, 2049), overflow (65520), a value that
// rounds to 0 (2^-26) and a subnormal (1.5 2^-25); the Python side rounds them with numpy.
std::vector<float> f16_values() {
  std::vector<float> v = ramp(4, 0.3f, 0.0f);
  for (float x : {0x1.002p0f, 0x1.006p0f, 2049.0f, 65520.0f, 0x1p-26f, 0x1.8p-25f}) v.push_back(x);
  return v;
}

int write(const std::string& path) {
  ffnkit::io::SafetensorsWriter w;
  w.add("ffnkit.f32", {3, 5}, ramp(15, 0.375f, -7.0f));
  w.add("ffnkit.f16", {10}, f16_values().data(), Dtype::kF16);
  w.add("ffnkit.bf16", {2, 3}, ramp(6, 0.3f, 0.0f).data(), Dtype::kBF16);
  const std::vector<double> d = {1.0 / 3.0, -1e-300};
  w.add("ffnkit.f64", {2}, d.data());
  const std::int32_t ints[3] = {-1, 0, 123456789};
  w.add_raw("ffnkit.i32", Dtype::kI32, {3}, ints, sizeof ints);
  w.set_metadata("producer", "ffnkit");
  w.write(path);
  std::printf("wrote %s\n", path.c_str());
  return 0;
}

int check(const std::string& path) {
  const auto f = ffnkit::io::SafetensorsFile::open(path);
  int bad = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) std::printf("MISMATCH: %s\n", what), ++bad;
  };
  expect(f.size() == 4, "tensor count");
  expect(f.metadata().count("producer") && f.metadata().at("producer") == "python", "metadata");
  const auto& a = f.tensor("py.f32", {2, 3});
  expect(a.dtype == Dtype::kF32 && a.to_float() == ramp(6, 0.5f, -2.0f), "py.f32 values");
  const auto& h = f.tensor("py.f16", {5});
  std::vector<float> hv = ramp(5, 0.3f, 0.0f);
  for (float& x : hv) x = ffnkit::io::half_to_float(ffnkit::io::float_to_half(x));
  expect(h.dtype == Dtype::kF16 && h.to_float() == hv, "py.f16 values (numpy's rounding)");
  const auto& d = f.tensor("py.f64", {2, 2});
  expect(d.dtype == Dtype::kF64 && d.to_double() == std::vector<double>({0.1, 0.2, 0.3, 1e300}),
         "py.f64 values");
  const auto& i = f.tensor("py.i64", {3});
  const std::int64_t iv[3] = {0, -5, 1LL << 40};
  expect(i.dtype == Dtype::kI64 && std::memcmp(i.bytes, iv, sizeof iv) == 0, "py.i64 bytes");
  if (bad) return 1;
  std::printf("read %s: OK\n", path.c_str());
  return 0;
}

// `ffn PATH`: the official-layout MLPs safetensors_interop.py wrote, each loaded with the
// whole-FFN loader and run on the stored input; the output must match numpy's float64 one.
template <class Ffn>
bool check_ffn(const ffnkit::io::SafetensorsFile& f, const std::string& name, const Ffn& ffn) {
  const auto& xt = f.tensor(name + ".x");
  const auto& yt = f.tensor(name + ".y");
  const std::int64_t tokens = xt.shape.at(0), d = ffn.d_model();
  const std::vector<float> x = xt.to_float();
  const std::vector<double> want = yt.to_double();
  std::vector<float> y(static_cast<std::size_t>(tokens * ffn.d_out()));
  ffn.forward(ffnkit::make_view<const float>(x.data(), tokens, d),
              ffnkit::make_view(y.data(), tokens, ffn.d_out()));
  if (y.size() != want.size()) {
    std::printf("MISMATCH %s: %zu outputs, expected %zu\n", name.c_str(), y.size(), want.size());
    return false;
  }
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::fabs(y[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  const bool ok = err <= 1e-5 * scale;
  std::printf("%s %s: max |error| %.3g of max |y| %.3g\n", ok ? "OK" : "MISMATCH", name.c_str(),
              err, scale);
  return ok;
}

int ffn(const std::string& path) {
  namespace io = ffnkit::io;
  const auto f = io::SafetensorsFile::open(path);
  bool ok = check_ffn(f, "lowrank_swiglu",
                      io::load_structured_ffn<ffnkit::LowRankLinear<float>>(
                          f, "lowrank_swiglu.mlp.", io::FfnActivation::kSwiGlu));
  ok &= check_ffn(f, "blockdense_gelu",
                  io::load_structured_ffn<ffnkit::BlockDenseLinear<float>>(
                      f, "blockdense_gelu.mlp.", io::FfnActivation::kGeluTanh));
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s write|check|ffn PATH\n", argv[0]);
    return 2;
  }
  try {
    const std::string mode = argv[1];
    if (mode == "write") return write(argv[2]);
    if (mode == "check") return check(argv[2]);
    if (mode == "ffn") return ffn(argv[2]);
    std::fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
  } catch (const ffnkit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
