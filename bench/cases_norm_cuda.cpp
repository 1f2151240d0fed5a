// Deferred normalization (docs/math.md §7) on the real CUDA backend, in ffnkit_bench --suite=norm:
// RMSNormLinear / LayerNormLinear fused against the unfused baseline (reference/unfused_norm.hpp),
// d in {768, 2048, 4096} into d_out in {d, 4d}, tokens in {1, 16, 128, 2048}, and Softmax V
// one-pass against three-pass at sequence lengths {128, 1024, 4096, 16384}, head dim 64 and 128;
// fp32 and fp16. Timed with cudaEvents (bench/device_timer.hpp) on one created stream, the paths
// interleaved (bench/harness.hpp: run_interleaved; drift hits all of them); counters: each path's
// median in ms and speedup = median over rounds of second path / first. Without a device every
// case is skipped with the reason (SkipWithError), never reported as a time. The emulator is never
// benchmarked: its timings would say nothing about a GPU.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "device_timer.hpp"
#include "ffnkit/norm.hpp"
#include "ffnkit/reference/unfused_norm.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {
namespace {

using Path = std::pair<std::string, std::function<void()>>;

// Times every path with the device timer on `stream`, interleaved; the benchmark's time is the
// first path's. Everything a path queues must be on `stream`.
void timed_paths(benchmark::State& state, const cuda::Stream& stream,
                 const std::vector<Path>& paths) {
  DeviceTimer timer("cuda norm case");
  std::vector<TimedPath> timed;
  for (const auto& p : paths)
    timed.push_back(
        {p.first, [&timer, &stream, &run = p.second] { return timer.seconds(stream, run); }});
  report_path_medians(state, timed, run_interleaved(state, timed));
}

template <class T>
std::vector<T> gaussian(index_t count, double mean, double stddev, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(count));
  fill_normal(v.data(), count, seed, mean, stddev);
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = detail::HostScalar<T>::from_double(v[i]);
  return out;
}

template <class T>
cuda::DeviceBuffer<T> device_gaussian(index_t count, double stddev, std::uint64_t seed) {
  const std::vector<T> h = gaussian<T>(count, 0.0, stddev, seed);
  return cuda::DeviceBuffer<T>(h.data(), h.size());
}

// Paths: fused (the statistics on the layer's secondary stream; LayerNorm with an infinite center
// threshold, the deferred formula proper), unfused, fused_one_stream (set_concurrent_stats(false))
// and, for LayerNorm, fused_default (the default threshold: a statistics readback per call).
// Up to 16 tokens every fused path is the decode kernel.
template <class T, bool kLayerNorm>
void bm_norm(benchmark::State& state, index_t n, index_t m, index_t tokens) {
  require_device("cuda norm case");  // before anything is allocated: the case's skip reason
  const double inv_sqrt_n = 1.0 / std::sqrt(static_cast<double>(n));
  const auto gamma = gaussian<T>(n, 1.0, 0.1, 1), beta = gaussian<T>(n, 0.0, 0.1, 2);
  const auto weight = gaussian<T>(n * m, 0.0, inv_sqrt_n, 3), bias = gaussian<T>(m, 0.0, 0.1, 4);
  using Layer = std::conditional_t<kLayerNorm, LayerNormLinear<T, Cuda>, RMSNormLinear<T, Cuda>>;
  Layer layer = [&] {
    if constexpr (kLayerNorm)
      return Layer(n, m, gamma.data(), beta.data(), weight.data(), bias.data());
    else
      return Layer(n, m, gamma.data(), weight.data(), bias.data());
  }();
  const reference::UnfusedNormLinear<T, Cuda> unfused(kLayerNorm, n, m, gamma.data(),
                                                      kLayerNorm ? beta.data() : nullptr,
                                                      weight.data(), bias.data(), layer.eps());
  const auto x = device_gaussian<T>(tokens * n, 1.0, 7);
  cuda::DeviceBuffer<T> y(static_cast<std::size_t>(tokens * m));
  cuda::DeviceBuffer<unsigned char> ws(
      std::max(layer.workspace_size(tokens), unfused.workspace_size(tokens)));
  const cuda::Stream stream = cuda::Stream::create();
  const MatrixView<const T> xv(x.data(), tokens, n);
  const MatrixView<T> yv(y.data(), tokens, m);
  const Workspace w{ws.data(), ws.bytes()};
  auto fused = [&](bool concurrent, bool deferred) {
    layer.set_concurrent_stats(concurrent);
    if constexpr (kLayerNorm)
      layer.set_center_threshold(deferred ? std::numeric_limits<double>::infinity() : 4.0);
    (void)deferred;
    layer.forward(xv, yv, w, MatrixView<T>(), stream);
  };
  std::vector<Path> paths = {{"fused", [&] { fused(true, true); }},
                             {"unfused", [&] { unfused.forward(xv, yv, w, stream); }},
                             {"fused_one_stream", [&] { fused(false, true); }}};
  if (kLayerNorm) paths.push_back({"fused_default", [&] { fused(true, false); }});
  timed_paths(state, stream, paths);
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n) * m * tokens * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

// A block of up to 512 queries against `seq` keys, as the CPU suite (bench/cases_norm.cpp).
template <class T>
void bm_softmax(benchmark::State& state, index_t seq, index_t dim) {
  require_device("cuda norm case");  // before anything is allocated: the case's skip reason
  const index_t q = std::min<index_t>(seq, 512);
  const auto s = device_gaussian<T>(q * seq, 3.0, 1);
  const auto v = device_gaussian<T>(seq * dim, 1.0, 2);
  cuda::DeviceBuffer<T> y(static_cast<std::size_t>(q * dim));
  const SoftmaxLinear<T, Cuda> op;
  const reference::UnfusedSoftmaxLinear<T, Cuda> three_pass;
  cuda::DeviceBuffer<unsigned char> ws(
      std::max(op.workspace_size(q, seq, dim), three_pass.workspace_size(q, seq)));
  const Workspace w{ws.data(), ws.bytes()};
  const cuda::Stream stream = cuda::Stream::create();
  const MatrixView<const T> sv(s.data(), q, seq), vv(v.data(), seq, dim);
  const MatrixView<T> yv(y.data(), q, dim);
  timed_paths(
      state, stream,
      {{"one_pass", [&] { op.forward(sv, vv, yv, MatrixView<const T>(), w, stream); }},
       {"three_pass", [&] { three_pass.forward(sv, vv, yv, MatrixView<const T>(), w, stream); }}});
  state.counters["queries"] = static_cast<double>(q);
}

template <class T>
void register_dtype(const std::string& dtype) {
  for (index_t d : {768, 2048, 4096}) {
    for (index_t mult : {1, 4}) {
      for (index_t t : {1, 16, 128, 2048}) {
        const std::string shape = "_" + dtype + "/d=" + std::to_string(d) +
                                  "/out=" + std::to_string(mult * d) +
                                  "/tokens=" + std::to_string(t);
        register_paired("cuda_rmsnorm_linear" + shape,
                        [=](benchmark::State& st) { bm_norm<T, false>(st, d, mult * d, t); });
        register_paired("cuda_layernorm_linear" + shape,
                        [=](benchmark::State& st) { bm_norm<T, true>(st, d, mult * d, t); });
      }
    }
  }
  for (index_t seq : {128, 1024, 4096, 16384}) {
    for (index_t dim : {64, 128}) {
      register_paired(
          "cuda_softmax_v_" + dtype + "/seq=" + std::to_string(seq) + "/dim=" + std::to_string(dim),
          [=](benchmark::State& st) { bm_softmax<T>(st, seq, dim); });
    }
  }
}

}  // namespace

// Called by ffnkit_bench's main for --suite=norm when the Cuda backend is built.
void register_norm_cuda_suite() {
  register_dtype<float>("f32");
  register_dtype<__half>("f16");
}

}  // namespace bench
}  // namespace ffnkit
