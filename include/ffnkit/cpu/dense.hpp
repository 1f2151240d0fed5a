// DenseLinear and DenseFFN on the CPU backend (Eigen GEMMs, OpenMP epilogues).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/gemm.hpp"
#include "ffnkit/detail/dense_ffn_common.hpp"
#include "ffnkit/detail/ffn_checks.hpp"

namespace ffnkit {

template <class T>
class DenseLinear<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");

 public:
  using Scalar = T;
  using Backend = Cpu;

  DenseLinear() = default;

  // Copies `weight` ([out x in] row-major, PyTorch's nn.Linear layout) and `bias` ([out], or null
  // for a layer without bias). Non-finite weights are rejected here, once, not on every call.
  DenseLinear(index_t in_features, index_t out_features, const T* weight, const T* bias)
      : in_(in_features), out_(out_features) {
    constexpr const char* where = "DenseLinear";
    check_positive(where, "in_features", in_features);
    check_positive(where, "out_features", out_features);
    check_not_null(where, "weight", weight);
    check_finite(where, "weight", weight, in_features * out_features);
    weight_ = cpu::RowMatrix<T>(Eigen::Map<const cpu::RowMatrix<T>>(weight, out_, in_));
    if (bias) {
      check_finite(where, "bias", bias, out_features);
      bias_ = Eigen::Map<const cpu::Vector<T>>(bias, out_);
    }
  }

  // Seeded initialisation: weights and bias drawn from N(0, stddev^2) (bias zero if !with_bias).
  static DenseLinear random(index_t in_features, index_t out_features, std::uint64_t seed,
                            bool with_bias = true, double stddev = 0.02) {
    check_positive("DenseLinear::random", "in_features", in_features);
    check_positive("DenseLinear::random", "out_features", out_features);
    std::vector<T> w(static_cast<std::size_t>(in_features * out_features));
    std::vector<T> b(static_cast<std::size_t>(out_features));
    fill_normal(w.data(), static_cast<index_t>(w.size()), seed, 0.0, stddev);
    fill_normal(b.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, stddev);
    return DenseLinear(in_features, out_features, w.data(), with_bias ? b.data() : nullptr);
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return bias_.size() != 0; }
  const T* weight() const { return weight_.data(); }
  const T* bias() const { return has_bias() ? bias_.data() : nullptr; }
  // Copies in PyTorch layout; the same call works on every backend.
  std::vector<T> weight_host() const { return std::vector<T>(weight(), weight() + in_ * out_); }
  std::vector<T> bias_host() const {
    return has_bias() ? std::vector<T>(bias(), bias() + out_) : std::vector<T>();
  }
  index_t parameter_count() const { return in_ * out_ + (has_bias() ? out_ : 0); }
  double flops_per_token() const { return 2.0 * static_cast<double>(in_) * out_; }

  // y = x W^T + b. x: [tokens x in_features], y: [tokens x out_features]; both may be strided.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y) const {
    constexpr const char* where = "DenseLinear::forward";
    check_ready(where);
    check_activation(where, "x", x, in_, "in_features");
    check_activation(where, "y", y, out_, "out_features");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    check_no_overlap(where, x, y);
    cpu::linear(x, weight(), out_, bias(), y);
  }

  // For the FFN, which fuses bias and activation into one pass after the product.
  void forward_no_bias(const MatrixView<const T>& x, const MatrixView<T>& y) const {
    cpu::linear<T>(x, weight(), out_, nullptr, y);
  }

  // A default-constructed or moved-from layer has no weights.
  void check_ready(const char* where) const {
    if (in_ == 0 || weight_.size() == 0)
      fail(where, "the layer is empty (default-constructed or moved from)");
  }

 private:
  index_t in_ = 0;
  index_t out_ = 0;
  cpu::RowMatrix<T> weight_;
  cpu::Vector<T> bias_;
};

template <class T>
class DenseFFN<T, Cpu> : public detail::DenseFFNCommon<DenseFFN<T, Cpu>, DenseLinear<T, Cpu>> {
  using Base = detail::DenseFFNCommon<DenseFFN<T, Cpu>, DenseLinear<T, Cpu>>;
  using Base::act_;
  using Base::d_ff_;
  using Base::down_;
  using Base::gated_;
  using Base::up_;

 public:
  using Scalar = T;
  using Backend = Cpu;
  using Linear = DenseLinear<T, Cpu>;
  using Base::d_model;
  using Base::d_out;
  using Base::workspace_size;

  DenseFFN() = default;

  // y = down(act(up(x))): up: d_model -> d_ff, down: d_ff -> d_out.
  DenseFFN(Linear up, Linear down, Activation act = Activation::kGeluTanh)
      : Base(std::move(up), std::move(down), act) {}

  // SwiGLU: y = down(SiLU(gate(x)) * up(x)). Gate and up are stored as one [2 d_ff x d_model]
  // weight so a single GEMM produces both halves.
  static DenseFFN swiglu(const Linear& gate, const Linear& up, Linear down) {
    detail::check_swiglu_pieces(gate, up, down);
    const index_t f = gate.out_features(), d = gate.in_features();
    cpu::RowMatrix<T> w(2 * f, d);
    w.topRows(f) = Eigen::Map<const cpu::RowMatrix<T>>(gate.weight(), f, d);
    w.bottomRows(f) = Eigen::Map<const cpu::RowMatrix<T>>(up.weight(), f, d);
    std::vector<T> b;
    if (gate.has_bias()) {
      b.assign(gate.bias(), gate.bias() + f);
      b.insert(b.end(), up.bias(), up.bias() + f);
    }
    return Base::make_gated(Linear(d, 2 * f, w.data(), b.empty() ? nullptr : b.data()),
                            std::move(down), f);
  }

  // y = FFN(x). x: [tokens x d_model], y: [tokens x d_out]. With an empty `workspace` the hidden
  // buffer is allocated per call; pass one of workspace_size(tokens) bytes to avoid that.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y,
               Workspace workspace = {}) const {
    constexpr const char* where = "DenseFFN::forward";
    const std::size_t need = workspace_size(x.rows);
    T* hidden = detail::check_ffn_forward(where, up_, down_, x, y, workspace, need);
    std::unique_ptr<T[]> owned;
    if (hidden == nullptr) {
      owned.reset(new T[need / sizeof(T)]);
      hidden = owned.get();
    }
    const MatrixView<T> h(hidden, x.rows, up_.out_features());
    up_.forward_no_bias(x, h);
    if (gated_) {
      const T* b = up_.bias();
      cpu::swiglu_inplace(h, b, b ? b + d_ff_ : nullptr);
      // The gate half now holds SiLU(g) * u; read it in place with row stride 2 d_ff.
      down_.forward(MatrixView<const T>(hidden, x.rows, d_ff_, 2 * d_ff_), y);
    } else {
      cpu::bias_activation_inplace(h, up_.bias(), act_);
      down_.forward(MatrixView<const T>(h), y);
    }
  }
};

}  // namespace ffnkit
