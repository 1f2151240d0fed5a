// The structured linear layers (docs/math.md §3), each templated on scalar and backend:
//   LowRankLinear        y = U (V x) + b                       params R (N + M)
//   BlockDiagonalLinear  y_b = W_b x_b                         params N M / B
//   BlockDenseLinear     y = U (blockdiag(V_1..V_B) x) + b     params R (M + N/B)
//   BlockShuffleLinear   Monarch: two block-diagonal stages with a fixed shuffle
// Each has forward, backward (dx, every factor's gradient, the bias gradient), materialize()
// (the equivalent dense [out x in] weight), params(), parameter_count() and flops_per_token().
// StructuredFFN<Up, Down> puts two of them around an activation (GELU, or SwiGLU with a gate layer,
// or with gate|up in one layer).
#pragma once

#include "ffnkit/core.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class LowRankLinear;
template <class T, class Backend = Cpu>
class BlockDiagonalLinear;
template <class T, class Backend = Cpu>
class BlockDenseLinear;
template <class T, class Backend = Cpu>
class BlockShuffleLinear;
template <class Up, class Down, class Backend = typename Up::Backend>
class StructuredFFN;

}  // namespace ffnkit

#include "ffnkit/cpu/premerge.hpp"
#include "ffnkit/cpu/structured.hpp"
#include "ffnkit/cpu/structured_ffn.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/structured.hpp"
#include "ffnkit/cuda/structured_ffn.hpp"
#endif
