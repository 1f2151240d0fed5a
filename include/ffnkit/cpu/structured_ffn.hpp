// StructuredFFN<Up, Down>: both projections structured (SPEC §1.6), GELU (tanh) by default,
// SwiGLU supported; forward and backward. CPU backend.
#pragma once

#include <array>
#include <iterator>
#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/parallel.hpp"

namespace ffnkit {

template <class Up, class Down>
class StructuredFFN<Up, Down, Cpu> {
 public:
  using Scalar = typename Up::Scalar;
  using Backend = typename Up::Backend;
  using T = Scalar;
  static_assert(std::is_same<typename Down::Scalar, T>::value, "Up and Down share a scalar type");

  StructuredFFN() = default;

  // y = down(act(up(x))).
  StructuredFFN(Up up, Down down, Activation act = Activation::kGeluTanh)
      : up_(std::move(up)), down_(std::move(down)), act_(act) {
    check_equal("StructuredFFN", "down.in_features", down_.in_features(), "up.out_features",
                up_.out_features());
  }

  // SwiGLU: y = down(SiLU(gate(x)) * up(x)).
  static StructuredFFN swiglu(Up gate, Up up, Down down) {
    check_equal("StructuredFFN::swiglu", "up.in_features", up.in_features(), "gate.in_features",
                gate.in_features());
    check_equal("StructuredFFN::swiglu", "up.out_features", up.out_features(), "gate.out_features",
                gate.out_features());
    StructuredFFN f(std::move(up), std::move(down), Activation::kSilu);
    f.gate_ = std::make_unique<Up>(std::move(gate));
    return f;
  }

  StructuredFFN(StructuredFFN&&) noexcept = default;
  StructuredFFN& operator=(StructuredFFN&&) noexcept = default;

  index_t d_model() const { return up_.in_features(); }
  index_t d_ff() const { return up_.out_features(); }
  index_t d_out() const { return down_.out_features(); }
  bool gated() const { return gate_ != nullptr; }
  Activation activation() const { return act_; }
  const Up& up() const { return up_; }
  const Down& down() const { return down_; }
  const Up& gate() const {
    if (!gate_) fail("StructuredFFN::gate", "the FFN is not gated (not SwiGLU)");
    return *gate_;
  }
  Up& up() { return up_; }
  Down& down() { return down_; }

  index_t parameter_count() const {
    return up_.parameter_count() + down_.parameter_count() + (gate_ ? gate_->parameter_count() : 0);
  }
  double flops_per_token() const {
    return up_.flops_per_token() + down_.flops_per_token() +
           (gate_ ? gate_->flops_per_token() : 0.0);
  }

  // The hidden activations (two buffers for SwiGLU) plus the larger sublayer scratch.
  std::size_t workspace_size(index_t tokens) const {
    const std::size_t hidden = static_cast<std::size_t>(tokens * d_ff()) * sizeof(T);
    return (gated() ? 2 : 1) * hidden +
           std::max(up_.workspace_size(tokens), down_.workspace_size(tokens));
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {}) const {
    constexpr const char* where = "StructuredFFN::forward";
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "y", y, d_out(), "d_out");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    const std::size_t need = workspace_size(x.rows);
    std::unique_ptr<unsigned char[]> owned;
    unsigned char* base = static_cast<unsigned char*>(ws.data);
    if (base == nullptr) {
      owned.reset(new unsigned char[need]);
      base = owned.get();
    } else if (ws.bytes < need) {
      fail(where, "workspace.bytes = ", ws.bytes, ", need workspace_size(", x.rows, ") = ", need);
    }
    const std::size_t hidden_bytes = static_cast<std::size_t>(x.rows * d_ff()) * sizeof(T);
    const MatrixView<T> h(reinterpret_cast<T*>(base), x.rows, d_ff());
    unsigned char* rest = base + hidden_bytes;
    if (gated()) {
      const MatrixView<T> u(reinterpret_cast<T*>(rest), x.rows, d_ff());
      rest += hidden_bytes;
      const Workspace sub{rest, need - 2 * hidden_bytes};
      gate_->forward(x, h, sub, Activation::kSilu);
      up_.forward(x, u, sub);
      multiply_inplace(h, MatrixView<const T>(u));
    } else {
      up_.forward(x, h, Workspace{rest, need - hidden_bytes}, act_);
    }
    down_.forward(MatrixView<const T>(h), y, Workspace{rest, need - hidden_bytes});
  }

  // Parameters: the gate's (SwiGLU only), then up's, then down's, each in its own order.
  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> p;
    auto add = [&](const char* prefix, auto& layer) {
      for (auto v : layer.params()) {
        v.name = std::string(prefix) + v.name;
        p.push_back(std::move(v));
      }
    };
    if (gate_) add("gate.", *gate_);
    add("up.", up_);
    add("down.", down_);
    return p;
  }

  // Gradients in params() order; dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) {
    constexpr const char* where = "StructuredFFN::backward";
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "dy", dy, d_out(), "d_out");
    check_equal(where, "dy.rows", dy.rows, "x.rows", x.rows);
    check_grads(where, params(), grads);
    const index_t t = x.rows, f = d_ff();
    const std::size_t n_gate = gate_ ? gate_->params().size() : 0, n_up = up_.params().size();
    // Hidden-sized buffers are kept across calls: at 2048 tokens x 4096 they are ~100 MB, and
    // allocating and zero-filling them per step cost a visible share of a training step.
    const std::size_t hidden = static_cast<std::size_t>(t * f);
    std::vector<T>& pre = buffer(0, hidden);
    std::vector<T>& act = buffer(1, hidden);
    std::vector<T>& dact = buffer(2, hidden);
    const MatrixView<T> prev(pre.data(), t, f), actv(act.data(), t, f), dactv(dact.data(), t, f);
    up_.forward(x, prev);  // recompute the pre-activation
    std::vector<T>& gpre = buffer(3, gate_ ? hidden : 0);
    if (gate_) {
      gate_->forward(x, MatrixView<T>(gpre.data(), t, f));
      const SiluFn silu;
      for (std::size_t i = 0; i < hidden; ++i) act[i] = silu(gpre[i]) * pre[i];
    } else {
      std::copy_n(pre.begin(), hidden, act.begin());
      cpu::bias_activation_inplace(actv, static_cast<const T*>(nullptr), act_);
    }
    with_slice(grads, n_gate + n_up, grads.size(),
               [&](GradList<T>& g) { down_.backward(MatrixView<const T>(actv), dy, dactv, g); });
    if (gate_) {
      // a = SiLU(g) u: du = da SiLU(g), dg = da u SiLU'(g).
      std::vector<T>& dg = buffer(4, hidden);
      const SiluFn silu;
      for (std::size_t i = 0; i < hidden; ++i) {
        dg[i] = dact[i] * pre[i] * silu.grad(gpre[i]);
        dact[i] = dact[i] * silu(gpre[i]);
      }
      with_slice(grads, n_gate, n_gate + n_up,
                 [&](GradList<T>& g) { up_.backward(x, MatrixView<const T>(dactv), dx, g); });
      std::vector<T> dx_gate(dx.data ? static_cast<std::size_t>(t * d_model()) : 0);
      with_slice(grads, 0, n_gate, [&](GradList<T>& g) {
        gate_->backward(x, MatrixView<const T>(dg.data(), t, f),
                        MatrixView<T>(dx.data ? dx_gate.data() : nullptr, t, d_model()), g);
      });
      if (dx.data)
        for (index_t r = 0; r < t; ++r)
          for (index_t j = 0; j < d_model(); ++j) dx(r, j) += dx_gate[r * d_model() + j];
    } else {
      cpu::multiply_activation_grad(dactv, MatrixView<const T>(prev), act_);
      with_slice(grads, 0, n_up,
                 [&](GradList<T>& g) { up_.backward(x, MatrixView<const T>(dactv), dx, g); });
    }
  }

 private:
  // Runs fn on grads[begin, end) as a GradList of its own, moving the buffers (no copies).
  template <class Fn>
  static void with_slice(GradList<T>& grads, std::size_t begin, std::size_t end, Fn&& fn) {
    GradList<T> sub(std::make_move_iterator(grads.begin() + begin),
                    std::make_move_iterator(grads.begin() + end));
    fn(sub);
    std::move(sub.begin(), sub.end(), grads.begin() + begin);
  }

  // Scratch buffer `i`, grown to at least `n` elements and never shrunk.
  // The array has a fixed size, so a reference returned earlier stays valid.
  std::vector<T>& buffer(std::size_t i, std::size_t n) {
    if (scratch_[i].size() < n) scratch_[i].resize(n);
    return scratch_[i];
  }

  static void multiply_inplace(const MatrixView<T>& a, const MatrixView<const T>& b) {
    cpu::parallel_for(a.rows, a.cols, [&](std::int64_t r) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(a.row(r), a.cols) *=
          Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(b.row(r), b.cols);
    });
  }

  Up up_;
  Down down_;
  Activation act_ = Activation::kGeluTanh;
  std::unique_ptr<Up> gate_;
  std::array<std::vector<T>, 5> scratch_;  // backward's hidden-sized buffers, reused across calls
};

}  // namespace ffnkit
