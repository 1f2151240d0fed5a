// The CUDA launchers, one list per kernel family. A launcher's name and parameters are written in
// its family's list here and at its definition in ffnkit/cuda/kernels/<family>.cuh, nowhere else.
// Each list expands into the declarations below, which layers call in one hop as
// cuda::Name<T, B>(..., stream) with B the backend tag (Cuda or CudaEmu), and into the explicit
// instantiations for float, __half and __nv_bfloat16 in cuda/kernels/<family>.cu, which nvcc
// compiles into ffnkit::cuda (B = Cuda) and the host compiler into ffnkit::cuda_emu (B = CudaEmu):
// distinct symbols, so both link into one binary (docs/cuda.md, "Launchers"). A launcher checks its
// arguments, launches, and returns a Status (FlashInfer's convention); its last parameter, appended
// by the expansion, is the stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"

namespace ffnkit {
namespace cuda {

// Backend B's stream type: every launcher's last parameter.
template <class B>
using StreamOf = typename ::ffnkit::detail::DeviceApi<B>::Stream;

// X(Name, T, (parameters before the stream)) for each launcher of a family, T its storage type.

// The fused epilogues after a cuBLAS GEMM (kernels/epilogue.cuh).
#define FFNKIT_EPILOGUE_LAUNCHERS(X, T)                                                     \
  X(BiasActivation, T,                                                                      \
    (T * h, const T* bias, index_t rows, index_t cols, index_t row_stride, Activation act)) \
  X(SwiGlu, T,                                                                              \
    (T * gate_up, const T* gate_bias, const T* up_bias, index_t rows, index_t d_ff,         \
     index_t row_stride))

// The structured layers' elementwise and data-movement kernels (kernels/structured.cuh).
#define FFNKIT_STRUCTURED_LAUNCHERS(X, T)                                                        \
  X(TransposeBlocks, T,                                                                          \
    (const T* src, index_t src_stride, T* dst, index_t dst_stride, index_t rows, index_t blocks, \
     index_t inner, const T* bias, Activation act))                                              \
  X(ColumnSum, T, (const T* src, index_t rows, index_t cols, index_t row_stride, T* out))        \
  X(Axpby, T,                                                                                    \
    (const T* x, index_t x_stride, T* y, index_t y_stride, index_t rows, index_t cols,           \
     float alpha, float beta, const T* bias, float gamma))                                       \
  X(ActivationGrad, T,                                                                           \
    (T * g, index_t g_stride, const T* pre, index_t pre_stride, index_t rows, index_t cols,      \
     Activation act))                                                                            \
  X(SwiGluGrad, T,                                                                               \
    (T * d_act, index_t d_stride, const T* gate, const T* up, index_t pre_stride, T* d_gate,     \
     index_t dg_stride, index_t rows, index_t cols))

// Deferred normalization and Softmax·V (kernels/norm.cuh).
#define FFNKIT_NORM_LAUNCHERS(X, T)                                                                \
  X(RowStats, T,                                                                                   \
    (const T* x, index_t rows, index_t cols, index_t row_stride, bool layer_norm, float eps,       \
     float* stats))                                                                                \
  X(NormalizeRows, T,                                                                              \
    (const T* x, index_t x_stride, T* out, index_t out_stride, index_t rows, index_t cols,         \
     const float* stats, const T* gamma, const T* beta, bool scale))                               \
  X(NormEpilogue, T,                                                                               \
    (const void* acc, bool acc_is_float, index_t acc_stride, T* y, index_t y_stride, index_t rows, \
     index_t cols, const float* stats, const float* row_sums, const float* bias))                  \
  X(SoftmaxV, T,                                                                                   \
    (const T* s, index_t s_stride, const T* mask, index_t mask_stride, const T* v,                 \
     index_t v_stride, T* y, index_t y_stride, index_t queries, index_t keys, index_t dim))        \
  X(SoftmaxRows, T,                                                                                \
    (const T* s, index_t s_stride, const T* mask, index_t mask_stride, T* p, index_t p_stride,     \
     index_t rows, index_t cols))                                                                  \
  X(NormDecode, T,                                                                                 \
    (const T* x, index_t x_stride, const T* w, T* y, index_t y_stride, index_t tokens, index_t n,  \
     index_t m, bool layer_norm, float eps, const float* bias, float* stats))

// The fast feedforward tree's forward and backward (kernels/fff.cuh). `acc` arguments are fp32
// accumulators ([rows x cols], row stride given); null for T = float means "accumulate in the
// output itself".
#define FFNKIT_FFF_LAUNCHERS(X, T)                                                               \
  X(FffForward, T,                                                                               \
    (const T* x, index_t x_stride, const T* w_in, const T* b_in, const T* w_out, T* y,           \
     index_t y_stride, float* acc, index_t acc_stride, index_t tokens, index_t in, index_t out,  \
     index_t trees, index_t depth, std::int32_t* leaves))                                        \
  X(FffGroupedForward, T,                                                                        \
    (const T* x, index_t x_stride, const T* w_in, const T* b_in, const T* w_out, T* y,           \
     index_t y_stride, float* acc, index_t acc_stride, index_t tokens, index_t in, index_t out,  \
     index_t trees, index_t depth, std::int32_t* leaves, std::int32_t* scratch,                  \
     index_t scratch_ints))                                                                      \
  X(FffBackwardTokens, T,                                                                        \
    (const T* x, index_t x_stride, const T* dy, index_t dy_stride, const T* w_in, const T* b_in, \
     const T* w_out, const std::int32_t* leaves, T* dx, index_t dx_stride, float* dx_acc,        \
     index_t dx_acc_stride, float* g, float* dl, index_t tokens, index_t in, index_t out,        \
     index_t trees, index_t depth))                                                              \
  X(FffBackwardNodes, T,                                                                         \
    (const T* x, index_t x_stride, const T* dy, index_t dy_stride, const float* g,               \
     const float* dl, const std::int32_t* leaves, index_t tokens, index_t in, index_t out,       \
     index_t trees, index_t depth, std::int32_t* scratch, index_t scratch_ints, T* grad_w_in,    \
     T* grad_b_in, T* grad_w_out))

// `(parameters..., const StreamOf<B>& stream)` from a list entry's parenthesized parameters.
#define FFNKIT_LAUNCHER_PARAMS(B, params) FFNKIT_LAUNCHER_PARAMS_APPEND(B, FFNKIT_UNPAREN params)
#define FFNKIT_LAUNCHER_PARAMS_APPEND(B, ...) \
  (__VA_ARGS__, const ::ffnkit::cuda::StreamOf<B>& stream)
#define FFNKIT_UNPAREN(...) __VA_ARGS__

#define FFNKIT_DECLARE_LAUNCHER(Name, T, params) \
  template <class T, class B>                    \
  Status Name FFNKIT_LAUNCHER_PARAMS(B, params);
FFNKIT_EPILOGUE_LAUNCHERS(FFNKIT_DECLARE_LAUNCHER, T)
FFNKIT_STRUCTURED_LAUNCHERS(FFNKIT_DECLARE_LAUNCHER, T)
FFNKIT_NORM_LAUNCHERS(FFNKIT_DECLARE_LAUNCHER, T)
FFNKIT_FFF_LAUNCHERS(FFNKIT_DECLARE_LAUNCHER, T)
#undef FFNKIT_DECLARE_LAUNCHER

}  // namespace cuda
}  // namespace ffnkit
