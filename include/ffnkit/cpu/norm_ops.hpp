// The Cpu backend's NormOps (detail/norm_ops.hpp): the kernels of RMSNormLinear and
// LayerNormLinear (docs/math.md §7.2, §7.3) on Eigen and OpenMP, the products routed to BLAS.
//
// The fused forward and the unfused baseline (reference/unfused_norm.hpp) share one product driver
// (`norm_linear_product`) and one epilogue pass over y, so the only difference between them is
// the pass over x: the baseline reads x and writes a normalized copy that the product reads back;
// the fused path only reads x for its two per-token scalars (at decode sizes inside the same
// parallel region as the GEMV).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/detail/norm_ops.hpp"

namespace ffnkit {
namespace cpu {

// y = x W^T, overwriting y (BLAS beta = 0: no zero-fill pass before the product, unlike Eigen's
// `noalias() =`, which zero-fills and accumulates). W: [m x n] row-major, contiguous.
template <class T>
void gemm_nt(const MatrixView<const T>& x, const T* w, index_t m, const MatrixView<T>& y) {
#ifdef EIGEN_USE_BLAS
  // Row-major y = x W^T is column-major y^T = W^T' x^T: W's buffer is a column-major [n x m]
  // matrix (op T), x's is a column-major [n x tokens] matrix with ld = its row stride.
  const int M = static_cast<int>(m), N = static_cast<int>(x.rows), K = static_cast<int>(x.cols);
  const int lda = K, ldb = static_cast<int>(x.row_stride), ldc = static_cast<int>(y.row_stride);
  const T one = 1, zero = 0;
  const char ta = 'T', tb = 'N';
  if constexpr (std::is_same<T, float>::value)
    sgemm_(&ta, &tb, &M, &N, &K, &one, w, &lda, x.data, &ldb, &zero, y.data, &ldc);
  else
    dgemm_(&ta, &tb, &M, &N, &K, &one, w, &lda, x.data, &ldb, &zero, y.data, &ldc);
#else
  map(y).noalias() = map(x) * Eigen::Map<const RowMatrix<T>>(w, m, x.cols).transpose();
#endif
}

// At or below this many tokens the product is a GEMV-like, weight-bandwidth-bound sweep.
constexpr index_t kNormDecodeTokens = 16;

// The per-token scalars of the normalizations: mean (0 for RMSNorm) and 1/sqrt(var + ε), laid out
// as the [2 tokens] statistics array of NormLinearCall.
template <class T>
struct NormStat {
  T mean;
  T rstd;
};

// y = x W^T with `prologue(t, stat, first)` computing token t's statistics before the product and
// `epilogue(t, stat, j0, count)` applied to y[t, j0 : j0 + count] after it:
//  - decode (tokens <= 16): the output features are split across threads; each thread computes
//    the statistics of the few tokens itself (x stays in L1: there is no barrier between a
//    statistics phase and the product), its slice of the GEMV, and the epilogue on that slice
//    while it is still in L1: one read of x, one read of W, one write of y. `first` is true on
//    one thread only, for side outputs;
//  - otherwise: the prologue over all tokens into `stats` (parallel over tokens, read-only over
//    x), one threaded BLAS GEMM, then the epilogue as one parallel pass over y.
// `stats` may be null when the prologue computes nothing (the unfused baseline's product); the
// epilogue then gets zero statistics.
template <class T, class Prologue, class Epilogue>
void norm_linear_product(const MatrixView<const T>& x, const T* w, index_t m,
                         const MatrixView<T>& y, NormStat<T>* stats, Prologue&& prologue,
                         Epilogue&& epilogue) {
  const index_t n = x.cols, tokens = x.rows;
  if (tokens <= kNormDecodeTokens) {
    const int threads = max_threads();
    const index_t parts = (threads > 1 && m >= 64 * threads) ? threads : 1;
    const index_t per = ((m + parts - 1) / parts + 15) / 16 * 16;
    const index_t count = (m + per - 1) / per;
    parallel_for(count, per * n * tokens, [&](std::int64_t p) {
      NormStat<T> local[kNormDecodeTokens];
      const index_t m0 = p * per, mm = std::min(per, m - m0);
      for (index_t t = 0; t < tokens; ++t) prologue(t, local[t], p == 0);
      gemm_nt(x, w + m0 * n, mm, MatrixView<T>(y.data + m0, tokens, mm, y.row_stride));
      for (index_t t = 0; t < tokens; ++t) epilogue(t, local[t], m0, mm);
    });
    return;
  }
  if (stats) parallel_for(tokens, 2 * n, [&](std::int64_t t) { prologue(t, stats[t], true); });
  gemm_nt(x, w, m, y);
  const NormStat<T> none{};
  parallel_for(tokens, 2 * m, [&](std::int64_t t) { epilogue(t, stats ? stats[t] : none, 0, m); });
}

// Per-token statistics, accumulated in T (fp32 for float). RMSNorm: r = 1/sqrt(mean(x²) + ε).
// LayerNorm: shifted sums around K = x[0] (docs/math.md §7.3, never E[x²] − E[x]²): with d = x − K,
// var = mean(d²) − mean(d)², whose cancellation is bounded by (x[0] − μ)²/σ² instead of μ²/σ².
template <class T>
inline NormStat<T> row_stats(const T* x, index_t n, bool layer_norm, T eps) {
  const Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> a(x, n);
  const T inv_n = T(1) / static_cast<T>(n);
  if (!layer_norm) {
    return {T(0), T(1) / std::sqrt(a.square().sum() * inv_n + eps)};
  }
  const T k = x[0];
  const T s1 = (a - k).sum();
  const T s2 = (a - k).square().sum();
  const T m1 = s1 * inv_n;
  const T var = std::max(s2 * inv_n - m1 * m1, T(0));
  return {k + m1, T(1) / std::sqrt(var + eps)};
}

}  // namespace cpu

namespace detail {

template <class T>
struct NormOps<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");
  using Stat = T;
  using Stream = cpu::Stream;
  using Call = NormLinearCall<T, T>;
  // The product writes y in T; there are no separate accumulators.
  static constexpr bool kFloatAccumulators = false;
  // Per-layer execution resources: none on the Cpu backend.
  struct State {};

  // The fused (deferred) forward of docs/math.md §7.2 / §7.3.
  static void forward(const Call& c, const State&, const Stream&) {
    if (c.layer_norm)
      layer_norm(c);
    else
      rms_norm(c);
  }

  // The unfused baseline's pass over x (docs/math.md §7.6): per token the statistics (the same
  // shifted sums, into stats) and out = γ ⊙ norm(x) + β, serial at decode sizes as the fused
  // LayerNorm statistics are.
  static void normalize(const char*, const MatrixView<const T>& x, bool layer_norm, double eps,
                        const T* gamma, const T* beta, T* stats, const MatrixView<T>& out,
                        const Stream&) {
    const index_t n = x.cols;
    const T e = static_cast<T>(eps);
    auto* st = reinterpret_cast<cpu::NormStat<T>*>(stats);
    const std::int64_t cost = x.rows <= cpu::kNormDecodeTokens ? 0 : 3 * n;
    cpu::parallel_for(x.rows, cost, [&](std::int64_t t) {
      st[t] = cpu::row_stats(x.row(t), n, layer_norm, e);
      write_normalized(x.row(t), n, st[t], gamma, beta, out.row(t));
    });
  }

  // The unfused baseline's product: y = x Wᵀ + b through the fused path's product driver, the bias
  // in the same epilogue pass the fused path uses for its scale and correction.
  static void linear(const char*, const MatrixView<const T>& x, const T* w, index_t out,
                     const T* bias, const MatrixView<T>& y, const Stream&) {
    cpu::norm_linear_product(
        x, w, out, y, static_cast<cpu::NormStat<T>*>(nullptr),
        [](index_t, cpu::NormStat<T>&, bool) {},
        [&](index_t t, const cpu::NormStat<T>&, index_t j0, index_t count) {
          if (bias) Map(y.row(t) + j0, count) += ConstMap(bias + j0, count);
        });
  }

 private:
  using Map = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  using ConstMap = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;

  static cpu::NormStat<T>* stats_of(const Call& c) {
    return reinterpret_cast<cpu::NormStat<T>*>(c.stats);
  }

  // out = γ ⊙ (x − μ) r + β (RMSNorm: μ = 0, β = 0; γ null: 1, β null: 0).
  static void write_normalized(const T* x, index_t n, const cpu::NormStat<T>& st, const T* gamma,
                               const T* beta, T* out) {
    const ConstMap a(x, n);
    Map o(out, n);
    const T mean = st.mean, rstd = st.rstd;
    if (gamma && beta)
      o = (a - mean) * rstd * ConstMap(gamma, n) + ConstMap(beta, n);
    else if (gamma)
      o = (a - mean) * rstd * ConstMap(gamma, n);
    else if (beta)
      o = (a - mean) * rstd + ConstMap(beta, n);
    else
      o = (a - mean) * rstd;
  }

  // y = r y + b' on y[t, j0 : j0 + count]: RMSNorm's epilogue, and centered LayerNorm's.
  static auto scale_epilogue(const Call& c) {
    return [&c](index_t t, const cpu::NormStat<T>& st, index_t j0, index_t count) {
      Map yr(c.y.row(t) + j0, count);
      if (c.bias)
        yr = yr * st.rstd + ConstMap(c.bias + j0, count);
      else
        yr *= st.rstd;
    };
  }

  // y = r (W' x) + b': the statistics in the product's prologue.
  static void rms_norm(const Call& c) {
    const index_t n = c.x.cols;
    const T eps = static_cast<T>(c.eps);
    auto prologue = [&](index_t t, cpu::NormStat<T>& st, bool first) {
      st = cpu::row_stats(c.x.row(t), n, false, eps);
      if (c.normalized.data && first)
        write_normalized(c.x.row(t), n, st, c.gamma, nullptr, c.normalized.row(t));
    };
    cpu::norm_linear_product(c.x, c.weight, c.y.cols, c.y, stats_of(c), prologue,
                             scale_epilogue(c));
  }

  // y = r (W' x − μ c) + b', or, above the centering threshold, y = r W' (x − μ 1) + b'.
  static void layer_norm(const Call& c) {
    const index_t n = c.x.cols, tokens = c.x.rows;
    const T eps = static_cast<T>(c.eps);
    cpu::NormStat<T>* stats = stats_of(c);
    // The statistics first (read-only over x): the call's worst |μ|/σ picks the deferred or the
    // centered correction before the product starts. At decode sizes (<= 16 tokens, microseconds
    // of work) on the calling thread: a fork-join would cost more than it saves.
    const std::int64_t cost = tokens <= cpu::kNormDecodeTokens ? 0 : 2 * n;
    cpu::parallel_for(tokens, cost, [&](std::int64_t t) {
      stats[t] = cpu::row_stats(c.x.row(t), n, true, eps);
      if (c.normalized.data)
        write_normalized(c.x.row(t), n, stats[t], c.gamma, c.beta, c.normalized.row(t));
    });
    auto prologue = [&](index_t t, cpu::NormStat<T>& st, bool) { st = stats[t]; };
    if (!centers_layer_norm(c.stats, tokens, c.center_threshold)) {
      auto epilogue = [&](index_t t, const cpu::NormStat<T>& st, index_t j0, index_t count) {
        Map yr(c.y.row(t) + j0, count);
        // (W'x − μ c) before scaling: the cancellation happens at the accumulator's magnitude.
        if (c.bias)
          yr = (yr - st.mean * ConstMap(c.row_sums + j0, count)) * st.rstd +
               ConstMap(c.bias + j0, count);
        else
          yr = (yr - st.mean * ConstMap(c.row_sums + j0, count)) * st.rstd;
      };
      cpu::norm_linear_product(c.x, c.weight, c.y.cols, c.y, stats, prologue, epilogue);
      return;
    }
    const MatrixView<T> xc(c.copy, tokens, n);
    cpu::parallel_for(tokens, cost, [&](std::int64_t t) {
      Map(xc.row(t), n) = ConstMap(c.x.row(t), n) - stats[t].mean;
    });
    cpu::norm_linear_product(MatrixView<const T>(xc), c.weight, c.y.cols, c.y, stats, prologue,
                             scale_epilogue(c));
  }
};

}  // namespace detail
}  // namespace ffnkit
