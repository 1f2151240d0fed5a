// The Cpu backend's fast feedforward kernels (docs/math.md §6), detail::FffOps<T, Cpu>, for the
// FastFeedForward class of ffnkit/fff.hpp. Two forward kernels share one dot product and one
// accumulation order, so they give bit-identical leaves and outputs:
//   per-token walk  few tokens: a token's path is a chain of dependent dots; the two candidate
//                   rows of the next level are prefetched while the current dot runs;
//   grouped         many tokens, in cache-sized blocks of tokens per thread: per level the tokens
//                   that sit at the same node are contiguous (count / scan / permute, a stable
//                   binary split per node), so each w_in row is read once per group and its dot
//                   runs over 4 tokens at a time; the output is then accumulated per token over
//                   its K (D+1) rows, in register-sized chunks of y.
// Backward: per token on the recorded path, then per node over the pairs bucketed by node.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {
namespace cpu {
namespace fff {

// A 32-byte vector of T (GCC/Clang vector extension: one ymm register with AVX2, two xmm
// registers on baseline x86-64). Written out rather than left to the auto-vectorizer, which kept
// the partial sums in memory and ran several times slower; element-wise arithmetic on it has the
// same lane order on every ISA, so the sums below do not depend on the build's -march. `VecU` is
// its unaligned, aliasing form, for loads straight from the weight and activation rows.
template <class T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  typedef T unaligned __attribute__((vector_size(32), aligned(alignof(T)), may_alias));
  static constexpr int kWidth = 32 / static_cast<int>(sizeof(T));
};
#define FFNKIT_FFF_LOAD(T, p) (*reinterpret_cast<const typename Vec<T>::unaligned*>(p))

// Lanes of the dot products' partial sums: two vectors per token, so the 4-token grouped dot keeps
// 8 independent FMA chains in flight (two FMA pipes x latency 4).
template <class T>
constexpr int kLanes = 2 * Vec<T>::kWidth;

template <class T>
FFNKIT_FORCEINLINE T reduce_lanes(T* s) {
  for (int w = kLanes<T> / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

// Adds the tail elements [j, n) into the lanes of (a, b) and reduces: lane l of the accumulator
// is a[l] for l < W and b[l - W] after.
template <class T, class V>
FFNKIT_FORCEINLINE T finish_dot(const V& a, const V& b, const T* __restrict x,
                                const T* __restrict w, index_t j, index_t n) {
  constexpr int W = Vec<T>::kWidth;
  T acc[2 * W];
  std::memcpy(acc, &a, sizeof a);
  std::memcpy(acc + W, &b, sizeof b);
  for (int l = 0; j + l < n; ++l) acc[l] += x[j + l] * w[j + l];
  return reduce_lanes(acc);
}

// <x, w> over n elements, in the lane order above.
template <class T>
FFNKIT_FORCEINLINE T dot(const T* __restrict x, const T* __restrict w, index_t n) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  V a = {}, b = {};
  index_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    a += FFNKIT_FFF_LOAD(T, x + j) * FFNKIT_FFF_LOAD(T, w + j);
    b += FFNKIT_FFF_LOAD(T, x + j + W) * FFNKIT_FFF_LOAD(T, w + j + W);
  }
  return finish_dot(a, b, x, w, j, n);
}

// Four tokens against one row: each w element is loaded once for four FMAs. Per token, exactly the
// operations of dot() in the same order.
template <class T>
FFNKIT_FORCEINLINE void dot4(const T* __restrict x0, const T* __restrict x1, const T* __restrict x2,
                             const T* __restrict x3, const T* __restrict w, index_t n, T* out) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  V a0 = {}, b0 = {}, a1 = {}, b1 = {}, a2 = {}, b2 = {}, a3 = {}, b3 = {};
  index_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const V wa = FFNKIT_FFF_LOAD(T, w + j), wb = FFNKIT_FFF_LOAD(T, w + j + W);
    a0 += FFNKIT_FFF_LOAD(T, x0 + j) * wa;
    b0 += FFNKIT_FFF_LOAD(T, x0 + j + W) * wb;
    a1 += FFNKIT_FFF_LOAD(T, x1 + j) * wa;
    b1 += FFNKIT_FFF_LOAD(T, x1 + j + W) * wb;
    a2 += FFNKIT_FFF_LOAD(T, x2 + j) * wa;
    b2 += FFNKIT_FFF_LOAD(T, x2 + j + W) * wb;
    a3 += FFNKIT_FFF_LOAD(T, x3 + j) * wa;
    b3 += FFNKIT_FFF_LOAD(T, x3 + j + W) * wb;
  }
  out[0] = finish_dot(a0, b0, x0, w, j, n);
  out[1] = finish_dot(a1, b1, x1, w, j, n);
  out[2] = finish_dot(a2, b2, x2, w, j, n);
  out[3] = finish_dot(a3, b3, x3, w, j, n);
}

// y[0..m) += a w[0..m), element by element (no reassociation: the order is the caller's).
template <class T>
FFNKIT_FORCEINLINE void axpy(T a, const T* __restrict w, T* __restrict y, index_t m) {
  using V = typename Vec<T>::type;
  using U = typename Vec<T>::unaligned;
  constexpr int W = Vec<T>::kWidth;
  const V av = V{} + a;
  index_t j = 0;
  for (; j + W <= m; j += W)
    *reinterpret_cast<U*>(y + j) = FFNKIT_FFF_LOAD(T, y + j) + av * FFNKIT_FFF_LOAD(T, w + j);
  for (; j < m; ++j) y[j] += a * w[j];
}

inline void prefetch_row(const void* p, std::size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  // The first lines only: the hardware stream prefetcher follows the row once it is started,
  // and a prefetch per line of a 3 KB row costs more issue slots than it saves.
  const std::size_t head = bytes < 512 ? bytes : 512;
  for (std::size_t o = 0; o < head; o += 64) __builtin_prefetch(c + o, 0, 3);
#else
  (void)p;
  (void)bytes;
#endif
}

inline void prefetch_full_row(const void* p, std::size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
#else
  (void)p;
  (void)bytes;
#endif
}

// y = Σ_i g[i] rows[i] over `count` rows of width m, accumulated in chunks of 8 vectors held in
// registers, so y is written once instead of read and written per row. Summation order: rows in
// order, each element separately, the same as a sequence of axpy() onto a zeroed y.
template <class T>
FFNKIT_FORCEINLINE void combine_rows(const T* const* rows, const T* g, int count, index_t m,
                                     T* __restrict y) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth, R = 8;
  index_t j0 = 0;
  for (; j0 + R * W <= m; j0 += R * W) {
    V acc[R] = {};
    for (int i = 0; i < count; ++i) {
      const V gv = V{} + g[i];
      const T* r = rows[i] + j0;
      FFNKIT_UNROLL
      for (int q = 0; q < R; ++q) acc[q] += gv * FFNKIT_FFF_LOAD(T, r + q * W);
    }
    std::memcpy(y + j0, acc, sizeof acc);
  }
  if (j0 < m) {
    std::fill(y + j0, y + m, T(0));
    for (int i = 0; i < count; ++i) axpy(g[i], rows[i] + j0, y + j0, m - j0);
  }
}

}  // namespace fff
}  // namespace cpu

namespace detail {

// The Cpu backend's FFF kernels, for FastFeedForward<T, Cpu> (the class, written once for every
// backend, is in ffnkit/fff.hpp): both forward kernels, their scratch, and the backward.
template <class T>
class FffOps<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");

 public:
  using Stream = cpu::Stream;

  // Token counts from which kAuto takes the grouped kernel. Measured (docs/fff.md, 1 thread,
  // d = 768, D = 11): the per-token walk wins at 1 token, the grouped kernel from 16 on; counts
  // in between were not measured.
  static constexpr index_t kGroupedMinTokens = 16;
  // The grouped kernel takes any width.
  static constexpr index_t kGroupedMaxWidth = std::numeric_limits<index_t>::max();
  // Leaves are host memory: the layer checks every recorded leaf before backward touches memory.
  static constexpr bool kHostLeaves = true;

  explicit FffOps(const FffTree<T>& t)
      : in_(t.in),
        out_(t.out),
        trees_(t.trees),
        depth_(t.depth),
        w_in_(t.w_in),
        b_in_(t.b_in),
        w_out_(t.w_out) {}

  // Bytes of scratch forward needs for `tokens` tokens, either kernel, at the current OpenMP
  // thread count: the grouped kernel's per-token routing state, and per thread one path's rows.
  std::size_t workspace_size(index_t tokens, bool /*grouped*/) const {
    return Scratch::layout(tokens, per_token(), cpu::max_threads(), nullptr).bytes;
  }

  // y = Σ_k Σ_{n on token's path in tree k} GELU(λ_n) w_out[n]; `leaves` ([tokens x K]) or null.
  // `scratch`: workspace_size(x.rows, grouped) bytes, aligned for index_t.
  void forward(const char*, const MatrixView<const T>& x, const MatrixView<T>& y,
               std::int32_t* leaves, bool grouped, unsigned char* scratch, const Stream&) const {
    const index_t per = per_token();
    const Scratch sc =
        Scratch::layout(x.rows, per, cpu::max_threads(), reinterpret_cast<char*>(scratch));
    if (grouped) {
      forward_grouped(x, y, leaves, sc);
    } else {
      cpu::parallel_for_slots(x.rows, per * (in_ + out_), [&](std::int64_t t, int slot) {
        walk(x.row(t), y.row(t), leaves ? leaves + t * trees_ : nullptr, sc.rows + slot * per,
             sc.gpath + slot * per);
      });
    }
  }

  // Backward's scratch: per (token, tree, level) pair GELU(λ), dλ, its gradient row and its place
  // in the bucketing; per gradient row the bucket start and fill pointer.
  std::size_t backward_workspace_size(index_t tokens) const {
    return BackwardScratch::layout(tokens * per_token(), rows(), nullptr).bytes;
  }

  // Gradients into gw_in, gb_in, gw_out (overwritten; rows no token visited are zero) on the paths
  // of `leaves` (checked by the caller); dx skipped when dx.data is null. Two passes: per token
  // (recompute λ on the fixed path, keep GELU(λ) and dλ, write dx), then per node over the
  // (token, level) pairs bucketed by node (count, scan, fill, in token order), so each gradient
  // row has one writer and no atomics are needed.
  void backward(const char*, const MatrixView<const T>& x, const std::int32_t* leaves,
                const MatrixView<const T>& dy, const MatrixView<T>& dx, T* gwi, T* gbi, T* gwo,
                unsigned char* scratch, const Stream&) const {
    const index_t T_ = x.rows, levels = depth_ + 1, per = per_token();
    const index_t nodes = nodes_per_tree(), rows = this->rows(), pairs = T_ * per;
    const BackwardScratch s =
        BackwardScratch::layout(pairs, rows, reinterpret_cast<char*>(scratch));
    T* g = s.g;
    T* dl = s.dl;
    std::int32_t* row_of = s.row_of;
    // Pass 1, parallel over tokens: recompute λ on the fixed path, keep GELU(λ) and dλ, write dx.
    cpu::parallel_for(T_, per * (2 * in_ + out_), [&](std::int64_t t) {
      const T* xt = x.row(t);
      const T* dyt = dy.row(t);
      T* dxt = dx.data ? dx.row(t) : nullptr;
      if (dxt) std::fill(dxt, dxt + in_, T(0));
      for (index_t k = 0; k < trees_; ++k) {
        index_t n = leaves[t * trees_ + k];
        for (index_t d = depth_; d >= 0; --d, n = (n - 1) / 2) {
          const index_t row = k * nodes + n, i = t * per + k * levels + d;
          const T lambda = cpu::fff::dot(xt, &w_in_[row * in_], in_) + b_in_[row];
          const T dg = cpu::fff::dot(dyt, &w_out_[row * out_], out_);
          g[i] = GeluErfFn{}(lambda);
          dl[i] = dg * GeluErfFn{}.grad(lambda);
          row_of[i] = static_cast<std::int32_t>(row);
          if (dxt) cpu::fff::axpy(dl[i], &w_in_[row * in_], dxt, in_);
        }
      }
    });
    // Pass 2: the visited (token, level) pairs bucketed by node (count, scan, fill), then parallel
    // over nodes, so each gradient row has one writer and no atomics are needed.
    index_t* start = s.start;
    index_t* order = s.order;
    std::fill(start, start + rows + 1, index_t(0));
    for (index_t i = 0; i < pairs; ++i) ++start[row_of[i] + 1];
    for (index_t r = 0; r < rows; ++r) start[r + 1] += start[r];
    std::copy(start, start + rows, s.fill);
    for (index_t i = 0; i < pairs; ++i) order[s.fill[row_of[i]]++] = i;
    std::fill(gwi, gwi + rows * in_, T(0));
    std::fill(gbi, gbi + rows, T(0));
    std::fill(gwo, gwo + rows * out_, T(0));
    cpu::parallel_for(rows, (in_ + out_) * std::max<index_t>(1, pairs / rows), [&](std::int64_t r) {
      for (index_t q = start[r]; q < start[r + 1]; ++q) {
        const index_t i = order[q], t = i / per;
        cpu::fff::axpy(dl[i], x.row(t), gwi + r * in_, in_);
        gbi[r] += dl[i];
        cpu::fff::axpy(g[i], dy.row(t), gwo + r * out_, out_);
      }
    });
  }

  void check_leaves(const char* where, const std::int32_t* leaves, index_t tokens,
                    const Stream&) const {
    check_fff_leaves(where, leaves, tokens, trees_, depth_);
  }

 private:
  index_t nodes_per_tree() const { return (index_t(2) << depth_) - 1; }
  index_t rows() const { return trees_ * nodes_per_tree(); }
  index_t per_token() const { return trees_ * (depth_ + 1); }

  // Consecutive arrays carved from one buffer, each aligned for its type; with base == nullptr
  // only the byte count is kept.
  class Carver {
   public:
    explicit Carver(char* base) : base_(base) {}
    template <class P>
    void take(P*& ptr, std::size_t count) {
      off_ = (off_ + alignof(P) - 1) / alignof(P) * alignof(P);
      ptr = base_ ? reinterpret_cast<P*>(base_ + off_) : nullptr;
      off_ += count * sizeof(P);
    }
    std::size_t bytes() const { return off_; }

   private:
    char* base_;
    std::size_t off_ = 0;
  };

  struct BackwardScratch {
    T* g;
    T* dl;
    std::int32_t* row_of;
    index_t *start, *order, *fill;
    std::size_t bytes;

    static BackwardScratch layout(index_t pairs, index_t rows, char* base) {
      BackwardScratch s{};
      Carver c(base);
      const std::size_t p = static_cast<std::size_t>(pairs), r = static_cast<std::size_t>(rows);
      c.take(s.g, p);
      c.take(s.dl, p);
      c.take(s.row_of, p);
      c.take(s.start, r + 1);
      c.take(s.order, p);
      c.take(s.fill, r);
      s.bytes = c.bytes();
      return s;
    }
  };
  // One token, all trees: the latency-bound walk. While a level's dot runs, both candidate rows of
  // the next level (and this level's w_out row) are already on their way into the cache. The
  // output waits for the whole path and is then written once by combine_rows() (a running axpy
  // read and wrote y at every level); its summation order is the axpy sequence's, so the walk and
  // the grouped kernel stay bit-identical.
  void walk(const T* x, T* y, std::int32_t* leaves, const T** rows, T* g) const {
    const index_t nodes = nodes_per_tree(), levels = depth_ + 1;
    for (index_t k = 0; k < trees_; ++k) {
      index_t n = 0;
      for (index_t d = 0; d <= depth_; ++d) {
        const index_t row = k * nodes + n;
        cpu::fff::prefetch_row(&w_out_[row * out_], out_ * sizeof(T));
        if (d < depth_) {
          cpu::fff::prefetch_row(&w_in_[(row + n + 1) * in_], in_ * sizeof(T));
          cpu::fff::prefetch_row(&w_in_[(row + n + 2) * in_], in_ * sizeof(T));
        }
        const T lambda = cpu::fff::dot(x, &w_in_[row * in_], in_) + b_in_[row];
        g[k * levels + d] = GeluErfFn{}(lambda);
        rows[k * levels + d] = &w_out_[row * out_];
        if (d < depth_) n = 2 * n + 1 + (lambda > T(0) ? 1 : 0);  // a tie (λ == 0) goes left
      }
      if (leaves) leaves[k] = static_cast<std::int32_t>(n);
    }
    cpu::fff::combine_rows(rows, g, static_cast<int>(trees_ * levels), out_, y);
  }

  struct Segment {
    index_t node, begin, end;
  };

  // forward's scratch, carved from one buffer (the caller's workspace or one allocation):
  // per token the grouped kernel's GELU values g [T x K x levels], λ, leaves and three index
  // arrays (at, order, the split's temporary), the bucket counts and the pieces; per thread one
  // path's w_out rows and GELU values (the walk's, and the grouped kernel's output step).
  struct Scratch {
    T* g;
    T* lam;
    T* gpath;
    const T** rows;
    std::int32_t* leaf;
    index_t *at, *order, *tmp, *start, *fill;
    Segment* pieces;
    std::size_t bytes;

    // With base == nullptr only `bytes` is meaningful.
    static Scratch layout(index_t tokens, index_t per, int threads, char* base) {
      Scratch sc{};
      Carver c(base);
      const auto take = [&](auto*& ptr, std::size_t count) { c.take(ptr, count); };
      const std::size_t t = static_cast<std::size_t>(tokens);
      const std::size_t paths = static_cast<std::size_t>(per) * static_cast<std::size_t>(threads);
      take(sc.g, t * static_cast<std::size_t>(per));
      take(sc.lam, t);
      take(sc.gpath, paths);
      take(sc.rows, paths);
      take(sc.leaf, t * static_cast<std::size_t>(per));  // K per token; per >= K
      take(sc.at, t);
      take(sc.order, t);
      take(sc.tmp, t);
      // 2^S <= tokens buckets; pieces: at most one per bucket plus one per `piece` tokens.
      take(sc.start, t + 2);
      take(sc.fill, t + 1);
      take(sc.pieces, 2 * t + 1);
      sc.bytes = c.bytes();
      return sc;
    }
  };

  // Tokens per routing block: their x rows (256 KB, half of this machine's per-core L2) stay in
  // L2 while the levels revisit them, next to the weight rows streaming through.
  index_t block_tokens() const {
    return std::max<index_t>(16, (index_t(1) << 18) / (in_ * static_cast<index_t>(sizeof(T))));
  }

  // Many tokens. Per tree, two routing phases and then one output pass:
  //   A. the top S levels, in blocks of tokens (one block per thread at a time): few nodes, big
  //      groups, every w_in row reused by a whole group;
  //   B. the tokens bucketed by their node at level S (count, scan, permute over the batch), and
  //      each bucket routed through the remaining levels on its own subtree. S is chosen so that a
  //      bucket holds about a block of tokens: without it a block of B tokens would reach the
  //      lower levels as groups of one, and every deep row would be fetched for a single token.
  //   C. y per token = Σ GELU(λ) w_out over its path, in leaf order so that tokens sharing the
  //      lower rows run back to back. With one tree a piece's outputs are complete as soon as it
  //      is routed, so C runs inside B's loop (one fork-join fewer, the piece's rows still warm).
  void forward_grouped(const MatrixView<const T>& x, const MatrixView<T>& y, std::int32_t* leaves,
                       const Scratch& sc) const {
    const index_t T_ = x.rows, levels = depth_ + 1, nodes = nodes_per_tree(), per = trees_ * levels;
    const int threads = cpu::max_threads();
    const index_t per_thread = (T_ + threads - 1) / threads;
    const index_t block = std::max<index_t>(1, std::min<index_t>(block_tokens(), per_thread));
    index_t split = 0;  // S: 2^S buckets of ~`block` tokens
    while (split < depth_ && (T_ >> (split + 1)) >= block) ++split;
    T* g = sc.g;
    std::int32_t* leaf = sc.leaf;
    index_t* at = sc.at;
    index_t* order = sc.order;
    const bool fused_output = trees_ == 1;
    const auto emit = [&](index_t t, int slot) {  // C for token t
      const T** rows = sc.rows + slot * per;
      for (index_t k = 0; k < trees_; ++k) {
        index_t n = leaf[t * trees_ + k];
        for (index_t d = depth_; d >= 0; --d, n = (n - 1) / 2)
          rows[k * levels + d] = &w_out_[(k * nodes + n) * out_];
      }
      cpu::fff::combine_rows(rows, &g[t * per], static_cast<int>(per), out_, y.row(t));
    };
    const std::int64_t cost = block * levels * in_;
    for (index_t k = 0; k < trees_; ++k) {
      // A: blocks of consecutive tokens, all at the root, through levels [0, S). A block works in
      // its own slice of order/tmp/λ.
      if (split > 0) {
        const index_t blocks = (T_ + block - 1) / block;
        cpu::parallel_for(blocks, cost, [&](std::int64_t b) {
          const index_t t0 = b * block, n = std::min(block, T_ - t0);
          for (index_t i = 0; i < n; ++i) order[t0 + i] = t0 + i;
          route(x, k, order + t0, sc.tmp + t0, sc.lam + t0, n, 0, 0, split, g, at, nullptr);
        });
      } else {
        std::fill(at, at + T_, 0);
      }
      // B: bucket by the node reached at level S (a counting sort, stable in token order).
      const index_t first = (index_t(1) << split) - 1, buckets = index_t(1) << split;
      index_t* start = sc.start;
      std::fill(start, start + buckets + 1, 0);
      for (index_t t = 0; t < T_; ++t) ++start[at[t] - first + 1];
      for (index_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
      std::copy(start, start + buckets, sc.fill);
      for (index_t t = 0; t < T_; ++t) order[sc.fill[at[t] - first]++] = t;
      // Buckets much larger than a block are split, so every thread gets work even when the
      // tokens crowd into a few subtrees (the all-same-path input) or there is one bucket (S = 0);
      // a split bucket reads its subtree's rows once per piece, so the pieces are kept large.
      // Bucket sizes vary with the routing, hence dynamic scheduling.
      Segment* pieces = sc.pieces;
      index_t count = 0;
      const index_t piece = std::max<index_t>(1, std::min(2 * block, per_thread));
      for (index_t b = 0; b < buckets; ++b)
        for (index_t i = start[b]; i < start[b + 1]; i += piece)
          pieces[count++] = Segment{first + b, i, std::min(start[b + 1], i + piece)};
      cpu::parallel_for_dynamic(
          count, cost + (fused_output ? block * out_ : 0), [&](std::int64_t p, int slot) {
            const Segment& pc = pieces[p];
            route(x, k, order + pc.begin, sc.tmp + pc.begin, sc.lam + pc.begin, pc.end - pc.begin,
                  split, pc.node, levels, g, nullptr, leaf);
            // route() left the piece sorted by leaf.
            if (fused_output)
              for (index_t i = pc.begin; i < pc.end; ++i) emit(order[i], slot);
          });
    }
    // C for several trees, in the last tree's leaf order.
    if (!fused_output)
      cpu::parallel_for_slots(T_, per * out_,
                              [&](std::int64_t i, int slot) { emit(order[i], slot); });
    if (leaves) std::copy(leaf, leaf + T_ * trees_, leaves);
  }

  // Routes the `count` tokens idx[0..count) of tree k, which all sit at node `node` of level
  // `d`, through levels [d, d_end), depth first: at each node the group's w_in row is read once
  // (four tokens per pass over the row, single tokens for the rest), the group is split stably
  // into its two children, and the left subtree finishes before the right one starts. Depth
  // first rather than level by level because a group shrinks as it descends: once it is a few
  // tokens its x rows stay in L1 for every remaining level, where a level-by-level sweep over the
  // whole bucket re-read them from L2 at every level. Both children's rows are prefetched while
  // the node's dots run. Writes GELU(λ) of every level into g ([T x K x levels]) and, for the
  // tokens leaving at d_end, the node they reach (`at`, d_end < levels) or their leaf (`leaf`,
  // d_end == levels). On return idx[0..count) is sorted by that node, stably. tmp and lam are
  // scratch of `count` elements.
  void route(const MatrixView<const T>& x, index_t k, index_t* idx, index_t* tmp, T* lam,
             index_t count, index_t d, index_t node, index_t d_end, T* g, index_t* at,
             std::int32_t* leaf) const {
    const index_t levels = depth_ + 1, nodes = nodes_per_tree();
    const index_t row = k * nodes + node;
    const T* w = &w_in_[row * in_];
    const T bias = b_in_[row];
    const bool descend = d < depth_ && d + 1 < d_end;
    if (descend) {
      // Whole rows only when the group is large enough that its dots hide them; for a few tokens
      // the heads, as the walk does (the stream prefetcher follows a started row).
      const auto prefetch = count >= 8 ? cpu::fff::prefetch_full_row : cpu::fff::prefetch_row;
      prefetch(&w_in_[(row + node + 1) * in_], in_ * sizeof(T));
      prefetch(&w_in_[(row + node + 2) * in_], in_ * sizeof(T));
    }
    index_t i = 0;
    for (; i + 4 <= count; i += 4) {
      T out[4];
      cpu::fff::dot4(x.row(idx[i]), x.row(idx[i + 1]), x.row(idx[i + 2]), x.row(idx[i + 3]), w, in_,
                     out);
      for (int q = 0; q < 4; ++q) lam[i + q] = out[q] + bias;
    }
    for (; i < count; ++i) lam[i] = cpu::fff::dot(x.row(idx[i]), w, in_) + bias;
    for (i = 0; i < count; ++i) g[(idx[i] * trees_ + k) * levels + d] = GeluErfFn{}(lam[i]);
    if (d == depth_) {  // the leaves
      for (i = 0; i < count; ++i) leaf[idx[i] * trees_ + k] = static_cast<std::int32_t>(node);
      return;
    }
    // Stable split: λ <= 0 (a tie included) to the left child 2n+1, λ > 0 to the right 2n+2.
    index_t left = 0;
    for (i = 0; i < count; ++i) left += lam[i] > T(0) ? 0 : 1;
    index_t l = 0, r = left;
    for (i = 0; i < count; ++i) tmp[lam[i] > T(0) ? r++ : l++] = idx[i];
    std::copy(tmp, tmp + count, idx);
    if (!descend) {  // d + 1 == d_end: hand the tokens over at the next level
      for (i = 0; i < count; ++i) at[idx[i]] = 2 * node + (i < left ? 1 : 2);
      return;
    }
    if (left > 0) route(x, k, idx, tmp, lam, left, d + 1, 2 * node + 1, d_end, g, at, leaf);
    if (left < count)
      route(x, k, idx + left, tmp + left, lam + left, count - left, d + 1, 2 * node + 2, d_end, g,
            at, leaf);
  }

  index_t in_, out_, trees_, depth_;
  const T* w_in_;
  const T* b_in_;
  const T* w_out_;
};

}  // namespace detail
}  // namespace ffnkit
