// The unfused baselines of the deferred-normalization family (docs/math.md §7.6), on any backend
// through the same backend policies as the fused layers (detail/norm_ops.hpp). The benchmarks and
// tests measure and check RMSNormLinear, LayerNormLinear and SoftmaxLinear against them:
//   UnfusedNormLinear<T, B>     the norm as its own pass (the same shifted-sum statistics, γ and β
//                               applied) writing a normalized copy of x, then y = x̂ Wᵀ + b with
//                               the original W, through the same product driver as the fused
//                               path; it holds W, γ, β and b as given, which the production
//                               layers do not;
//   UnfusedSoftmaxLinear<T, B>  three passes per query row (max; exponentials and their sum;
//                               normalization into P, fully masked rows zero), then one GEMM P V.
// Not float64 oracles (those are reference/norm.hpp): these compute in T, on the backend.
#pragma once

#include <cstddef>

#include "ffnkit/norm_linear.hpp"
#include "ffnkit/softmax_v.hpp"

namespace ffnkit {
namespace reference {

template <class T, class B = Cpu>
class UnfusedNormLinear {
  using Ops = ffnkit::detail::NormOps<T, B>;
  using Stat = typename Ops::Stat;

 public:
  using Scalar = T;
  using Backend = B;
  using Stream = ffnkit::detail::StreamOf<B>;

  static constexpr const char* kForward = "UnfusedNormLinear::forward";

  UnfusedNormLinear() = default;
  // y = Linear(LayerNorm(x)) when layer_norm, else y = Linear(RMSNorm(x)) (beta must then be
  // null). Host parameters in PyTorch's layouts, as the fused layers take them; gamma, beta, bias
  // may be null (1, 0, 0).
  UnfusedNormLinear(bool layer_norm, index_t in_features, index_t out_features, const T* gamma,
                    const T* beta, const T* weight, const T* bias, double eps)
      : layer_norm_(layer_norm), in_(in_features), out_(out_features), eps_(eps) {
    constexpr const char* where = "UnfusedNormLinear";
    ffnkit::detail::check_norm_linear_args(where, in_features, out_features, gamma, beta, weight,
                                           bias, eps);
    if (beta && !layer_norm) fail(where, "beta is given, but RMSNorm has no beta");
    w_ = ffnkit::detail::Storage<T, B>(weight, in_features * out_features);
    if (gamma) gamma_ = ffnkit::detail::Storage<T, B>(gamma, in_features);
    if (beta) beta_ = ffnkit::detail::Storage<T, B>(beta, in_features);
    if (bias) bias_ = ffnkit::detail::Storage<T, B>(bias, out_features);
  }

  // As RMSNormLinear's and LayerNormLinear's constructors take them.
  static UnfusedNormLinear rms_norm(index_t in_features, index_t out_features, const T* gamma,
                                    const T* weight, const T* bias, double eps = 1e-6) {
    return UnfusedNormLinear(false, in_features, out_features, gamma, nullptr, weight, bias, eps);
  }
  static UnfusedNormLinear layer_norm(index_t in_features, index_t out_features, const T* gamma,
                                      const T* beta, const T* weight, const T* bias,
                                      double eps = 1e-5) {
    return UnfusedNormLinear(true, in_features, out_features, gamma, beta, weight, bias, eps);
  }

  bool is_layer_norm() const { return layer_norm_; }
  double eps() const { return eps_; }
  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }

  // The statistics (2 Stat per token) and the normalized copy of x [tokens x in].
  std::size_t workspace_size(index_t tokens) const {
    const auto t = static_cast<std::size_t>(tokens);
    return ffnkit::detail::round_up_64(2 * t * sizeof(Stat)) +
           t * static_cast<std::size_t>(in_) * sizeof(T);
  }

  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
                     const MatrixView<T>& normalized = MatrixView<T>()) const {
    if (w_.empty()) fail(kForward, "the layer is empty (default-constructed or moved from)");
    ffnkit::detail::check_norm_linear_views(kForward, in_, out_, x, y, normalized);
    ffnkit::detail::check_workspace<T, B>(kForward, ws, workspace_size(x.rows),
                                          "workspace_size(x.rows)", ffnkit::detail::named("x", x),
                                          ffnkit::detail::named("y", y),
                                          ffnkit::detail::named("normalized", normalized));
  }

  // Normalize x into a buffer (`normalized` when given, else the workspace), then the product on
  // the original W with the bias.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws,
               const MatrixView<T>& normalized, const Stream& stream = Stream()) const {
    check_forward(x, y, ws, normalized);
    const index_t t = x.rows;
    ffnkit::detail::CallScratch<B> scratch(ws, workspace_size(t), stream);
    Stat* stats = scratch.template take<Stat>(
        ffnkit::detail::round_up_64(2 * static_cast<std::size_t>(t) * sizeof(Stat)) / sizeof(Stat));
    T* copy = scratch.template take<T>(static_cast<std::size_t>(t * in_));
    const MatrixView<T> xn = normalized.data ? normalized : MatrixView<T>(copy, t, in_);
    Ops::normalize(kForward, x, layer_norm_, eps_, gamma_.data(), beta_.data(), stats, xn, stream);
    Ops::linear(kForward, MatrixView<const T>(xn), w_.data(), out_, bias_.data(), y, stream);
  }
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    forward(x, y, ws, MatrixView<T>(), stream);
  }

 private:
  bool layer_norm_ = false;
  index_t in_ = 0;
  index_t out_ = 0;
  double eps_ = 0;
  ffnkit::detail::Storage<T, B> w_, gamma_, beta_, bias_;  // as given; γ, β, b empty when null
};

template <class T, class B = Cpu>
class UnfusedSoftmaxLinear {
  using Ops = ffnkit::detail::SoftmaxVOps<T, B>;

 public:
  using Scalar = T;
  using Backend = B;
  using Stream = ffnkit::detail::StreamOf<B>;

  static constexpr const char* kForward = "UnfusedSoftmaxLinear::forward";

  // P, the normalized [queries x keys] probabilities.
  std::size_t workspace_size(index_t queries, index_t keys) const {
    return static_cast<std::size_t>(queries) * static_cast<std::size_t>(keys) * sizeof(T);
  }

  void check_forward(const MatrixView<const T>& s, const MatrixView<const T>& v,
                     const MatrixView<T>& y,
                     const MatrixView<const T>& mask = MatrixView<const T>(),
                     Workspace ws = {}) const {
    ffnkit::detail::check_softmax_v_views(kForward, s, v, y, mask);
    ffnkit::detail::check_workspace<T, B>(
        kForward, ws, workspace_size(s.rows, s.cols), "workspace_size(s.rows, s.cols)",
        ffnkit::detail::named("s", s), ffnkit::detail::named("v", v), ffnkit::detail::named("y", y),
        ffnkit::detail::named("mask", mask));
  }

  void forward(const MatrixView<const T>& s, const MatrixView<const T>& v, const MatrixView<T>& y,
               const MatrixView<const T>& mask = MatrixView<const T>(), Workspace ws = {},
               const Stream& stream = Stream()) const {
    check_forward(s, v, y, mask, ws);
    const std::size_t need = workspace_size(s.rows, s.cols);
    ffnkit::detail::CallScratch<B> scratch(ws, need, stream);
    Ops::three_pass(kForward, s, v, y, mask, scratch.template take<T>(need / sizeof(T)), stream);
  }
};

}  // namespace reference
}  // namespace ffnkit
