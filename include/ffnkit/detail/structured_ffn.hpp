// StructuredFFN<Up, Down> (docs/math.md §3.7): two structured layers around an activation, in three
// forms: down(act(up(x))); SwiGLU with separate gate and up layers; SwiGLU with gate|up in one
// layer, so a factor both halves share (LowRank's V x, BlockDense's block-diagonal stage) is
// computed once. One class for every backend: the elementwise passes are the backend's
// LinearOps, the products the sublayers'. Included by ffnkit/structured.hpp.
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
#include "ffnkit/detail/backend.hpp"

namespace ffnkit {

template <class T, class Backend>
class DenseLinear;

namespace detail {
// DenseFFN is the StructuredFFN of two DenseLinear layers; its errors say DenseFFN.
template <class L>
struct IsDenseLinear : std::false_type {};
template <class T, class B>
struct IsDenseLinear<DenseLinear<T, B>> : std::true_type {};
}  // namespace detail

template <class Up, class Down, class B = typename Up::Backend>
class StructuredFFN {
 public:
  using Backend = B;
  using Scalar = typename Up::Scalar;
  using T = Scalar;
  using Stream = detail::StreamOf<Backend>;
  using Grads = GradList<T, Backend>;
  static_assert(std::is_same<typename Up::Backend, Backend>::value &&
                    std::is_same<typename Down::Backend, Backend>::value,
                "Up and Down run on the FFN's backend");
  static_assert(std::is_same<typename Down::Scalar, T>::value, "Up and Down share a scalar type");

  StructuredFFN() = default;

  // y = down(act(up(x))).
  StructuredFFN(Up up, Down down, Activation act = Activation::kGeluTanh)
      : up_(std::move(up)), down_(std::move(down)), act_(act) {
    const char* where = name("StructuredFFN", "DenseFFN");
    check_activation_value(where, act);
    up_.check_ready(where);
    down_.check_ready(where);
    check_equal(where, "down.in_features", down_.in_features(), "up.out_features",
                up_.out_features());
  }

  // SwiGLU from separate layers: y = down(SiLU(gate(x)) * up(x)).
  static StructuredFFN swiglu(Up gate, Up up, Down down) {
    constexpr const char* where = "StructuredFFN::swiglu";
    check_equal(where, "up.in_features", up.in_features(), "gate.in_features", gate.in_features());
    check_equal(where, "up.out_features", up.out_features(), "gate.out_features",
                gate.out_features());
    check_equal(where, "down.in_features", down.in_features(), "up.out_features",
                up.out_features());
    return StructuredFFN(SwigluParts{}, std::move(up), std::move(down),
                         std::make_unique<Up>(std::move(gate)), false);
  }

  // SwiGLU with gate and up in one layer [d_model -> 2 d_ff]: outputs [0, d_ff) are the gate,
  // [d_ff, 2 d_ff) the up projection (the official SwiGLU fc1's torch.chunk order).
  static StructuredFFN swiglu(Up gate_up, Down down) {
    constexpr const char* where = "StructuredFFN::swiglu";
    const index_t width = gate_up.out_features();
    if (width % 2 != 0)
      fail(where, "gate_up.out_features = ", width,
           " is odd; expected 2 d_ff (the gate's outputs, then up's)");
    check_equal(where, "down.in_features", down.in_features(), "gate_up.out_features / 2",
                width / 2);
    return StructuredFFN(SwigluParts{}, std::move(gate_up), std::move(down), nullptr, true);
  }

  StructuredFFN(StructuredFFN&&) noexcept = default;
  StructuredFFN& operator=(StructuredFFN&&) noexcept = default;

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

  // The hidden activations ([tokens x 2 d_ff] for SwiGLU) plus the largest sublayer scratch.
  std::size_t workspace_size(index_t tokens) const {
    return hidden_bytes(tokens) + sublayer_workspace(tokens, false);
  }
  // Pre-activations, activations and their gradient, a separate gate's dx, and the largest
  // sublayer scratch of a forward or a backward.
  std::size_t backward_workspace_size(index_t tokens) const {
    return 3 * hidden_bytes(tokens) + gate_dx_bytes(tokens) + sublayer_workspace(tokens, true);
  }

  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     Workspace ws = {}) const {
    const char* where = name("StructuredFFN::forward", "DenseFFN::forward");
    check_ready(where);
    check_forward_views(where, d_model(), d_out(), x, y, "d_model", "d_out");
    detail::check_workspace<T, Backend>(where, ws, workspace_size(x.rows), "workspace_size(x.rows)",
                                        detail::named("x", x), detail::named("y", y));
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    check_forward(x, y, ws);
    const index_t t = x.rows, w = hidden_width();
    detail::CallScratch<Backend> scratch(ws, workspace_size(t), stream);
    const MatrixView<T> h(scratch.template take<T>(hidden_bytes(t) / sizeof(T)), t, w);
    const Workspace sub = sub_workspace(scratch, sublayer_workspace(t, false));
    if (gated()) {
      forward_gate_up(x, h, sub, stream);
      activate(h, stream);
    } else {
      up_.forward(x, h, sub, act_, stream);
    }
    down_.forward(MatrixView<const T>(h.data, t, d_ff(), w), y, sub, Activation::kIdentity, stream);
  }

  // Gradients in params() order; dx skipped when dx.data is null. The pre-activations are
  // recomputed, not kept from forward, so forward stays allocation-free and keeps no state.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    const char* where = name("StructuredFFN::backward", "DenseFFN::backward");
    check_ready(where);
    check_backward_views(where, d_model(), d_out(), x, dy, dx, "d_model", "d_out");
    check_grads(where, const_cast<StructuredFFN*>(this)->params(), grads);
    const index_t t = x.rows, f = d_ff(), w = hidden_width();
    detail::check_workspace<T, Backend>(where, ws, backward_workspace_size(t),
                                        "backward_workspace_size(x.rows)", detail::named("x", x),
                                        detail::named("dy", dy), detail::named("dx", dx));
    detail::CallScratch<Backend> scratch(ws, backward_workspace_size(t), stream);
    const std::size_t hidden = hidden_bytes(t) / sizeof(T);
    const MatrixView<T> pre(scratch.template take<T>(hidden), t, w),
        act(scratch.template take<T>(hidden), t, w), dh(scratch.template take<T>(hidden), t, w);
    const MatrixView<T> dx_gate(scratch.template take<T>(gate_dx_bytes(t) / sizeof(T)), t,
                                d_model());
    const Workspace sub = sub_workspace(scratch, sublayer_workspace(t, true));
    if (gated()) {
      forward_gate_up(x, pre, sub, stream);
    } else {
      up_.forward(x, pre, sub, Activation::kIdentity, stream);
    }
    Ops::axpby(where, pre, act, 1.0, 0.0, nullptr, 0.0, stream);
    activate(act, stream);
    // SwiGLU: d(act) lands in the up half of dh, which hidden_grad turns into d(gate | up).
    const MatrixView<T> dact(gated() ? dh.data + f : dh.data, t, f, w);
    const std::size_t n_up = (gate_ ? slots(*gate_) : 0) + slots(up_);
    with_slice(grads, n_up, grads.size(), [&](Grads& g) {
      down_.backward(MatrixView<const T>(act.data, t, f, w), dy, dact, g, sub, stream);
    });
    hidden_grad(dh, pre, stream);
    if (!gate_) {
      with_slice(grads, 0, n_up, [&](Grads& g) { up_.backward(x, dh, dx, g, sub, stream); });
      return;
    }
    // Separate gate and up layers both read x: the gate's dx goes through scratch and is added.
    const std::size_t n_gate = slots(*gate_);
    with_slice(grads, n_gate, n_up, [&](Grads& g) {
      up_.backward(x, MatrixView<const T>(dh.data + f, t, f, w), dx, g, sub, stream);
    });
    with_slice(grads, 0, n_gate, [&](Grads& g) {
      gate_->backward(x, MatrixView<const T>(dh.data, t, f, w),
                      dx.data ? dx_gate : MatrixView<T>(nullptr, t, d_model()), g, sub, stream);
    });
    if (dx.data) Ops::axpby(where, dx_gate, dx, 1.0, 1.0, nullptr, 0.0, stream);
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

  // Zero-filled gradient buffers in params() order, in the backend's memory.
  Grads make_grads() const {
    Grads g;
    auto take = [&](Grads&& part) { std::move(part.begin(), part.end(), std::back_inserter(g)); };
    if (gate_) take(gate_->make_grads());
    take(up_.make_grads());
    take(down_.make_grads());
    return g;
  }

 private:
  using Ops = detail::LinearOps<T, Backend>;

  static const char* name(const char* structured, const char* dense) {
    return detail::IsDenseLinear<Up>::value ? dense : structured;
  }

  struct SwigluParts {};
  StructuredFFN(SwigluParts, Up up, Down down, std::unique_ptr<Up> gate, bool fused)
      : up_(std::move(up)),
        down_(std::move(down)),
        act_(Activation::kSilu),
        gate_(std::move(gate)),
        fused_(fused) {}

  void check_ready(const char* where) const {
    up_.check_ready(where);
    down_.check_ready(where);
    if (gate_) gate_->check_ready(where);
  }

  // The hidden buffer's width: SwiGLU keeps gate | up side by side, so one pass gates them and
  // down reads the gate half with row stride 2 d_ff.
  index_t hidden_width() const { return gated() ? 2 * d_ff() : d_ff(); }
  std::size_t hidden_bytes(index_t tokens) const {
    return detail::round_up_64(static_cast<std::size_t>(tokens * hidden_width()) * sizeof(T));
  }
  std::size_t gate_dx_bytes(index_t tokens) const {
    return gate_ ? detail::round_up_64(static_cast<std::size_t>(tokens * d_model()) * sizeof(T))
                 : 0;
  }
  // One scratch serves the sublayers in turn.
  std::size_t sublayer_workspace(index_t tokens, bool backward) const {
    auto need = [&](const auto& l) {
      return backward ? std::max(l.workspace_size(tokens), l.backward_workspace_size(tokens))
                      : l.workspace_size(tokens);
    };
    const std::size_t s = std::max(need(up_), need(down_));
    return gate_ ? std::max(s, need(*gate_)) : s;
  }
  static Workspace sub_workspace(detail::CallScratch<Backend>& scratch, std::size_t bytes) {
    return bytes ? Workspace{scratch.template take<unsigned char>(bytes), bytes} : Workspace{};
  }

  // The pre-activations gate | up into gu [tokens x 2 d_ff]: one call when fused; else each layer
  // writes its half with gu's row stride.
  void forward_gate_up(const MatrixView<const T>& x, const MatrixView<T>& gu, Workspace sub,
                       const Stream& stream) const {
    if (!gate_) {
      up_.forward(x, gu, sub, Activation::kIdentity, stream);
      return;
    }
    const index_t f = d_ff();
    gate_->forward(x, MatrixView<T>(gu.data, gu.rows, f, gu.row_stride), sub, Activation::kIdentity,
                   stream);
    up_.forward(x, MatrixView<T>(gu.data + f, gu.rows, f, gu.row_stride), sub,
                Activation::kIdentity, stream);
  }

  // h = act(h), or for SwiGLU SiLU(gate) * up over the gate half of h = gate | up.
  void activate(const MatrixView<T>& h, const Stream& stream) const {
    const char* where = name("StructuredFFN", "DenseFFN");
    if (gated()) {
      Ops::swiglu(where, h, nullptr, nullptr, stream);
    } else {
      Ops::bias_activation(where, h, nullptr, act_, stream);
    }
  }

  // dh holds d(act) (SwiGLU: in its up half); becomes d(pre) (SwiGLU: d(gate | up)).
  void hidden_grad(const MatrixView<T>& dh, const MatrixView<const T>& pre,
                   const Stream& stream) const {
    const char* where = name("StructuredFFN::backward", "DenseFFN::backward");
    const index_t f = d_ff();
    if (!gated()) {
      Ops::activation_grad(where, dh, pre, act_, stream);
      return;
    }
    Ops::swiglu_grad(where, MatrixView<T>(dh.data + f, dh.rows, f, dh.row_stride),
                     MatrixView<const T>(pre.data, pre.rows, f, pre.row_stride),
                     MatrixView<const T>(pre.data + f, pre.rows, f, pre.row_stride),
                     MatrixView<T>(dh.data, dh.rows, f, dh.row_stride), stream);
  }

  // How many gradient buffers a sublayer takes (params() hands out mutable views, hence the cast).
  template <class L>
  static std::size_t slots(const L& layer) {
    return const_cast<L&>(layer).params().size();
  }

  // Runs fn on grads[begin, end) as a list of its own, moving the buffers (no copies).
  template <class Fn>
  static void with_slice(Grads& grads, std::size_t begin, std::size_t end, Fn&& fn) {
    Grads sub(std::make_move_iterator(grads.begin() + begin),
              std::make_move_iterator(grads.begin() + end));
    fn(sub);
    std::move(sub.begin(), sub.end(), grads.begin() + begin);
  }

  Up up_;
  Down down_;
  Activation act_ = Activation::kGeluTanh;
  std::unique_ptr<Up> gate_;  // SwiGLU with a separate gate only
  bool fused_ = false;        // SwiGLU with up_ = gate|up
};

}  // namespace ffnkit
