// The elementwise and data-movement kernels of the structured layers on the device (docs/math.md
// §3, §5); the products themselves are cuBLAS calls. FlashInfer-style: XxxKernel is the __global__,
// Xxx the launcher (FFNKIT_STRUCTURED_LAUNCHERS, ffnkit/cuda/launchers.hpp) that checks its
// arguments and returns a Status; all but the launchers is internal to the translation unit
// (launch.cuh). Raw pointers, strides and a stream.
//   TransposeBlocks  BlockShuffle's permutation (+ bias + activation on the output permutation)
//   ColumnSum        the bias gradient Σ_t dy[t, :]
//   Axpby            y = α x + β y + γ bias (the self-guided blend, scaled copies)
//   ActivationGrad   g *= act'(pre), the FFN's hidden gradient
//   SwiGluGrad       SwiGLU's gate and up gradients
// All arithmetic is fp32 whatever the storage type.
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

constexpr unsigned kTransposeTile = 32;
constexpr unsigned kTransposeRowsPerPass = 8;  // blockDim.y: each thread moves 4 tile elements

// Each row of `src` is a row-major [blocks x inner] matrix S; the same row of `dst` receives its
// transpose, dst[t, i blocks + b] = act(S[b][i] + bias[i blocks + b]). Through a shared tile, so
// both the reads (along i) and the writes (along b) are coalesced. Rows over grid.y, tiles over
// grid.x, both grid-stride; every thread runs the same trip counts, so the barriers are uniform.
template <class T, class Act>
__global__ void TransposeBlocksKernel(const T* __restrict__ src, index_t src_stride,
                                      T* __restrict__ dst, index_t dst_stride, index_t rows,
                                      index_t blocks, index_t inner, const T* __restrict__ bias,
                                      Act act) {
  using C = Convert<T>;
  __shared__ float tile[kTransposeTile][kTransposeTile + 1];  // +1: no bank conflicts on read-out
  const index_t tiles_i = (inner + kTransposeTile - 1) / kTransposeTile;
  const index_t tiles_b = (blocks + kTransposeTile - 1) / kTransposeTile;
  const index_t tiles = tiles_i * tiles_b;
  const index_t tx = threadIdx.x, ty = threadIdx.y;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* s = src + r * src_stride;
    T* d = dst + r * dst_stride;
    for (index_t tile_id = blockIdx.x; tile_id < tiles; tile_id += gridDim.x) {
      const index_t b0 = (tile_id / tiles_i) * kTransposeTile;
      const index_t i0 = (tile_id % tiles_i) * kTransposeTile;
      for (index_t k = ty; k < kTransposeTile; k += kTransposeRowsPerPass) {
        const index_t b = b0 + k, i = i0 + tx;
        if (b < blocks && i < inner) tile[k][tx] = C::to_float(s[b * inner + i]);
      }
      __syncthreads();
      for (index_t k = ty; k < kTransposeTile; k += kTransposeRowsPerPass) {
        const index_t i = i0 + k, b = b0 + tx;
        if (b < blocks && i < inner) {
          const index_t c = i * blocks + b;
          const float v = tile[tx][k] + (bias ? C::to_float(bias[c]) : 0.0f);
          d[c] = C::from_float(act(v));
        }
      }
      __syncthreads();  // the tile is refilled by the next iteration
    }
  }
}

constexpr unsigned kColumnSumWidth = 32;
constexpr unsigned kColumnSumRows = 8;

// out[c] = Σ_r src[r, c], accumulated in fp32 in a fixed order (deterministic, unlike atomics):
// kColumnSumRows threads per column stride over the rows, then a shared-memory reduction.
template <class T>
__global__ void ColumnSumKernel(const T* __restrict__ src, index_t rows, index_t cols,
                                index_t row_stride, T* __restrict__ out) {
  using C = Convert<T>;
  __shared__ float partial[kColumnSumRows][kColumnSumWidth];
  const index_t tx = threadIdx.x, ty = threadIdx.y;
  const index_t col_tiles = (cols + kColumnSumWidth - 1) / kColumnSumWidth;
  for (index_t tile = blockIdx.x; tile < col_tiles; tile += gridDim.x) {
    const index_t c = tile * kColumnSumWidth + tx;
    float sum = 0.0f;
    if (c < cols)
      for (index_t r = ty; r < rows; r += kColumnSumRows)
        sum += C::to_float(src[r * row_stride + c]);
    partial[ty][tx] = sum;
    __syncthreads();
    if (ty == 0 && c < cols) {
      float total = 0.0f;
      FFNKIT_UNROLL
      for (unsigned k = 0; k < kColumnSumRows; ++k) total += partial[k][tx];
      out[c] = C::from_float(total);
    }
    __syncthreads();
  }
}

// y = alpha x + beta y + gamma bias[c]; y is not read when beta == 0 (cuBLAS's rule, so an
// uninitialised y cannot leak NaN), x is not read when alpha == 0.
template <class T>
__global__ void AxpbyKernel(const T* __restrict__ x, index_t x_stride, T* __restrict__ y,
                            index_t y_stride, index_t rows, index_t cols, float alpha, float beta,
                            const T* __restrict__ bias, float gamma) {
  using C = Convert<T>;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<index_t>(blockDim.x) * gridDim.x) {
      float v = 0.0f;
      if (alpha != 0.0f) v = alpha * C::to_float(x[r * x_stride + c]);
      if (beta != 0.0f) v += beta * C::to_float(y[r * y_stride + c]);
      if (bias) v += gamma * C::to_float(bias[c]);
      y[r * y_stride + c] = C::from_float(v);
    }
  }
}

// g[r, c] *= act'(pre[r, c]): the gradient through the FFN's activation.
template <class T, class Act>
__global__ void ActivationGradKernel(T* __restrict__ g, index_t g_stride, const T* __restrict__ pre,
                                     index_t pre_stride, index_t rows, index_t cols, Act act) {
  using C = Convert<T>;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<index_t>(blockDim.x) * gridDim.x) {
      T& out = g[r * g_stride + c];
      out = C::from_float(C::to_float(out) * act.grad(C::to_float(pre[r * pre_stride + c])));
    }
  }
}

// a = SiLU(g) u: with da given, dg = da u SiLU'(g) into d_gate and du = da SiLU(g) in place of da.
template <class T>
__global__ void SwiGluGradKernel(T* __restrict__ d_act, index_t d_stride,
                                 const T* __restrict__ gate, const T* __restrict__ up,
                                 index_t pre_stride, T* __restrict__ d_gate, index_t dg_stride,
                                 index_t rows, index_t cols) {
  using C = Convert<T>;
  const SiluFn silu;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    for (index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<index_t>(blockDim.x) * gridDim.x) {
      const float g = C::to_float(gate[r * pre_stride + c]);
      const float u = C::to_float(up[r * pre_stride + c]);
      T& da = d_act[r * d_stride + c];
      const float a = C::to_float(da);
      d_gate[r * dg_stride + c] = C::from_float(a * u * silu.grad(g));
      da = C::from_float(a * silu(g));
    }
  }
}

constexpr unsigned kElementwiseThreads = 256;

inline bool valid_matrix(const void* p, index_t rows, index_t cols, index_t stride) {
  return p != nullptr && rows > 0 && cols > 0 && stride >= cols;
}

}  // namespace

// dst[t, i blocks + b] = act(src[t, b inner + i] + bias[i blocks + b]) for every row t < rows: the
// transpose of each row seen as a [blocks x inner] matrix. bias: [blocks inner] or null. src and
// dst must not overlap.
template <class T, class B>
Status TransposeBlocks(const T* src, index_t src_stride, T* dst, index_t dst_stride, index_t rows,
                       index_t blocks, index_t inner, const T* bias, Activation act,
                       const StreamOf<B>& stream) {
  if (blocks <= 0 || inner <= 0) return Status::kInvalidArgument;
  const index_t width = blocks * inner;
  if (!valid_matrix(src, rows, width, src_stride) || !valid_matrix(dst, rows, width, dst_stride))
    return Status::kInvalidArgument;
  const index_t tiles = ((blocks + kTransposeTile - 1) / kTransposeTile) *
                        ((inner + kTransposeTile - 1) / kTransposeTile);
  const dim3 block(kTransposeTile, kTransposeRowsPerPass);
  const dim3 grid = grid_rows(grid_blocks(tiles, 1), rows);
  return dispatch_activation(act, [&](auto fn) -> Status {
    return launch(TransposeBlocksKernel<T, decltype(fn)>, grid, block, 0, stream, src, src_stride,
                  dst, dst_stride, rows, blocks, inner, bias, fn);
  });
}

// out[c] = Σ_r src[r, c] for c < cols (fp32 accumulation, deterministic order).
template <class T, class B>
Status ColumnSum(const T* src, index_t rows, index_t cols, index_t row_stride, T* out,
                 const StreamOf<B>& stream) {
  if (!valid_matrix(src, rows, cols, row_stride) || out == nullptr) return Status::kInvalidArgument;
  const dim3 block(kColumnSumWidth, kColumnSumRows);
  const dim3 grid(grid_blocks((cols + kColumnSumWidth - 1) / kColumnSumWidth, 1));
  return launch(ColumnSumKernel<T>, grid, block, 0, stream, src, rows, cols, row_stride, out);
}

// y = alpha x + beta y + gamma bias on [rows x cols] matrices; x may be null when alpha == 0,
// bias may be null. x and y may be the same matrix (elementwise, same strides).
template <class T, class B>
Status Axpby(const T* x, index_t x_stride, T* y, index_t y_stride, index_t rows, index_t cols,
             float alpha, float beta, const T* bias, float gamma, const StreamOf<B>& stream) {
  if (!valid_matrix(y, rows, cols, y_stride)) return Status::kInvalidArgument;
  if (alpha != 0.0f && !valid_matrix(x, rows, cols, x_stride)) return Status::kInvalidArgument;
  const dim3 grid = grid_rows(grid_blocks(cols, kElementwiseThreads), rows);
  return launch(AxpbyKernel<T>, grid, dim3(kElementwiseThreads), 0, stream, x, x_stride, y,
                y_stride, rows, cols, alpha, beta, bias, gamma);
}

// g *= act'(pre) elementwise on [rows x cols] matrices.
template <class T, class B>
Status ActivationGrad(T* g, index_t g_stride, const T* pre, index_t pre_stride, index_t rows,
                      index_t cols, Activation act, const StreamOf<B>& stream) {
  if (!valid_matrix(g, rows, cols, g_stride) || !valid_matrix(pre, rows, cols, pre_stride))
    return Status::kInvalidArgument;
  const dim3 grid = grid_rows(grid_blocks(cols, kElementwiseThreads), rows);
  return dispatch_activation(act, [&](auto fn) -> Status {
    return launch(ActivationGradKernel<T, decltype(fn)>, grid, dim3(kElementwiseThreads), 0, stream,
                  g, g_stride, pre, pre_stride, rows, cols, fn);
  });
}

// SwiGLU backward on [rows x cols] matrices: d_gate = d_act u SiLU'(g); d_act *= SiLU(g). gate and
// up share the row stride pre_stride (the two halves of one [rows x 2 cols] buffer, or not).
template <class T, class B>
Status SwiGluGrad(T* d_act, index_t d_stride, const T* gate, const T* up, index_t pre_stride,
                  T* d_gate, index_t dg_stride, index_t rows, index_t cols,
                  const StreamOf<B>& stream) {
  if (!valid_matrix(d_act, rows, cols, d_stride) || !valid_matrix(gate, rows, cols, pre_stride) ||
      !valid_matrix(up, rows, cols, pre_stride) || !valid_matrix(d_gate, rows, cols, dg_stride))
    return Status::kInvalidArgument;
  const dim3 grid = grid_rows(grid_blocks(cols, kElementwiseThreads), rows);
  return launch(SwiGluGradKernel<T>, grid, dim3(kElementwiseThreads), 0, stream, d_act, d_stride,
                gate, up, pre_stride, d_gate, dg_stride, rows, cols);
}

}  // namespace cuda
}  // namespace ffnkit
