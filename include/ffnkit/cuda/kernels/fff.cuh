// The fast feedforward kernels on the device (docs/math.md §6), FlashInfer-style: XxxKernel is the
// __global__, Xxx the launcher (FFNKIT_FFF_LAUNCHERS, ffnkit/cuda/launchers.hpp) that checks its
// arguments and returns a Status; all but the launchers is internal to the translation unit
// (launch.cuh). Storage T is float, __half or __nv_bfloat16; λ, GELU and every sum are fp32
// (16-bit values are widened on load).
//
// Forward, two modes that give the same paths bit for bit (and in fp32 the same y):
//   FffForward         a warp per token (grid-stride over tokens). Per tree and level the warp
//                      reads the node's w_in row with consecutive lanes on consecutive elements
//                      (coalesced) and reduces λ with a butterfly of __shfl_xor_sync (every lane
//                      ends with the same bits: each step adds the same two values, and fp32
//                      addition is commutative), so the branch n = 2n + 1 + (λ > 0) is
//                      warp-uniform.
//   FffGroupedForward  per tree and level, the tokens are grouped by their node (count, scan,
//                      permute), and a block loads a node's w_in and w_out rows into shared memory
//                      once for a tile of up to kFffTileTokens of its tokens, a warp per token.
//                      λ goes through the same fff_warp_dot (lane j sums elements j, j + 32, ...
//                      in index order, then the same butterfly) on the same fp32 values, so it is
//                      the per-token kernel's λ bit for bit, and so is every branch. Levels whose
//                      nodes average fewer than kFffGroupMinTokens tokens are walked per token
//                      (the same fff_walk as the per-token kernel) from the node reached.
// Both accumulate the output row in fp32 (`acc`, each lane owning columns lane + 32 i): for
// T = float that is y itself, for 16-bit T a fp32 scratch converted to T once at the end, so the
// output is rounded once instead of at every level.
//
// Backward (the path held fixed, docs/math.md §6's training), deterministic, no float atomics:
//   FffBackwardTokens  a warp per token walks its recorded path (leaf to root, as the Cpu
//                      backward): λ and <dy, w_out[n]> recomputed, g = GELU(λ) and
//                      δ = <dy, w_out[n]> GELU'(λ) stored per (token, tree, level), dx += δ
//                      w_in[n].
//   FffBackwardNodes   a block per visited node sums over the (token, level) pairs that visited
//                      it, in the order of a host-side counting sort (token order): ∂w_in[n] =
//                      Σ δ x, ∂b_in[n] = Σ δ, ∂w_out[n] = Σ g dy; one writer per gradient row.
#pragma once

#include <cstdint>
#include <type_traits>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"
#include "ffnkit/cuda/kernels/convert.cuh"
#include "ffnkit/cuda/launch.cuh"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {
namespace cuda {
namespace {

constexpr unsigned kFffWarpsPerBlock = 4;
// Tokens of one node handled by one block of the grouped kernel per load of the node's rows.
constexpr index_t kFffTileTokens = 64;
// The grouped forward groups a level only while its nodes average at least this many tokens (one
// per warp of a tile); below, loading a node's rows into shared memory for fewer tokens than warps
// does not pay, and the remaining levels run per token (FffWalkKernel).
constexpr index_t kFffGroupMinTokens = 4;

// <x, w> over n elements as a warp: lane j sums elements j, j + 32, ... in index order in fp32,
// then an xor butterfly; every lane returns the same bits. Both forward kernels and the backward
// call this one function, so they compute the same λ.
template <class T, class W>
__device__ __forceinline__ float fff_warp_dot(const T* __restrict__ x, const W* __restrict__ w,
                                              index_t n, unsigned lane) {
  float acc = 0.0f;
  for (index_t j = lane; j < n; j += 32)
    acc += Convert<T>::to_float(x[j]) * Convert<W>::to_float(w[j]);
  for (int offset = 16; offset > 0; offset /= 2)
    acc += __shfl_xor_sync(0xffffffffu, acc, offset, 32);
  return acc;
}

// One token's walk through tree levels [d_begin, depth] from node n (index inside the tree) as a
// warp: acc_row += GELU(λ) w_out[n] per level, the lane owning columns lane + 32 i. Returns the
// leaf. The warp-per-token kernel and the grouped kernel's per-token lower levels share it.
template <class T>
__device__ __forceinline__ index_t fff_walk(const T* __restrict__ xt, float* at,
                                            const T* __restrict__ w_in, const T* __restrict__ b_in,
                                            const T* __restrict__ w_out, index_t in, index_t out,
                                            index_t row_base, index_t n, index_t d_begin,
                                            index_t depth, unsigned lane) {
  for (index_t d = d_begin; d <= depth; ++d) {
    const index_t row = row_base + n;
    const float lambda =
        fff_warp_dot(xt, w_in + row * in, in, lane) + Convert<T>::to_float(b_in[row]);
    const float g = GeluErfFn{}(lambda);
    const T* wo = w_out + row * out;
    for (index_t j = lane; j < out; j += 32) at[j] += g * Convert<T>::to_float(wo[j]);
    if (d < depth) n = 2 * n + 1 + (lambda > 0.0f ? 1 : 0);  // a tie (λ == 0) goes left
  }
  return n;
}

// x: [tokens x in] (row stride x_stride), w_in: [K·nodes x in], b_in: [K·nodes],
// w_out: [K·nodes x out] (linear_out.weight transposed), y: [tokens x out] (row stride y_stride),
// acc: fp32 [tokens x out] (acc_stride; y itself for T = float), leaves: [tokens x K] or null.
template <class T>
__global__ void FffForwardKernel(const T* __restrict__ x, index_t x_stride,
                                 const T* __restrict__ w_in, const T* __restrict__ b_in,
                                 const T* __restrict__ w_out, T* y, index_t y_stride, float* acc,
                                 index_t acc_stride, index_t tokens, index_t in, index_t out,
                                 index_t trees, index_t depth, std::int32_t* __restrict__ leaves) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t nodes = (index_t(2) << depth) - 1;
  // The trip count depends only on the warp index, so whole warps enter the shuffles together.
  for (index_t t = static_cast<index_t>(blockIdx.x) * kFffWarpsPerBlock + warp; t < tokens;
       t += static_cast<index_t>(gridDim.x) * kFffWarpsPerBlock) {
    const T* xt = x + t * x_stride;
    float* at = acc + t * acc_stride;
    for (index_t j = lane; j < out; j += 32) at[j] = 0.0f;
    for (index_t k = 0; k < trees; ++k) {
      const index_t n = fff_walk(xt, at, w_in, b_in, w_out, in, out, k * nodes, 0, 0, depth, lane);
      if (leaves && lane == 0) leaves[t * trees + k] = static_cast<std::int32_t>(n);
    }
    if (!std::is_same<T, float>::value) {  // one rounding of the fp32 row (the lane's own columns)
      T* yt = y + t * y_stride;
      for (index_t j = lane; j < out; j += 32) yt[j] = Convert<T>::from_float(at[j]);
    }
  }
}

// The grouped forward's lower levels of tree k, where groups are too small to repay a tile: a warp
// per token continues from node[t] at level d_begin (from the root when node is null) to its leaf.
template <class T>
__global__ void FffWalkKernel(const T* __restrict__ x, index_t x_stride, const T* __restrict__ w_in,
                              const T* __restrict__ b_in, const T* __restrict__ w_out, float* acc,
                              index_t acc_stride, index_t tokens, index_t in, index_t out,
                              index_t trees, index_t k, index_t depth, index_t d_begin,
                              const std::int32_t* __restrict__ node, bool init,
                              std::int32_t* __restrict__ leaves) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t nodes = (index_t(2) << depth) - 1;
  for (index_t t = static_cast<index_t>(blockIdx.x) * kFffWarpsPerBlock + warp; t < tokens;
       t += static_cast<index_t>(gridDim.x) * kFffWarpsPerBlock) {
    float* at = acc + t * acc_stride;
    if (init)
      for (index_t j = lane; j < out; j += 32) at[j] = 0.0f;
    const index_t n = fff_walk(x + t * x_stride, at, w_in, b_in, w_out, in, out, k * nodes,
                               node ? static_cast<index_t>(node[t]) : 0, d_begin, depth, lane);
    if (leaves && lane == 0) leaves[t * trees + k] = static_cast<std::int32_t>(n);
  }
}

// ---- grouped forward ---------------------------------------------------------------------------
// Scratch (int32, detail::fff_grouped_scratch_ints): node [tokens] (each token's node in
// the current tree), perm [tokens] (tokens sorted by node), count [2^(D+1)] (tokens per node of the
// next level, counted by the group kernel), cursor [2^D], offsets [2^D + 1], tiles [2^D + 1]
// (exclusive scans of the counts and of the tiles per node).

// Every token at the root: node = 0, count[0] = tokens (the rest of count is zero already: the
// scan of every level leaves count[0, 2^(d+1)) zeroed, and the first tree's is zeroed by the
// launcher's first scan).
// (The int32 helpers are templates on their index type so that, like every kernel here, they are
// compiled only where launched.)
template <class I>
__global__ void FffGroupInitKernel(I* node, index_t tokens, I* count) {
  for (index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += static_cast<index_t>(gridDim.x) * blockDim.x)
    node[t] = 0;
  if (blockIdx.x == 0 && threadIdx.x == 0) count[0] = static_cast<I>(tokens);
}

// One warp: exclusive scans of count[0, level_nodes) (token offsets, also the scatter's cursors)
// and of the tiles per node; then zeroes count[0, 2 level_nodes) for the next level's counting.
// Lane l takes a contiguous chunk of nodes, so the order of the entries is the node order.
template <class I>
__global__ void FffGroupScanKernel(I* count, I* cursor, I* offsets, I* tiles, index_t level_nodes) {
  const unsigned lane = threadIdx.x;
  const index_t chunk = (level_nodes + 31) / 32;
  const index_t begin = lane * chunk < level_nodes ? lane * chunk : level_nodes;
  const index_t end = begin + chunk < level_nodes ? begin + chunk : level_nodes;
  std::int32_t own_c = 0, own_t = 0;
  for (index_t i = begin; i < end; ++i) {
    own_c += count[i];
    own_t += (count[i] + static_cast<std::int32_t>(kFffTileTokens) - 1) /
             static_cast<std::int32_t>(kFffTileTokens);
  }
  std::int32_t inc_c = own_c, inc_t = own_t;
  for (unsigned off = 1; off < 32; off *= 2) {
    const std::int32_t c = __shfl_up_sync(0xffffffffu, inc_c, off, 32);
    const std::int32_t t = __shfl_up_sync(0xffffffffu, inc_t, off, 32);
    if (lane >= off) {
      inc_c += c;
      inc_t += t;
    }
  }
  std::int32_t oc = inc_c - own_c, ot = inc_t - own_t;
  for (index_t i = begin; i < end; ++i) {
    const std::int32_t c = count[i];
    offsets[i] = oc;
    cursor[i] = oc;
    tiles[i] = ot;
    oc += c;
    ot += (c + static_cast<std::int32_t>(kFffTileTokens) - 1) /
          static_cast<std::int32_t>(kFffTileTokens);
    count[i] = 0;
  }
  if (lane == 31) {
    offsets[level_nodes] = inc_c;
    tiles[level_nodes] = inc_t;
  }
  for (index_t i = level_nodes + lane; i < 2 * level_nodes; i += 32) count[i] = 0;
}

// perm[cursor[node - first]++] = t: the tokens grouped by node. The order inside a group is
// whatever the atomics give; no result depends on it (each token's λ and y are its own).
template <class I>
__global__ void FffGroupScatterKernel(const I* __restrict__ node, index_t tokens, index_t first,
                                      I* cursor, I* __restrict__ perm) {
  for (index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < tokens;
       t += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const I pos = atomicAdd(&cursor[node[t] - first], I(1));
    perm[pos] = static_cast<I>(t);
  }
}

// One level of tree k: tile i of the level's tiles is node `first + n`'s tokens
// [offsets[n] + (i − tiles[n]) kFffTileTokens, ...), n the last node whose tiles start at or
// before i. The node's rows go to shared memory (fp32) once per tile; a warp per token then
// computes λ, accumulates g w_out into acc (zeroed first when `init`) and moves the token to its
// child (counted for the next level) or, at the last level, records its leaf.
template <class T>
__global__ void FffGroupKernel(const T* __restrict__ x, index_t x_stride,
                               const T* __restrict__ w_in, const T* __restrict__ b_in,
                               const T* __restrict__ w_out, float* acc, index_t acc_stride,
                               index_t in, index_t out, index_t trees, index_t k, index_t row_base,
                               index_t first, index_t level_nodes, bool init, bool last,
                               const std::int32_t* __restrict__ offsets,
                               const std::int32_t* __restrict__ tiles,
                               const std::int32_t* __restrict__ perm, std::int32_t* node,
                               std::int32_t* count, std::int32_t* leaves) {
  FFNKIT_DYNAMIC_SHARED(float, smem);
  float* wi = smem;
  float* wo = smem + in;
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t total = tiles[level_nodes];
  for (index_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    index_t lo = 0, hi = level_nodes - 1;  // the last node with tiles[n] <= tile (non-empty)
    while (lo < hi) {
      const index_t mid = (lo + hi + 1) / 2;
      if (tiles[mid] <= tile) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const index_t begin = offsets[lo] + (tile - tiles[lo]) * kFffTileTokens;
    const index_t group_end = offsets[lo + 1];
    const index_t end = begin + kFffTileTokens < group_end ? begin + kFffTileTokens : group_end;
    const index_t n = first + lo, row = row_base + n;
    __syncthreads();  // the previous tile's readers are done with the rows
    for (index_t j = threadIdx.x; j < in; j += blockDim.x)
      wi[j] = Convert<T>::to_float(w_in[row * in + j]);
    for (index_t j = threadIdx.x; j < out; j += blockDim.x)
      wo[j] = Convert<T>::to_float(w_out[row * out + j]);
    __syncthreads();
    const float bias = Convert<T>::to_float(b_in[row]);
    for (index_t s = begin + warp; s < end; s += kFffWarpsPerBlock) {
      const index_t t = perm[s];
      const float lambda = fff_warp_dot(x + t * x_stride, wi, in, lane) + bias;
      const float g = GeluErfFn{}(lambda);
      float* at = acc + t * acc_stride;
      if (init)
        for (index_t j = lane; j < out; j += 32) at[j] = 0.0f;
      for (index_t j = lane; j < out; j += 32) at[j] += g * wo[j];
      if (lane == 0) {
        if (last) {
          if (leaves) leaves[t * trees + k] = static_cast<std::int32_t>(n);
        } else {
          const index_t child = 2 * n + 1 + (lambda > 0.0f ? 1 : 0);  // a tie (λ == 0) goes left
          node[t] = static_cast<std::int32_t>(child);
          atomicAdd(&count[child - (2 * first + 1)], 1);
        }
      }
    }
  }
}

// y = T(acc), element-wise over [rows x cols].
template <class T>
__global__ void FffConvertKernel(const float* __restrict__ acc, index_t acc_stride, T* y,
                                 index_t y_stride, index_t rows, index_t cols) {
  const index_t total = rows * cols;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<index_t>(gridDim.x) * blockDim.x)
    y[(i / cols) * y_stride + i % cols] =
        Convert<T>::from_float(acc[(i / cols) * acc_stride + i % cols]);
}

// ---- backward ----------------------------------------------------------------------------------

// g, dl: [tokens x K x (D+1)] fp32, index (t K + k)(D+1) + d. dx_acc: fp32 [tokens x in] (dx
// itself for T = float), null when dx is not wanted.
template <class T>
__global__ void FffBackwardTokensKernel(
    const T* __restrict__ x, index_t x_stride, const T* __restrict__ dy, index_t dy_stride,
    const T* __restrict__ w_in, const T* __restrict__ b_in, const T* __restrict__ w_out,
    const std::int32_t* __restrict__ leaves, T* dx, index_t dx_stride, float* dx_acc,
    index_t dx_acc_stride, float* __restrict__ g, float* __restrict__ dl, index_t tokens,
    index_t in, index_t out, index_t trees, index_t depth) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t nodes = (index_t(2) << depth) - 1, levels = depth + 1;
  for (index_t t = static_cast<index_t>(blockIdx.x) * kFffWarpsPerBlock + warp; t < tokens;
       t += static_cast<index_t>(gridDim.x) * kFffWarpsPerBlock) {
    const T* xt = x + t * x_stride;
    const T* dyt = dy + t * dy_stride;
    float* dxa = dx_acc ? dx_acc + t * dx_acc_stride : nullptr;
    if (dxa)
      for (index_t j = lane; j < in; j += 32) dxa[j] = 0.0f;
    for (index_t k = 0; k < trees; ++k) {
      index_t n = leaves[t * trees + k];
      for (index_t d = depth; d >= 0; --d, n = (n - 1) / 2) {
        const index_t row = k * nodes + n, i = (t * trees + k) * levels + d;
        const T* wi = w_in + row * in;
        const float lambda = fff_warp_dot(xt, wi, in, lane) + Convert<T>::to_float(b_in[row]);
        const float dg = fff_warp_dot(dyt, w_out + row * out, out, lane);
        const float delta = dg * GeluErfFn{}.grad(lambda);
        if (lane == 0) {
          g[i] = GeluErfFn{}(lambda);
          dl[i] = delta;
        }
        if (dxa)
          for (index_t j = lane; j < in; j += 32) dxa[j] += delta * Convert<T>::to_float(wi[j]);
      }
    }
    if (dxa && !std::is_same<T, float>::value) {
      T* dxt = dx + t * dx_stride;
      for (index_t j = lane; j < in; j += 32) dxt[j] = Convert<T>::from_float(dxa[j]);
    }
  }
}

// rows: the visited gradient rows (k·nodes + n), [visited]; start: [visited + 1], row v's pairs
// are order[start[v], start[v+1]), each pair index p = (t K + k)(D+1) + d (so t = p / per).
template <class T>
__global__ void FffBackwardNodesKernel(
    const T* __restrict__ x, index_t x_stride, const T* __restrict__ dy, index_t dy_stride,
    const float* __restrict__ g, const float* __restrict__ dl,
    const std::int32_t* __restrict__ rows, const std::int32_t* __restrict__ start,
    const std::int32_t* __restrict__ order, index_t visited, index_t in, index_t out, index_t per,
    T* __restrict__ grad_w_in, T* __restrict__ grad_b_in, T* __restrict__ grad_w_out) {
  for (index_t v = blockIdx.x; v < visited; v += gridDim.x) {
    const index_t row = rows[v], s0 = start[v], s1 = start[v + 1];
    for (index_t j = threadIdx.x; j < in; j += blockDim.x) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s) {
        const index_t p = order[s];
        a += dl[p] * Convert<T>::to_float(x[(p / per) * x_stride + j]);
      }
      grad_w_in[row * in + j] = Convert<T>::from_float(a);
    }
    for (index_t j = threadIdx.x; j < out; j += blockDim.x) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s) {
        const index_t p = order[s];
        a += g[p] * Convert<T>::to_float(dy[(p / per) * dy_stride + j]);
      }
      grad_w_out[row * out + j] = Convert<T>::from_float(a);
    }
    if (threadIdx.x == 0) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s) a += dl[order[s]];
      grad_b_in[row] = Convert<T>::from_float(a);
    }
  }
}

inline bool bad_shape(index_t tokens, index_t in, index_t out, index_t trees, index_t depth) {
  return tokens <= 0 || in <= 0 || out <= 0 || trees <= 0 || depth < 0 ||
         depth > ::ffnkit::detail::kFffMaxDepth;
}

// The fp32 accumulator: `acc` when given, else the output itself, which only T = float allows.
template <class T>
bool resolve_acc(T* y, index_t y_stride, float*& acc, index_t& acc_stride) {
  if (acc) return true;
  if (!std::is_same<T, float>::value) return false;
  acc = reinterpret_cast<float*>(y);
  acc_stride = y_stride;
  return true;
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------

template <class T, class B>
Status FffForward(const T* x, index_t x_stride, const T* w_in, const T* b_in, const T* w_out, T* y,
                  index_t y_stride, float* acc, index_t acc_stride, index_t tokens, index_t in,
                  index_t out, index_t trees, index_t depth, std::int32_t* leaves,
                  const StreamOf<B>& stream) {
  if (!x || !w_in || !b_in || !w_out || !y) return Status::kInvalidArgument;
  if (bad_shape(tokens, in, out, trees, depth) || x_stride < in || y_stride < out)
    return Status::kInvalidArgument;
  if (!resolve_acc(y, y_stride, acc, acc_stride) || acc_stride < out)
    return Status::kInvalidArgument;
  const unsigned threads = 32 * kFffWarpsPerBlock;
  const unsigned blocks = grid_blocks(tokens, kFffWarpsPerBlock);
  return launch(FffForwardKernel<T>, dim3(blocks), dim3(threads), 0, stream, x, x_stride, w_in,
                b_in, w_out, y, y_stride, acc, acc_stride, tokens, in, out, trees, depth, leaves);
}

template <class T, class B>
Status FffGroupedForward(const T* x, index_t x_stride, const T* w_in, const T* b_in, const T* w_out,
                         T* y, index_t y_stride, float* acc, index_t acc_stride, index_t tokens,
                         index_t in, index_t out, index_t trees, index_t depth,
                         std::int32_t* leaves, std::int32_t* scratch, index_t scratch_ints,
                         const StreamOf<B>& stream) {
  if (!x || !w_in || !b_in || !w_out || !y || !scratch) return Status::kInvalidArgument;
  if (bad_shape(tokens, in, out, trees, depth) || x_stride < in || y_stride < out ||
      in + out > ::ffnkit::detail::kFffGroupedMaxWidth ||
      scratch_ints < ::ffnkit::detail::fff_grouped_scratch_ints(tokens, depth))
    return Status::kInvalidArgument;
  const bool separate_acc = acc != nullptr;
  if (!resolve_acc(y, y_stride, acc, acc_stride) || acc_stride < out)
    return Status::kInvalidArgument;
  const index_t leaves_count = index_t(1) << depth, nodes = (index_t(2) << depth) - 1;
  std::int32_t* node = scratch;
  std::int32_t* perm = node + tokens;
  std::int32_t* count = perm + tokens;
  std::int32_t* cursor = count + 2 * leaves_count;
  std::int32_t* offsets = cursor + leaves_count;
  std::int32_t* tiles = offsets + leaves_count + 1;
  const unsigned threads = 32 * kFffWarpsPerBlock;
  const unsigned token_blocks = grid_blocks(tokens, threads);
  const std::size_t smem = static_cast<std::size_t>(in + out) * sizeof(float);
  Status s = Status::kSuccess;
  // Levels [0, split) grouped, [split, depth] per token.
  index_t split = 0;
  while (split <= depth && (tokens >> split) >= kFffGroupMinTokens) ++split;
  const unsigned walk_blocks = grid_blocks(tokens, kFffWarpsPerBlock);
  for (index_t k = 0; k < trees && s == Status::kSuccess; ++k) {
    s = launch(FffGroupInitKernel<std::int32_t>, dim3(token_blocks), dim3(threads), 0, stream, node,
               tokens, count);
    for (index_t d = 0; d < split && s == Status::kSuccess; ++d) {
      const index_t level_nodes = index_t(1) << d, first = level_nodes - 1;
      s = launch(FffGroupScanKernel<std::int32_t>, dim3(1), dim3(32), 0, stream, count, cursor,
                 offsets, tiles, level_nodes);
      if (s != Status::kSuccess) break;
      s = launch(FffGroupScatterKernel<std::int32_t>, dim3(token_blocks), dim3(threads), 0, stream,
                 static_cast<const std::int32_t*>(node), tokens, first, cursor, perm);
      if (s != Status::kSuccess) break;
      // At most ceil(tokens / tile) + level_nodes tiles; surplus blocks find no tile.
      const index_t max_tiles = (tokens + kFffTileTokens - 1) / kFffTileTokens + level_nodes;
      s = launch(FffGroupKernel<T>, dim3(grid_blocks(max_tiles, 1)), dim3(threads), smem, stream, x,
                 x_stride, w_in, b_in, w_out, acc, acc_stride, in, out, trees, k, k * nodes, first,
                 level_nodes, k == 0 && d == 0, d == depth,
                 static_cast<const std::int32_t*>(offsets), static_cast<const std::int32_t*>(tiles),
                 static_cast<const std::int32_t*>(perm), node, count, leaves);
    }
    if (s == Status::kSuccess && split <= depth)
      s = launch(FffWalkKernel<T>, dim3(walk_blocks), dim3(threads), 0, stream, x, x_stride, w_in,
                 b_in, w_out, acc, acc_stride, tokens, in, out, trees, k, depth, split,
                 static_cast<const std::int32_t*>(split > 0 ? node : nullptr), k == 0 && split == 0,
                 leaves);
  }
  if (s == Status::kSuccess && separate_acc)
    s = launch(FffConvertKernel<T>, dim3(grid_blocks(tokens * out, threads)), dim3(threads), 0,
               stream, static_cast<const float*>(acc), acc_stride, y, y_stride, tokens, out);
  return s;
}

template <class T, class B>
Status FffBackwardTokens(const T* x, index_t x_stride, const T* dy, index_t dy_stride,
                         const T* w_in, const T* b_in, const T* w_out, const std::int32_t* leaves,
                         T* dx, index_t dx_stride, float* dx_acc, index_t dx_acc_stride, float* g,
                         float* dl, index_t tokens, index_t in, index_t out, index_t trees,
                         index_t depth, const StreamOf<B>& stream) {
  if (!x || !dy || !w_in || !b_in || !w_out || !leaves || !g || !dl)
    return Status::kInvalidArgument;
  if (bad_shape(tokens, in, out, trees, depth) || x_stride < in || dy_stride < out)
    return Status::kInvalidArgument;
  if (dx &&
      (dx_stride < in || !resolve_acc(dx, dx_stride, dx_acc, dx_acc_stride) || dx_acc_stride < in))
    return Status::kInvalidArgument;
  if (!dx) dx_acc = nullptr;
  const unsigned threads = 32 * kFffWarpsPerBlock;
  return launch(FffBackwardTokensKernel<T>, dim3(grid_blocks(tokens, kFffWarpsPerBlock)),
                dim3(threads), 0, stream, x, x_stride, dy, dy_stride, w_in, b_in, w_out, leaves, dx,
                dx_stride, dx_acc, dx_acc_stride, g, dl, tokens, in, out, trees, depth);
}

template <class T, class B>
Status FffBackwardNodes(const T* x, index_t x_stride, const T* dy, index_t dy_stride,
                        const float* g, const float* dl, const std::int32_t* rows,
                        const std::int32_t* start, const std::int32_t* order, index_t visited,
                        index_t in, index_t out, index_t pairs_per_token, T* grad_w_in,
                        T* grad_b_in, T* grad_w_out, const StreamOf<B>& stream) {
  if (!x || !dy || !g || !dl || !rows || !start || !order || !grad_w_in || !grad_b_in ||
      !grad_w_out)
    return Status::kInvalidArgument;
  if (visited <= 0 || in <= 0 || out <= 0 || pairs_per_token <= 0 || x_stride < in ||
      dy_stride < out)
    return Status::kInvalidArgument;
  const unsigned threads = 32 * kFffWarpsPerBlock;
  return launch(FffBackwardNodesKernel<T>, dim3(grid_blocks(visited, 1)), dim3(threads), 0, stream,
                x, x_stride, dy, dy_stride, g, dl, rows, start, order, visited, in, out,
                pairs_per_token, grad_w_in, grad_b_in, grad_w_out);
}

}  // namespace cuda
}  // namespace ffnkit
