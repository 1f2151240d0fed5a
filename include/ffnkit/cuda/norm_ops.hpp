// The device backends' NormOps (detail/norm_ops.hpp), for Cuda and CudaEmu alike: the kernels of
// RMSNormLinear and LayerNormLinear (docs/math.md §7.2, §7.3) as the launchers RowStats,
// NormalizeRows, NormEpilogue and NormDecode (cuda/launchers.hpp) around one cuBLAS GEMM.
//
// forward (deferred): RowStats (one block per token, fp32 shifted sums) + one GEMM on the folded
// W' with the raw x + one NormEpilogue kernel, y = r (acc − μ c) + b'. For __half and
// __nv_bfloat16 the GEMM writes fp32 accumulators into the workspace (cuBLAS's mixed F16/BF16 ->
// F32 GemmEx), so the mean correction cancels at fp32 precision, not after rounding to 16 bits.
// Up to kDecodeTokens tokens, one NormDecode kernel does it all.
//
// Above kDecodeTokens the statistics run concurrently with the GEMM (only the epilogue needs
// them): the layer's State forks a secondary stream it owns (created on first use) off the
// caller's stream with an event, runs RowStats (and the optional normalized side output) there
// while the GEMM runs on the caller's stream, and joins it with a second event before
// NormEpilogue. LayerNorm with a finite center threshold cannot overlap (the GEMM's input depends
// on the statistics) and runs everything on the caller's stream, as does a layer with
// concurrent_stats off.
#pragma once

#include <cmath>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/cuda/linear_ops.hpp"
#include "ffnkit/detail/norm_ops.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct DeviceNormOps {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");
  using Api = Runtime<B>;
  using Stream = typename Api::Stream;
  using Event = typename Api::Event;
  // Statistics, c and b' in fp32 whatever the storage type (docs/math.md §7.3).
  using Stat = float;
  using Call = NormLinearCall<T, float>;
  // 16-bit storage: the GEMM accumulates into fp32 [tokens x out] workspace, not into y.
  static constexpr bool kFloatAccumulators = !std::is_same<T, float>::value;
  // At or below this many tokens forward runs the fused decode kernel (NormDecode).
  static constexpr index_t kDecodeTokens = 16;

  // A layer's secondary stream and its fork/join events, created on its first concurrent
  // forward; the mutex makes callers sharing the layer (forward is const and may run on several
  // threads) issue their fork/join one at a time, so each join waits for its own statistics. A
  // copy of a layer gets its own.
  class State {
   public:
    State() : side_(std::make_unique<Side>()) {}
    State(const State&) : State() {}
    State& operator=(const State&) {
      side_ = std::make_unique<Side>();
      return *this;
    }
    State(State&&) noexcept = default;
    State& operator=(State&&) noexcept = default;

    // stats(X) on the secondary stream X, concurrently with main() on `stream`: fork (X waits
    // for what `stream` has queued, which may still be writing x), stats, join record on X,
    // main, then `stream` waits for the join, so everything queued on it afterwards (the
    // epilogue, the caller's work) sees the statistics.
    template <class Stats, class Main>
    void fork_join(const Stream& stream, Stats&& stats, Main&& main) const {
      Side& side = *side_;
      std::lock_guard<std::mutex> lock(side.mutex);
      if (!side.ready) {
        side.stream = Stream::create();
        side.fork = Event::create();
        side.join = Event::create();
        side.ready = true;
      }
      side.fork.record(stream);
      Api::wait_event(side.stream, side.fork);
      stats(side.stream);
      side.join.record(side.stream);
      main();
      Api::wait_event(stream, side.join);
    }

   private:
    struct Side {
      std::mutex mutex;
      bool ready = false;
      Stream stream;
      Event fork, join;
    };
    std::unique_ptr<Side> side_;  // null only in a moved-from layer
  };

  // The fused (deferred) forward.
  static void forward(const Call& c, const State& state, const Stream& stream) {
    const char* where = c.where;
    const index_t tokens = c.x.rows, n = c.x.cols, m = c.y.cols;
    const float eps = static_cast<float>(c.eps);
    if (tokens <= kDecodeTokens) {
      // Statistics and GEMV in one kernel, μ subtracted in registers (no μ c term, so no
      // centering pass and no readback whatever the threshold).
      throw_if_error(
          cuda::NormDecode<T, B>(c.x.data, c.x.row_stride, c.weight, c.y.data, c.y.row_stride,
                                 tokens, n, m, c.layer_norm, eps, c.bias, c.stats, stream),
          where);
      if (c.normalized.data) side_output(c, stream);
      return;
    }
    // The statistics (and the side output, which needs only them) on `on`: the caller's stream,
    // or the secondary one while the GEMM runs.
    auto stats_work = [&](const Stream& on) {
      throw_if_error(
          cuda::RowStats<T, B>(c.x.data, tokens, n, c.x.row_stride, c.layer_norm, eps, c.stats, on),
          where);
      if (c.normalized.data) side_output(c, on);
    };
    void* acc = kFloatAccumulators ? static_cast<void*>(c.acc) : static_cast<void*>(c.y.data);
    const index_t acc_ld = kFloatAccumulators ? m : c.y.row_stride;
    const bool readback = c.layer_norm && std::isfinite(c.center_threshold);
    MatrixView<const T> input = c.x;
    bool centered = false;
    if (c.concurrent_stats && !readback) {
      state.fork_join(stream, stats_work,
                      [&] { gemm(where, input, c.weight, m, acc, acc_ld, stream); });
    } else {
      stats_work(stream);
      if (readback) {
        // The threshold needs the call's worst |μ|/σ on the host: an 8-bytes-per-token readback
        // and a synchronization of `stream` (set the threshold to infinity to avoid it).
        std::vector<float> st(static_cast<std::size_t>(2 * tokens));
        Api::copy(st.data(), c.stats, st.size() * sizeof(float), Api::CopyKind::kDeviceToHost,
                  stream);
        if (centers_layer_norm(st.data(), tokens, c.center_threshold)) {
          throw_if_error(cuda::NormalizeRows<T, B>(c.x.data, c.x.row_stride, c.copy, n, tokens, n,
                                                   c.stats, nullptr, nullptr, false, stream),
                         where);
          input = MatrixView<const T>(c.copy, tokens, n);
          centered = true;
        }
      }
      gemm(where, input, c.weight, m, acc, acc_ld, stream);
    }
    throw_if_error(
        cuda::NormEpilogue<T, B>(acc, kFloatAccumulators, acc_ld, c.y.data, c.y.row_stride, tokens,
                                 m, c.stats, centered ? nullptr : c.row_sums, c.bias, stream),
        where);
  }

  // The unfused baseline's pass over x (docs/math.md §7.6): RowStats into stats, then
  // out = γ ⊙ norm(x) + β (NormalizeRows).
  static void normalize(const char* where, const MatrixView<const T>& x, bool layer_norm,
                        double eps, const T* gamma, const T* beta, float* stats,
                        const MatrixView<T>& out, const Stream& stream) {
    throw_if_error(cuda::RowStats<T, B>(x.data, x.rows, x.cols, x.row_stride, layer_norm,
                                        static_cast<float>(eps), stats, stream),
                   where);
    throw_if_error(cuda::NormalizeRows<T, B>(x.data, x.row_stride, out.data, out.row_stride, x.rows,
                                             x.cols, stats, gamma, beta, true, stream),
                   where);
  }

  // The unfused baseline's product: y = x Wᵀ + b, one GEMM and the bias epilogue.
  static void linear(const char* where, const MatrixView<const T>& x, const T* w, index_t out,
                     const T* bias, const MatrixView<T>& y, const Stream& stream) {
    LinearOps<T, B>::linear(where, x, w, out, bias, Activation::kIdentity, y, stream);
  }

 private:
  // normalized = γ ⊙ norm(x) + β from the call's statistics.
  static void side_output(const Call& c, const Stream& on) {
    throw_if_error(cuda::NormalizeRows<T, B>(c.x.data, c.x.row_stride, c.normalized.data,
                                             c.normalized.row_stride, c.x.rows, c.x.cols, c.stats,
                                             c.gamma, c.beta, true, on),
                   c.where);
  }

  // acc = x Wᵀ ([tokens x out], ld acc_ld): fp32 with 16-bit storage, else T.
  static void gemm(const char* where, const MatrixView<const T>& x, const T* w, index_t out,
                   void* acc, index_t acc_ld, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const auto dc = kFloatAccumulators ? Api::DataType::kF32 : dt;
    const int k = to_blas_int(where, "in_features", x.cols);
    Api::gemm(Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "out_features", out),
              to_blas_int(where, "tokens", x.rows), k, 1.0f, w, dt, k, x.data, dt,
              to_blas_int(where, "x.row_stride", x.row_stride), 0.0f, acc, dc,
              to_blas_int(where, "y.row_stride", acc_ld));
  }
};

#if defined(FFNKIT_WITH_CUDA)
template <class T>
struct NormOps<T, Cuda> : DeviceNormOps<T, Cuda> {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
struct NormOps<T, CudaEmu> : DeviceNormOps<T, CudaEmu> {};
#endif

}  // namespace detail
}  // namespace ffnkit
