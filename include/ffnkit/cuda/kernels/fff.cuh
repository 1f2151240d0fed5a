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
// Backward (the path held fixed, docs/math.md §6's training), stream-ordered and deterministic: no
// host round trip, no float atomics, results bit-identical between runs:
//   FffBackwardTokens  a warp per token walks its recorded path (leaf to root, as the Cpu
//                      backward): λ and <dy, w_out[n]> recomputed, g = GELU(λ) and
//                      δ = <dy, w_out[n]> GELU'(λ) stored per (token, tree, level), dx += δ
//                      w_in[n].
//   FffBackwardNodes   the tokens bucketed by leaf, per tree (FffBucketKernel: a stable counting
//                      sort by one warp, count / scan / scatter, ranks among equal leaves taken
//                      32 tokens at a time, so no atomics and a fixed order); a node's tokens are
//                      then those of the leaves below it, one contiguous range of that order.
//                      A block per gradient row sums over its range: ∂w_in[n] = Σ δ x,
//                      ∂b_in[n] = Σ δ, ∂w_out[n] = Σ g dy; one writer per row, zero for a row no
//                      token visited.
// A leaf that is not a leaf of the tree (the device cannot throw) makes its token's dx row and
// every gradient row of its tree NaN; FastFeedForward::check_leaves() names it.
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

// An exclusive scan of value(i) over i in [0, n) by one warp, in index order: lane l takes the
// l-th contiguous chunk, sums it, the lanes' sums are scanned with __shfl_up_sync, and each lane
// then walks its chunk again calling emit(i, sum of value(0..i-1)). Returns the total on every
// lane. value(i) is read before emit(i) is called, so emit may overwrite what value reads.
template <class I, class Value, class Emit>
__device__ __forceinline__ I fff_warp_scan(index_t n, unsigned lane, Value value, Emit emit) {
  const index_t chunk = (n + 31) / 32;
  const index_t begin = lane * chunk < n ? lane * chunk : n;
  const index_t end = begin + chunk < n ? begin + chunk : n;
  I own = 0;
  for (index_t i = begin; i < end; ++i) own += value(i);
  I inclusive = own;
  for (unsigned off = 1; off < 32; off *= 2) {
    const I v = __shfl_up_sync(0xffffffffu, inclusive, off, 32);
    if (lane >= off) inclusive += v;
  }
  I prefix = inclusive - own;
  for (index_t i = begin; i < end; ++i) {
    const I v = value(i);
    emit(i, prefix);
    prefix += v;
  }
  return __shfl_sync(0xffffffffu, inclusive, 31, 32);
}

// One warp: exclusive scans of count[0, level_nodes) (token offsets, also the scatter's cursors)
// and of the tiles per node; then zeroes count[0, 2 level_nodes) for the next level's counting.
template <class I>
__global__ void FffGroupScanKernel(I* count, I* cursor, I* offsets, I* tiles, index_t level_nodes) {
  const unsigned lane = threadIdx.x;
  const auto tiles_of = [](I c) {
    return (c + static_cast<I>(kFffTileTokens) - 1) / static_cast<I>(kFffTileTokens);
  };
  const I tokens = fff_warp_scan<I>(
      level_nodes, lane, [&](index_t i) { return count[i]; },
      [&](index_t i, I o) {
        offsets[i] = o;
        cursor[i] = o;
      });
  // The second scan reads count[i] before it clears it, in the lane that owns i.
  const I total_tiles = fff_warp_scan<I>(
      level_nodes, lane, [&](index_t i) { return tiles_of(count[i]); },
      [&](index_t i, I o) {
        tiles[i] = o;
        count[i] = 0;
      });
  if (lane == 0) {
    offsets[level_nodes] = tokens;
    tiles[level_nodes] = total_tiles;
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

// Whether `leaf` is a leaf of a depth-`depth` tree: 2^D − 1 <= leaf < 2^(D+1) − 1.
__device__ __forceinline__ bool fff_is_leaf(index_t leaf, index_t depth) {
  return leaf >= (index_t(1) << depth) - 1 && leaf < (index_t(2) << depth) - 1;
}

// g, dl: [tokens x K x (D+1)] fp32, index (t K + k)(D+1) + d. dx_acc: fp32 [tokens x in] (dx
// itself for T = float), null when dx is not wanted. A token with an invalid leaf gets a NaN dx row
// (its pairs are left unwritten: the bucketing skips them).
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
    bool bad = false;
    for (index_t k = 0; k < trees; ++k) {
      index_t n = leaves[t * trees + k];
      if (!fff_is_leaf(n, depth)) {  // the same value on every lane: a warp-uniform branch
        bad = true;
        continue;
      }
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
    if (dxa && bad)
      for (index_t j = lane; j < in; j += 32) dxa[j] = NAN;
    if (dxa && !std::is_same<T, float>::value) {
      T* dxt = dx + t * dx_stride;
      for (index_t j = lane; j < in; j += 32) dxt[j] = Convert<T>::from_float(dxa[j]);
    }
  }
}

// Scratch of the bucketing (int32, detail::fff_backward_scratch_ints), per tree k: cursor [2^D],
// offsets [2^D + 1] (tokens of leaf i are order[offsets[i], offsets[i+1]) of the tree's slice),
// order [tokens], bad [1].
struct FffBuckets {
  std::int32_t *cursor, *offsets, *order, *bad;
  index_t leaves, tokens;
  __host__ __device__ FffBuckets(std::int32_t* scratch, index_t trees, index_t depth, index_t t)
      : leaves(index_t(1) << depth), tokens(t) {
    cursor = scratch;
    offsets = cursor + trees * leaves;
    order = offsets + trees * (leaves + 1);
    bad = order + trees * tokens;
  }
};

// One warp per tree k (blockIdx.x): the tree's tokens sorted by leaf, stably (token order within a
// leaf). 32 tokens at a time, each lane finds in shared memory how many earlier lanes hold its
// leaf (its rank) and whether it is the last of them; the last one alone moves the leaf's cursor,
// so counting and scattering need no atomics. Count, exclusive scan (offsets, and the cursors),
// scatter. Invalid leaves are skipped and raise the tree's bad flag.
template <class I>
__global__ void FffBucketKernel(const I* __restrict__ leaves, index_t tokens, index_t trees,
                                index_t depth, I* scratch) {
  __shared__ I keys[32];
  const unsigned lane = threadIdx.x;
  const index_t k = blockIdx.x;
  const FffBuckets b(scratch, trees, depth, tokens);
  I* cursor = b.cursor + k * b.leaves;
  I* offsets = b.offsets + k * (b.leaves + 1);
  I* order = b.order + k * tokens;
  const index_t first = b.leaves - 1;
  for (index_t i = lane; i < b.leaves; i += 32) cursor[i] = 0;
  bool bad = false;
  for (int pass = 0; pass < 2; ++pass) {  // 0: count, 1: scatter
    __syncwarp();
    for (index_t t0 = 0; t0 < tokens; t0 += 32) {
      const index_t t = t0 + lane;
      I key = -1;  // no token, or not a leaf
      if (t < tokens) {
        const index_t leaf = leaves[t * trees + k];
        if (fff_is_leaf(leaf, depth)) {
          key = static_cast<I>(leaf - first);
        } else {
          bad = true;
        }
      }
      keys[lane] = key;
      __syncwarp();
      I rank = 0;
      bool last = true;
      for (unsigned j = 0; j < 32; ++j)
        if (keys[j] == key) {
          rank += j < lane ? 1 : 0;
          last = last && j <= lane;
        }
      if (key >= 0 && pass == 1) order[cursor[key] + rank] = static_cast<I>(t);
      __syncwarp();  // every lane has read keys and the cursors
      if (key >= 0 && last) cursor[key] += rank + 1;
      __syncwarp();
    }
    if (pass == 0) {
      const I total = fff_warp_scan<I>(
          b.leaves, lane, [&](index_t i) { return cursor[i]; },
          [&](index_t i, I o) {
            offsets[i] = o;
            cursor[i] = o;
          });
      if (lane == 0) offsets[b.leaves] = total;
    }
  }
  const bool any_bad = __any_sync(0xffffffffu, bad);
  if (lane == 0) b.bad[k] = any_bad ? 1 : 0;
}

// A block per gradient row r = k·nodes + n (grid-stride over every row of every tree): node n at
// level d has the leaves [(n+1) 2^(D−d) − 2^D, + 2^(D−d)) below it (leaf indices from the
// first leaf), so its tokens are order[offsets[lo], offsets[hi]) of tree k. The sums run in that
// order (by leaf, then by token), one thread per column, in fp32, rounded to T once.
template <class T>
__global__ void FffBackwardNodesKernel(const T* __restrict__ x, index_t x_stride,
                                       const T* __restrict__ dy, index_t dy_stride,
                                       const float* __restrict__ g, const float* __restrict__ dl,
                                       std::int32_t* scratch, index_t tokens, index_t in,
                                       index_t out, index_t trees, index_t depth,
                                       T* __restrict__ grad_w_in, T* __restrict__ grad_b_in,
                                       T* __restrict__ grad_w_out) {
  const FffBuckets b(scratch, trees, depth, tokens);
  const index_t nodes = (index_t(2) << depth) - 1, levels = depth + 1;
  for (index_t r = blockIdx.x; r < trees * nodes; r += gridDim.x) {
    const index_t k = r / nodes, n = r % nodes;
    index_t d = 0;
    while (((n + 1) >> (d + 1)) != 0) ++d;
    const index_t span = index_t(1) << (depth - d), lo = (n + 1) * span - b.leaves;
    const std::int32_t* offsets = b.offsets + k * (b.leaves + 1);
    const std::int32_t* order = b.order + k * tokens;
    const index_t s0 = offsets[lo], s1 = offsets[lo + span];
    const bool poison = b.bad[k] != 0;
    // Pair index of the s-th token of the range: (t K + k)(D+1) + d.
    const auto pair = [&](index_t s) { return (order[s] * trees + k) * levels + d; };
    for (index_t j = threadIdx.x; j < in; j += blockDim.x) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s)
        a += dl[pair(s)] * Convert<T>::to_float(x[order[s] * x_stride + j]);
      grad_w_in[r * in + j] = Convert<T>::from_float(poison ? NAN : a);
    }
    for (index_t j = threadIdx.x; j < out; j += blockDim.x) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s)
        a += g[pair(s)] * Convert<T>::to_float(dy[order[s] * dy_stride + j]);
      grad_w_out[r * out + j] = Convert<T>::from_float(poison ? NAN : a);
    }
    if (threadIdx.x == 0) {
      float a = 0.0f;
      for (index_t s = s0; s < s1; ++s) a += dl[pair(s)];
      grad_b_in[r] = Convert<T>::from_float(poison ? NAN : a);
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
                        const float* g, const float* dl, const std::int32_t* leaves, index_t tokens,
                        index_t in, index_t out, index_t trees, index_t depth,
                        std::int32_t* scratch, index_t scratch_ints, T* grad_w_in, T* grad_b_in,
                        T* grad_w_out, const StreamOf<B>& stream) {
  if (!x || !dy || !g || !dl || !leaves || !scratch || !grad_w_in || !grad_b_in || !grad_w_out)
    return Status::kInvalidArgument;
  if (bad_shape(tokens, in, out, trees, depth) || x_stride < in || dy_stride < out ||
      tokens > 2147483647 ||
      scratch_ints < ::ffnkit::detail::fff_backward_scratch_ints(tokens, trees, depth))
    return Status::kInvalidArgument;
  const Status s = launch(FffBucketKernel<std::int32_t>, dim3(static_cast<unsigned>(trees)),
                          dim3(32), 0, stream, leaves, tokens, trees, depth, scratch);
  if (s != Status::kSuccess) return s;
  const index_t rows = trees * ((index_t(2) << depth) - 1);
  return launch(FffBackwardNodesKernel<T>, dim3(grid_blocks(rows, 1)), dim3(32 * kFffWarpsPerBlock),
                0, stream, x, x_stride, dy, dy_stride, g, dl, scratch, tokens, in, out, trees,
                depth, grad_w_in, grad_b_in, grad_w_out);
}

}  // namespace cuda
}  // namespace ffnkit
