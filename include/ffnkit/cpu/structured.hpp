// LowRank, BlockDiagonal, BlockDense and BlockShuffle linear layers on the CPU backend
// (docs/math.md §3): forward, backward, materialize. Products go through cpu/structured_ops.hpp:
// one GEMM per factor or per block, on strided views of the caller's buffers.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/init.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/cpu/structured_ops.hpp"
#include "ffnkit/detail/structured_checks.hpp"

namespace ffnkit {
namespace detail {

// What every structured layer on the CPU shares: widths, the bias, argument checks, scratch.
template <class T>
class CpuStructuredBase {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");

 public:
  using Scalar = T;
  using Backend = Cpu;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return bias_.size() != 0; }
  const T* bias() const { return has_bias() ? bias_.data() : nullptr; }
  std::vector<T> bias_host() const { return std::vector<T>(bias(), bias() + bias_.size()); }

 protected:
  void init_base(const char* where, index_t in, index_t out, const T* bias) {
    check_positive(where, "in_features", in);
    check_positive(where, "out_features", out);
    in_ = in;
    out_ = out;
    if (bias) {
      check_finite(where, "bias", bias, out);
      bias_ = Eigen::Map<const cpu::Vector<T>>(bias, out);
    }
  }

  static std::vector<T> copy_factor(const char* where, const char* name, const T* p,
                                    index_t count) {
    check_not_null(where, name, p);
    check_finite(where, name, p, count);
    return std::vector<T>(p, p + count);
  }

  void check_ready(const char* where) const {
    if (in_ == 0) fail(where, "the layer is empty (default-constructed or moved from)");
  }

  void check_forward(const char* where, const MatrixView<const T>& x,
                     const MatrixView<T>& y) const {
    check_ready(where);
    check_structured_forward(where, in_, out_, x, y);
  }

  void check_backward(const char* where, const MatrixView<const T>& x,
                      const MatrixView<const T>& dy, const MatrixView<T>& dx) const {
    check_ready(where);
    check_structured_backward(where, in_, out_, x, dy, dx);
  }

  // Scratch of `elements` T: the caller's workspace when given (checked), else owned.
  static T* scratch(const char* where, Workspace ws, std::size_t elements,
                    std::unique_ptr<T[]>& owned) {
    if (elements == 0) return nullptr;
    if (ws.data == nullptr) {
      owned.reset(new T[elements]);
      return owned.get();
    }
    if (ws.bytes < elements * sizeof(T))
      fail(where, "workspace.bytes = ", ws.bytes, ", need ", elements * sizeof(T));
    if (reinterpret_cast<std::uintptr_t>(ws.data) % alignof(T) != 0)
      fail(where, "workspace.data is not aligned to ", alignof(T), " bytes");
    return static_cast<T*>(ws.data);
  }

  // y = act(h Wᵀ + b), the last product of LowRank and BlockDense. Without an activation the bias
  // is prefilled and the GEMM accumulates onto it (one streaming write); with one, the bias and
  // activation are a single pass after the GEMM, as in the dense FFN.
  void last_gemm(const MatrixView<const T>& h, const T* w, const MatrixView<T>& y,
                 Activation act) const {
    if (act == Activation::kIdentity) {
      if (has_bias()) cpu::fill_rows(y, bias());
      cpu::gemm_xwt(h, w, out_, y, has_bias());
    } else {
      cpu::gemm_xwt(h, w, out_, y, false);
      cpu::bias_activation_inplace(y, bias(), act);
    }
  }

  // Adds the bias gradient (if any) as the last gradient buffer.
  void bias_backward(const MatrixView<const T>& dy, GradList<T>& grads) const {
    if (has_bias()) cpu::bias_grad(dy, grads.back().data());
  }

  void append_bias_param(std::vector<ParamView<T>>& p) {
    if (has_bias()) p.push_back({"bias", {out_}, bias_.data(), out_});
  }

  index_t in_ = 0;
  index_t out_ = 0;
  cpu::Vector<T> bias_;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// LowRank (docs/math.md §3.2): y = U (V x) + b, V = lr1 [R x N], U = lr2 [M x R].
// ---------------------------------------------------------------------------------------------
template <class T>
class LowRankLinear<T, Cpu> : public detail::CpuStructuredBase<T> {
  using Base = detail::CpuStructuredBase<T>;

 public:
  LowRankLinear() = default;
  LowRankLinear(index_t in_features, index_t out_features, index_t rank, const T* lr1, const T* lr2,
                const T* bias) {
    constexpr const char* where = "LowRankLinear";
    detail::check_lowrank_args(where, in_features, out_features, rank);
    this->init_base(where, in_features, out_features, bias);
    rank_ = rank;
    v_ = Base::copy_factor(where, "lr1", lr1, rank * in_features);
    u_ = Base::copy_factor(where, "lr2", lr2, out_features * rank);
  }

  // Spectral init: U V is the best rank-R approximation of a dense N(0, stddev²) draw.
  static LowRankLinear random(index_t in_features, index_t out_features, index_t rank,
                              std::uint64_t seed, bool with_bias = true, double stddev = 0.02) {
    detail::check_lowrank_args("LowRankLinear::random", in_features, out_features, rank);
    cpu::MatrixXdRow u, v;
    cpu::spectral_factors(out_features, in_features, rank, seed, stddev, &u, &v);
    std::vector<T> b(static_cast<std::size_t>(out_features));
    fill_normal(b.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, stddev);
    return LowRankLinear(in_features, out_features, rank, cpu::to_vector<T>(v).data(),
                         cpu::to_vector<T>(u).data(), with_bias ? b.data() : nullptr);
  }

  index_t rank() const { return rank_; }
  const T* lr1() const { return v_.data(); }
  const T* lr2() const { return u_.data(); }
  index_t parameter_count() const {
    return rank_ * (this->in_ + this->out_) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * rank_ * (this->in_ + this->out_); }
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * rank_) * sizeof(T);
  }

  // y = act(U (V x) + b); `act` lets an FFN fuse its activation into the layer's last pass.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity) const {
    constexpr const char* where = "LowRankLinear::forward";
    this->check_forward(where, x, y);
    std::unique_ptr<T[]> owned;
    const MatrixView<T> h(Base::scratch(where, ws, x.rows * rank_, owned), x.rows, rank_);
    cpu::gemm_xwt(x, v_.data(), rank_, h, false);
    this->last_gemm(MatrixView<const T>(h), u_.data(), y, act);
  }

  // Gradients in params() order: lr1, lr2, bias. dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) const {
    constexpr const char* where = "LowRankLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<LowRankLinear*>(this)->params(), grads);
    std::vector<T> h(static_cast<std::size_t>(x.rows * rank_)), dh(h.size());
    const MatrixView<T> hv(h.data(), x.rows, rank_), dhv(dh.data(), x.rows, rank_);
    cpu::gemm_xwt(x, v_.data(), rank_, hv, false);  // recompute h = V x
    cpu::gemm_xwt_backward(MatrixView<const T>(hv), dy, u_.data(), grads[1].data(), dhv, false);
    cpu::gemm_xwt_backward(x, MatrixView<const T>(dhv), v_.data(), grads[0].data(), dx, false);
    this->bias_backward(dy, grads);
  }

  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> p = {{"lr1", {rank_, this->in_}, v_.data(), rank_ * this->in_},
                                   {"lr2", {this->out_, rank_}, u_.data(), this->out_ * rank_}};
    this->append_bias_param(p);
    return p;
  }

  // The equivalent dense weight W = U V, [out x in].
  std::vector<T> materialize() const {
    std::vector<T> w(static_cast<std::size_t>(this->out_ * this->in_));
    Eigen::Map<cpu::RowMatrix<T>>(w.data(), this->out_, this->in_).noalias() =
        cpu::ConstWeightMap<T>(u_.data(), this->out_, rank_) *
        cpu::ConstWeightMap<T>(v_.data(), rank_, this->in_);
    return w;
  }

 private:
  index_t rank_ = 0;
  std::vector<T> v_, u_;
};

// ---------------------------------------------------------------------------------------------
// BlockDiagonal (docs/math.md §3.3): y_b = W_b x_b, W: [B, M/B, N/B].
// ---------------------------------------------------------------------------------------------
template <class T>
class BlockDiagonalLinear<T, Cpu> : public detail::CpuStructuredBase<T> {
  using Base = detail::CpuStructuredBase<T>;

 public:
  BlockDiagonalLinear() = default;
  BlockDiagonalLinear(index_t in_features, index_t out_features, index_t blocks, const T* weight,
                      const T* bias) {
    constexpr const char* where = "BlockDiagonalLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    w_ = Base::copy_factor(where, "weight", weight, out_features * in_features / blocks);
  }

  // Orthonormal blocks (docs/math.md §3.9.3 "orthonormal for the block families").
  static BlockDiagonalLinear random(index_t in_features, index_t out_features, index_t blocks,
                                    std::uint64_t seed, bool with_bias = true,
                                    double bias_stddev = 0.02) {
    detail::check_block_diagonal_args("BlockDiagonalLinear::random", in_features, out_features,
                                      blocks);
    const index_t p = in_features / blocks, s = out_features / blocks;
    std::vector<T> w;
    for (index_t b = 0; b < blocks; ++b) {
      const auto blk = cpu::to_vector<T>(cpu::orthonormal(s, p, splitmix64(seed + b)));
      w.insert(w.end(), blk.begin(), blk.end());
    }
    std::vector<T> bias(static_cast<std::size_t>(out_features));
    fill_normal(bias.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, bias_stddev);
    return BlockDiagonalLinear(in_features, out_features, blocks, w.data(),
                               with_bias ? bias.data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  const T* weight() const { return w_.data(); }
  index_t parameter_count() const {
    return static_cast<index_t>(w_.size()) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(w_.size()); }
  std::size_t workspace_size(index_t) const { return 0; }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace = {},
               Activation act = Activation::kIdentity) const {
    this->check_forward("BlockDiagonalLinear::forward", x, y);
    cpu::block_xwt(x, w_.data(), blocks_, this->out_ / blocks_, y);
    cpu::bias_activation_inplace(y, this->bias(), act);
  }

  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) const {
    constexpr const char* where = "BlockDiagonalLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<BlockDiagonalLinear*>(this)->params(), grads);
    cpu::block_xwt_backward(x, dy, w_.data(), blocks_, grads[0].data(), dx);
    this->bias_backward(dy, grads);
  }

  std::vector<ParamView<T>> params() {
    const index_t s = this->out_ / blocks_, p = this->in_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"weight", {blocks_, s, p}, w_.data(), static_cast<index_t>(w_.size())}};
    this->append_bias_param(v);
    return v;
  }

  std::vector<T> materialize() const {
    const index_t s = this->out_ / blocks_, p = this->in_ / blocks_;
    std::vector<T> w(static_cast<std::size_t>(this->out_ * this->in_), T(0));
    for (index_t b = 0; b < blocks_; ++b)
      for (index_t i = 0; i < s; ++i)
        std::copy_n(w_.data() + (b * s + i) * p, p, w.data() + (b * s + i) * this->in_ + b * p);
    return w;
  }

 private:
  index_t blocks_ = 0;
  std::vector<T> w_;
};

// ---------------------------------------------------------------------------------------------
// BlockDense (docs/math.md §3.4): y = U (blockdiag(V_1..V_B) x) + b, V = blkdiag [B, R/B, N/B],
// U = lr [M x R]. No shuffle between the stages.
// ---------------------------------------------------------------------------------------------
template <class T>
class BlockDenseLinear<T, Cpu> : public detail::CpuStructuredBase<T> {
  using Base = detail::CpuStructuredBase<T>;

 public:
  BlockDenseLinear() = default;
  BlockDenseLinear(index_t in_features, index_t out_features, index_t blocks, index_t rank,
                   const T* blkdiag, const T* lr, const T* bias) {
    constexpr const char* where = "BlockDenseLinear";
    detail::check_block_dense_args(where, in_features, out_features, blocks, rank);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    rank_ = rank;
    v_ = Base::copy_factor(where, "blkdiag", blkdiag, rank * in_features / blocks);
    u_ = Base::copy_factor(where, "lr", lr, out_features * rank);
  }

  // Each block of V and U itself are orthonormal (the polar factor of a Gaussian draw).
  static BlockDenseLinear random(index_t in_features, index_t out_features, index_t blocks,
                                 index_t rank, std::uint64_t seed, bool with_bias = true,
                                 double bias_stddev = 0.02) {
    detail::check_block_dense_args("BlockDenseLinear::random", in_features, out_features, blocks,
                                   rank);
    const index_t p = in_features / blocks, r = rank / blocks;
    std::vector<T> v;
    for (index_t b = 0; b < blocks; ++b) {
      const auto blk = cpu::to_vector<T>(cpu::orthonormal(r, p, splitmix64(seed + b)));
      v.insert(v.end(), blk.begin(), blk.end());
    }
    const auto u = cpu::to_vector<T>(cpu::orthonormal(out_features, rank, splitmix64(seed - 1)));
    std::vector<T> bias(static_cast<std::size_t>(out_features));
    fill_normal(bias.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, bias_stddev);
    return BlockDenseLinear(in_features, out_features, blocks, rank, v.data(), u.data(),
                            with_bias ? bias.data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  index_t rank() const { return rank_; }
  const T* blkdiag() const { return v_.data(); }
  const T* lr() const { return u_.data(); }
  index_t parameter_count() const {
    return rank_ * (this->out_ + this->in_ / blocks_) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * rank_ * (this->out_ + this->in_ / blocks_); }
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * rank_) * sizeof(T);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity) const {
    constexpr const char* where = "BlockDenseLinear::forward";
    this->check_forward(where, x, y);
    std::unique_ptr<T[]> owned;
    const MatrixView<T> h(Base::scratch(where, ws, x.rows * rank_, owned), x.rows, rank_);
    cpu::block_xwt(x, v_.data(), blocks_, rank_ / blocks_, h);
    this->last_gemm(MatrixView<const T>(h), u_.data(), y, act);
  }

  // Gradients in params() order: blkdiag, lr, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) const {
    constexpr const char* where = "BlockDenseLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<BlockDenseLinear*>(this)->params(), grads);
    std::vector<T> h(static_cast<std::size_t>(x.rows * rank_)), dh(h.size());
    const MatrixView<T> hv(h.data(), x.rows, rank_), dhv(dh.data(), x.rows, rank_);
    cpu::block_xwt(x, v_.data(), blocks_, rank_ / blocks_, hv);
    cpu::gemm_xwt_backward(MatrixView<const T>(hv), dy, u_.data(), grads[1].data(), dhv, false);
    cpu::block_xwt_backward(x, MatrixView<const T>(dhv), v_.data(), blocks_, grads[0].data(), dx);
    this->bias_backward(dy, grads);
  }

  std::vector<ParamView<T>> params() {
    const index_t r = rank_ / blocks_, p = this->in_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"blkdiag", {blocks_, r, p}, v_.data(), static_cast<index_t>(v_.size())},
        {"lr", {this->out_, rank_}, u_.data(), static_cast<index_t>(u_.size())}};
    this->append_bias_param(v);
    return v;
  }

  // W[:, b p .. (b+1) p) = U[:, b r .. (b+1) r) V_b.
  std::vector<T> materialize() const {
    const index_t r = rank_ / blocks_, p = this->in_ / blocks_;
    std::vector<T> w(static_cast<std::size_t>(this->out_ * this->in_));
    Eigen::Map<cpu::RowMatrix<T>> W(w.data(), this->out_, this->in_);
    const cpu::ConstWeightMap<T> U(u_.data(), this->out_, rank_);
    for (index_t b = 0; b < blocks_; ++b)
      W.middleCols(b * p, p).noalias() =
          U.middleCols(b * r, r) * cpu::ConstWeightMap<T>(v_.data() + b * r * p, r, p);
    return w;
  }

 private:
  index_t blocks_ = 0;
  index_t rank_ = 0;
  std::vector<T> v_, u_;
};

// ---------------------------------------------------------------------------------------------
// BlockShuffle / Monarch (docs/math.md §3.5): stage 1 blkdiag1 [B, q, N/B] with q = min(N, M)/B;
// stage-2 block b reads stage-1 outputs b, b+B, b+2B, ...; stage 2 blkdiag2 [B, M/B, q]; element s
// of stage-2 block b lands at output s B + b.
// ---------------------------------------------------------------------------------------------
template <class T>
class BlockShuffleLinear<T, Cpu> : public detail::CpuStructuredBase<T> {
  using Base = detail::CpuStructuredBase<T>;

 public:
  BlockShuffleLinear() = default;
  BlockShuffleLinear(index_t in_features, index_t out_features, index_t blocks, const T* blkdiag1,
                     const T* blkdiag2, const T* bias) {
    constexpr const char* where = "BlockShuffleLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    q_ = std::min(in_features, out_features) / blocks;
    w1_ = Base::copy_factor(where, "blkdiag1", blkdiag1, blocks * q_ * (in_features / blocks));
    w2_ = Base::copy_factor(where, "blkdiag2", blkdiag2, blocks * (out_features / blocks) * q_);
  }

  static BlockShuffleLinear random(index_t in_features, index_t out_features, index_t blocks,
                                   std::uint64_t seed, bool with_bias = true,
                                   double bias_stddev = 0.02) {
    detail::check_block_diagonal_args("BlockShuffleLinear::random", in_features, out_features,
                                      blocks);
    const index_t q = std::min(in_features, out_features) / blocks;
    const index_t p = in_features / blocks, s = out_features / blocks;
    std::vector<T> w1, w2;
    for (index_t b = 0; b < blocks; ++b) {
      const auto b1 = cpu::to_vector<T>(cpu::orthonormal(q, p, splitmix64(seed + b)));
      const auto b2 = cpu::to_vector<T>(cpu::orthonormal(s, q, splitmix64(seed + 1000 + b)));
      w1.insert(w1.end(), b1.begin(), b1.end());
      w2.insert(w2.end(), b2.begin(), b2.end());
    }
    std::vector<T> bias(static_cast<std::size_t>(out_features));
    fill_normal(bias.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, bias_stddev);
    return BlockShuffleLinear(in_features, out_features, blocks, w1.data(), w2.data(),
                              with_bias ? bias.data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  const T* blkdiag1() const { return w1_.data(); }
  const T* blkdiag2() const { return w2_.data(); }
  index_t parameter_count() const {
    return static_cast<index_t>(w1_.size() + w2_.size()) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(w1_.size() + w2_.size()); }
  // Stage-1 output (permuted in place) and the stage-2 output before the output permutation.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * (blocks_ * q_ + this->out_)) * sizeof(T);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity) const {
    constexpr const char* where = "BlockShuffleLinear::forward";
    this->check_forward(where, x, y);
    std::unique_ptr<T[]> owned;
    T* buf = Base::scratch(where, ws, x.rows * (blocks_ * q_ + this->out_), owned);
    const MatrixView<T> z(buf, x.rows, blocks_ * q_),
        v(buf + x.rows * blocks_ * q_, x.rows, this->out_);
    stage1(x, z);
    cpu::block_xwt(MatrixView<const T>(z), w2_.data(), blocks_, this->out_ / blocks_, v);
    // The output permutation rides on the bias (+ activation) pass the layer makes anyway.
    scatter_output(MatrixView<const T>(v), this->bias(), act, y);
  }

  // Gradients in params() order: blkdiag1, blkdiag2, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) const {
    constexpr const char* where = "BlockShuffleLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<BlockShuffleLinear*>(this)->params(), grads);
    const index_t bq = blocks_ * q_, s = this->out_ / blocks_;
    std::vector<T> z(static_cast<std::size_t>(x.rows * bq)), dz(z.size());
    std::vector<T> dv(static_cast<std::size_t>(x.rows * this->out_));
    const MatrixView<T> zv(z.data(), x.rows, bq), dzv(dz.data(), x.rows, bq);
    const MatrixView<T> dvv(dv.data(), x.rows, this->out_);
    stage1(x, zv);  // recompute the permuted stage-1 output
    // dv[t, b s + i] = dy[t, i B + b]: undo the output permutation.
    cpu::parallel_for(x.rows, this->out_, [&](std::int64_t t) {
      for (index_t b = 0; b < blocks_; ++b)
        for (index_t i = 0; i < s; ++i) dvv(t, b * s + i) = dy(t, i * blocks_ + b);
    });
    cpu::block_xwt_backward(MatrixView<const T>(zv), MatrixView<const T>(dvv), w2_.data(), blocks_,
                            grads[1].data(), dzv);
    permute_rows(dzv, /*to_stage2=*/false);
    cpu::block_xwt_backward(x, MatrixView<const T>(dzv), w1_.data(), blocks_, grads[0].data(), dx);
    this->bias_backward(dy, grads);
  }

  std::vector<ParamView<T>> params() {
    const index_t p = this->in_ / blocks_, s = this->out_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"blkdiag1", {blocks_, q_, p}, w1_.data(), static_cast<index_t>(w1_.size())},
        {"blkdiag2", {blocks_, s, q_}, w2_.data(), static_cast<index_t>(w2_.size())}};
    this->append_bias_param(v);
    return v;
  }

  // W[i B + b2, b1 p + j] = Σ_r w2[b2][i][r] · w1[b1][m mod q][j] over r with m = r B + b2 in
  // stage-1 block b1 = m div q.
  std::vector<T> materialize() const {
    const index_t p = this->in_ / blocks_, s = this->out_ / blocks_;
    std::vector<T> w(static_cast<std::size_t>(this->out_ * this->in_), T(0));
    for (index_t b2 = 0; b2 < blocks_; ++b2)
      for (index_t i = 0; i < s; ++i)
        for (index_t r = 0; r < q_; ++r) {
          const index_t m = r * blocks_ + b2, b1 = m / q_, i1 = m % q_;
          const T a = w2_[(b2 * s + i) * q_ + r];
          T* row = w.data() + (i * blocks_ + b2) * this->in_ + b1 * p;
          const T* src = w1_.data() + (b1 * q_ + i1) * p;
          for (index_t j = 0; j < p; ++j) row[j] += a * src[j];
        }
    return w;
  }

 private:
  // Stage 1 into z, then permute each row in place so stage-2 block b's inputs are contiguous:
  // z'[b q + r] = z[r B + b].
  void stage1(const MatrixView<const T>& x, const MatrixView<T>& z) const {
    cpu::block_xwt(x, w1_.data(), blocks_, q_, z);
    permute_rows(z, /*to_stage2=*/true);
  }

  // to_stage2: row[b q + r] = old[r B + b]; otherwise the inverse.
  void permute_rows(const MatrixView<T>& z, bool to_stage2) const {
    const index_t bq = blocks_ * q_;
    if (blocks_ == 1) return;  // the permutation is the identity
    cpu::parallel_for(z.rows, bq, [&](std::int64_t t) {
      thread_local std::vector<T> tmp;
      tmp.assign(z.row(t), z.row(t) + bq);
      T* row = z.row(t);
      for (index_t b = 0; b < blocks_; ++b)
        for (index_t r = 0; r < q_; ++r) {
          if (to_stage2) {
            row[b * q_ + r] = tmp[r * blocks_ + b];
          } else {
            row[r * blocks_ + b] = tmp[b * q_ + r];
          }
        }
    });
  }

  // y[t, i B + b] = act(v[t, b s + i] + bias[i B + b]); the activation runs vectorized on each
  // row right after its scatter, while the row is still in cache.
  void scatter_output(const MatrixView<const T>& v, const T* bias, Activation act,
                      const MatrixView<T>& y) const {
    const index_t s = this->out_ / blocks_;
    cpu::parallel_for(y.rows, this->out_, [&](std::int64_t t) {
      T* out = y.row(t);
      const T* in = v.row(t);
      for (index_t i = 0; i < s; ++i)
        for (index_t b = 0; b < blocks_; ++b)
          out[i * blocks_ + b] = in[b * s + i] + (bias ? bias[i * blocks_ + b] : T(0));
      if (act != Activation::kIdentity)
        cpu::detail::bias_activation_run<T>(out, nullptr, this->out_, act);
    });
  }

  index_t blocks_ = 0;
  index_t q_ = 0;
  std::vector<T> w1_, w2_;
};

}  // namespace ffnkit
