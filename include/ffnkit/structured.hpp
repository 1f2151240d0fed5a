// The structured linear layers (docs/math.md §3), each one class template over scalar and backend
// (Cpu, Cuda, CudaEmu), written once against the backend's LinearOps (detail/backend.hpp):
//   LowRankLinear        y = U (V x) + b                       params R (N + M)
//   BlockDiagonalLinear  y_b = W_b x_b                         params N M / B
//   BlockDenseLinear     y = U (blockdiag(V_1..V_B) x) + b     params R (M + N/B)
//   BlockShuffleLinear   Monarch: two block-diagonal stages with a fixed shuffle
// Each has the operator contract of docs/design.md: check_forward, workspace_size(tokens) and
// forward(x, y, ws[, act][, stream]); backward_workspace_size(tokens) and a const
// backward(x, dy, dx, grads, ws[, stream]) that, given its workspace, neither allocates nor
// synchronizes; make_grads(); params(); materialize() (the equivalent dense [out x in] weight, on
// the host); parameter_count() and flops_per_token(). Constructors take host weights in PyTorch's
// layouts. StructuredFFN<Up, Down> (detail/structured_ffn.hpp) puts two of them around an
// activation, or SwiGLU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/linear_ops.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/detail/init.hpp"
#include "ffnkit/detail/structured_checks.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/linear_ops.hpp"
#endif

namespace ffnkit {
namespace detail {

// True while the object holds weights: false when default-constructed, and reset by a move, so a
// moved-from layer reports itself empty.
class LiveFlag {
 public:
  LiveFlag() = default;
  explicit LiveFlag(bool live) : live_(live) {}
  LiveFlag(const LiveFlag&) = default;
  LiveFlag& operator=(const LiveFlag&) = default;
  LiveFlag(LiveFlag&& o) noexcept : live_(std::exchange(o.live_, false)) {}
  LiveFlag& operator=(LiveFlag&& o) noexcept {
    live_ = std::exchange(o.live_, false);
    return *this;
  }
  explicit operator bool() const { return live_; }

 private:
  bool live_ = false;
};

// What the four structured layers share on every backend: widths, the bias, the checks of every
// call, gradients. Layer is the derived class (for params() in make_grads and the grads check).
template <class T, class B, class Layer>
class StructuredLinearBase {
 public:
  using Scalar = T;
  using Backend = B;
  using Stream = StreamOf<B>;
  using Grads = GradList<T, B>;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return !bias_.empty(); }
  const T* bias() const { return has_bias() ? bias_.data() : nullptr; }  // the backend's memory
  std::vector<T> bias_host() const { return bias_.to_host(); }

  // Zero-filled gradient buffers in params() order, in the backend's memory.
  Grads make_grads() const {
    Grads g;
    const Stream stream;
    for (const auto& p : const_cast<Layer&>(self()).params()) {
      g.push_back(Runtime<B>::template allocate<T>(static_cast<std::size_t>(p.size)));
      Runtime<B>::zero(g.back(), stream);
    }
    stream.synchronize();
    return g;
  }

  // A default-constructed or moved-from layer has no weights; calling it is an error, not a null
  // pointer handed to a GEMM.
  void check_ready(const char* where) const {
    if (!live_) fail(where, "the layer is empty (default-constructed or moved from)");
  }

  // Everything forward checks, before any memory is touched: the layer, the views, the workspace.
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     Workspace ws = {}) const {
    check_call(Layer::kForward, x, y, ws, self().workspace_size(x.rows));
  }

  // y = x Wᵀ + b (the layer's own forward without an activation).
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    self().forward(x, y, ws, Activation::kIdentity, stream);
  }

 protected:
  using Ops = LinearOps<T, B>;

  void init_base(const char* where, index_t in, index_t out, const T* bias) {
    if (bias) {
      check_host_finite(where, "bias", bias, out);
      bias_ = Storage<T, B>(bias, out);
    }
    in_ = in;
    out_ = out;
    live_ = LiveFlag(true);
  }

  static Storage<T, B> upload_factor(const char* where, const char* name, const T* p,
                                     index_t count) {
    check_not_null(where, name, p);
    check_host_finite(where, name, p, count);
    return Storage<T, B>(p, count);
  }

  void check_call(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y,
                  Workspace ws, std::size_t need) const {
    check_ready(where);
    check_forward_views(where, in_, out_, x, y);
    check_workspace<T, B>(where, ws, need, "workspace_size(x.rows)", named("x", x), named("y", y));
  }

  void check_backward_call(const char* where, const MatrixView<const T>& x,
                           const MatrixView<const T>& dy, const MatrixView<T>& dx,
                           const Grads& grads, Workspace ws, std::size_t need) const {
    check_ready(where);
    check_backward_views(where, in_, out_, x, dy, dx);
    check_grads(where, const_cast<Layer&>(self()).params(), grads);
    check_workspace<T, B>(where, ws, need, "backward_workspace_size(x.rows)", named("x", x),
                          named("dy", dy), named("dx", dx));
  }

  // The bias gradient Σ_t dy[t, :] into the last gradient buffer.
  void bias_backward(const char* where, const MatrixView<const T>& dy, Grads& grads,
                     const Stream& stream) const {
    if (has_bias()) Ops::bias_grad(where, dy, grads.back().data(), stream);
  }

  void append_bias_param(std::vector<ParamView<T>>& p) {
    if (has_bias()) p.push_back({"bias", {out_}, bias_.data(), out_});
  }

  // Seeded N(0, stddev²) bias in double, rounded once; empty when the layer has none.
  static std::vector<T> random_bias(index_t out, std::uint64_t seed, bool with_bias,
                                    double stddev) {
    if (!with_bias) return {};
    std::vector<double> b(static_cast<std::size_t>(out));
    fill_normal(b.data(), out, splitmix64(seed ^ 0xB1A5ull), 0.0, stddev);
    return from_doubles<T>(b.data(), b.size());
  }
  static const T* ptr_or_null(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }

  // A factor's host copy in double, for materialize().
  static MatrixXdRow host_matrix(const Storage<T, B>& s, index_t rows, index_t cols) {
    const std::vector<double> d = to_doubles(s.to_host());
    return Eigen::Map<const MatrixXdRow>(d.data(), rows, cols);
  }
  static std::vector<T> rounded(const MatrixXdRow& w) {
    return from_doubles<T>(w.data(), static_cast<std::size_t>(w.size()));
  }

  index_t in_ = 0;
  index_t out_ = 0;
  Storage<T, B> bias_;
  LiveFlag live_;

 private:
  const Layer& self() const { return static_cast<const Layer&>(*this); }
};

// Orthonormal blocks [blocks x rows x cols] in double (docs/math.md §3.9.3), block b from seed
// `seed + b`.
inline std::vector<double> orthonormal_blocks(index_t blocks, index_t rows, index_t cols,
                                              std::uint64_t seed) {
  std::vector<double> w;
  for (index_t b = 0; b < blocks; ++b) {
    const MatrixXdRow m = orthonormal(rows, cols, splitmix64(seed + b));
    w.insert(w.end(), m.data(), m.data() + m.size());
  }
  return w;
}

}  // namespace detail

namespace detail {

// LowRank and BlockDense are one computation, y = U (V x) + b with V block-diagonal
// [blocks, R/B, N/B] (LowRank: one block, V dense [R x N]) and U [M x R]: written once here.
template <class T, class B, class Layer>
class FactoredLinearBase : public StructuredLinearBase<T, B, Layer> {
  using Base = StructuredLinearBase<T, B, Layer>;

 public:
  using Base::forward;
  using typename Base::Grads;
  using typename Base::Stream;

  index_t rank() const { return rank_; }
  index_t parameter_count() const {
    return rank_ * (this->out_ + this->in_ / blocks_) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * rank_ * (this->out_ + this->in_ / blocks_); }
  // h = V x.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * rank_) * sizeof(T);
  }
  // h and dh.
  std::size_t backward_workspace_size(index_t tokens) const { return 2 * workspace_size(tokens); }

  // y = act(U (V x) + b); `act` lets an FFN fuse its activation into the layer's last pass.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws, Activation act,
               const Stream& stream = Stream()) const {
    constexpr const char* where = Layer::kForward;
    this->check_forward(x, y, ws);
    CallScratch<B> scratch(ws, workspace_size(x.rows), stream);
    const MatrixView<T> h(scratch.template take<T>(x.rows * rank_), x.rows, rank_);
    first_stage(where, x, h, stream);
    Ops::linear(where, h, u_.data(), this->out_, this->bias(), act, y, stream);
  }

  // Gradients in params() order: V, U, bias. dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    constexpr const char* where = Layer::kBackward;
    const index_t t = x.rows;
    this->check_backward_call(where, x, dy, dx, grads, ws, backward_workspace_size(t));
    CallScratch<B> scratch(ws, backward_workspace_size(t), stream);
    const MatrixView<T> h(scratch.template take<T>(t * rank_), t, rank_),
        dh(scratch.template take<T>(t * rank_), t, rank_);
    first_stage(where, x, h, stream);  // recompute h = V x
    Ops::gemm_xwt_backward(where, h, dy, u_.data(), grads[1].data(), dh, false, stream);
    if (blocks_ == 1) {
      Ops::gemm_xwt_backward(where, x, dh, v_.data(), grads[0].data(), dx, false, stream);
    } else {
      Ops::block_xwt_backward(where, x, dh, v_.data(), blocks_, grads[0].data(), dx, stream);
    }
    this->bias_backward(where, dy, grads, stream);
  }

  // W[:, b p .. (b+1) p) = U[:, b r .. (b+1) r) V_b (LowRank: W = U V), the equivalent dense
  // weight [out x in] on the host, in double, rounded once.
  std::vector<T> materialize() const {
    const index_t r = rank_ / blocks_, p = this->in_ / blocks_;
    const MatrixXdRow u = Base::host_matrix(u_, this->out_, rank_);
    const MatrixXdRow v = Base::host_matrix(v_, rank_, p);  // the blocks stacked
    MatrixXdRow w(this->out_, this->in_);
    for (index_t b = 0; b < blocks_; ++b)
      w.middleCols(b * p, p).noalias() = u.middleCols(b * r, r) * v.middleRows(b * r, r);
    return Base::rounded(w);
  }

 protected:
  using typename Base::Ops;

  void init_factors(const char* where, index_t in, index_t out, index_t blocks, index_t rank,
                    const char* v_name, const T* v, const char* u_name, const T* u, const T* bias) {
    v_ = Base::upload_factor(where, v_name, v, rank * in / blocks);
    u_ = Base::upload_factor(where, u_name, u, out * rank);
    blocks_ = blocks;
    rank_ = rank;
    this->init_base(where, in, out, bias);
  }

  void first_stage(const char* where, const MatrixView<const T>& x, const MatrixView<T>& h,
                   const Stream& stream) const {
    if (blocks_ == 1) {
      Ops::gemm_xwt(where, x, v_.data(), rank_, h, false, stream);
    } else {
      Ops::block_xwt(where, x, v_.data(), blocks_, h, stream);
    }
  }

  index_t blocks_ = 1;
  index_t rank_ = 0;
  Storage<T, B> v_, u_;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// LowRank (docs/math.md §3.2): y = U (V x) + b, V = lr1 [R x N], U = lr2 [M x R].
// ---------------------------------------------------------------------------------------------
template <class T, class Backend = Cpu>
class LowRankLinear : public detail::FactoredLinearBase<T, Backend, LowRankLinear<T, Backend>> {
  using Base = detail::FactoredLinearBase<T, Backend, LowRankLinear<T, Backend>>;

 public:
  static constexpr const char* kForward = "LowRankLinear::forward";
  static constexpr const char* kBackward = "LowRankLinear::backward";

  LowRankLinear() = default;
  LowRankLinear(index_t in_features, index_t out_features, index_t rank, const T* lr1, const T* lr2,
                const T* bias) {
    constexpr const char* where = "LowRankLinear";
    detail::check_lowrank_args(where, in_features, out_features, rank);
    this->init_factors(where, in_features, out_features, 1, rank, "lr1", lr1, "lr2", lr2, bias);
  }

  // Spectral init (docs/math.md §3.9.2): U V is the best rank-R approximation of a dense
  // N(0, stddev²) draw; computed in double, rounded once, the same on every backend.
  static LowRankLinear random(index_t in_features, index_t out_features, index_t rank,
                              std::uint64_t seed, bool with_bias = true, double stddev = 0.02) {
    detail::check_lowrank_args("LowRankLinear::random", in_features, out_features, rank);
    detail::MatrixXdRow u, v;
    detail::spectral_factors(out_features, in_features, rank, seed, stddev, &u, &v);
    const auto b = Base::random_bias(out_features, seed, with_bias, stddev);
    return LowRankLinear(in_features, out_features, rank, Base::rounded(v).data(),
                         Base::rounded(u).data(), Base::ptr_or_null(b));
  }

  const T* lr1() const { return this->v_.data(); }
  const T* lr2() const { return this->u_.data(); }

  // lr1 [R x N], lr2 [M x R], bias.
  std::vector<ParamView<T>> params() {
    const index_t r = this->rank_;
    std::vector<ParamView<T>> p = {{"lr1", {r, this->in_}, this->v_.data(), r * this->in_},
                                   {"lr2", {this->out_, r}, this->u_.data(), this->out_ * r}};
    this->append_bias_param(p);
    return p;
  }
};

// ---------------------------------------------------------------------------------------------
// BlockDiagonal (docs/math.md §3.3): y_b = W_b x_b, W: [B, M/B, N/B].
// ---------------------------------------------------------------------------------------------
template <class T, class Backend = Cpu>
class BlockDiagonalLinear
    : public detail::StructuredLinearBase<T, Backend, BlockDiagonalLinear<T, Backend>> {
  using Base = detail::StructuredLinearBase<T, Backend, BlockDiagonalLinear<T, Backend>>;
  using typename Base::Ops;

 public:
  using Base::forward;
  using typename Base::Grads;
  using typename Base::Stream;

  BlockDiagonalLinear() = default;
  BlockDiagonalLinear(index_t in_features, index_t out_features, index_t blocks, const T* weight,
                      const T* bias) {
    constexpr const char* where = "BlockDiagonalLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    w_ = Base::upload_factor(where, "weight", weight, out_features * in_features / blocks);
    blocks_ = blocks;
    this->init_base(where, in_features, out_features, bias);
  }

  // Orthonormal blocks (docs/math.md §3.9.3).
  static BlockDiagonalLinear random(index_t in_features, index_t out_features, index_t blocks,
                                    std::uint64_t seed, bool with_bias = true,
                                    double bias_stddev = 0.02) {
    detail::check_block_diagonal_args("BlockDiagonalLinear::random", in_features, out_features,
                                      blocks);
    const auto w =
        detail::orthonormal_blocks(blocks, out_features / blocks, in_features / blocks, seed);
    const auto b = Base::random_bias(out_features, seed, with_bias, bias_stddev);
    return BlockDiagonalLinear(in_features, out_features, blocks,
                               detail::from_doubles<T>(w.data(), w.size()).data(),
                               Base::ptr_or_null(b));
  }

  index_t blocks() const { return blocks_; }
  const T* weight() const { return w_.data(); }
  index_t parameter_count() const { return w_.size() + (this->has_bias() ? this->out_ : 0); }
  double flops_per_token() const { return 2.0 * static_cast<double>(w_.size()); }
  std::size_t workspace_size(index_t) const { return 0; }
  std::size_t backward_workspace_size(index_t) const { return 0; }

  static constexpr const char* kForward = "BlockDiagonalLinear::forward";

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws, Activation act,
               const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDiagonalLinear::forward";
    this->check_forward(x, y, ws);
    Ops::block_xwt(where, x, w_.data(), blocks_, y, stream);
    Ops::bias_activation(where, y, this->bias(), act, stream);
  }

  // Gradients in params() order: weight, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDiagonalLinear::backward";
    this->check_backward_call(where, x, dy, dx, grads, ws, 0);
    Ops::block_xwt_backward(where, x, dy, w_.data(), blocks_, grads[0].data(), dx, stream);
    this->bias_backward(where, dy, grads, stream);
  }

  std::vector<ParamView<T>> params() {
    const index_t s = this->out_ / blocks_, p = this->in_ / blocks_;
    std::vector<ParamView<T>> v = {{"weight", {blocks_, s, p}, w_.data(), w_.size()}};
    this->append_bias_param(v);
    return v;
  }

  std::vector<T> materialize() const {
    const index_t s = this->out_ / blocks_, p = this->in_ / blocks_;
    const std::vector<T> blocks = w_.to_host();
    std::vector<T> w(static_cast<std::size_t>(this->out_ * this->in_),
                     detail::HostScalar<T>::from_double(0.0));
    for (index_t b = 0; b < blocks_; ++b)
      for (index_t i = 0; i < s; ++i)
        std::copy_n(blocks.data() + (b * s + i) * p, p, w.data() + (b * s + i) * this->in_ + b * p);
    return w;
  }

 private:
  index_t blocks_ = 0;
  detail::Storage<T, Backend> w_;
};

// ---------------------------------------------------------------------------------------------
// BlockDense (docs/math.md §3.4): y = U (blockdiag(V_1..V_B) x) + b, V = blkdiag [B, R/B, N/B],
// U = lr [M x R]. No shuffle between the stages.
// ---------------------------------------------------------------------------------------------
template <class T, class Backend = Cpu>
class BlockDenseLinear
    : public detail::FactoredLinearBase<T, Backend, BlockDenseLinear<T, Backend>> {
  using Base = detail::FactoredLinearBase<T, Backend, BlockDenseLinear<T, Backend>>;

 public:
  static constexpr const char* kForward = "BlockDenseLinear::forward";
  static constexpr const char* kBackward = "BlockDenseLinear::backward";

  BlockDenseLinear() = default;
  BlockDenseLinear(index_t in_features, index_t out_features, index_t blocks, index_t rank,
                   const T* blkdiag, const T* lr, const T* bias) {
    constexpr const char* where = "BlockDenseLinear";
    detail::check_block_dense_args(where, in_features, out_features, blocks, rank);
    this->init_factors(where, in_features, out_features, blocks, rank, "blkdiag", blkdiag, "lr", lr,
                       bias);
  }

  // Each block of V and U itself orthonormal (docs/math.md §3.9.3).
  static BlockDenseLinear random(index_t in_features, index_t out_features, index_t blocks,
                                 index_t rank, std::uint64_t seed, bool with_bias = true,
                                 double bias_stddev = 0.02) {
    detail::check_block_dense_args("BlockDenseLinear::random", in_features, out_features, blocks,
                                   rank);
    const auto v = detail::orthonormal_blocks(blocks, rank / blocks, in_features / blocks, seed);
    const detail::MatrixXdRow u = detail::orthonormal(out_features, rank, splitmix64(seed - 1));
    const auto b = Base::random_bias(out_features, seed, with_bias, bias_stddev);
    return BlockDenseLinear(in_features, out_features, blocks, rank,
                            detail::from_doubles<T>(v.data(), v.size()).data(),
                            Base::rounded(u).data(), Base::ptr_or_null(b));
  }

  index_t blocks() const { return this->blocks_; }
  const T* blkdiag() const { return this->v_.data(); }
  const T* lr() const { return this->u_.data(); }

  // blkdiag [B, R/B, N/B], lr [M x R], bias.
  std::vector<ParamView<T>> params() {
    const index_t b = this->blocks_, r = this->rank_;
    std::vector<ParamView<T>> v = {
        {"blkdiag", {b, r / b, this->in_ / b}, this->v_.data(), this->v_.size()},
        {"lr", {this->out_, r}, this->u_.data(), this->u_.size()}};
    this->append_bias_param(v);
    return v;
  }
};

// ---------------------------------------------------------------------------------------------
// BlockShuffle / Monarch (docs/math.md §3.5): stage 1 blkdiag1 [B, q, N/B] with q = min(N, M)/B;
// stage-2 block b reads stage-1 outputs b, b+B, b+2B, ...; stage 2 blkdiag2 [B, M/B, q]; element
// s of stage-2 block b lands at output s B + b. Each permutation is one transpose pass; the output
// one also adds the bias and applies the activation.
// ---------------------------------------------------------------------------------------------
template <class T, class Backend = Cpu>
class BlockShuffleLinear
    : public detail::StructuredLinearBase<T, Backend, BlockShuffleLinear<T, Backend>> {
  using Base = detail::StructuredLinearBase<T, Backend, BlockShuffleLinear<T, Backend>>;
  using typename Base::Ops;

 public:
  using Base::forward;
  using typename Base::Grads;
  using typename Base::Stream;

  BlockShuffleLinear() = default;
  BlockShuffleLinear(index_t in_features, index_t out_features, index_t blocks, const T* blkdiag1,
                     const T* blkdiag2, const T* bias) {
    constexpr const char* where = "BlockShuffleLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    const index_t q = std::min(in_features, out_features) / blocks;
    w1_ = Base::upload_factor(where, "blkdiag1", blkdiag1, blocks * q * (in_features / blocks));
    w2_ = Base::upload_factor(where, "blkdiag2", blkdiag2, blocks * (out_features / blocks) * q);
    blocks_ = blocks;
    q_ = q;
    this->init_base(where, in_features, out_features, bias);
  }

  static BlockShuffleLinear random(index_t in_features, index_t out_features, index_t blocks,
                                   std::uint64_t seed, bool with_bias = true,
                                   double bias_stddev = 0.02) {
    detail::check_block_diagonal_args("BlockShuffleLinear::random", in_features, out_features,
                                      blocks);
    const index_t q = std::min(in_features, out_features) / blocks;
    const index_t p = in_features / blocks, s = out_features / blocks;
    const auto w1 = detail::orthonormal_blocks(blocks, q, p, seed);
    const auto w2 = detail::orthonormal_blocks(blocks, s, q, seed + 1000);
    const auto b = Base::random_bias(out_features, seed, with_bias, bias_stddev);
    return BlockShuffleLinear(
        in_features, out_features, blocks, detail::from_doubles<T>(w1.data(), w1.size()).data(),
        detail::from_doubles<T>(w2.data(), w2.size()).data(), Base::ptr_or_null(b));
  }

  index_t blocks() const { return blocks_; }
  const T* blkdiag1() const { return w1_.data(); }
  const T* blkdiag2() const { return w2_.data(); }
  index_t parameter_count() const {
    return w1_.size() + w2_.size() + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(w1_.size() + w2_.size()); }
  // Stage-1 output, its permutation, and the stage-2 output before the output permutation.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * (2 * blocks_ * q_ + this->out_)) * sizeof(T);
  }
  // The same plus the stage-1 gradient.
  std::size_t backward_workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * (3 * blocks_ * q_ + this->out_)) * sizeof(T);
  }

  static constexpr const char* kForward = "BlockShuffleLinear::forward";

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws, Activation act,
               const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockShuffleLinear::forward";
    this->check_forward(x, y, ws);
    const index_t bq = blocks_ * q_, t = x.rows;
    detail::CallScratch<Backend> scratch(ws, workspace_size(t), stream);
    const MatrixView<T> z(scratch.template take<T>(t * bq), t, bq),
        zp(scratch.template take<T>(t * bq), t, bq),
        v(scratch.template take<T>(t * this->out_), t, this->out_);
    stage1(where, x, z, zp, stream);
    if (blocks_ == 1) {  // both permutations are the identity
      Ops::block_xwt(where, zp, w2_.data(), blocks_, y, stream);
      Ops::bias_activation(where, y, this->bias(), act, stream);
      return;
    }
    Ops::block_xwt(where, zp, w2_.data(), blocks_, v, stream);
    // y[t, i B + b] = act(v[t, b s + i] + bias): each v row is a [B x s] matrix, transposed.
    Ops::transpose_blocks(where, v, y, blocks_, this->out_ / blocks_, this->bias(), act, stream);
  }

  // Gradients in params() order: blkdiag1, blkdiag2, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockShuffleLinear::backward";
    const index_t bq = blocks_ * q_, t = x.rows, s = this->out_ / blocks_;
    this->check_backward_call(where, x, dy, dx, grads, ws, backward_workspace_size(t));
    detail::CallScratch<Backend> scratch(ws, backward_workspace_size(t), stream);
    const MatrixView<T> z(scratch.template take<T>(t * bq), t, bq),
        zp(scratch.template take<T>(t * bq), t, bq), dz(scratch.template take<T>(t * bq), t, bq),
        dv(scratch.template take<T>(t * this->out_), t, this->out_);
    stage1(where, x, z, zp, stream);  // recompute the permuted stage-1 output
    MatrixView<const T> dvc = dy;
    if (blocks_ > 1) {
      // dv[t, b s + i] = dy[t, i B + b]: each dy row is an [s x B] matrix, transposed.
      Ops::transpose_blocks(where, dy, dv, s, blocks_, nullptr, Activation::kIdentity, stream);
      dvc = dv;
    }
    // d(zp) into z's buffer (z itself is no longer needed), then back to stage-1 order in dz.
    Ops::block_xwt_backward(where, zp, dvc, w2_.data(), blocks_, grads[1].data(), z, stream);
    MatrixView<const T> dzc = z;
    if (blocks_ > 1) {
      Ops::transpose_blocks(where, z, dz, blocks_, q_, nullptr, Activation::kIdentity, stream);
      dzc = dz;
    }
    Ops::block_xwt_backward(where, x, dzc, w1_.data(), blocks_, grads[0].data(), dx, stream);
    this->bias_backward(where, dy, grads, stream);
  }

  std::vector<ParamView<T>> params() {
    const index_t p = this->in_ / blocks_, s = this->out_ / blocks_;
    std::vector<ParamView<T>> v = {{"blkdiag1", {blocks_, q_, p}, w1_.data(), w1_.size()},
                                   {"blkdiag2", {blocks_, s, q_}, w2_.data(), w2_.size()}};
    this->append_bias_param(v);
    return v;
  }

  // W[i B + b2, b1 p + j] = Σ_r w2[b2][i][r] w1[b1][m mod q][j] over r, with m = r B + b2 in
  // stage-1 block b1 = m div q (docs/math.md §3.5); in double, rounded once.
  std::vector<T> materialize() const {
    const index_t p = this->in_ / blocks_, s = this->out_ / blocks_;
    const std::vector<double> w1 = detail::to_doubles(w1_.to_host()),
                              w2 = detail::to_doubles(w2_.to_host());
    detail::MatrixXdRow w = detail::MatrixXdRow::Zero(this->out_, this->in_);
    for (index_t b2 = 0; b2 < blocks_; ++b2)
      for (index_t i = 0; i < s; ++i)
        for (index_t r = 0; r < q_; ++r) {
          const index_t m = r * blocks_ + b2, b1 = m / q_, i1 = m % q_;
          const double a = w2[(b2 * s + i) * q_ + r];
          double* row = w.data() + (i * blocks_ + b2) * this->in_ + b1 * p;
          const double* src = w1.data() + (b1 * q_ + i1) * p;
          for (index_t j = 0; j < p; ++j) row[j] += a * src[j];
        }
    return Base::rounded(w);
  }

 private:
  // Stage 1 into z, then zp[t, b q + r] = z[t, r B + b] (each z row a [q x B] matrix, transposed)
  // so stage-2 block b reads contiguous columns. With one block zp is z's permutation-free copy.
  void stage1(const char* where, const MatrixView<const T>& x, const MatrixView<T>& z,
              const MatrixView<T>& zp, const Stream& stream) const {
    if (blocks_ == 1) {
      Ops::block_xwt(where, x, w1_.data(), blocks_, zp, stream);
      return;
    }
    Ops::block_xwt(where, x, w1_.data(), blocks_, z, stream);
    Ops::transpose_blocks(where, z, zp, q_, blocks_, nullptr, Activation::kIdentity, stream);
  }

  index_t blocks_ = 0;
  index_t q_ = 0;
  detail::Storage<T, Backend> w1_, w2_;
};

}  // namespace ffnkit

#include "ffnkit/cpu/premerge.hpp"
#include "ffnkit/detail/structured_ffn.hpp"
