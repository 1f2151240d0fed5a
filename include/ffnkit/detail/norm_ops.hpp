// The backend policies of the deferred-normalization family (docs/math.md §7), declared once:
//   NormOps<T, B>      the kernels of RMSNormLinear and LayerNormLinear: the fused forward's
//                      schedule (statistics, product, epilogue, decode path), and the unfused
//                      baseline's normalize pass and product (cpu/norm_ops.hpp, cuda/norm_ops.hpp);
//   SoftmaxVOps<T, B>  the kernels of SoftmaxLinear: the one-pass online softmax · V, its
//                      workspace, and the three-pass baseline (cpu/softmax_v_ops.hpp,
//                      cuda/softmax_v_ops.hpp).
// Everything else (checks, counts, the workspace plan, the fold of γ and β) is written once, in
// norm_linear.hpp and softmax_v.hpp; what the layer hands its backend for one forward is a
// NormLinearCall.
#pragma once

#include <algorithm>
#include <cmath>

#include "ffnkit/core.hpp"
#include "ffnkit/detail/backend.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct NormOps;
template <class T, class B>
struct SoftmaxVOps;

// One norm-fused forward, checked: the views, the folded parameters (docs/math.md §7.2, §7.3) and
// the call's pieces of the workspace. S is NormOps<T, B>::Stat, the precision of the statistics
// and of c and b' (T on the Cpu backend, fp32 on the device backends).
template <class T, class S>
struct NormLinearCall {
  const char* where = nullptr;
  bool layer_norm = false;
  MatrixView<const T> x;      // [tokens x in]
  MatrixView<T> y;            // [tokens x out]
  MatrixView<T> normalized;   // [tokens x in], the side output γ ⊙ norm(x) + β; data null: none
  const T* weight = nullptr;  // W' = W diag(γ), [out x in] row-major
  const S* row_sums = nullptr;  // c = W' 1 (LayerNorm), else null
  const S* bias = nullptr;      // b' = W β + b, or null when there is neither β nor b
  const T* gamma = nullptr;     // null: γ = 1 (read by the side output only)
  const T* beta = nullptr;      // null: β = 0 (idem)
  double eps = 0;
  double center_threshold = 0;  // LayerNorm's centering threshold (docs/math.md §7.3)
  bool concurrent_stats =
      false;             // device: the statistics on a second stream (docs/deferred_norm.md)
  S* stats = nullptr;    // [2 tokens]: μ, r per token
  float* acc = nullptr;  // fp32 accumulators [tokens x out] (NormOps::kFloatAccumulators)
  T* copy = nullptr;     // [tokens x in] for LayerNorm's centered x, else null
};

// LayerNorm's centering decision (docs/math.md §7.3): whether the call's largest |μ| r over its
// tokens (stats: μ, r pairs; a NaN token is ignored by the maximum) exceeds the threshold.
template <class S>
bool centers_layer_norm(const S* stats, index_t tokens, double threshold) {
  S worst = 0;
  for (index_t t = 0; t < tokens; ++t)
    worst = std::max(worst, std::abs(stats[2 * t]) * stats[2 * t + 1]);
  return static_cast<double>(worst) > threshold;
}

}  // namespace detail
}  // namespace ffnkit
