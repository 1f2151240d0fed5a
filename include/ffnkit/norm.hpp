// Deferred normalization fused with the following linear layer (docs/math.md §7):
//   RMSNormLinear<T, Backend>:   y = r (W' x) + b,            W' = W diag(γ), r =
//   1/sqrt(mean(x²)+ε) LayerNormLinear<T, Backend>: y = r (W' x − μ c) + b',     c = W' 1, b' = W β
//   + b,
//                                                              r = 1/sqrt(var(x)+ε)
//   SoftmaxLinear<T, Backend>:   y = softmax(s + mask) V      (attention's P V), one pass with an
//                                                              online running max
// The normalizer is one scalar per token and commutes with the matrix product, so the statistics
// are taken from x alongside the product and applied in its epilogue; the normalized copy of x that
// the unfused path writes and reads back is never made. Every layer also exposes that unfused path
// (`forward_unfused`) for comparison. docs/deferred_norm.md has the algebra, the error bound and
// the measured tables.
#pragma once

#include "ffnkit/core.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class RMSNormLinear;

template <class T, class Backend = Cpu>
class LayerNormLinear;

template <class T, class Backend = Cpu>
class SoftmaxLinear;

}  // namespace ffnkit

#include "ffnkit/cpu/norm.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/norm.hpp"
#endif
