// The fused epilogues after a cuBLAS GEMM: bias + activation in place, and SwiGLU's gate.
// FlashInfer-style: XxxKernel is the __global__, Xxx the launcher (FFNKIT_EPILOGUE_LAUNCHERS,
// ffnkit/cuda/launchers.hpp) that checks its arguments and returns a Status; all but the launchers
// is internal to the translation unit (launch.cuh). Raw pointers, strides and a stream; no
// framework types.
#pragma once

#include <cstdint>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"
#include "ffnkit/cuda/kernels/convert.cuh"
#include "ffnkit/cuda/launch.cuh"

namespace ffnkit {
namespace cuda {
namespace {

constexpr unsigned kEpilogueThreads = 256;

template <class T, int kVec>
FFNKIT_DEVICE FFNKIT_FORCEINLINE void load_floats(const Pack<T, kVec>& p, float (&out)[kVec]) {
  FFNKIT_UNROLL
  for (int k = 0; k < kVec; ++k) out[k] = Convert<T>::to_float(p.v[k]);
}

// h[r, c] = act(h[r, c] + bias[c]) for r < rows, c < cols, kVec elements per thread; h rows are
// row_stride elements apart. Rows stride over grid.y, columns over grid.x (no divisions).
template <class T, int kVec, class Act>
__global__ void BiasActivationKernel(T* __restrict__ h, const T* __restrict__ bias, index_t rows,
                                     index_t cols, index_t row_stride, Act act) {
  using C = Convert<T>;
  const index_t vec_cols = cols / kVec;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    T* row = h + r * row_stride;
    for (index_t v = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vec_cols;
         v += static_cast<index_t>(blockDim.x) * gridDim.x) {
      Pack<T, kVec> x = reinterpret_cast<const Pack<T, kVec>*>(row)[v];
      float b[kVec] = {};
      if (bias) load_floats(reinterpret_cast<const Pack<T, kVec>*>(bias)[v], b);
      FFNKIT_UNROLL
      for (int k = 0; k < kVec; ++k) x.v[k] = C::from_float(act(C::to_float(x.v[k]) + b[k]));
      reinterpret_cast<Pack<T, kVec>*>(row)[v] = x;
    }
  }
}

// For a [rows x 2 d_ff] buffer holding (gate | up) per row: gate[r, j] = SiLU(gate + bg) *
// (up + bu), written into the gate half; the up half is left as it was.
template <class T, int kVec>
__global__ void SwiGluKernel(T* __restrict__ gate_up, const T* __restrict__ gate_bias,
                             const T* __restrict__ up_bias, index_t rows, index_t d_ff,
                             index_t row_stride) {
  using C = Convert<T>;
  const SiluFn silu;
  const index_t vec_cols = d_ff / kVec;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    T* row = gate_up + r * row_stride;
    for (index_t v = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vec_cols;
         v += static_cast<index_t>(blockDim.x) * gridDim.x) {
      Pack<T, kVec> g = reinterpret_cast<const Pack<T, kVec>*>(row)[v];
      const Pack<T, kVec> u = reinterpret_cast<const Pack<T, kVec>*>(row + d_ff)[v];
      float bg[kVec] = {}, bu[kVec] = {};
      if (gate_bias) {
        load_floats(reinterpret_cast<const Pack<T, kVec>*>(gate_bias)[v], bg);
        load_floats(reinterpret_cast<const Pack<T, kVec>*>(up_bias)[v], bu);
      }
      FFNKIT_UNROLL
      for (int k = 0; k < kVec; ++k) {
        const float gv = C::to_float(g.v[k]) + bg[k];
        const float uv = C::to_float(u.v[k]) + bu[k];
        g.v[k] = C::from_float(silu(gv) * uv);
      }
      reinterpret_cast<Pack<T, kVec>*>(row)[v] = g;
    }
  }
}

// The widest vector (up to 16 bytes) that every row start, the bias and the width allow.
template <class T>
int vector_width(const void* base, index_t cols, index_t row_stride, const void* bias) {
  for (int n = static_cast<int>(16 / sizeof(T)); n > 1; n /= 2) {
    const std::uintptr_t bytes = sizeof(T) * n;
    if (cols % n == 0 && row_stride % n == 0 &&
        reinterpret_cast<std::uintptr_t>(base) % bytes == 0 &&
        reinterpret_cast<std::uintptr_t>(bias) % bytes == 0)
      return n;
  }
  return 1;
}

inline dim3 epilogue_grid(index_t rows, index_t vec_cols) {
  return grid_rows(grid_blocks(vec_cols, kEpilogueThreads), rows);
}

inline Status check_epilogue_args(const void* h, index_t rows, index_t cols, index_t row_stride) {
  if (h == nullptr || rows <= 0 || cols <= 0 || row_stride < cols) return Status::kInvalidArgument;
  return Status::kSuccess;
}

}  // namespace

// h = act(h + bias) in place on a [rows x cols] device matrix with row stride `row_stride`
// (elements); bias: [cols] or null.
template <class T, class B>
Status BiasActivation(T* h, const T* bias, index_t rows, index_t cols, index_t row_stride,
                      Activation act, const StreamOf<B>& stream) {
  const Status s = check_epilogue_args(h, rows, cols, row_stride);
  if (s != Status::kSuccess) return s;
  const int vec = vector_width<T>(h, cols, row_stride, bias);
  return dispatch_activation(act, [&](auto fn) -> Status {
    const dim3 block(kEpilogueThreads);
    switch (vec) {
      case 8:
        return launch(BiasActivationKernel<T, 8, decltype(fn)>, epilogue_grid(rows, cols / 8),
                      block, 0, stream, h, bias, rows, cols, row_stride, fn);
      case 4:
        return launch(BiasActivationKernel<T, 4, decltype(fn)>, epilogue_grid(rows, cols / 4),
                      block, 0, stream, h, bias, rows, cols, row_stride, fn);
      case 2:
        return launch(BiasActivationKernel<T, 2, decltype(fn)>, epilogue_grid(rows, cols / 2),
                      block, 0, stream, h, bias, rows, cols, row_stride, fn);
      default:
        return launch(BiasActivationKernel<T, 1, decltype(fn)>, epilogue_grid(rows, cols), block, 0,
                      stream, h, bias, rows, cols, row_stride, fn);
    }
  });
}

// SwiGLU's gate in place on a [rows x 2 d_ff] device buffer (row stride `row_stride`); both biases
// or neither.
template <class T, class B>
Status SwiGlu(T* gate_up, const T* gate_bias, const T* up_bias, index_t rows, index_t d_ff,
              index_t row_stride, const StreamOf<B>& stream) {
  const Status s = check_epilogue_args(gate_up, rows, 2 * d_ff, row_stride);
  if (s != Status::kSuccess) return s;
  if ((gate_bias == nullptr) != (up_bias == nullptr)) return Status::kInvalidArgument;
  int vec = vector_width<T>(gate_up, d_ff, row_stride, gate_bias);
  while (vec > 1 && reinterpret_cast<std::uintptr_t>(up_bias) % (sizeof(T) * vec) != 0) vec /= 2;
  const dim3 block(kEpilogueThreads);
  switch (vec) {
    case 8:
      return launch(SwiGluKernel<T, 8>, epilogue_grid(rows, d_ff / 8), block, 0, stream, gate_up,
                    gate_bias, up_bias, rows, d_ff, row_stride);
    case 4:
      return launch(SwiGluKernel<T, 4>, epilogue_grid(rows, d_ff / 4), block, 0, stream, gate_up,
                    gate_bias, up_bias, rows, d_ff, row_stride);
    case 2:
      return launch(SwiGluKernel<T, 2>, epilogue_grid(rows, d_ff / 2), block, 0, stream, gate_up,
                    gate_bias, up_bias, rows, d_ff, row_stride);
    default:
      return launch(SwiGluKernel<T, 1>, epilogue_grid(rows, d_ff), block, 0, stream, gate_up,
                    gate_bias, up_bias, rows, d_ff, row_stride);
  }
}

}  // namespace cuda
}  // namespace ffnkit
