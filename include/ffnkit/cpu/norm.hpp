// RMSNormLinear, LayerNormLinear and SoftmaxLinear on the CPU backend (docs/math.md §7).
//
// The fused and the unfused path share one product driver (`norm_linear_product`) and one
// epilogue pass over y, so the only difference between them is the pass over x: the unfused path
// reads x and writes a normalized copy that the product reads back; the fused path only reads x for
// its two per-token scalars (in the decode kernel, inside the same parallel region as the GEMV).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"

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

// The per-token scalars of the normalizations: mean (0 for RMSNorm) and 1/sqrt(var + ε).
template <class T>
struct NormStat {
  T mean;
  T rstd;
};

// y = x W^T with `prologue(t, stat, first)` computing token t's statistics before the product and
// `epilogue(t, stat, j0, count)` applied to y[t, j0 : j0 + count] after it. Both the fused and the
// unfused layers run through here:
//  - decode (tokens <= 16): the output features are split across threads; each thread computes
//    the statistics of the few tokens itself (x stays in L1: there is no barrier between a
//    statistics phase and the product), its slice of the GEMV, and the epilogue on that slice
//    while it is still in L1: one read of x, one read of W, one write of y. `first` is true on
//    one thread only, for side outputs;
//  - otherwise: the prologue over all tokens into `stats` (parallel over tokens, read-only over
//    x), one threaded BLAS GEMM, then the epilogue as one parallel pass over y.
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
  parallel_for(tokens, 2 * n, [&](std::int64_t t) { prologue(t, stats[t], true); });
  gemm_nt(x, w, m, y);
  parallel_for(tokens, 2 * m, [&](std::int64_t t) { epilogue(t, stats[t], 0, m); });
}

// Per-token statistics, accumulated in T (fp32 for float). RMSNorm: r = 1/sqrt(mean(x²) + ε).
// LayerNorm: shifted sums around K = x[0] (docs/math.md §7 forbids E[x²] − E[x]²): with d = x − K,
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

inline void check_eps(const char* where, double eps, bool float_type) {
  if (!(eps > 0) || !std::isfinite(eps)) fail(where, "eps = ", eps, ", must be finite and > 0");
  if (float_type && static_cast<float>(eps) <= 0.0f)
    fail(where, "eps = ", eps,
         " rounds to 0 in float32, must be >= ", std::numeric_limits<float>::denorm_min());
}

// The shared implementation of RMSNormLinear<T, Cpu> and LayerNormLinear<T, Cpu>.
template <class T, bool kLayerNorm>
class NormLinearCpu {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");

 public:
  using Scalar = T;
  using Backend = Cpu;

  NormLinearCpu() = default;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  double eps() const { return eps_; }
  // The folded parameters (docs/math.md §7): W' = W diag(γ) [out x in], c = W' 1, b' = W β + b.
  const T* folded_weight() const { return wf_.data(); }
  const T* row_sums() const { return c_.data(); }
  const T* folded_bias() const { return bf_.data(); }
  // The modules' own parameters (W, b, γ and β), not the folded copies.
  index_t parameter_count() const { return in_ * out_ + out_ + in_ * (kLayerNorm ? 2 : 1); }
  double flops_per_token() const { return 2.0 * static_cast<double>(in_) * out_; }

  // Bytes of scratch `forward_unfused` needs for `tokens` tokens (the normalized copy of x and the
  // statistics); `forward` needs only the statistics part. An empty Workspace allocates per call.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens) * (static_cast<std::size_t>(in_) + 2) * sizeof(T);
  }

  // The fused (deferred) path: y = r (W' x − μ c) + b'. x: [tokens x in], y: [tokens x out]. If
  // `normalized` is given ([tokens x in]), the normalized activations γ ⊙ norm(x) + β are written
  // there too, for callers that need them (this costs the write the fused path otherwise saves).
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace workspace = {},
               const MatrixView<T>& normalized = MatrixView<T>()) const {
    const char* where = kLayerNorm ? "LayerNormLinear::forward" : "RMSNormLinear::forward";
    check_io(where, x, y, normalized);
    const index_t n = in_;
    const T eps = static_cast<T>(eps_);
    if (kLayerNorm) {
      forward_layer_norm(where, x, y, workspace, normalized);
      return;
    }
    Scratch s = scratch(where, workspace, x.rows, false);
    const T* b = bf_.data();
    const bool has_b = has_bias_;
    auto prologue = [&](index_t t, cpu::NormStat<T>& st, bool first) {
      st = cpu::row_stats(x.row(t), n, false, eps);
      if (normalized.data && first) write_normalized(x.row(t), st, normalized.row(t));
    };
    auto epilogue = [&](index_t t, const cpu::NormStat<T>& st, index_t j0, index_t count) {
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> yr(y.row(t) + j0, count);
      if (has_b)
        yr = yr * st.rstd + Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(b + j0, count);
      else
        yr *= st.rstd;
    };
    cpu::norm_linear_product(x, wf_.data(), out_, y, s.stats, prologue, epilogue);
  }

  // The unfused reference path (docs/math.md §7's baseline): normalize x into a buffer (the norm as
  // its own pass, γ and β applied), then the same product driver on the original W, with the bias
  // in the same epilogue pass the fused path uses for its scale and correction.
  void forward_unfused(const MatrixView<const T>& x, const MatrixView<T>& y,
                       Workspace workspace = {},
                       const MatrixView<T>& normalized = MatrixView<T>()) const {
    const char* where =
        kLayerNorm ? "LayerNormLinear::forward_unfused" : "RMSNormLinear::forward_unfused";
    check_io(where, x, y, normalized);
    Scratch s = scratch(where, workspace, x.rows, true);
    const index_t n = in_;
    const T eps = static_cast<T>(eps_);
    const MatrixView<T> xn(s.normalized, x.rows, n);
    // Serial at decode sizes, as the fused LayerNorm statistics are.
    const std::int64_t cost = x.rows <= cpu::kNormDecodeTokens ? 0 : 3 * n;
    cpu::parallel_for(x.rows, cost, [&](std::int64_t t) {
      write_normalized(x.row(t), cpu::row_stats(x.row(t), n, kLayerNorm, eps), xn.row(t));
    });
    const T* b = b_.data();
    const bool has_b = has_bias_;
    auto epilogue = [&](index_t t, const cpu::NormStat<T>&, index_t j0, index_t count) {
      if (!has_b) return;
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> yr(y.row(t) + j0, count);
      yr += Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(b + j0, count);
    };
    cpu::norm_linear_product(
        MatrixView<const T>(xn), w_.data(), out_, y, s.stats,
        [](index_t, cpu::NormStat<T>&, bool) {}, epilogue);
    if (normalized.data) {
      cpu::parallel_for(x.rows, n,
                        [&](std::int64_t t) { std::copy_n(xn.row(t), n, normalized.row(t)); });
    }
  }

  void check_ready(const char* where) const {
    if (in_ == 0 || w_.size() == 0)
      fail(where, "the layer is empty (default-constructed or moved from)");
  }

 protected:
  // LayerNorm only: the largest |μ|/σ of a call's tokens up to which `forward` uses the deferred
  // mean correction y = r (W'x − μ c) + b'. Above it, the product's rounding of the |μ|-sized
  // terms of W'x dominates (its relative error grows like u |μ|/σ, docs/deferred_norm.md), so the
  // call subtracts μ from x first (one write pass, like the unfused path, but r stays deferred).
  // Infinity: always deferred; 0: always centered.
  void set_center_threshold(double mu_over_sigma) {
    if (!(mu_over_sigma >= 0))
      fail("LayerNormLinear::set_center_threshold", "mu_over_sigma = ", mu_over_sigma,
           ", must be >= 0");
    center_threshold_ = mu_over_sigma;
  }
  double center_threshold() const { return center_threshold_; }

  // gamma, beta, bias may be null (γ = 1, β = 0, b = 0). The fold runs in double and rounds once.
  NormLinearCpu(const char* where, index_t in_features, index_t out_features, const T* gamma,
                const T* beta, const T* weight, const T* bias, double eps)
      : in_(in_features), out_(out_features), eps_(eps), has_bias_(bias != nullptr || beta) {
    check_positive(where, "in_features", in_features);
    check_positive(where, "out_features", out_features);
    check_not_null(where, "weight", weight);
    check_eps(where, eps, std::is_same<T, float>::value);
    check_finite(where, "weight", weight, in_features * out_features);
    if (gamma) check_finite(where, "gamma", gamma, in_features);
    if (beta) check_finite(where, "beta", beta, in_features);
    if (bias) check_finite(where, "bias", bias, out_features);
    const auto n = static_cast<std::size_t>(in_), m = static_cast<std::size_t>(out_);
    w_.assign(weight, weight + n * m);
    g_ = gamma ? std::vector<T>(gamma, gamma + n) : std::vector<T>(n, T(1));
    be_ = beta ? std::vector<T>(beta, beta + n) : std::vector<T>(n, T(0));
    b_ = bias ? std::vector<T>(bias, bias + m) : std::vector<T>(m, T(0));
    wf_.resize(n * m);
    c_.resize(m);
    bf_.resize(m);
    for (std::size_t i = 0; i < m; ++i) {
      double csum = 0, bsum = static_cast<double>(b_[i]);
      for (std::size_t j = 0; j < n; ++j) {
        const double wij = static_cast<double>(w_[i * n + j]);
        wf_[i * n + j] = static_cast<T>(wij * static_cast<double>(g_[j]));
        // c sums the rounded W' the product actually uses, so μ c cancels exactly what μ 1 puts
        // into W' x (up to the product's own rounding).
        csum += static_cast<double>(wf_[i * n + j]);
        bsum += wij * static_cast<double>(be_[j]);
      }
      c_[i] = static_cast<T>(csum);
      bf_[i] = static_cast<T>(bsum);
    }
  }

 private:
  void forward_layer_norm(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y,
                          Workspace workspace, const MatrixView<T>& normalized) const {
    const index_t n = in_, tokens = x.rows;
    const T eps = static_cast<T>(eps_);
    Scratch s = scratch(where, workspace, tokens, true);
    cpu::NormStat<T>* stats = s.stats;
    // The statistics first (read-only over x; at decode sizes a few microseconds): the call's
    // worst |μ|/σ picks the deferred or the centered correction before the product starts.
    // At decode sizes (<= 16 tokens, microseconds of work) on the calling thread: a fork-join
    // would cost more than it saves.
    const std::int64_t cost = tokens <= cpu::kNormDecodeTokens ? 0 : 2 * n;
    cpu::parallel_for(tokens, cost, [&](std::int64_t t) {
      stats[t] = cpu::row_stats(x.row(t), n, true, eps);
      if (normalized.data) write_normalized(x.row(t), stats[t], normalized.row(t));
    });
    T worst = 0;
    for (index_t t = 0; t < tokens; ++t)
      worst = std::max(worst, std::abs(stats[t].mean) * stats[t].rstd);
    const T* c = c_.data();
    const T* b = bf_.data();
    auto prologue = [&](index_t t, cpu::NormStat<T>& st, bool) { st = stats[t]; };
    using Arr = Eigen::Array<T, 1, Eigen::Dynamic>;
    if (!(static_cast<double>(worst) > center_threshold_)) {
      auto epilogue = [&](index_t t, const cpu::NormStat<T>& st, index_t j0, index_t count) {
        Eigen::Map<Arr> yr(y.row(t) + j0, count);
        // (W'x − μ c) before scaling: the cancellation happens at the accumulator's magnitude.
        yr = (yr - st.mean * Eigen::Map<const Arr>(c + j0, count)) * st.rstd +
             Eigen::Map<const Arr>(b + j0, count);
      };
      cpu::norm_linear_product(x, wf_.data(), out_, y, stats, prologue, epilogue);
      return;
    }
    const MatrixView<T> xc(s.normalized, tokens, n);
    cpu::parallel_for(tokens, cost, [&](std::int64_t t) {
      Eigen::Map<Arr>(xc.row(t), n) = Eigen::Map<const Arr>(x.row(t), n) - stats[t].mean;
    });
    auto epilogue = [&](index_t t, const cpu::NormStat<T>& st, index_t j0, index_t count) {
      Eigen::Map<Arr> yr(y.row(t) + j0, count);
      yr = yr * st.rstd + Eigen::Map<const Arr>(b + j0, count);
    };
    cpu::norm_linear_product(MatrixView<const T>(xc), wf_.data(), out_, y, stats, prologue,
                             epilogue);
  }

  struct Scratch {
    T* normalized = nullptr;
    cpu::NormStat<T>* stats = nullptr;
    std::unique_ptr<T[]> owned;
  };

  Scratch scratch(const char* where, Workspace ws, index_t tokens, bool with_copy) const {
    const std::size_t need =
        static_cast<std::size_t>(tokens) * ((with_copy ? in_ : 0) + 2) * sizeof(T);
    Scratch s;
    T* base = nullptr;
    if (ws.data) {
      if (ws.bytes < need)
        fail(where, "workspace.bytes = ", ws.bytes, " is smaller than the ", need,
             " bytes needed for ", tokens, " tokens");
      base = static_cast<T*>(ws.data);
    } else {
      s.owned.reset(new T[need / sizeof(T)]);
      base = s.owned.get();
    }
    s.stats = reinterpret_cast<cpu::NormStat<T>*>(base);
    s.normalized = with_copy ? base + 2 * tokens : nullptr;
    return s;
  }

  void check_io(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y,
                const MatrixView<T>& normalized) const {
    check_ready(where);
    check_activation(where, "x", x, in_, "in_features");
    check_activation(where, "y", y, out_, "out_features");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    check_no_overlap(where, x, y);
    if (normalized.data) {
      check_activation(where, "normalized", normalized, in_, "in_features");
      check_equal(where, "normalized.rows", normalized.rows, "x.rows", x.rows);
      check_no_overlap(where, x, normalized);
      check_no_overlap(where, MatrixView<const T>(normalized), y);
    }
  }

  // out = γ ⊙ (x − μ) r + β (RMSNorm: μ = 0, β = 0).
  void write_normalized(const T* x, const cpu::NormStat<T>& st, T* out) const {
    const T mean = st.mean, rstd = st.rstd;
    const Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> a(x, in_);
    const Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> g(g_.data(), in_);
    Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> o(out, in_);
    if (kLayerNorm) {
      const Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>> be(be_.data(), in_);
      o = (a - mean) * rstd * g + be;
    } else {
      o = a * rstd * g;
    }
  }

  index_t in_ = 0;
  index_t out_ = 0;
  double eps_ = 0;
  double center_threshold_ = 4.0;
  bool has_bias_ = false;
  std::vector<T> w_, g_, be_, b_;  // as given, for the unfused path
  std::vector<T> wf_, c_, bf_;     // folded: W', c, b'
};

}  // namespace detail

template <class T>
class RMSNormLinear<T, Cpu> : public detail::NormLinearCpu<T, false> {
 public:
  RMSNormLinear() = default;
  // gamma: [in] (null: no affine weight), weight: [out x in] (nn.Linear), bias: [out] or null.
  RMSNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* weight,
                const T* bias, double eps = 1e-6)
      : detail::NormLinearCpu<T, false>("RMSNormLinear", in_features, out_features, gamma, nullptr,
                                        weight, bias, eps) {}
};

template <class T>
class LayerNormLinear<T, Cpu> : public detail::NormLinearCpu<T, true> {
 public:
  using detail::NormLinearCpu<T, true>::set_center_threshold;
  using detail::NormLinearCpu<T, true>::center_threshold;
  LayerNormLinear() = default;
  // gamma, beta: [in] (null: 1 and 0), weight: [out x in] (nn.Linear), bias: [out] or null.
  LayerNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* beta,
                  const T* weight, const T* bias, double eps = 1e-5)
      : detail::NormLinearCpu<T, true>("LayerNormLinear", in_features, out_features, gamma, beta,
                                       weight, bias, eps) {}
};

// y = softmax(s + mask) V per row of scores s (attention's P V), docs/math.md §7.
//  - forward: one pass, FlashAttention-style. A block of query rows sweeps the keys in tiles:
//    tile max, exp into a small cache-resident tile buffer, one rescale of the running numerator
//    and denominator by e^{m_old − m_new} per tile (only where the max moved), then a small GEMM
//    P_tile V_tile accumulating into the block's output. The full P is never written.
//  - forward_unfused: the three-pass reference (max, exp-sum, normalize into a [queries x keys]
//    buffer), then one GEMM.
// A row whose scores are all −inf (fully masked) gives zeros, never NaN.
template <class T>
class SoftmaxLinear<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");
  using Tile = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;

 public:
  using Scalar = T;
  using Backend = Cpu;

  // key_tile: keys per tile; query_block: query rows sharing one sweep over V. Every query block
  // re-reads all of V (8 MB at 16384 keys x 128 dims), so blocks are as large as L2 allows: a
  // 128 x 256 fp32 P tile (128 KB) plus 128 x dim accumulators (64 KB) sit in a 1 MB L2.
  explicit SoftmaxLinear(index_t key_tile = 256, index_t query_block = 128)
      : key_tile_(key_tile), query_block_(query_block) {
    check_positive("SoftmaxLinear", "key_tile", key_tile);
    check_positive("SoftmaxLinear", "query_block", query_block);
  }

  index_t key_tile() const { return key_tile_; }
  index_t query_block() const { return query_block_; }
  // Bytes forward_unfused needs (the normalized P).
  std::size_t workspace_size(index_t queries, index_t keys) const {
    return static_cast<std::size_t>(queries) * static_cast<std::size_t>(keys) * sizeof(T);
  }
  // Bytes forward (the one pass) needs for the current OpenMP thread count: per thread a P tile,
  // the running numerators, maxima and denominators of one query block; plus, when the keys are
  // split across threads (decode), every split's partial triple.
  std::size_t forward_workspace_size(index_t queries, index_t keys, index_t dim) const {
    const Plan pl = plan(queries, keys);
    return sizeof(T) * static_cast<std::size_t>(pl.threads * per_thread_elements(pl, dim) +
                                                (pl.splits > 1 ? pl.items * pl.qb * (dim + 2) : 0));
  }

  // s: [queries x keys], v: [keys x dim], y: [queries x dim], mask: [queries x keys] additive
  // (−inf masks a key), or an empty view for none. With a workspace of forward_workspace_size()
  // bytes the call does not allocate; an empty one allocates per call.
  void forward(const MatrixView<const T>& s, const MatrixView<const T>& v, const MatrixView<T>& y,
               const MatrixView<const T>& mask = MatrixView<const T>(),
               Workspace workspace = {}) const {
    constexpr const char* where = "SoftmaxLinear::forward";
    check_io(where, s, v, y, mask);
    const index_t q = s.rows, keys = s.cols, dim = v.cols;
    const Plan pl = plan(q, keys);
    const index_t qb = pl.qb, splits = pl.splits, per_split = pl.per_split;
    const std::size_t need = forward_workspace_size(q, keys, dim);
    std::unique_ptr<T[]> owned;
    T* base = static_cast<T*>(workspace.data);
    if (base) {
      if (workspace.bytes < need)
        fail(where, "workspace.bytes = ", workspace.bytes, ", need forward_workspace_size(", q,
             ", ", keys, ", ", dim, ") = ", need, " (for ", pl.threads, " threads)");
      if (reinterpret_cast<std::uintptr_t>(base) % alignof(T) != 0)
        fail(where, "workspace.data is not aligned to ", alignof(T), " bytes");
    } else {
      owned.reset(new T[need / sizeof(T)]);
      base = owned.get();
    }
    const index_t per_thread = per_thread_elements(pl, dim);
    T* part_m = base + pl.threads * per_thread;
    T* part_l = part_m + pl.items * qb;
    T* part_acc = part_l + pl.items * qb;
    cpu::parallel_for_slots(pl.items, qb * per_split * (dim + 8), [&](std::int64_t item, int slot) {
      const index_t blk = item / splits, sp = item % splits;
      const index_t q0 = blk * qb, qn = std::min(qb, q - q0);
      const index_t k0 = sp * per_split, k1 = std::min(keys, k0 + per_split);
      T* mine = base + slot * per_thread;
      TileMap acc(mine, qn, dim), p(mine + qb * dim, qn, std::min(key_tile_, k1 - k0));
      T* m = mine + qb * (dim + key_tile_);
      T* l = m + qb;
      acc.setZero();
      std::fill(m, m + qn, -std::numeric_limits<T>::infinity());
      std::fill(l, l + qn, T(0));
      sweep(s, v, mask, q0, qn, k0, k1, m, l, acc, p);
      if (splits == 1) {
        for (index_t i = 0; i < qn; ++i) {
          Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> yr(y.row(q0 + i), dim);
          // l = 0 only when every key was masked: zeros, not 0/0.
          if (l[i] > T(0))
            yr = acc.row(i) * (T(1) / l[i]);
          else
            yr.setZero();
        }
      } else {
        const index_t at = item * qb;
        std::copy(m, m + qn, part_m + at);
        std::copy(l, l + qn, part_l + at);
        std::copy_n(acc.data(), qn * dim, part_acc + at * dim);
      }
    });
    if (splits == 1) return;
    for (index_t blk = 0; blk < pl.blocks; ++blk) {
      const index_t q0 = blk * qb, qn = std::min(qb, q - q0);
      for (index_t i = 0; i < qn; ++i) {
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t sp = 0; sp < splits; ++sp)
          mx = std::max(mx, part_m[(blk * splits + sp) * qb + i]);
        Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> yr(y.row(q0 + i), dim);
        yr.setZero();
        if (mx == -std::numeric_limits<T>::infinity()) continue;
        T l = 0;
        for (index_t sp = 0; sp < splits; ++sp) {
          const index_t at = (blk * splits + sp) * qb + i;
          if (part_l[at] == T(0)) continue;
          const T f = std::exp(part_m[at] - mx);
          l += f * part_l[at];
          yr += f * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(part_acc + at * dim, dim);
        }
        yr *= T(1) / l;
      }
    }
  }

  // The three-pass reference: per row max, exp and sum, normalize into P; then y = P V.
  void forward_unfused(const MatrixView<const T>& s, const MatrixView<const T>& v,
                       const MatrixView<T>& y,
                       const MatrixView<const T>& mask = MatrixView<const T>(),
                       Workspace workspace = {}) const {
    constexpr const char* where = "SoftmaxLinear::forward_unfused";
    check_io(where, s, v, y, mask);
    const index_t q = s.rows, keys = s.cols;
    const std::size_t need = workspace_size(q, keys);
    std::unique_ptr<T[]> owned;
    T* p = static_cast<T*>(workspace.data);
    if (p) {
      if (workspace.bytes < need)
        fail(where, "workspace.bytes = ", workspace.bytes, " is smaller than the ", need,
             " bytes needed for ", q, " x ", keys, " scores");
    } else {
      owned.reset(new T[need / sizeof(T)]);
      p = owned.get();
    }
    cpu::parallel_for(q, 4 * keys, [&](std::int64_t i) {
      Eigen::Map<RowArray> pr(p + i * keys, keys);
      const Eigen::Map<const RowArray> sr(s.row(i), keys);
      if (mask.data)
        pr = sr + Eigen::Map<const RowArray>(mask.row(i), keys);
      else
        pr = sr;
      const T mx = pr.maxCoeff();  // pass 1
      if (mx == -std::numeric_limits<T>::infinity()) {
        pr.setZero();
        return;
      }
      pr = (pr - mx).exp();  // pass 2
      const T sum = pr.sum();
      pr *= T(1) / sum;  // pass 3
    });
    const Eigen::Map<const cpu::RowMatrix<T>> P(p, q, keys);
    cpu::map(y).noalias() = P * cpu::map(v);
  }

 private:
  using TileMap = Eigen::Map<Tile>;

  // How forward splits the work: query blocks of qb rows, and for decode (fewer blocks than
  // threads) the keys in `splits` ranges of per_split keys, as flash-decoding does.
  struct Plan {
    index_t threads, qb, blocks, splits, per_split, items;
  };
  Plan plan(index_t q, index_t keys) const {
    Plan pl;
    pl.threads = cpu::max_threads();
    // Enough query blocks for every thread when there are enough queries (128 queries on 2
    // threads: two blocks of 64, not one of 128 on one thread).
    pl.qb = std::max<index_t>(1, std::min(query_block_, (q + pl.threads - 1) / pl.threads));
    pl.blocks = (q + pl.qb - 1) / pl.qb;
    // Few query blocks (decode) cannot fill the threads: split the keys too, and merge the
    // partial (max, sum, numerator) triples afterwards.
    pl.splits = 1;
    if (pl.blocks < pl.threads && keys >= 2 * key_tile_)
      pl.splits = std::min<index_t>((pl.threads + pl.blocks - 1) / pl.blocks, keys / key_tile_);
    pl.per_split = ((keys + pl.splits - 1) / pl.splits + key_tile_ - 1) / key_tile_ * key_tile_;
    pl.splits = (keys + pl.per_split - 1) / pl.per_split;
    pl.items = pl.blocks * pl.splits;
    return pl;
  }
  // One thread's scratch: the numerators [qb x dim], the P tile [qb x key_tile], m and l.
  index_t per_thread_elements(const Plan& pl, index_t dim) const {
    return pl.qb * (dim + key_tile_ + 2);
  }

  // The online softmax over keys [k0, k1) for query rows [q0, q0 + qn): running max m, running
  // denominator l and running numerator acc, all in T (fp32 for float); p is the tile buffer.
  void sweep(const MatrixView<const T>& s, const MatrixView<const T>& v,
             const MatrixView<const T>& mask, index_t q0, index_t qn, index_t k0, index_t k1, T* m,
             T* l, TileMap& acc, TileMap& p) const {
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    const index_t dim = v.cols;
    for (index_t kk = k0; kk < k1; kk += key_tile_) {
      const index_t kt = std::min(key_tile_, k1 - kk);
      for (index_t i = 0; i < qn; ++i) {
        auto pr = p.row(i).head(kt).array();
        const Eigen::Map<const RowArray> sr(s.row(q0 + i) + kk, kt);
        if (mask.data)
          pr = sr + Eigen::Map<const RowArray>(mask.row(q0 + i) + kk, kt);
        else
          pr = sr;
        const T mnew = std::max(m[i], pr.maxCoeff());
        if (mnew == kNegInf) {  // everything so far masked: contributes nothing
          pr.setZero();
          continue;
        }
        if (mnew > m[i]) {
          // Rescale once per tile, and only rows whose max moved; e^{−inf} = 0 on the first tile.
          const T alpha = std::exp(m[i] - mnew);
          l[i] *= alpha;
          acc.row(i) *= alpha;
          m[i] = mnew;
        }
        pr = (pr - mnew).exp();
        l[i] += pr.sum();
      }
      const cpu::ConstRowMap<T> V(v.row(kk), kt, dim, Eigen::OuterStride<>(v.row_stride));
      acc.noalias() += p.leftCols(kt) * V;
    }
  }

  void check_io(const char* where, const MatrixView<const T>& s, const MatrixView<const T>& v,
                const MatrixView<T>& y, const MatrixView<const T>& mask) const {
    if (s.rows <= 0) fail(where, "s.rows (queries) = ", s.rows, ", must be > 0");
    if (s.cols <= 0) fail(where, "s.cols (keys) = ", s.cols, ", must be > 0");
    check_activation(where, "s", s, s.cols, "s.cols");
    if (v.cols <= 0) fail(where, "v.cols (head dim) = ", v.cols, ", must be > 0");
    check_activation(where, "v", v, v.cols, "v.cols");
    check_equal(where, "v.rows", v.rows, "s.cols (keys)", s.cols);
    check_activation(where, "y", y, v.cols, "v.cols (head dim)");
    check_equal(where, "y.rows", y.rows, "s.rows (queries)", s.rows);
    check_no_overlap(where, s, y);
    check_no_overlap(where, v, y);
    if (mask.data) {
      check_activation(where, "mask", mask, s.cols, "s.cols (keys)");
      check_equal(where, "mask.rows", mask.rows, "s.rows (queries)", s.rows);
    }
  }

  index_t key_tile_;
  index_t query_block_;
};

}  // namespace ffnkit
