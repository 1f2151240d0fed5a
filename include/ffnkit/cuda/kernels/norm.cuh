// The deferred-normalization kernels (docs/math.md §7) around a cuBLAS GEMM. FlashInfer-style:
// XxxKernel is the __global__, Xxx the launcher (FFNKIT_NORM_LAUNCHERS, ffnkit/cuda/launchers.hpp)
// that checks its arguments and returns a Status; all but the launchers is internal to the
// translation unit (launch.cuh).
//   RowStats        per-token (mean, 1/sqrt(var + ε)) in fp32 from shifted sums, one block a row
//   NormalizeRows   out = γ ⊙ (x − μ) r + β (the unfused path, the side output); with
//                   `scale_only` false and γ = β = null and r = 1: x − μ (the centered input)
//   NormEpilogue    y = r (acc − μ c) + b', acc from the GEMM (fp32 or T)
//   NormDecode      tokens <= 16: statistics and the GEMV in one kernel, warp per output row
//   SoftmaxV        y = softmax(s + mask) V, one pass with an online running max
// All arithmetic is fp32 whatever the storage type.
#pragma once

#include <cmath>
#include <cstdint>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"
#include "ffnkit/cuda/kernels/convert.cuh"
#include "ffnkit/cuda/launch.cuh"

namespace ffnkit {
namespace cuda {
namespace {

constexpr unsigned kNormThreads = 256;  // a multiple of 32, at most 1024
constexpr unsigned kSoftmaxThreads = 128;

// The statistics of one row xr[0, cols) reduced by the whole block, shared by RowStats and
// NormDecode: μ (0 for RMSNorm) and 1/sqrt(var + ε) (RMSNorm: mean(x²) + ε). LayerNorm uses sums
// shifted by K = xr[0]: with d = x − K, var = mean(d²) − mean(d)², whose cancellation is bounded by
// (x[0] − μ)²/σ², not μ²/σ² (never E[x²] − E[x]², docs/math.md §7). Each thread sums a strided
// slice, then a warp-shuffle and a shared-memory reduction (part1, part2: 32 floats of shared
// memory each) in a fixed order. Only thread 0 gets the result: it returns true there with *mean
// and *rstd set. Every thread of the block must call it, and __syncthreads() before the next call
// (part1/part2).
template <class T>
__device__ FFNKIT_FORCEINLINE bool BlockRowStats(const T* __restrict__ xr, index_t cols,
                                                 int layer_norm, float eps, float* part1,
                                                 float* part2, float* mean, float* rstd) {
  using C = Convert<T>;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const float k = layer_norm ? C::to_float(xr[0]) : 0.0f;
  float s1 = 0.0f, s2 = 0.0f;
  for (index_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = C::to_float(xr[c]) - k;
    s1 += d;
    s2 += d * d;
  }
  for (int off = 16; off > 0; off /= 2) {
    s1 += __shfl_xor_sync(0xffffffffu, s1, off);
    s2 += __shfl_xor_sync(0xffffffffu, s2, off);
  }
  if (lane == 0) {
    part1[warp] = s1;
    part2[warp] = s2;
  }
  __syncthreads();
  if (threadIdx.x != 0) return false;
  float t1 = 0.0f, t2 = 0.0f;
  for (unsigned w = 0; w < warps; ++w) {
    t1 += part1[w];
    t2 += part2[w];
  }
  const float inv_n = 1.0f / static_cast<float>(cols);
  const float m1 = layer_norm ? t1 * inv_n : 0.0f;
  float var = t2 * inv_n - m1 * m1;
  if (!(var > 0.0f)) var = 0.0f;
  *mean = k + m1;
  *rstd = 1.0f / sqrtf(var + eps);
  return true;
}

// stats[2 r] = μ, stats[2 r + 1] = 1/sqrt(var + ε) for every row (BlockRowStats), a block per row.
template <class T>
__global__ void RowStatsKernel(const T* __restrict__ x, index_t rows, index_t cols,
                               index_t row_stride, int layer_norm, float eps,
                               float* __restrict__ stats) {
  __shared__ float part1[32];
  __shared__ float part2[32];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float mean, rstd;
    if (BlockRowStats(x + r * row_stride, cols, layer_norm, eps, part1, part2, &mean, &rstd)) {
      stats[2 * r] = mean;
      stats[2 * r + 1] = rstd;
    }
    __syncthreads();  // part1/part2 are reused by the next row
  }
}

// out[r, c] = γ[c] (x[r, c] − μ_r) s_r + β[c], with s_r = r_r when `scale` is set, else 1;
// γ null means 1, β null means 0.
template <class T>
__global__ void NormalizeRowsKernel(const T* __restrict__ x, index_t x_stride, T* __restrict__ out,
                                    index_t out_stride, index_t rows, index_t cols,
                                    const float* __restrict__ stats, const T* __restrict__ gamma,
                                    const T* __restrict__ beta, int scale) {
  using C = Convert<T>;
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float mean = stats[2 * r], s = scale ? stats[2 * r + 1] : 1.0f;
    for (index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<index_t>(blockDim.x) * gridDim.x) {
      float v = (C::to_float(x[r * x_stride + c]) - mean) * s;
      if (gamma) v *= C::to_float(gamma[c]);
      if (beta) v += C::to_float(beta[c]);
      out[r * out_stride + c] = C::from_float(v);
    }
  }
}

// y[r, c] = r_r (acc[r, c] − μ_r c[c]) + b[c]; `row_sums` null skips the mean correction (RMSNorm,
// or an input already centered), `bias` null adds nothing. acc may alias y (same stride).
template <class T, class Acc>
__global__ void NormEpilogueKernel(const Acc* acc, index_t acc_stride, T* y, index_t y_stride,
                                   index_t rows, index_t cols, const float* __restrict__ stats,
                                   const float* __restrict__ row_sums,
                                   const float* __restrict__ bias) {
  for (index_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float mean = stats[2 * r], rstd = stats[2 * r + 1];
    for (index_t c = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
         c += static_cast<index_t>(blockDim.x) * gridDim.x) {
      // (W'x − μ c) before scaling: the cancellation happens at the accumulator's magnitude.
      float v = Convert<Acc>::to_float(acc[r * acc_stride + c]);
      if (row_sums) v -= mean * row_sums[c];
      v *= rstd;
      if (bias) v += bias[c];
      y[r * y_stride + c] = Convert<T>::from_float(v);
    }
  }
}

// y[q, :] = softmax(s[q, :] + mask[q, :]) V. Block (x: query rows, grid-stride; y: a chunk of
// blockDim.x output columns, one per thread). The keys are swept in tiles of blockDim.x: the
// tile's scores go to shared memory, every thread takes the tile max, rescales its running
// numerator and denominator by e^{m_old − m_new} when the max moved, and accumulates the tile's
// e^{s − m} v in fp32. A row whose every score is −inf gives zeros.
template <class T>
__global__ void SoftmaxVKernel(const T* __restrict__ s, index_t s_stride,
                               const T* __restrict__ mask, index_t mask_stride,
                               const T* __restrict__ v, index_t v_stride, T* __restrict__ y,
                               index_t y_stride, index_t queries, index_t keys, index_t dim) {
  using C = Convert<T>;
  __shared__ float p[kSoftmaxThreads];
  const float neg_inf = -INFINITY;
  const index_t tile = blockDim.x;
  for (index_t q = blockIdx.x; q < queries; q += gridDim.x) {
    for (index_t c0 = static_cast<index_t>(blockIdx.y) * blockDim.x; c0 < dim;
         c0 += static_cast<index_t>(gridDim.y) * blockDim.x) {
      const index_t col = c0 + threadIdx.x;
      float m = neg_inf, l = 0.0f, acc = 0.0f;
      for (index_t k0 = 0; k0 < keys; k0 += tile) {
        const index_t kt = keys - k0 < tile ? keys - k0 : tile;
        if (static_cast<index_t>(threadIdx.x) < kt) {
          const index_t k = k0 + threadIdx.x;
          float sv = C::to_float(s[q * s_stride + k]);
          if (mask) sv += C::to_float(mask[q * mask_stride + k]);
          p[threadIdx.x] = sv;
        }
        __syncthreads();
        float mnew = m;
        for (index_t k = 0; k < kt; ++k) mnew = fmaxf(mnew, p[k]);
        if (mnew != neg_inf) {  // otherwise every key so far is masked: nothing to add
          const float alpha = expf(m - mnew);  // e^{−inf} = 0 on the first live tile
          l *= alpha;
          acc *= alpha;
          m = mnew;
          for (index_t k = 0; k < kt; ++k) {
            const float e = expf(p[k] - m);
            l += e;
            if (col < dim) acc += e * C::to_float(v[(k0 + k) * v_stride + col]);
          }
        }
        __syncthreads();  // p is refilled by the next tile
      }
      if (col < dim) y[q * y_stride + col] = C::from_float(l > 0.0f ? acc / l : 0.0f);
    }
  }
}

// The three-pass reference softmax into P (the unfused Softmax·V path): one warp per row, pass 1
// the max of s + mask, pass 2 the sum of e^{s − m}, pass 3 P = e^{s − m} / sum. A row whose every
// score is −inf gives zeros.
template <class T>
__global__ void SoftmaxRowsKernel(const T* __restrict__ s, index_t s_stride,
                                  const T* __restrict__ mask, index_t mask_stride,
                                  T* __restrict__ p, index_t p_stride, index_t rows, index_t cols) {
  using C = Convert<T>;
  const float neg_inf = -INFINITY;
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* sr = s + r * s_stride;
    const T* mr = mask ? mask + r * mask_stride : nullptr;
    T* pr = p + r * p_stride;
    float m = neg_inf;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x)
      m = fmaxf(m, C::to_float(sr[c]) + (mr ? C::to_float(mr[c]) : 0.0f));
    for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (m == neg_inf) {
      for (index_t c = threadIdx.x; c < cols; c += blockDim.x) pr[c] = C::from_float(0.0f);
      continue;
    }
    float sum = 0.0f;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x)
      sum += expf(C::to_float(sr[c]) + (mr ? C::to_float(mr[c]) : 0.0f) - m);
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float inv = 1.0f / sum;
    for (index_t c = threadIdx.x; c < cols; c += blockDim.x)
      pr[c] = C::from_float(expf(C::to_float(sr[c]) + (mr ? C::to_float(mr[c]) : 0.0f) - m) * inv);
  }
}

constexpr int kNormDecodeTokens = 16;  // the fused decode kernel's largest token count

// The fused decode kernel, tokens <= kNormDecodeTokens: every block first reduces the statistics
// of all tokens itself (x is at most 16 rows, cache-resident; block 0 also stores them in `stats`
// for later kernels), then each warp takes output rows i (grid-stride) and sweeps W'[i, :] once
// for all tokens, lanes striding over the inputs, accumulating W'[i, j] (x[t, j] − μ_t) in fp32:
// μ is subtracted as x is loaded, so the product never carries the |μ|-sized terms that the
// deferred μ c correction would cancel. Lane 0 writes y[t, i] = r_t acc_t + b'[i].
template <class T>
__global__ void NormDecodeKernel(const T* __restrict__ x, index_t x_stride, const T* __restrict__ w,
                                 T* __restrict__ y, index_t y_stride, index_t tokens, index_t n,
                                 index_t m, int layer_norm, float eps,
                                 const float* __restrict__ bias, float* __restrict__ stats) {
  using C = Convert<T>;
  __shared__ float mean[kNormDecodeTokens];
  __shared__ float rstd[kNormDecodeTokens];
  __shared__ float part1[32];
  __shared__ float part2[32];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (index_t t = 0; t < tokens; ++t) {
    if (BlockRowStats(x + t * x_stride, n, layer_norm, eps, part1, part2, &mean[t], &rstd[t]) &&
        blockIdx.x == 0 && stats) {
      stats[2 * t] = mean[t];
      stats[2 * t + 1] = rstd[t];
    }
    __syncthreads();
  }
  const index_t warp_id = static_cast<index_t>(blockIdx.x) * warps + warp;
  const index_t warp_count = static_cast<index_t>(gridDim.x) * warps;
  for (index_t i = warp_id; i < m; i += warp_count) {
    float acc[kNormDecodeTokens];
    for (int t = 0; t < kNormDecodeTokens; ++t) acc[t] = 0.0f;
    const T* wr = w + i * n;
    for (index_t j = lane; j < n; j += 32) {
      const float wv = C::to_float(wr[j]);
      for (index_t t = 0; t < tokens; ++t)
        acc[t] += wv * (C::to_float(x[t * x_stride + j]) - mean[t]);
    }
    for (index_t t = 0; t < tokens; ++t) {
      float a = acc[t];
      for (int off = 16; off > 0; off /= 2) a += __shfl_xor_sync(0xffffffffu, a, off);
      if (lane == 0) y[t * y_stride + i] = C::from_float(a * rstd[t] + (bias ? bias[i] : 0.0f));
    }
  }
}

}  // namespace

// stats: [2 rows] fp32 device memory (see RowStatsKernel).
template <class T, class B>
Status RowStats(const T* x, index_t rows, index_t cols, index_t row_stride, bool layer_norm,
                float eps, float* stats, const StreamOf<B>& stream) {
  if (x == nullptr || stats == nullptr || rows <= 0 || cols <= 0 || row_stride < cols ||
      !(eps > 0.0f))
    return Status::kInvalidArgument;
  return launch(RowStatsKernel<T>, dim3(grid_blocks(rows, 1)), dim3(kNormThreads), 0, stream, x,
                rows, cols, row_stride, layer_norm ? 1 : 0, eps, stats);
}

template <class T, class B>
Status NormalizeRows(const T* x, index_t x_stride, T* out, index_t out_stride, index_t rows,
                     index_t cols, const float* stats, const T* gamma, const T* beta, bool scale,
                     const StreamOf<B>& stream) {
  if (x == nullptr || out == nullptr || stats == nullptr || rows <= 0 || cols <= 0 ||
      x_stride < cols || out_stride < cols)
    return Status::kInvalidArgument;
  return launch(NormalizeRowsKernel<T>, grid_rows(grid_blocks(cols, kNormThreads), rows),
                dim3(kNormThreads), 0, stream, x, x_stride, out, out_stride, rows, cols, stats,
                gamma, beta, scale ? 1 : 0);
}

// acc: the GEMM's output, fp32 (acc_is_float) or T; may be y itself.
template <class T, class B>
Status NormEpilogue(const void* acc, bool acc_is_float, index_t acc_stride, T* y, index_t y_stride,
                    index_t rows, index_t cols, const float* stats, const float* row_sums,
                    const float* bias, const StreamOf<B>& stream) {
  if (acc == nullptr || y == nullptr || stats == nullptr || rows <= 0 || cols <= 0 ||
      acc_stride < cols || y_stride < cols)
    return Status::kInvalidArgument;
  const dim3 grid = grid_rows(grid_blocks(cols, kNormThreads), rows);
  if (acc_is_float)
    return launch(NormEpilogueKernel<T, float>, grid, dim3(kNormThreads), 0, stream,
                  static_cast<const float*>(acc), acc_stride, y, y_stride, rows, cols, stats,
                  row_sums, bias);
  return launch(NormEpilogueKernel<T, T>, grid, dim3(kNormThreads), 0, stream,
                static_cast<const T*>(acc), acc_stride, y, y_stride, rows, cols, stats, row_sums,
                bias);
}

// s, mask: [queries x keys] (mask may be null), v: [keys x dim], y: [queries x dim].
template <class T, class B>
Status SoftmaxV(const T* s, index_t s_stride, const T* mask, index_t mask_stride, const T* v,
                index_t v_stride, T* y, index_t y_stride, index_t queries, index_t keys,
                index_t dim, const StreamOf<B>& stream) {
  if (s == nullptr || v == nullptr || y == nullptr || queries <= 0 || keys <= 0 || dim <= 0 ||
      s_stride < keys || v_stride < dim || y_stride < dim || (mask && mask_stride < keys))
    return Status::kInvalidArgument;
  const index_t chunks = (dim + kSoftmaxThreads - 1) / kSoftmaxThreads;
  const dim3 grid = grid_rows(grid_blocks(queries, 1), chunks);
  return launch(SoftmaxVKernel<T>, grid, dim3(kSoftmaxThreads), 0, stream, s, s_stride, mask,
                mask_stride, v, v_stride, y, y_stride, queries, keys, dim);
}

// p: [rows x cols], the row-wise softmax of s + mask (mask may be null).
template <class T, class B>
Status SoftmaxRows(const T* s, index_t s_stride, const T* mask, index_t mask_stride, T* p,
                   index_t p_stride, index_t rows, index_t cols, const StreamOf<B>& stream) {
  if (s == nullptr || p == nullptr || rows <= 0 || cols <= 0 || s_stride < cols ||
      p_stride < cols || (mask && mask_stride < cols))
    return Status::kInvalidArgument;
  return launch(SoftmaxRowsKernel<T>, dim3(grid_blocks(rows, 1)), dim3(32), 0, stream, s, s_stride,
                mask, mask_stride, p, p_stride, rows, cols);
}

// The fused decode path (NormDecodeKernel): y = r (W' (x − μ)) + b' for tokens <= 16, in one
// kernel. w: [m x n] contiguous; bias: [m] fp32 or null; stats: [2 tokens] fp32 or null.
template <class T, class B>
Status NormDecode(const T* x, index_t x_stride, const T* w, T* y, index_t y_stride, index_t tokens,
                  index_t n, index_t m, bool layer_norm, float eps, const float* bias, float* stats,
                  const StreamOf<B>& stream) {
  if (x == nullptr || w == nullptr || y == nullptr || tokens <= 0 || tokens > kNormDecodeTokens ||
      n <= 0 || m <= 0 || x_stride < n || y_stride < m || !(eps > 0.0f))
    return Status::kInvalidArgument;
  const unsigned warps = kNormThreads / 32;
  return launch(NormDecodeKernel<T>, dim3(grid_blocks(m, warps)), dim3(kNormThreads), 0, stream, x,
                x_stride, w, y, y_stride, tokens, n, m, layer_norm ? 1 : 0, eps, bias, stats);
}

}  // namespace cuda
}  // namespace ffnkit
