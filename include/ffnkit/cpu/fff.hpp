// FastFeedForward on the CPU backend (docs/math.md §6). Two forward kernels share one dot product
// and one accumulation order, so they give bit-identical leaves and outputs:
//   per-token walk  few tokens: a token's path is a chain of dependent dots; the two candidate
//                   rows of the next level are prefetched while the current dot runs;
//   grouped         many tokens, in cache-sized blocks of tokens per thread: per level the tokens
//                   that sit at the same node are contiguous (count / scan / permute, a stable
//                   binary split per node), so each w_in row is read once per group and its dot
//                   runs over 4 tokens at a time; the output is then accumulated per token over
//                   its K (D+1) rows, in register-sized chunks of y.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/cpu/parallel.hpp"
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

template <class T>
class FastFeedForward<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");

 public:
  using Scalar = T;
  using Backend = Cpu;

  FastFeedForward() = default;

  // From PyTorch-layout weights: linear_in.weight [K·nodes x N], linear_in.bias [K·nodes],
  // linear_out.weight [M x K·nodes] (no output bias). Tree k's node n is row / column k·nodes + n.
  FastFeedForward(index_t in_features, index_t out_features, index_t trees, index_t depth,
                  const T* linear_in_weight, const T* linear_in_bias, const T* linear_out_weight) {
    constexpr const char* where = "FastFeedForward";
    detail::check_fff_args(where, in_features, out_features, trees, depth, sizeof(T));
    in_ = in_features;
    out_ = out_features;
    trees_ = trees;
    depth_ = depth;
    const index_t rows = neurons_total();
    check_not_null(where, "linear_in_weight", linear_in_weight);
    check_not_null(where, "linear_in_bias", linear_in_bias);
    check_not_null(where, "linear_out_weight", linear_out_weight);
    check_finite(where, "linear_in_weight", linear_in_weight, rows * in_);
    check_finite(where, "linear_in_bias", linear_in_bias, rows);
    check_finite(where, "linear_out_weight", linear_out_weight, out_ * rows);
    w_in_.assign(linear_in_weight, linear_in_weight + rows * in_);
    b_in_.assign(linear_in_bias, linear_in_bias + rows);
    // Stored transposed, [K·nodes x M]: each node's w_out is then one contiguous row for the axpy.
    w_out_.resize(static_cast<std::size_t>(rows * out_));
    for (index_t m = 0; m < out_; ++m)
      for (index_t r = 0; r < rows; ++r) w_out_[r * out_ + m] = linear_out_weight[m * rows + r];
  }

  // PyTorch nn.Linear's default init, as UltraFastBERT's FFF uses: U(±1/sqrt(fan_in)) with
  // fan_in = N for linear_in (weight and bias) and K·nodes for linear_out. Seeded, deterministic.
  static FastFeedForward random(index_t in_features, index_t out_features, index_t trees,
                                index_t depth, std::uint64_t seed) {
    detail::check_fff_args("FastFeedForward::random", in_features, out_features, trees, depth,
                           sizeof(T));
    const index_t rows = trees * ((index_t(2) << depth) - 1);
    const double a_in = 1.0 / std::sqrt(static_cast<double>(in_features));
    const double a_out = 1.0 / std::sqrt(static_cast<double>(rows));
    std::vector<T> wi(static_cast<std::size_t>(rows * in_features)), bi(rows),
        wo(static_cast<std::size_t>(out_features * rows));
    fill_uniform(wi.data(), rows * in_features, splitmix64(seed), -a_in, a_in);
    fill_uniform(bi.data(), rows, splitmix64(seed ^ 0xB1A5ull), -a_in, a_in);
    fill_uniform(wo.data(), out_features * rows, splitmix64(seed + 1), -a_out, a_out);
    return FastFeedForward(in_features, out_features, trees, depth, wi.data(), bi.data(),
                           wo.data());
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  index_t trees() const { return trees_; }
  index_t depth() const { return depth_; }
  index_t nodes_per_tree() const { return (index_t(2) << depth_) - 1; }
  // K (2^(D+1) − 1): every neuron of the layer.
  index_t neurons_total() const { return trees_ * nodes_per_tree(); }
  // K (D + 1): the neurons one token touches.
  index_t neurons_per_token() const { return trees_ * (depth_ + 1); }
  index_t parameter_count() const { return neurons_total() * (in_ + out_ + 1); }
  // Per touched neuron a dot of N and an axpy of M.
  double flops_per_token() const {
    return 2.0 * static_cast<double>(neurons_per_token()) * static_cast<double>(in_ + out_);
  }

  const T* linear_in_weight() const { return w_in_.data(); }
  const T* linear_in_bias() const { return b_in_.data(); }
  // w_out as stored: [K·nodes x M], the transpose of PyTorch's linear_out.weight.
  const T* w_out() const { return w_out_.data(); }
  // linear_out.weight in PyTorch layout, [M x K·nodes].
  std::vector<T> linear_out_weight() const {
    const index_t rows = neurons_total();
    std::vector<T> w(static_cast<std::size_t>(out_ * rows));
    for (index_t r = 0; r < rows; ++r)
      for (index_t m = 0; m < out_; ++m) w[m * rows + r] = w_out_[r * out_ + m];
    return w;
  }

  // Token counts from which kAuto takes the grouped kernel. Measured (docs/fff.md, 1 thread,
  // d = 768, D = 11): the per-token walk wins at 1 token, the grouped kernel from 16 on; counts
  // in between were not measured.
  static constexpr index_t kGroupedMinTokens = 16;

  // Bytes of scratch forward needs for `tokens` tokens, either kernel, at the current OpenMP
  // thread count: the grouped kernel's per-token routing state, and per thread one path's rows.
  std::size_t workspace_size(index_t tokens) const {
    return Scratch::layout(tokens, trees_ * (depth_ + 1), cpu::max_threads(), nullptr).bytes;
  }

  // y = Σ_k Σ_{n on token's path in tree k} GELU(λ_n) w_out[n] (docs/math.md §6). `leaves`, when
  // given, receives each token's leaf per tree ([tokens x K], node index inside the tree, heap
  // order): the path is the leaf's ancestors, and backward() takes it back. With a workspace of
  // workspace_size(tokens) bytes the call does not allocate; an empty one allocates per call.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, std::int32_t* leaves = nullptr,
               FffKernel kernel = FffKernel::kAuto, Workspace workspace = {}) const {
    constexpr const char* where = "FastFeedForward::forward";
    check_ready(where);
    detail::check_fff_forward(where, in_, out_, x, y);
    const index_t per = trees_ * (depth_ + 1);
    const int threads = cpu::max_threads();
    const std::size_t need = Scratch::layout(x.rows, per, threads, nullptr).bytes;
    std::unique_ptr<std::uint64_t[]> owned;
    void* base = workspace.data;
    if (base) {
      if (workspace.bytes < need)
        fail(where, "workspace.bytes = ", workspace.bytes, ", need workspace_size(", x.rows,
             ") = ", need, " (for ", threads, " threads)");
      if (reinterpret_cast<std::uintptr_t>(base) % alignof(std::uint64_t) != 0)
        fail(where, "workspace.data is not aligned to ", alignof(std::uint64_t), " bytes");
    } else {
      owned.reset(new std::uint64_t[need / sizeof(std::uint64_t) + 1]);
      base = owned.get();
    }
    const Scratch sc = Scratch::layout(x.rows, per, threads, static_cast<char*>(base));
    const bool grouped = kernel == FffKernel::kGrouped ||
                         (kernel == FffKernel::kAuto && x.rows >= kGroupedMinTokens);
    if (grouped) {
      forward_grouped(x, y, leaves, sc);
    } else {
      cpu::parallel_for_slots(x.rows, per * (in_ + out_), [&](std::int64_t t, int slot) {
        walk(x.row(t), y.row(t), leaves ? leaves + t * trees_ : nullptr, sc.rows + slot * per,
             sc.gpath + slot * per);
      });
    }
  }

  // Gradients in params() order (linear_in.weight, linear_in.bias, w_out), overwritten; only the
  // rows of nodes some token visited can be non-zero. The routing is not differentiated: the
  // paths are the ones forward recorded in `leaves`. dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const std::int32_t* leaves,
                const MatrixView<const T>& dy, const MatrixView<T>& dx, GradList<T>& grads) const {
    constexpr const char* where = "FastFeedForward::backward";
    check_ready(where);
    detail::check_fff_backward(where, in_, out_, x, leaves, dy, dx);
    check_grads(where, const_cast<FastFeedForward*>(this)->params(), grads);
    detail::check_fff_leaves(where, leaves, x.rows, trees_, depth_);
    const index_t T_ = x.rows, levels = depth_ + 1, per = trees_ * levels;
    const index_t nodes = nodes_per_tree();
    // Pass 1, parallel over tokens: recompute λ on the fixed path, keep GELU(λ) and dλ, write dx.
    std::vector<T> g(static_cast<std::size_t>(T_ * per)), dl(g.size());
    std::vector<std::int32_t> row_of(g.size());
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
    const index_t rows = neurons_total();
    std::vector<index_t> start(static_cast<std::size_t>(rows + 1), 0), order(g.size());
    for (std::int32_t r : row_of) ++start[r + 1];
    for (index_t r = 0; r < rows; ++r) start[r + 1] += start[r];
    {
      std::vector<index_t> fillp(start.begin(), start.end() - 1);
      for (index_t i = 0; i < static_cast<index_t>(row_of.size()); ++i)
        order[fillp[row_of[i]]++] = i;
    }
    for (auto& gr : grads) std::fill(gr.begin(), gr.end(), T(0));
    T* gwi = grads[0].data();
    T* gbi = grads[1].data();
    T* gwo = grads[2].data();
    cpu::parallel_for(rows, (in_ + out_) * std::max<index_t>(1, T_ * per / rows),
                      [&](std::int64_t r) {
                        for (index_t s = start[r]; s < start[r + 1]; ++s) {
                          const index_t i = order[s], t = i / per;
                          cpu::fff::axpy(dl[i], x.row(t), gwi + r * in_, in_);
                          gbi[r] += dl[i];
                          cpu::fff::axpy(g[i], dy.row(t), gwo + r * out_, out_);
                        }
                      });
  }

  // Named as in PyTorch's FFF module; w_out is linear_out.weight transposed ([K·nodes x M]).
  std::vector<ParamView<T>> params() {
    const index_t rows = neurons_total();
    return {{"linear_in.weight", {rows, in_}, w_in_.data(), rows * in_},
            {"linear_in.bias", {rows}, b_in_.data(), rows},
            {"w_out", {rows, out_}, w_out_.data(), rows * out_}};
  }

 private:
  void check_ready(const char* where) const {
    if (in_ == 0) fail(where, "the layer is empty (default-constructed or moved from)");
  }

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
      std::size_t off = 0;
      const auto take = [&](auto*& ptr, std::size_t count) {
        using P = std::remove_reference_t<decltype(*ptr)>;
        off = (off + alignof(P) - 1) / alignof(P) * alignof(P);
        ptr = base ? reinterpret_cast<P*>(base + off) : nullptr;
        off += count * sizeof(P);
      };
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
      sc.bytes = off;
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

  index_t in_ = 0, out_ = 0, trees_ = 0, depth_ = 0;
  std::vector<T> w_in_, b_in_, w_out_;
};

}  // namespace ffnkit
