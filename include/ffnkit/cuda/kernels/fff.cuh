// The fast feedforward forward on the device (SPEC §1.9), FlashInfer-style: FffForwardKernel is
// the __global__, FffForward the launcher that checks its arguments and returns a Status.
//
// A warp per token (grid-stride over tokens, kFffWarpsPerBlock warps per block). Per tree and
// level the warp reads the node's w_in row with consecutive lanes on consecutive elements
// (coalesced), reduces λ with a butterfly of __shfl_xor_sync (every lane ends with the same bits:
// each step adds the same two values, and fp32 addition is commutative), so the branch
// n = 2n + 1 + (λ > 0) is warp-uniform and is the CPU's rule bit for bit on the λ it computed.
// The output row accumulates GELU(λ) w_out[n] in place, each lane owning columns lane + 32 i.
// fp32 storage only: the in-place accumulation would round a half-precision y at every level.
#pragma once

#include <cstdint>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"
#include "ffnkit/cuda/kernels/convert.cuh"
#include "ffnkit/cuda/launch.cuh"

namespace ffnkit {
namespace FFNKIT_KERNEL_NS {

constexpr unsigned kFffWarpsPerBlock = 4;

// x: [tokens x in] (row stride x_stride), w_in: [K·nodes x in], b_in: [K·nodes],
// w_out: [K·nodes x out] (linear_out.weight transposed), y: [tokens x out] (row stride y_stride),
// leaves: [tokens x K] or null.
template <class T>
__global__ void FffForwardKernel(const T* __restrict__ x, index_t x_stride,
                                 const T* __restrict__ w_in, const T* __restrict__ b_in,
                                 const T* __restrict__ w_out, T* __restrict__ y, index_t y_stride,
                                 index_t tokens, index_t in, index_t out, index_t trees,
                                 index_t depth, std::int32_t* __restrict__ leaves) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t nodes = (index_t(2) << depth) - 1;
  // The trip count depends only on the warp index, so whole warps enter the shuffles together.
  for (index_t t = static_cast<index_t>(blockIdx.x) * kFffWarpsPerBlock + warp; t < tokens;
       t += static_cast<index_t>(gridDim.x) * kFffWarpsPerBlock) {
    const T* xt = x + t * x_stride;
    T* yt = y + t * y_stride;
    for (index_t j = lane; j < out; j += 32) yt[j] = T(0);
    for (index_t k = 0; k < trees; ++k) {
      index_t n = 0;
      for (index_t d = 0; d <= depth; ++d) {
        const index_t row = k * nodes + n;
        const T* w = w_in + row * in;
        float acc = 0.0f;
        for (index_t j = lane; j < in; j += 32) acc += xt[j] * w[j];
        for (int offset = 16; offset > 0; offset /= 2)
          acc += __shfl_xor_sync(0xffffffffu, acc, offset, 32);
        const float lambda = acc + b_in[row];
        const float g = GeluErfFn{}(lambda);
        const T* wo = w_out + row * out;
        for (index_t j = lane; j < out; j += 32) yt[j] += g * wo[j];
        if (d < depth) n = 2 * n + 1 + (lambda > 0.0f ? 1 : 0);  // a tie (λ == 0) goes left
      }
      if (leaves && lane == 0) leaves[t * trees + k] = static_cast<std::int32_t>(n);
    }
  }
}

template <class T>
Status FffForward(const T* x, index_t x_stride, const T* w_in, const T* b_in, const T* w_out, T* y,
                  index_t y_stride, index_t tokens, index_t in, index_t out, index_t trees,
                  index_t depth, std::int32_t* leaves, const Stream& stream) {
  if (!x || !w_in || !b_in || !w_out || !y) return Status::kInvalidArgument;
  if (tokens <= 0 || in <= 0 || out <= 0 || trees <= 0 || depth < 0 || depth > 29 ||
      x_stride < in || y_stride < out)
    return Status::kInvalidArgument;
  const unsigned threads = 32 * kFffWarpsPerBlock;
  const unsigned blocks = grid_blocks(tokens, kFffWarpsPerBlock);
  return launch(FffForwardKernel<T>, dim3(blocks), dim3(threads), 0, stream, x, x_stride, w_in,
                b_in, w_out, y, y_stride, tokens, in, out, trees, depth, leaves);
}

}  // namespace FFNKIT_KERNEL_NS
}  // namespace ffnkit
