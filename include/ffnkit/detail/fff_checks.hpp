// What the fast feedforward layer (docs/math.md §6) shares with every backend's kernels: the tree
// as the kernels see it (FffTree), the scratch sizes of the device kernels, and the argument
// checks, so that every backend rejects exactly the same inputs with exactly the same messages.
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/view.hpp"

namespace ffnkit {
namespace detail {

// The kernels of backend B for FastFeedForward<T, B> (the Cpu's in ffnkit/cpu/fff.hpp, the device
// backends' in ffnkit/cuda/fff.hpp), constructed from the layer's FffTree.
template <class T, class B>
class FffOps;

// The layer as its kernels see it: the shape, and the weights in the backend's memory in the heap
// layout of docs/math.md §6.1 (tree k's node n is row k·nodes + n; w_out stored [K·nodes x M], the
// transpose of PyTorch's linear_out.weight, so each node's output weight is one contiguous row).
template <class T>
struct FffTree {
  index_t in = 0, out = 0, trees = 0, depth = 0;
  const T* w_in = nullptr;   // [K·nodes x N]
  const T* b_in = nullptr;   // [K·nodes]
  const T* w_out = nullptr;  // [K·nodes x M]

  index_t nodes() const { return (index_t(2) << depth) - 1; }  // per tree
  index_t levels() const { return depth + 1; }
  index_t rows() const { return trees * nodes(); }
  // The (tree, level) pairs of one token: K (D+1) visited neurons.
  index_t per_token() const { return trees * levels(); }
};

// Deepest tree accepted before any size arithmetic: K·(2^(D+1) − 1) must fit the int32 node
// indices a forward records per token (and 2^(D+1) must not overflow).
constexpr index_t kFffMaxDepth = 29;

// The device grouped forward keeps a node's w_in and w_out rows in fp32 shared memory: at most
// 48 KB (the limit without an opt-in), so in + out <= 12288.
constexpr index_t kFffGroupedMaxWidth = 12288;

// int32 scratch of the device grouped forward (ffnkit/cuda/kernels/fff.cuh): node and perm per
// token, count over two levels' nodes, cursor, offsets and tiles per leaf-level node (+1).
inline index_t fff_grouped_scratch_ints(index_t tokens, index_t depth) {
  const index_t leaves = index_t(1) << depth;
  return 2 * tokens + 5 * leaves + 2;
}

// int32 scratch of the device backward's bucketing (FffBackwardNodes): per tree a cursor per leaf,
// the offsets of the leaves' token ranges (+1), the tokens sorted by leaf, and a bad-leaf flag.
inline index_t fff_backward_scratch_ints(index_t tokens, index_t trees, index_t depth) {
  const index_t leaves = index_t(1) << depth;
  return trees * (2 * leaves + 1 + tokens + 1);
}

// Bytes of physical memory, or 0 when the system does not say.
inline double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

// Checks the structure (widths, trees, depth) and that the weights fit in memory: K (2^(D+1) − 1)
// neurons of N + 1 + M scalars each. Sizes are computed in double so nothing overflows first.
inline void check_fff_args(const char* where, index_t in, index_t out, index_t trees, index_t depth,
                           std::size_t scalar_bytes) {
  check_positive(where, "in_features", in);
  check_positive(where, "out_features", out);
  check_positive(where, "trees", trees);
  if (depth < 0) fail(where, "depth = ", depth, ", must be >= 0");
  if (depth > kFffMaxDepth)
    fail(where, "depth = ", depth, " is too large: 2^(depth+1) - 1 nodes per tree overflow the ",
         "int32 node indices (max depth ", kFffMaxDepth, ")");
  const double neurons =
      static_cast<double>(trees) * (std::ldexp(1.0, static_cast<int>(depth) + 1) - 1);
  if (neurons >= 2147483647.0)
    fail(where, "trees = ", trees, " and depth = ", depth, " give ", neurons,
         " neurons, more than the int32 node indices hold");
  const double bytes =
      neurons * static_cast<double>(in + out + 1) * static_cast<double>(scalar_bytes);
  const double mem = physical_memory_bytes();
  if (bytes >= 9.0e18 || (mem > 0 && bytes > mem))
    fail(where, "depth = ", depth, " (trees = ", trees, ", in_features = ", in,
         ", out_features = ", out, ") needs ", bytes,
         " bytes of weights, more than this machine's ", mem, " bytes of memory");
}

// Every recorded leaf must be a leaf of a depth-D tree: 2^D − 1 <= leaf < 2^(D+1) − 1 (host
// memory; device layers copy the leaves back first).
inline void check_fff_leaves(const char* where, const std::int32_t* leaves, index_t tokens,
                             index_t trees, index_t depth) {
  const index_t first = (index_t(1) << depth) - 1, end = (index_t(2) << depth) - 1;
  for (index_t i = 0; i < tokens * trees; ++i)
    if (leaves[i] < first || leaves[i] >= end)
      fail(where, "leaves[", i, "] (token ", i / trees, ", tree ", i % trees, ") = ", leaves[i],
           " is not a leaf of a depth-", depth, " tree (leaves are ", first, "..", end - 1, ")");
}

}  // namespace detail
}  // namespace ffnkit
