// Fast feedforward (FFF, docs/math.md §6): K binary trees of depth D, each node a neuron with
// w_in[n], b_in[n] and w_out[n]; a token walks one root-to-leaf path per tree and touches K (D+1)
// of the K (2^(D+1) − 1) neurons. Hard-routed inference (λ > 0 goes right, a tie goes left) and
// UltraFastBERT-style training (gradients for the visited nodes only).
//
// FastFeedForward<T, Backend> is one class template for every backend (Cpu: float, double;
// Cuda, CudaEmu: float, __half, __nv_bfloat16), written once here: construction and its checks,
// the heap layout, counts, params(), the seeded init, the kernel choice, the workspace plans and
// every argument check. The backend's kernels come from detail::FffOps<T, Backend>
// (ffnkit/cpu/fff.hpp, ffnkit/cuda/fff.hpp). The operator contract of docs/design.md:
// check_forward, workspace_size(tokens) (every kernel), forward(x, y, ws[, stream]) or
// forward(x, y, leaves, kernel, ws[, stream]), backward_workspace_size(tokens), a const
// backward(x, leaves, dy, dx, grads, ws[, stream]), make_grads().
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class FastFeedForward;

// Which forward kernel runs: chosen by token count (kAuto), or forced (tests, benchmarks). The
// choice changes no routing decision (docs/math.md §6.5).
enum class FffKernel : int {
  kAuto = 0,
  kPerToken,  // latency-bound walk, one token at a time (few tokens)
  kGrouped,   // tokens grouped by node per level, weight rows reused across a group (many tokens)
};

}  // namespace ffnkit

#include "ffnkit/cpu/fff.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/fff.hpp"
#endif

namespace ffnkit {

template <class T, class B>
class FastFeedForward {
  using Ops = detail::FffOps<T, B>;

 public:
  using Scalar = T;
  using Backend = B;
  using Stream = detail::StreamOf<B>;
  using Grads = GradList<T, B>;

  // Token count from which kAuto takes the grouped kernel on this backend.
  static constexpr index_t kGroupedMinTokens = Ops::kGroupedMinTokens;

  FastFeedForward() = default;

  // From PyTorch-layout weights in host memory: linear_in.weight [K·nodes x N], linear_in.bias
  // [K·nodes], linear_out.weight [M x K·nodes] (no output bias). Tree k's node n is row / column
  // k·nodes + n. Non-finite weights are rejected here, once.
  FastFeedForward(index_t in_features, index_t out_features, index_t trees, index_t depth,
                  const T* linear_in_weight, const T* linear_in_bias, const T* linear_out_weight) {
    constexpr const char* where = "FastFeedForward";
    detail::check_fff_args(where, in_features, out_features, trees, depth, sizeof(T));
    check_not_null(where, "linear_in_weight", linear_in_weight);
    check_not_null(where, "linear_in_bias", linear_in_bias);
    check_not_null(where, "linear_out_weight", linear_out_weight);
    const index_t rows = trees * ((index_t(2) << depth) - 1);
    // Stored transposed, [K·nodes x M]: each node's w_out is then one contiguous row.
    std::vector<T> w_out(static_cast<std::size_t>(rows * out_features));
    for (index_t m = 0; m < out_features; ++m)
      for (index_t r = 0; r < rows; ++r)
        w_out[r * out_features + m] = linear_out_weight[m * rows + r];
    init(where, in_features, out_features, trees, depth, linear_in_weight, linear_in_bias,
         w_out.data(), "linear_out_weight");
  }

  // Another layer's weights on this backend, rounded to T once (exact when T is as wide): e.g. a
  // Cpu float layer onto the device in fp16, or a device layer back to a Cpu double layer.
  template <class U, class B2>
  explicit FastFeedForward(const FastFeedForward<U, B2>& other) {
    constexpr const char* where = "FastFeedForward";
    other.check_ready(where);
    const auto round = [](const std::vector<U>& v) {
      std::vector<T> out(v.size());
      for (std::size_t i = 0; i < v.size(); ++i)
        out[i] = detail::HostScalar<T>::from_double(detail::HostScalar<U>::to_double(v[i]));
      return out;
    };
    init(where, other.in_features(), other.out_features(), other.trees(), other.depth(),
         round(other.linear_in_weight_host()).data(), round(other.linear_in_bias_host()).data(),
         round(other.w_out_host()).data(), "w_out");
  }

  // PyTorch nn.Linear's default init, as UltraFastBERT's FFF uses: U(±1/sqrt(fan_in)) with
  // fan_in = N for linear_in (weight and bias) and K·nodes for linear_out (docs/math.md §6.7);
  // drawn in double, rounded to T once, so every backend gets the same values.
  static FastFeedForward random(index_t in_features, index_t out_features, index_t trees,
                                index_t depth, std::uint64_t seed) {
    detail::check_fff_args("FastFeedForward::random", in_features, out_features, trees, depth,
                           sizeof(T));
    const index_t rows = trees * ((index_t(2) << depth) - 1);
    const double a_in = 1.0 / std::sqrt(static_cast<double>(in_features));
    const double a_out = 1.0 / std::sqrt(static_cast<double>(rows));
    std::vector<double> wi(static_cast<std::size_t>(rows * in_features)), bi(rows),
        wo(static_cast<std::size_t>(out_features * rows));
    fill_uniform(wi.data(), rows * in_features, splitmix64(seed), -a_in, a_in);
    fill_uniform(bi.data(), rows, splitmix64(seed ^ 0xB1A5ull), -a_in, a_in);
    fill_uniform(wo.data(), out_features * rows, splitmix64(seed + 1), -a_out, a_out);
    return FastFeedForward(in_features, out_features, trees, depth,
                           detail::from_doubles<T>(wi.data(), wi.size()).data(),
                           detail::from_doubles<T>(bi.data(), bi.size()).data(),
                           detail::from_doubles<T>(wo.data(), wo.size()).data());
  }

  index_t in_features() const { return tree_.in; }
  index_t out_features() const { return tree_.out; }
  index_t trees() const { return tree_.trees; }
  index_t depth() const { return tree_.depth; }
  index_t nodes_per_tree() const { return tree_.nodes(); }
  // K (2^(D+1) − 1): every neuron of the layer.
  index_t neurons_total() const { return tree_.rows(); }
  // K (D + 1): the neurons one token touches.
  index_t neurons_per_token() const { return tree_.per_token(); }
  index_t parameter_count() const { return neurons_total() * (tree_.in + tree_.out + 1); }
  // Per touched neuron a dot of N and an axpy of M.
  double flops_per_token() const {
    return 2.0 * static_cast<double>(neurons_per_token()) *
           static_cast<double>(tree_.in + tree_.out);
  }

  // The weights in the backend's memory: linear_in.weight [K·nodes x N], linear_in.bias [K·nodes],
  // and w_out as stored, [K·nodes x M] (the transpose of PyTorch's linear_out.weight).
  const T* linear_in_weight() const { return w_in_.data(); }
  const T* linear_in_bias() const { return b_in_.data(); }
  const T* w_out() const { return w_out_.data(); }
  // Host copies of the same, and linear_out.weight in PyTorch's layout, [M x K·nodes].
  std::vector<T> linear_in_weight_host() const { return w_in_.to_host(); }
  std::vector<T> linear_in_bias_host() const { return b_in_.to_host(); }
  std::vector<T> w_out_host() const { return w_out_.to_host(); }
  std::vector<T> linear_out_weight_host() const {
    const index_t rows = neurons_total(), m = tree_.out;
    const std::vector<T> wo = w_out_host();
    std::vector<T> w(wo.size());
    for (index_t r = 0; r < rows; ++r)
      for (index_t j = 0; j < m; ++j) w[j * rows + r] = wo[r * m + j];
    return w;
  }

  // Whether forward runs the grouped kernel for `tokens` tokens and that choice. kAuto takes it
  // from kGroupedMinTokens tokens, where the backend's grouped kernel takes the layer's width.
  bool uses_grouped(index_t tokens, FffKernel kernel = FffKernel::kAuto) const {
    if (kernel == FffKernel::kGrouped) return true;
    return kernel == FffKernel::kAuto && grouped_fits() && tokens >= kGroupedMinTokens;
  }

  // Bytes of scratch forward needs for `tokens` tokens, whichever kernel runs (on the Cpu, at the
  // current OpenMP thread count). With a workspace of that size forward does not allocate; an
  // empty Workspace allocates per call.
  std::size_t workspace_size(index_t tokens) const {
    return ops().workspace_size(tokens, grouped_fits());
  }
  std::size_t backward_workspace_size(index_t tokens) const {
    return ops().backward_workspace_size(tokens);
  }

  // Everything forward checks, before any memory is touched: the layer, the views, the kernel
  // choice and the workspace.
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     Workspace ws = {}) const {
    check_forward(x, y, nullptr, FffKernel::kAuto, ws);
  }
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     const std::int32_t* leaves, FffKernel kernel, Workspace ws = {}) const {
    constexpr const char* where = "FastFeedForward::forward";
    check_ready(where);
    check_forward_views(where, tree_.in, tree_.out, x, y);
    if (kernel == FffKernel::kGrouped && !grouped_fits())
      fail(where, "the grouped kernel of backend ", B::name(),
           " keeps a node's rows in shared memory: in_features + out_features = ",
           tree_.in + tree_.out, " exceeds ", Ops::kGroupedMaxWidth);
    detail::check_workspace<std::uint64_t, B>(
        where, ws, workspace_size(x.rows), "workspace_size(x.rows)", detail::named("x", x),
        detail::named("y", y), detail::named("leaves", leaves_view(leaves, x.rows)));
  }

  // y = Σ over each token's path of GELU(λ) w_out (docs/math.md §6), the kernel chosen by kAuto.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    forward(x, y, nullptr, FffKernel::kAuto, ws, stream);
  }
  // The same, recording each token's leaf per tree in `leaves` ([tokens x K], int32, the node
  // index inside the tree in heap order; the backend's memory) when it is not null: the path is
  // the leaf's ancestors, and backward takes it back. Asynchronous on `stream` when a workspace is
  // given (the Cpu backend is synchronous).
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, std::int32_t* leaves,
               FffKernel kernel = FffKernel::kAuto, Workspace ws = {},
               const Stream& stream = Stream()) const {
    check_forward(x, y, leaves, kernel, ws);
    const bool grouped = uses_grouped(x.rows, kernel);
    const std::size_t need = ops().workspace_size(x.rows, grouped);
    detail::CallScratch<B> scratch(ws, need, stream);
    ops().forward("FastFeedForward::forward", x, y, leaves, grouped,
                  scratch.template take<unsigned char>(need), stream);
  }

  // Gradients in params() order (linear_in.weight, linear_in.bias, w_out), overwritten: rows no
  // token visited are zero. The routing is not differentiated: the paths are the ones forward
  // recorded in `leaves` ([tokens x K], the backend's memory). dx skipped when dx.data is null.
  // Given a workspace of backward_workspace_size(x.rows) bytes its scratch comes from there (the
  // gradient-list check still builds params() on the host), and on the device it is
  // stream-ordered (no host round trip). Leaves that are not leaves throw on the Cpu;
  // on the device, where checking them would read them back, they turn their tree's gradients and
  // their token's dx row NaN (check_leaves() names them).
  void backward(const MatrixView<const T>& x, const std::int32_t* leaves,
                const MatrixView<const T>& dy, const MatrixView<T>& dx, Grads& grads,
                Workspace ws = {}, const Stream& stream = Stream()) const {
    constexpr const char* where = "FastFeedForward::backward";
    check_ready(where);
    check_not_null(where, "leaves", leaves);
    check_backward_views(where, tree_.in, tree_.out, x, dy, dx);
    check_grads(where, const_cast<FastFeedForward&>(*this).params(), grads);
    const std::size_t need = backward_workspace_size(x.rows);
    detail::check_workspace<std::uint64_t, B>(where, ws, need, "backward_workspace_size(x.rows)",
                                              detail::named("x", x), detail::named("dy", dy),
                                              detail::named("dx", dx),
                                              detail::named("leaves", leaves_view(leaves, x.rows)));
    if constexpr (Ops::kHostLeaves) check_leaves(leaves, x.rows, stream);
    detail::CallScratch<B> scratch(ws, need, stream);
    ops().backward(where, x, leaves, dy, dx, grads[0].data(), grads[1].data(), grads[2].data(),
                   scratch.template take<unsigned char>(need), stream);
  }

  // Throws unless every one of the `tokens` x K recorded leaves is a leaf of a depth-D tree,
  // naming the first that is not. On the device it reads them back (synchronizing `stream`).
  void check_leaves(const std::int32_t* leaves, index_t tokens,
                    const Stream& stream = Stream()) const {
    constexpr const char* where = "FastFeedForward::backward";
    check_ready(where);
    check_not_null(where, "leaves", leaves);
    ops().check_leaves(where, leaves, tokens, stream);
  }

  // Zero-filled gradient buffers in params() order, in the backend's memory.
  Grads make_grads() const {
    const index_t rows = neurons_total();
    const index_t sizes[3] = {rows * tree_.in, rows, rows * tree_.out};
    const Stream stream;
    Grads grads;
    for (index_t n : sizes) {
      grads.push_back(detail::Runtime<B>::template allocate<T>(static_cast<std::size_t>(n)));
      detail::Runtime<B>::zero(grads.back(), stream);
    }
    stream.synchronize();
    return grads;
  }

  // Named as in PyTorch's FFF module, in the backend's memory; w_out is linear_out.weight
  // transposed ([K·nodes x M]).
  std::vector<ParamView<T>> params() {
    const index_t rows = neurons_total(), n = tree_.in, m = tree_.out;
    return {{"linear_in.weight", {rows, n}, w_in_.data(), rows * n},
            {"linear_in.bias", {rows}, b_in_.data(), rows},
            {"w_out", {rows, m}, w_out_.data(), rows * m}};
  }

  // A default-constructed or moved-from layer has no weights; calling it is an error.
  void check_ready(const char* where) const {
    if (w_in_.empty()) fail(where, "the layer is empty (default-constructed or moved from)");
  }

 private:
  // Checks and uploads the weights in the stored layout (w_out [K·nodes x M], named `w_out_name`
  // in errors).
  void init(const char* where, index_t in, index_t out, index_t trees, index_t depth, const T* w_in,
            const T* b_in, const T* w_out, const char* w_out_name) {
    const index_t rows = trees * ((index_t(2) << depth) - 1);
    detail::check_host_finite(where, "linear_in_weight", w_in, rows * in);
    detail::check_host_finite(where, "linear_in_bias", b_in, rows);
    detail::check_host_finite(where, w_out_name, w_out, rows * out);
    w_in_ = detail::Storage<T, B>(w_in, rows * in);
    b_in_ = detail::Storage<T, B>(b_in, rows);
    w_out_ = detail::Storage<T, B>(w_out, rows * out);
    tree_.in = in;
    tree_.out = out;
    tree_.trees = trees;
    tree_.depth = depth;
  }

  bool grouped_fits() const { return tree_.in + tree_.out <= Ops::kGroupedMaxWidth; }

  Ops ops() const {
    detail::FffTree<T> t = tree_;
    t.w_in = w_in_.data();
    t.b_in = b_in_.data();
    t.w_out = w_out_.data();
    return Ops(t);
  }

  MatrixView<const std::int32_t> leaves_view(const std::int32_t* leaves, index_t tokens) const {
    return MatrixView<const std::int32_t>(leaves, leaves ? tokens : 0, tree_.trees);
  }

  detail::FffTree<T> tree_;  // the shape; the weight pointers are filled in by ops()
  // Empty when default-constructed or moved from (Storage's moved-from state): the layer is empty.
  detail::Storage<T, B> w_in_, b_in_, w_out_;
};

}  // namespace ffnkit
