// Self-guided training (docs/math.md §5): a structured layer S trained under a dense guide W,
//   y = α W x + (1 − α) S(x) + b,
// with α decaying from 1 to 0 over the first T optimizer steps, after which the guide is dropped
// and the layer is exactly S. Every backend: the backend-specific steps are in
// detail/self_guided_ops.hpp; on the device backends the guide lives in device memory, views and
// gradient buffers are device memory, and forward/backward take a stream.
//
// Stochastic FLOP reduction (docs/math.md §5, on in the paper): each forward draws u ~ U[0, 1) once
// and computes the dense branch only if u < α; otherwise it outputs S(x). The output is then a
// different function of the parameters depending on the draw, so backward must know which one the
// forward computed. Design: every forward returns a SelfGuidedDecision token (the step, α and
// whether the dense branch ran) and also records it as last_decision(). backward() differentiates
// exactly the function that token describes: pass the token explicitly when several forwards
// precede their backwards (gradient accumulation over micro-batches), or omit it to use the last
// forward's. recompute() replays a token's decision without drawing (activation checkpointing, and
// finite-difference checks), so a recomputed forward never changes the decision stream.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/detail/self_guided_ops.hpp"
#include "ffnkit/structured.hpp"

namespace ffnkit {

// The guide weight α(t) over optimizer steps t (docs/math.md §5).
//   T = decay_steps() = round(ratio × total_steps), rounding half away from zero (std::llround:
//   ratio 0.5 of 5 steps gives T = 3), so that T never depends on the platform's rounding mode.
//   cosine (default): α(t) = ½ (1 + cos(π t / T)) for t ≤ T, 0 after;
//   linear:           α(t) = 1 − t / T            for t ≤ T, 0 after.
//   α(0) = 1 and α(T) = 0 exactly; T = 0 means α = 0 from step 0 (no guidance at all).
struct AlphaSchedule {
  enum class Kind { kCosine, kLinear };

  Kind kind = Kind::kCosine;
  double ratio = 0.5;       // fraction of training during which the guide is active, in [0, 1]
  index_t total_steps = 0;  // optimizer steps of the whole run, >= 0

  AlphaSchedule() = default;
  explicit AlphaSchedule(index_t total, double decay_ratio = 0.5, Kind k = Kind::kCosine)
      : kind(k), ratio(decay_ratio), total_steps(total) {
    validate("AlphaSchedule");
  }
  static AlphaSchedule cosine(index_t total, double decay_ratio = 0.5) {
    return AlphaSchedule(total, decay_ratio, Kind::kCosine);
  }
  static AlphaSchedule linear(index_t total, double decay_ratio = 0.5) {
    return AlphaSchedule(total, decay_ratio, Kind::kLinear);
  }

  // The fields are public (aggregate-style configuration), so every use re-validates them.
  void validate(const char* where) const {
    if (!(ratio >= 0.0 && ratio <= 1.0))  // also rejects NaN
      fail(where, "ratio = ", ratio, ", must be in [0, 1]");
    if (total_steps < 0) fail(where, "total_steps = ", total_steps, ", must be >= 0");
    if (kind != Kind::kCosine && kind != Kind::kLinear)
      fail(where, "kind = ", static_cast<int>(kind), " is unknown");
  }

  index_t decay_steps() const {
    validate("AlphaSchedule::decay_steps");
    return static_cast<index_t>(std::llround(ratio * static_cast<double>(total_steps)));
  }

  double alpha(index_t step) const {
    validate("AlphaSchedule::alpha");
    if (step < 0) fail("AlphaSchedule::alpha", "step = ", step, ", must be >= 0");
    const index_t t_end = decay_steps();
    // Exact 0 from T on (not cos(π) rounding), so "α has reached 0" is a clean test for dropping.
    if (step >= t_end) return 0.0;
    const double frac = static_cast<double>(step) / static_cast<double>(t_end);
    if (kind == Kind::kLinear) return 1.0 - frac;
    return 0.5 * (1.0 + std::cos(3.14159265358979323846 * frac));
  }
};

inline const char* to_string(AlphaSchedule::Kind k) {
  return k == AlphaSchedule::Kind::kLinear ? "linear" : "cosine";
}

// What one forward computed: the step and α it ran at and whether the dense branch ran. backward
// differentiates exactly this function. A default-constructed token describes no forward.
struct SelfGuidedDecision {
  index_t step = -1;
  double alpha = 0.0;
  bool used_guide = false;

  bool valid() const { return step >= 0; }
  // The weight the dense branch actually received: α when it ran, else 0.
  double effective_alpha() const { return used_guide ? alpha : 0.0; }
};

// A structured layer under a dense guide (docs/math.md §5). Structured is one of LowRankLinear,
// BlockDiagonalLinear, BlockDenseLinear, BlockShuffleLinear on any backend; the bias is S's own
// and is added exactly once. forward() is non-const: it consumes the decision RNG and records the
// decision (see the design note at the top of this file).
template <class Structured>
class SelfGuided {
 public:
  using Scalar = typename Structured::Scalar;
  using Backend = typename Structured::Backend;
  using T = Scalar;
  using Ops = detail::SelfGuidedOps<T, Backend>;
  using Stream = typename Ops::Stream;  // an empty, synchronous stand-in on Cpu
  using Grads = typename Ops::Grads;    // GradList<T> on Cpu, device buffers on the device

  // The guide starts as S's own dense equivalent, so at step 0 the blend equals S (docs/math.md
  // §5). `seed` drives the stochastic decisions; give each layer of a model its own seed.
  SelfGuided(Structured s, AlphaSchedule schedule, bool stochastic = true, std::uint64_t seed = 0)
      : s_(std::move(s)), schedule_(schedule), stochastic_(stochastic), rng_(seed) {
    constexpr const char* where = "SelfGuided";
    schedule_.validate(where);
    if (s_.in_features() <= 0 || s_.out_features() <= 0)
      fail(where, "the structured layer is empty (in_features = ", s_.in_features(),
           ", out_features = ", s_.out_features(), ")");
    guide_ = Ops::upload(s_.materialize());
    guide_present_ = true;
    ready_ = true;
  }

  SelfGuided(const SelfGuided&) = default;
  SelfGuided& operator=(const SelfGuided&) = default;
  // A moved-from layer is marked empty so that calling it is an error, not a null GEMM.
  SelfGuided(SelfGuided&& o) noexcept
      : s_(std::move(o.s_)),
        schedule_(o.schedule_),
        stochastic_(o.stochastic_),
        rng_(o.rng_),
        step_(o.step_),
        guide_(std::move(o.guide_)),
        guide_present_(std::exchange(o.guide_present_, false)),
        last_(o.last_),
        ready_(std::exchange(o.ready_, false)) {}
  SelfGuided& operator=(SelfGuided&& o) noexcept {
    if (this != &o) {
      s_ = std::move(o.s_);
      schedule_ = o.schedule_;
      stochastic_ = o.stochastic_;
      rng_ = o.rng_;
      step_ = o.step_;
      guide_ = std::move(o.guide_);
      guide_present_ = std::exchange(o.guide_present_, false);
      last_ = o.last_;
      ready_ = std::exchange(o.ready_, false);
    }
    return *this;
  }

  // ----- schedule -----
  double alpha() const { return schedule_.alpha(step_); }
  // Advances one optimizer step (call after the optimizer update, once per step).
  void step() { ++step_; }
  index_t step_count() const { return step_; }
  bool stochastic() const { return stochastic_; }
  const AlphaSchedule& schedule() const { return schedule_; }

  // ----- shapes and the wrapped layer -----
  index_t in_features() const { return s_.in_features(); }
  index_t out_features() const { return s_.out_features(); }
  bool has_bias() const { return s_.has_bias(); }
  const T* bias() const { return s_.bias(); }
  const Structured& structured() const { return s_; }

  // ----- the guide -----
  bool has_guide() const { return guide_present_; }
  // The guide [out x in], in the backend's memory (device memory on the device backends).
  const T* guide() const { return guide_present_ ? guide_.data() : nullptr; }
  // A host copy of the guide; empty once dropped.
  std::vector<T> guide_host() const {
    return guide_present_ ? Ops::to_host(guide_) : std::vector<T>();
  }
  // Bytes the guide holds (what dropping it gives back).
  std::size_t guide_bytes() const { return Ops::bytes(guide_); }

  // Frees the guide once α has reached 0 (docs/math.md §5: after T the guide is dropped and
  // inference never pays for it). α never rises again (step only advances and the schedule is
  // non-increasing), so from here on forward is exactly S.forward. Dropping twice is a no-op.
  void drop_guide() {
    constexpr const char* where = "SelfGuided::drop_guide";
    check_ready(where);
    if (!guide_present_) return;
    const double a = alpha();
    if (a != 0.0)
      fail(
          where, "alpha = ", a, " at step ", step_,
          " has not reached 0; the guide is still in use until step T = ", schedule_.decay_steps());
    Ops::release(guide_);
    guide_present_ = false;
  }

  // Overwrites the guide with host weights [out x in] in PyTorch layout (resuming from a
  // checkpoint taken mid-decay). The guide must still be present.
  void load_guide(const T* weights) {
    constexpr const char* where = "SelfGuided::load_guide";
    check_ready(where);
    if (!guide_present_) fail(where, "the guide has been dropped");
    check_not_null(where, "weights", weights);
    const index_t n = out_features() * in_features();
    Ops::check_host(where, "weights", weights, n);
    guide_ = Ops::upload(std::vector<T>(weights, weights + n));
  }

  // ----- the operator contract -----
  // Forward: S(x) for the blend, then S's own scratch.
  std::size_t workspace_size(index_t tokens) const {
    return branch_bytes(tokens) + s_.workspace_size(tokens);
  }
  // Backward: the scaled dy, then S's own backward scratch.
  std::size_t backward_workspace_size(index_t tokens) const {
    return branch_bytes(tokens) + s_.backward_workspace_size(tokens);
  }
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     Workspace ws = {}) const {
    check_views("SelfGuided::forward", x, y);
    detail::check_workspace<T, Backend>("SelfGuided::forward", ws, workspace_size(x.rows),
                                        "workspace_size(x.rows)", detail::named("x", x),
                                        detail::named("y", y));
  }

  // ----- forward -----
  // Draws the stochastic decision (once per call, when stochastic), computes the output, records
  // and returns the decision. Non-stochastic: the dense branch runs whenever α > 0. α = 0 never
  // computes the dense branch, and then y = S(x) bitwise (S.forward writes y directly).
  SelfGuidedDecision forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                             Workspace ws = {}, const Stream& stream = Stream()) {
    constexpr const char* where = "SelfGuided::forward";
    check_forward(x, y, ws);
    SelfGuidedDecision d;
    d.step = step_;
    d.alpha = alpha();
    // The draw happens whatever α is, so the decision stream is a function of the seed and the
    // number of forward calls only.
    const double u = stochastic_ ? rng_.uniform() : 0.0;
    d.used_guide = d.alpha > 0.0 && (!stochastic_ || u < d.alpha);
    run(where, x, y, ws, d, stream);
    last_ = d;
    return d;
  }

  // Recomputes the forward of a recorded decision without drawing or recording anything
  // (activation checkpointing; finite-difference checks). The decision must be from this step.
  void recompute(const MatrixView<const T>& x, const MatrixView<T>& y, const SelfGuidedDecision& d,
                 Workspace ws = {}, const Stream& stream = Stream()) const {
    constexpr const char* where = "SelfGuided::recompute";
    check_views(where, x, y);
    detail::check_workspace<T, Backend>(where, ws, workspace_size(x.rows), "workspace_size(x.rows)",
                                        detail::named("x", x), detail::named("y", y));
    check_decision(where, d);
    run(where, x, y, ws, d, stream);
  }

  bool last_used_guide() const { return last_.used_guide; }
  const SelfGuidedDecision& last_decision() const { return last_; }

  // ----- backward -----
  // Gradients in params() order, overwritten: S's factors (scaled by 1 − α when the dense branch
  // ran), "guide" = α dyᵀ x (zeros when it did not run; absent once dropped), "bias" = Σ dy
  // (unscaled: b enters once). dx = (1 − α) dx_S + α dy W when blended, else dx_S; dx.data null
  // skips it. Differentiates the function the last forward computed.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    if (!last_.valid())
      fail("SelfGuided::backward", "no forward has been run (no decision to differentiate)");
    backward(x, dy, dx, grads, last_, ws, stream);
  }

  // The same for the forward that returned `d`.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const SelfGuidedDecision& d,
                Workspace ws = {}, const Stream& stream = Stream()) const {
    constexpr const char* where = "SelfGuided::backward";
    check_backward(where, x, dy, dx);
    check_decision(where, d);
    check_grads(where, const_cast<SelfGuided*>(this)->params(), grads);
    detail::check_workspace<T, Backend>(where, ws, backward_workspace_size(x.rows),
                                        "backward_workspace_size(x.rows)", detail::named("x", x),
                                        detail::named("dy", dy), detail::named("dx", dx));
    detail::CallScratch<Backend> scratch(ws, backward_workspace_size(x.rows), stream);
    const MatrixView<T> sv(scratch.template take<T>(branch_bytes(x.rows) / sizeof(T)), dy.rows,
                           dy.cols);
    const Workspace sub = sub_workspace(scratch, s_.backward_workspace_size(x.rows));
    const index_t k = factor_count();
    const double a = d.effective_alpha();

    if (a == 0.0) {
      // y = S(x) + b: S's own backward, straight into the caller's buffers.
      structured_backward(x, dy, dx, grads, sub, stream);
      if (guide_present_) Ops::zero(grads[k], stream);
      return;
    }

    T* guide_grad = grads[k].data();
    if (a == 1.0) {
      // y = W x + b: S had weight 0 and was not evaluated, so its gradients are exact zeros.
      for (index_t i = 0; i < k; ++i) Ops::zero(grads[i], stream);
      Ops::dense_backward(where, x, dy, guide_.data(), guide_grad, dx, false, stream);
    } else {
      // Scaling dy once by (1 − α) (then by α) makes S's factor gradients and dx_S, and the
      // guide's gradient and dy W, come out scaled by linearity, with no extra passes over them.
      Ops::scale(where, sv, dy, 1.0 - a, stream);
      structured_backward(x, sv, dx, grads, sub, stream);  // dx = (1 − α) dx_S
      Ops::scale(where, sv, dy, a, stream);
      Ops::dense_backward(where, x, MatrixView<const T>(sv), guide_.data(), guide_grad, dx, true,
                          stream);
    }
    // The bias enters once and unscaled, whatever S's backward wrote for it.
    if (has_bias()) Ops::bias_grad(where, dy, grads.back().data(), stream);
  }

  // ----- parameters -----
  // S's factors (without its bias), "guide" [out x in] while present, then "bias" if any.
  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> sp = s_.params();
    std::vector<ParamView<T>> p(sp.begin(), sp.begin() + factor_count());
    if (guide_present_)
      p.push_back({"guide",
                   {out_features(), in_features()},
                   guide_.data(),
                   out_features() * in_features()});
    if (has_bias()) p.push_back(sp.back());
    return p;
  }

  // Zero-filled gradient buffers in params() order, in the backend's memory.
  Grads make_grads() const {
    Grads g;
    const Stream stream;
    for (const auto& p : const_cast<SelfGuided*>(this)->params()) {
      g.push_back(Ops::scratch(p.size));
      Ops::zero(g.back(), stream);
    }
    stream.synchronize();
    return g;
  }

  index_t parameter_count() const {
    return s_.parameter_count() + (guide_present_ ? out_features() * in_features() : 0);
  }

  // Expected forward FLOPs per token at the current step: S's, plus 2 M N when the dense branch
  // runs (probability α when stochastic, 1 when α > 0 otherwise), minus S's when α = 1 (skipped).
  double expected_flops_per_token() const {
    const double a = guide_present_ ? alpha() : 0.0;
    const double p_dense = a == 0.0 ? 0.0 : (stochastic_ ? a : 1.0);
    const double dense = 2.0 * static_cast<double>(in_features() * out_features());
    const double when_dense = dense + (a == 1.0 ? 0.0 : s_.flops_per_token());
    return p_dense * when_dense + (1.0 - p_dense) * s_.flops_per_token();
  }

  // The blended dense weight α W + (1 − α) materialize(S), [out x in] (the weight the dense
  // branch's output corresponds to; bias excluded, as in the structured layers' materialize()).
  std::vector<T> materialize() const {
    check_ready("SelfGuided::materialize");
    std::vector<T> w = s_.materialize();
    const double a = guide_present_ ? alpha() : 0.0;
    if (a == 0.0) return w;
    const std::vector<T> g = Ops::to_host(guide_);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = Ops::blend_host(g[i], w[i], a);
    return w;
  }

 private:
  void check_ready(const char* where) const {
    if (!ready_) fail(where, "the layer is empty (moved from)");
  }

  void check_views(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y) const {
    check_ready(where);
    check_forward_views(where, in_features(), out_features(), x, y);
  }

  void check_backward(const char* where, const MatrixView<const T>& x,
                      const MatrixView<const T>& dy, const MatrixView<T>& dx) const {
    check_ready(where);
    check_backward_views(where, in_features(), out_features(), x, dy, dx);
  }

  // A decision from another step ran at another α: differentiating it now would be wrong.
  void check_decision(const char* where, const SelfGuidedDecision& d) const {
    if (!d.valid()) fail(where, "decision.step = ", d.step, ": not a decision from a forward");
    if (d.step != step_)
      fail(where, "decision.step = ", d.step, " differs from the current step_count() = ", step_,
           " (a decision is only valid for the step its forward ran at)");
    // Only the branch choice may differ from what forward() would pick (a hand-made token can
    // force a branch); α is the step's own, or the token would describe some other function.
    if (d.alpha != alpha())
      fail(where, "decision.alpha = ", d.alpha, " differs from alpha() = ", alpha(), " at step ",
           step_);
    if (d.used_guide && d.alpha == 0.0)
      fail(where, "decision.used_guide is true at alpha = 0 (the dense branch has weight 0)");
    if (d.used_guide && !guide_present_)
      fail(where, "decision.used_guide is true but the guide has been dropped");
  }

  index_t factor_count() const {
    return static_cast<index_t>(const_cast<Structured&>(s_).params().size()) - (has_bias() ? 1 : 0);
  }

  void run(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws,
           const SelfGuidedDecision& d, const Stream& stream) const {
    const double a = d.effective_alpha();
    detail::CallScratch<Backend> scratch(ws, workspace_size(x.rows), stream);
    const MatrixView<T> sv(scratch.template take<T>(branch_bytes(x.rows) / sizeof(T)), x.rows,
                           out_features());
    const Workspace sub = sub_workspace(scratch, s_.workspace_size(x.rows));
    if (a == 0.0) {
      Ops::structured_forward(s_, x, y, sub, stream);
      return;
    }
    if (!guide_present_) fail(where, "the dense branch was requested but the guide is dropped");
    if (a == 1.0) {
      // S has weight 0: skip it. y = W x + b.
      Ops::dense_forward(where, x, guide_.data(), out_features(), bias(), y, stream);
      return;
    }
    // S's forward adds b inside its own output pass; the blend then adds the remaining α b, so
    // y = α W x + (1 − α)(S(x) + b) + α b = α W x + (1 − α) S(x) + b: b counted once.
    Ops::structured_forward(s_, x, sv, sub, stream);
    Ops::dense_forward(where, x, guide_.data(), out_features(), nullptr, y, stream);
    Ops::blend(where, y, sv, a, bias(), stream);
  }

  // The [tokens x out] buffer of the blend's S(x), or of backward's scaled dy.
  std::size_t branch_bytes(index_t tokens) const {
    return detail::round_up_64(static_cast<std::size_t>(tokens * out_features()) * sizeof(T));
  }
  static Workspace sub_workspace(detail::CallScratch<Backend>& scratch, std::size_t bytes) {
    return bytes ? Workspace{scratch.template take<unsigned char>(bytes), bytes} : Workspace{};
  }

  // S.backward into the caller's buffers: S's GradList is [factors..., bias], ours has the guide
  // in between, so the buffers are moved (not copied) into a temporary list and always moved back.
  void structured_backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                           const MatrixView<T>& dx, Grads& grads, Workspace ws,
                           const Stream& stream) const {
    const index_t k = factor_count();
    Grads sg;
    sg.reserve(static_cast<std::size_t>(k + 1));
    for (index_t i = 0; i < k; ++i) sg.push_back(std::move(grads[i]));
    if (has_bias()) sg.push_back(std::move(grads.back()));
    struct Restore {
      Grads& sg;
      Grads& grads;
      index_t k;
      bool bias;
      ~Restore() {
        for (index_t i = 0; i < k; ++i) grads[i] = std::move(sg[i]);
        if (bias) grads.back() = std::move(sg.back());
      }
    } restore{sg, grads, k, has_bias()};
    Ops::structured_backward(s_, x, dy, dx, sg, ws, stream);
  }

  Structured s_;
  AlphaSchedule schedule_;
  bool stochastic_ = true;
  Rng rng_;
  index_t step_ = 0;
  typename Ops::Storage guide_;  // [out x in] row-major, PyTorch layout, in the backend's memory
  bool guide_present_ = false;
  SelfGuidedDecision last_;
  bool ready_ = false;
};

}  // namespace ffnkit
