// What every backend's StructuredFFN shares: the projections in their three forms (plain
// down(act(up(x))); SwiGLU with separate gate and up layers; SwiGLU with gate|up fused in one
// layer), the factories, accessors, counts and params(), and forward and backward written once
// over the backend's elementwise kernels. Each backend adds its workspace handling, its scratch
// buffers and those kernels (CRTP: Derived provides activate, hidden_grad, copy, accumulate and
// buffer).
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"

namespace ffnkit {
namespace detail {

template <class Up, class Down, class Derived>
class StructuredFFNCommon {
 public:
  using Scalar = typename Up::Scalar;
  using Backend = typename Up::Backend;
  using T = Scalar;
  static_assert(std::is_same<typename Down::Scalar, T>::value, "Up and Down share a scalar type");
  static_assert(std::is_same<typename Down::Backend, Backend>::value,
                "Up and Down share a backend");

  StructuredFFNCommon() = default;

  // y = down(act(up(x))).
  StructuredFFNCommon(Up up, Down down, Activation act = Activation::kGeluTanh)
      : up_(std::move(up)), down_(std::move(down)), act_(act) {
    check_equal("StructuredFFN", "down.in_features", down_.in_features(), "up.out_features",
                up_.out_features());
  }

  // SwiGLU from separate layers: y = down(SiLU(gate(x)) * up(x)).
  static Derived swiglu(Up gate, Up up, Down down) {
    constexpr const char* where = "StructuredFFN::swiglu";
    check_equal(where, "up.in_features", up.in_features(), "gate.in_features", gate.in_features());
    check_equal(where, "up.out_features", up.out_features(), "gate.out_features",
                gate.out_features());
    check_equal(where, "down.in_features", down.in_features(), "up.out_features",
                up.out_features());
    return Derived(SwigluParts{}, std::move(up), std::move(down),
                   std::make_unique<Up>(std::move(gate)), false);
  }

  // SwiGLU with gate and up in one layer [d_model -> 2 d_ff], outputs [0, d_ff) the gate and
  // [d_ff, 2 d_ff) the up projection (the official SwiGLU fc1's torch.chunk order). It runs once,
  // so a factor both halves share (LowRank's V x, BlockDense's block-diagonal stage) is computed
  // once.
  static Derived swiglu(Up gate_up, Down down) {
    constexpr const char* where = "StructuredFFN::swiglu";
    const index_t width = gate_up.out_features();
    if (width % 2 != 0)
      fail(where, "gate_up.out_features = ", width,
           " is odd; expected 2 d_ff (the gate's outputs, then up's)");
    check_equal(where, "down.in_features", down.in_features(), "gate_up.out_features / 2",
                width / 2);
    return Derived(SwigluParts{}, std::move(gate_up), std::move(down), nullptr, true);
  }

  StructuredFFNCommon(StructuredFFNCommon&&) noexcept = default;
  StructuredFFNCommon& operator=(StructuredFFNCommon&&) noexcept = default;

  index_t d_model() const { return up_.in_features(); }
  index_t d_ff() const { return fused_ ? up_.out_features() / 2 : up_.out_features(); }
  index_t d_out() const { return down_.out_features(); }
  bool gated() const { return gate_ != nullptr || fused_; }
  // SwiGLU with gate|up in one layer: up() is then that layer, its outputs [0, d_ff) the gate.
  bool fused_gate_up() const { return fused_; }
  Activation activation() const { return act_; }
  const Up& up() const { return up_; }
  const Down& down() const { return down_; }
  const Up& gate() const {
    if (fused_) fail("StructuredFFN::gate", "the gate is fused into up() (its outputs [0, d_ff))");
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

  // Parameters: the gate's (separate SwiGLU gate only), then up's ("gate_up." when fused), then
  // down's, each in its own order.
  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> p;
    auto add = [&](const char* prefix, auto& layer) {
      for (auto v : layer.params()) {
        v.name = std::string(prefix) + v.name;
        p.push_back(std::move(v));
      }
    };
    if (gate_) add("gate.", *gate_);
    add(fused_ ? "gate_up." : "up.", up_);
    add("down.", down_);
    return p;
  }

 protected:
  // The SwiGLU factories' constructor, after their checks (the public one's would reject gate|up).
  struct SwigluParts {};
  StructuredFFNCommon(SwigluParts, Up up, Down down, std::unique_ptr<Up> gate, bool fused)
      : up_(std::move(up)),
        down_(std::move(down)),
        act_(Activation::kSilu),
        gate_(std::move(gate)),
        fused_(fused) {}

  // The hidden buffer's width: SwiGLU keeps gate | up side by side, so one pass gates them and
  // down reads the gate half with row stride 2 d_ff.
  index_t hidden_width() const { return gated() ? 2 * d_ff() : d_ff(); }
  std::size_t hidden_bytes(index_t tokens) const {
    return static_cast<std::size_t>(tokens * hidden_width()) * sizeof(T);
  }
  // One scratch serves the sublayers in turn.
  std::size_t sublayer_workspace(index_t tokens) const {
    const std::size_t s = std::max(up_.workspace_size(tokens), down_.workspace_size(tokens));
    return gate_ ? std::max(s, gate_->workspace_size(tokens)) : s;
  }

  void check_forward(const char* where, const MatrixView<const T>& x,
                     const MatrixView<T>& y) const {
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "y", y, d_out(), "d_out");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
  }

  // y = FFN(x) through the hidden buffer h [tokens x hidden_width()] and the sublayers' scratch.
  template <class... Stream>
  void forward_with(const MatrixView<const T>& x, const MatrixView<T>& y, T* h, Workspace sub,
                    const Stream&... stream) const {
    const index_t t = x.rows, w = hidden_width();
    const MatrixView<T> hv(h, t, w);
    if (gated()) {
      forward_gate_up(x, hv, sub, stream...);
      self().activate(hv, stream...);
    } else {
      up_.forward(x, hv, sub, act_, stream...);
    }
    down_.forward(MatrixView<const T>(h, t, d_ff(), w), y, sub, Activation::kIdentity, stream...);
  }

  // Gradients in params() order; dx skipped when dx.data is null. The pre-activations are
  // recomputed, not kept from forward, so forward stays allocation-free.
  template <class Grads, class... Stream>
  void backward_with(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                     const MatrixView<T>& dx, Grads& grads, const Stream&... stream) {
    constexpr const char* where = "StructuredFFN::backward";
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "dy", dy, d_out(), "d_out");
    check_equal(where, "dy.rows", dy.rows, "x.rows", x.rows);
    check_grads(where, params(), grads);
    Derived& d = self();
    const index_t t = x.rows, f = d_ff(), w = hidden_width();
    const std::size_t hidden = static_cast<std::size_t>(t * w);
    const MatrixView<T> pre(d.buffer(0, hidden), t, w), act(d.buffer(1, hidden), t, w),
        dh(d.buffer(2, hidden), t, w);
    if (gated()) {
      forward_gate_up(x, pre, Workspace{}, stream...);
    } else {
      up_.forward(x, pre, Workspace{}, Activation::kIdentity, stream...);
    }
    d.copy(MatrixView<const T>(pre), act, stream...);
    d.activate(act, stream...);
    // SwiGLU: d(act) lands in the up half of dh, which hidden_grad turns into d(gate | up).
    const MatrixView<T> dact(gated() ? dh.data + f : dh.data, t, f, w);
    const std::size_t n_up = (gate_ ? gate_->params().size() : 0) + up_.params().size();
    with_slice(grads, n_up, grads.size(), [&](Grads& g) {
      down_.backward(MatrixView<const T>(act.data, t, f, w), dy, dact, g, stream...);
    });
    d.hidden_grad(dh, MatrixView<const T>(pre), stream...);
    if (!gate_) {
      with_slice(grads, 0, n_up,
                 [&](Grads& g) { up_.backward(x, MatrixView<const T>(dh), dx, g, stream...); });
      return;
    }
    // Separate gate and up layers both read x: the gate's dx goes through scratch and is added.
    const std::size_t n_gate = gate_->params().size();
    const MatrixView<T> dx_gate(
        dx.data ? d.buffer(3, static_cast<std::size_t>(t * d_model())) : nullptr, t, d_model());
    with_slice(grads, n_gate, n_up, [&](Grads& g) {
      up_.backward(x, MatrixView<const T>(dh.data + f, t, f, w), dx, g, stream...);
    });
    with_slice(grads, 0, n_gate, [&](Grads& g) {
      gate_->backward(x, MatrixView<const T>(dh.data, t, f, w), dx_gate, g, stream...);
    });
    if (dx.data) d.accumulate(MatrixView<const T>(dx_gate), dx, stream...);
  }

  Up up_;
  Down down_;
  Activation act_ = Activation::kGeluTanh;
  std::unique_ptr<Up> gate_;  // SwiGLU with a separate gate only
  bool fused_ = false;        // SwiGLU with up_ = gate|up

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // The pre-activations gate | up into gu [tokens x 2 d_ff]: one call when fused; else each layer
  // writes its half with gu's row stride.
  template <class... Stream>
  void forward_gate_up(const MatrixView<const T>& x, const MatrixView<T>& gu, Workspace sub,
                       const Stream&... stream) const {
    if (!gate_) {
      up_.forward(x, gu, sub, Activation::kIdentity, stream...);
      return;
    }
    const index_t f = d_ff();
    gate_->forward(x, MatrixView<T>(gu.data, gu.rows, f, gu.row_stride), sub, Activation::kIdentity,
                   stream...);
    up_.forward(x, MatrixView<T>(gu.data + f, gu.rows, f, gu.row_stride), sub,
                Activation::kIdentity, stream...);
  }

  // Runs fn on grads[begin, end) as a list of its own, moving the buffers (no copies).
  template <class Grads, class Fn>
  static void with_slice(Grads& grads, std::size_t begin, std::size_t end, Fn&& fn) {
    Grads sub(std::make_move_iterator(grads.begin() + begin),
              std::make_move_iterator(grads.begin() + end));
    fn(sub);
    std::move(sub.begin(), sub.end(), grads.begin() + begin);
  }
};

}  // namespace detail
}  // namespace ffnkit
