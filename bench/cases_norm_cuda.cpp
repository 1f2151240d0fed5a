// Deferred normalization (docs/math.md §7) on the real CUDA backend, in ffnkit_bench_norm:
// RMSNormLinear / LayerNormLinear fused against unfused, d in {768, 2048, 4096} into d_out in
// {d, 4d}, tokens in {1, 16, 128, 2048}, and Softmax V one-pass against three-pass at sequence
// lengths {128, 1024, 4096, 16384}, head dim 64 and 128; fp32 and fp16. Timed with cudaEvents on
// one created stream, the paths interleaved (bench/harness.hpp: run_interleaved; drift hits all of
// them); counters: each path's median in ms and speedup = median over rounds of second path /
// first. Without a device every case is skipped with the reason (SkipWithError), never reported as
// a time. The emulator is never benchmarked: its timings would say nothing about a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ffnkit/norm.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {
namespace {

// Skips the case visibly when there is no usable device; true when skipped.
bool skip_without_device(benchmark::State& state) {
  std::string why;
  if (cuda::device_available(&why)) return false;
  state.SkipWithError((kNoDevice + why).c_str());
  return true;
}

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess) fail(call, cudaGetErrorString(e));
}

// An owned timing event: destroyed even when the case throws half-way.
struct TimingEvent {
  cudaEvent_t e = nullptr;
  TimingEvent() { check(cudaEventCreate(&e), "cudaEventCreate"); }
  ~TimingEvent() {
    if (e) cudaEventDestroy(e);
  }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
};

using Path = std::pair<std::string, std::function<void()>>;

// Times every path between two events on `stream`, interleaved; the benchmark's time is the
// first path's. Everything a path queues must be on `stream`.
void timed_paths(benchmark::State& state, const cuda::Stream& stream,
                 const std::vector<Path>& paths) {
  TimingEvent start, stop;
  const auto s = static_cast<cudaStream_t>(stream.handle());
  std::vector<TimedPath> timed;
  for (const auto& p : paths) {
    timed.push_back({p.first, [&start, &stop, s, &run = p.second] {
                       check(cudaEventRecord(start.e, s), "cudaEventRecord");
                       run();
                       check(cudaEventRecord(stop.e, s), "cudaEventRecord");
                       check(cudaEventSynchronize(stop.e), "cudaEventSynchronize");
                       float ms = 0;
                       check(cudaEventElapsedTime(&ms, start.e, stop.e), "cudaEventElapsedTime");
                       return ms * 1e-3;
                     }});
  }
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
  if (skip_without_device(state)) return;
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
  const auto x = device_gaussian<T>(tokens * n, 1.0, 7);
  cuda::DeviceBuffer<T> y(static_cast<std::size_t>(tokens * m));
  cuda::DeviceBuffer<unsigned char> ws(layer.workspace_size(tokens));
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
  std::vector<Path> paths = {
      {"fused", [&] { fused(true, true); }},
      {"unfused", [&] { layer.forward_unfused(xv, yv, w, MatrixView<T>(), stream); }},
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
  if (skip_without_device(state)) return;
  const index_t q = std::min<index_t>(seq, 512);
  const auto s = device_gaussian<T>(q * seq, 3.0, 1);
  const auto v = device_gaussian<T>(seq * dim, 1.0, 2);
  cuda::DeviceBuffer<T> y(static_cast<std::size_t>(q * dim));
  const SoftmaxLinear<T, Cuda> op;
  cuda::DeviceBuffer<unsigned char> ws(op.workspace_size(q, seq));
  const cuda::Stream stream = cuda::Stream::create();
  const MatrixView<const T> sv(s.data(), q, seq), vv(v.data(), seq, dim);
  const MatrixView<T> yv(y.data(), q, dim);
  timed_paths(state, stream,
              {{"one_pass", [&] { op.forward(sv, vv, yv, MatrixView<const T>(), stream); }},
               {"three_pass", [&] {
                  op.forward_unfused(sv, vv, yv, MatrixView<const T>(),
                                     Workspace{ws.data(), ws.bytes()}, stream);
                }}});
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

// Called by ffnkit_bench_norm's main (bench/norm_main.cpp) when the Cuda backend is built.
void register_norm_cuda_suite() {
  register_dtype<float>("f32");
  register_dtype<__half>("f16");
}

}  // namespace bench
}  // namespace ffnkit
