// The dense layers every structured layer is measured against (docs/math.md §2), one class
// template each over scalar and backend (Cpu, Cuda, CudaEmu), written once against the backend's
// LinearOps (detail/backend.hpp):
//   DenseLinear<T, Backend>:  y = W x + b, W: [out x in] as PyTorch's nn.Linear stores it;
//   DenseFFN<T, Backend>:     y = W2 act(W1 x + b1) + b2, or SwiGLU y = W2 (SiLU(Wg x) * (Wu x)),
//                             the StructuredFFN of two DenseLinear layers, gate and up fused into
//                             one [2 d_ff x d_model] weight so one GEMM makes both halves.
// Activations are row-major [tokens x features] views (core/view.hpp). Both have the operator
// contract of docs/design.md, backward included.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/structured.hpp"

namespace ffnkit {

template <class T, class Backend = Cpu>
class DenseLinear : public detail::StructuredLinearBase<T, Backend, DenseLinear<T, Backend>> {
  using Base = detail::StructuredLinearBase<T, Backend, DenseLinear<T, Backend>>;
  using typename Base::Ops;

 public:
  using Base::forward;
  using typename Base::Grads;
  using typename Base::Stream;

  DenseLinear() = default;

  // Copies `weight` ([out x in] row-major, PyTorch's nn.Linear layout) and `bias` ([out], or null
  // for a layer without bias) from the host. Non-finite weights are rejected here, once.
  DenseLinear(index_t in_features, index_t out_features, const T* weight, const T* bias) {
    constexpr const char* where = "DenseLinear";
    check_positive(where, "in_features", in_features);
    check_positive(where, "out_features", out_features);
    w_ = Base::upload_factor(where, "weight", weight, in_features * out_features);
    this->init_base(where, in_features, out_features, bias);
  }

  // Seeded initialisation: weights and bias drawn from N(0, stddev²) in double, rounded once (bias
  // absent if !with_bias); the same values on every backend.
  static DenseLinear random(index_t in_features, index_t out_features, std::uint64_t seed,
                            bool with_bias = true, double stddev = 0.02) {
    check_positive("DenseLinear::random", "in_features", in_features);
    check_positive("DenseLinear::random", "out_features", out_features);
    std::vector<double> w(static_cast<std::size_t>(in_features * out_features));
    fill_normal(w.data(), static_cast<index_t>(w.size()), seed, 0.0, stddev);
    const auto b = Base::random_bias(out_features, seed, with_bias, stddev);
    return DenseLinear(in_features, out_features,
                       detail::from_doubles<T>(w.data(), w.size()).data(), Base::ptr_or_null(b));
  }

  const T* weight() const { return w_.data(); }  // the backend's memory
  std::vector<T> weight_host() const { return w_.to_host(); }
  index_t parameter_count() const {
    return this->in_ * this->out_ + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(this->in_) * this->out_; }
  std::size_t workspace_size(index_t) const { return 0; }
  std::size_t backward_workspace_size(index_t) const { return 0; }

  static constexpr const char* kForward = "DenseLinear::forward";

  // y = act(x Wᵀ + b). x: [tokens x in_features], y: [tokens x out_features]; both may be strided.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws, Activation act,
               const Stream& stream = Stream()) const {
    this->check_forward(x, y, ws);
    Ops::linear("DenseLinear::forward", x, w_.data(), this->out_, this->bias(), act, y, stream);
  }

  // Gradients in params() order: weight (dyᵀ x), bias (Σ_t dy). dx = dy W unless dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    constexpr const char* where = "DenseLinear::backward";
    this->check_backward_call(where, x, dy, dx, grads, ws, 0);
    Ops::gemm_xwt_backward(where, x, dy, w_.data(), grads[0].data(), dx, false, stream);
    this->bias_backward(where, dy, grads, stream);
  }

  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> p = {
        {"weight", {this->out_, this->in_}, w_.data(), this->out_ * this->in_}};
    this->append_bias_param(p);
    return p;
  }

  std::vector<T> materialize() const { return weight_host(); }

 private:
  detail::Storage<T, Backend> w_;
};

template <class T, class Backend = Cpu>
class DenseFFN : public StructuredFFN<DenseLinear<T, Backend>, DenseLinear<T, Backend>> {
  using Base = StructuredFFN<DenseLinear<T, Backend>, DenseLinear<T, Backend>>;

 public:
  using Linear = DenseLinear<T, Backend>;

  DenseFFN() = default;

  // y = down(act(up(x))): up: d_model -> d_ff, down: d_ff -> d_out.
  DenseFFN(Linear up, Linear down, Activation act = Activation::kGeluTanh)
      : Base(std::move(up), std::move(down), act) {}

  // SwiGLU: y = down(SiLU(gate(x)) * up(x)). Gate and up are stored as one [2 d_ff x d_model]
  // weight (gate rows first) so a single GEMM produces both halves.
  static DenseFFN swiglu(const Linear& gate, const Linear& up, Linear down) {
    constexpr const char* where = "DenseFFN::swiglu";
    gate.check_ready("DenseFFN::swiglu: gate");
    up.check_ready("DenseFFN::swiglu: up");
    down.check_ready("DenseFFN::swiglu: down");
    check_equal(where, "up.in_features", up.in_features(), "gate.in_features", gate.in_features());
    check_equal(where, "up.out_features", up.out_features(), "gate.out_features",
                gate.out_features());
    check_equal(where, "down.in_features", down.in_features(), "gate.out_features",
                gate.out_features());
    if (gate.has_bias() != up.has_bias())
      fail(where, "gate.has_bias = ", gate.has_bias(), " but up.has_bias = ", up.has_bias(),
           "; both or neither must have a bias");
    std::vector<T> w = gate.weight_host(), b;
    const std::vector<T> wu = up.weight_host();
    w.insert(w.end(), wu.begin(), wu.end());
    if (gate.has_bias()) {
      b = gate.bias_host();
      const std::vector<T> bu = up.bias_host();
      b.insert(b.end(), bu.begin(), bu.end());
    }
    return DenseFFN(Base::swiglu(Linear(gate.in_features(), 2 * gate.out_features(), w.data(),
                                        b.empty() ? nullptr : b.data()),
                                 std::move(down)));
  }

  // Seeded N(0, 0.02²) weights and biases; d_out defaults to d_model.
  static DenseFFN random(index_t d_model, index_t d_ff, Activation act, std::uint64_t seed,
                         bool with_bias = true, index_t d_out = 0) {
    if (d_out == 0) d_out = d_model;
    return DenseFFN(Linear::random(d_model, d_ff, splitmix64(seed + 1), with_bias),
                    Linear::random(d_ff, d_out, splitmix64(seed + 2), with_bias), act);
  }
  static DenseFFN random_swiglu(index_t d_model, index_t d_ff, std::uint64_t seed,
                                bool with_bias = false, index_t d_out = 0) {
    if (d_out == 0) d_out = d_model;
    return swiglu(Linear::random(d_model, d_ff, splitmix64(seed + 3), with_bias),
                  Linear::random(d_model, d_ff, splitmix64(seed + 4), with_bias),
                  Linear::random(d_ff, d_out, splitmix64(seed + 5), with_bias));
  }

 private:
  explicit DenseFFN(Base&& b) : Base(std::move(b)) {}
};

}  // namespace ffnkit
