// Example 09: a structured FFN on the CUDA backend, from host weights to device buffers and back.
//
// A BlockDense FFN at the paper's 32% setting (docs/math.md §3.7: d = 768, B = 2, R = 256) in fp16,
// on a GPU when there is one (backend Cuda). Without a GPU, the same code runs on ffnkit's CPU
// emulation of CUDA (backend CudaEmu: the same kernel sources and a reference cuBLAS), so this
// example runs everywhere. The steps are the ones an engine takes:
//   1. construct the layers from PyTorch-layout host weights (they are uploaded once);
//   2. put the activations in device memory, size the workspace with workspace_size(tokens);
//   3. forward on a stream, then copy the result back;
//   4. check it against the float64 dense FFN of the layers' materialize().
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <string>
#include <vector>

namespace {

using ffnkit::index_t;

// Which runtime serves a backend: device buffers, streams, and whether a device is there.
template <class B>
struct Runtime;
#if defined(FFNKIT_WITH_CUDA)
template <>
struct Runtime<ffnkit::Cuda> {
  template <class T>
  using Buffer = ffnkit::cuda::DeviceBuffer<T>;
  using Stream = ffnkit::cuda::Stream;
  static bool available(std::string* why) { return ffnkit::cuda::device_available(why); }
};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <>
struct Runtime<ffnkit::CudaEmu> {
  template <class T>
  using Buffer = ffnkit::cuda_emu::DeviceBuffer<T>;
  using Stream = ffnkit::cuda_emu::Stream;
  static bool available(std::string* why) { return ffnkit::cuda_emu::device_available(why); }
};
#endif

// Gaussian host weights of variance 1 / fan-in, rounded to fp16.
std::vector<__half> weights(index_t count, index_t fan_in, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(count));
  ffnkit::fill_normal(v.data(), count, seed, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
  std::vector<__half> h(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) h[i] = __float2half_rn(static_cast<float>(v[i]));
  return h;
}
std::vector<double> to64(const std::vector<__half>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __half2float(v[i]);
  return out;
}

template <class B>
bool run(const char* backend) {
  using Layer = ffnkit::BlockDenseLinear<__half, B>;
  using R = Runtime<B>;
  const index_t d = 768, d_ff = 3072, blocks = 2, rank = 256, tokens = 5;

  // 1. Layers from PyTorch-layout weights: blkdiag [B, R/B, N/B], lr [M x R], bias [M].
  auto layer = [&](index_t n, index_t m, std::uint64_t seed) {
    const auto v = weights(rank * n / blocks, n / blocks, seed);
    const auto u = weights(m * rank, rank, seed + 1), b = weights(m, 100, seed + 2);
    return Layer(n, m, blocks, rank, v.data(), u.data(), b.data());
  };
  ffnkit::StructuredFFN<Layer, Layer> ffn(layer(d, d_ff, 1), layer(d_ff, d, 4),
                                          ffnkit::Activation::kGeluTanh);

  // 2. Device activations and workspace.
  const auto x = weights(tokens * d, 1, 7);  // N(0, 1) inputs
  typename R::template Buffer<__half> x_dev(x.data(), x.size()), y_dev(x.size());
  typename R::template Buffer<unsigned char> workspace(ffn.workspace_size(tokens));
  const typename R::Stream stream;

  // 3. Forward on the stream; to_host() waits for it.
  ffn.forward(ffnkit::make_view<const __half>(x_dev.data(), tokens, d),
              ffnkit::make_view(y_dev.data(), tokens, d),
              ffnkit::Workspace{workspace.data(), workspace.bytes()}, stream);
  const auto y = to64(y_dev.to_host(stream));

  // 4. The float64 dense FFN of the materialized projections.
  const auto w1 = to64(ffn.up().materialize()), w2 = to64(ffn.down().materialize());
  const auto b1 = to64(ffn.up().bias_host()), b2 = to64(ffn.down().bias_host());
  const auto x64 = to64(x);
  const auto ref = ffnkit::reference::ffn(x64.data(), tokens, d, w1.data(), b1.data(), d_ff,
                                          ffnkit::Activation::kGeluTanh, w2.data(), b2.data(), d);
  const auto err = ffnkit::reference::compare(y.data(), tokens, d, d, ref);
  // fp16 storage of the hidden activations and outputs: a few units of 2^-11 relative.
  const bool ok = err.non_finite == 0 && err.nmse < 1e-5 && err.max_rel < 4e-3;
  std::printf("BlockDense FFN %lld -> %lld -> %lld, fp16, on %s: max rel err %.2e, nmse %.2e\n",
              (long long)d, (long long)d_ff, (long long)d, backend, err.max_rel, err.nmse);
  return ok;
}

}  // namespace

int main() {
  bool ok = false;
  std::string why;
#if defined(FFNKIT_WITH_CUDA)
  if (Runtime<ffnkit::Cuda>::available(&why)) {
    ok = run<ffnkit::Cuda>("a GPU (backend Cuda)");
    std::printf("%s\n", ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
  }
  std::printf("no GPU (%s): running on the emulator\n", why.c_str());
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
  ok = run<ffnkit::CudaEmu>("the CPU emulation of CUDA (backend CudaEmu)");
#else
  std::printf("neither a GPU nor the emulator is built: nothing ran\n");
  return 1;
#endif
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
