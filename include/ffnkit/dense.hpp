// The dense layers every structured layer is measured against (docs/math.md §2):
//   DenseLinear<T, Backend>:  y = W x + b, W: [out x in] as PyTorch's nn.Linear stores it;
//   DenseFFN<T, Backend>:     y = W2 act(W1 x + b1) + b2, or SwiGLU y = W2 (SiLU(Wg x) * (Wu x)).
// Activations are row-major [tokens x features] views (core/view.hpp).
#pragma once

#include "ffnkit/core.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class DenseLinear;

template <class T, class Backend = Cpu>
class DenseFFN;

}  // namespace ffnkit

#include "ffnkit/cpu/dense.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/dense.hpp"
#endif
