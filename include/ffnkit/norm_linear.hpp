// Normalization deferred into the linear layer that follows it (docs/math.md §7), one class
// template each over scalar and backend (Cpu, Cuda, CudaEmu), written once against the backend's
// NormOps (detail/norm_ops.hpp):
//   RMSNormLinear<T, Backend>:    y = r (W' x) + b,           W' = W diag(γ), r = 1/sqrt(mean(x²) +
//   ε) LayerNormLinear<T, Backend>:  y = r (W' x − μ c) + b',    c = W' 1, b' = W β + b,
//                                                             r = 1/sqrt(var(x) + ε)
// The normalizer is one scalar per token and commutes with the product, so the statistics are
// taken from x alongside the product and applied in its epilogue; the normalized copy of x is
// never made. γ and β are folded into W' once, at construction, on the host in double; a layer
// holds W', c (LayerNorm), b' (when there is a β or a b), and γ, β for the optional `normalized`
// side output, never the unfolded W. Operator contract (docs/design.md): check_forward,
// workspace_size(tokens), forward(x, y, ws[, normalized][, stream]) const; inference only: no
// backward. The unfused "normalize, then the product" baseline is reference::UnfusedNormLinear
// (reference/unfused_norm.hpp). docs/deferred_norm.md has the kernels, the error bound and the
// measured tables.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/norm_ops.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/detail/norm_ops.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/norm_ops.hpp"
#endif

namespace ffnkit {
namespace detail {

// ε must be finite and > 0, and must not round to 0 in fp32 where the statistics are fp32 (every
// scalar type but double: docs/math.md §7.7).
template <class T>
void check_eps(const char* where, double eps) {
  if (!(eps > 0) || !std::isfinite(eps)) fail(where, "eps = ", eps, ", must be finite and > 0");
  if (!std::is_same<T, double>::value && static_cast<float>(eps) <= 0.0f)
    fail(where, "eps = ", eps,
         " rounds to 0 in float32, must be >= ", std::numeric_limits<float>::denorm_min());
}

// The construction checks of a norm -> linear layer (the fused layers and the unfused baseline):
// widths, W present, ε, and every host parameter given finite (γ, β, b may be null).
template <class T>
void check_norm_linear_args(const char* where, index_t in, index_t out, const T* gamma,
                            const T* beta, const T* weight, const T* bias, double eps) {
  check_positive(where, "in_features", in);
  check_positive(where, "out_features", out);
  check_not_null(where, "weight", weight);
  check_eps<T>(where, eps);
  check_host_finite(where, "weight", weight, in * out);
  if (gamma) check_host_finite(where, "gamma", gamma, in);
  if (beta) check_host_finite(where, "beta", beta, in);
  if (bias) check_host_finite(where, "bias", bias, out);
}

// The views of one norm -> linear call: x [tokens x in], y [tokens x out], the optional
// normalized [tokens x in], none overlapping another.
template <class T>
void check_norm_linear_views(const char* where, index_t in, index_t out,
                             const MatrixView<const T>& x, const MatrixView<T>& y,
                             const MatrixView<T>& normalized) {
  check_forward_views(where, in, out, x, y);
  if (normalized.data) {
    check_activation(where, "normalized", normalized, in, "in_features");
    check_equal(where, "normalized.rows", normalized.rows, "x.rows", x.rows);
    check_no_overlap(where, x, normalized, "x", "normalized");
    check_no_overlap(where, MatrixView<const T>(normalized), y, "normalized", "y");
  }
}

// RMSNormLinear and LayerNormLinear on every backend; the public classes add their constructors
// (and LayerNorm its centering threshold).
template <class T, class B, bool kLayerNorm>
class NormLinear {
  using Ops = NormOps<T, B>;
  using Stat = typename Ops::Stat;

 public:
  using Scalar = T;
  using Backend = B;
  using Stream = StreamOf<B>;

  static constexpr const char* kForward =
      kLayerNorm ? "LayerNormLinear::forward" : "RMSNormLinear::forward";

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  double eps() const { return eps_; }
  // The folded parameters (docs/math.md §7.3), in the backend's memory: W' = W diag(γ)
  // [out x in] in T; c = W' 1 (LayerNorm; null for RMSNorm) and b' = W β + b (null when there is
  // neither β nor b) in Stat, T on the Cpu backend and fp32 on the device backends.
  const T* folded_weight() const { return wf_.data(); }
  const Stat* row_sums() const { return kLayerNorm ? c_.data() : nullptr; }
  const Stat* folded_bias() const { return bf_.empty() ? nullptr : bf_.data(); }
  // The modules' own parameters (W, b, γ and β), not the folded copies.
  index_t parameter_count() const { return in_ * out_ + out_ + in_ * (kLayerNorm ? 2 : 1); }
  double flops_per_token() const { return 2.0 * static_cast<double>(in_) * out_; }

  // Bytes of scratch forward needs for `tokens` tokens: the statistics (2 Stat per token), the
  // fp32 accumulators [tokens x out] where the backend's product needs them (16-bit storage on
  // the device), and for LayerNorm a [tokens x in] copy of x for the centered product. An empty
  // Workspace allocates per call.
  std::size_t workspace_size(index_t tokens) const {
    const auto t = static_cast<std::size_t>(tokens);
    return round_up_64(2 * t * sizeof(Stat)) +
           round_up_64(Ops::kFloatAccumulators ? t * static_cast<std::size_t>(out_) * 4 : 0) +
           (kLayerNorm ? t * static_cast<std::size_t>(in_) * sizeof(T) : 0);
  }

  // A default-constructed or moved-from layer has no weights; calling it is an error.
  void check_ready(const char* where) const {
    if (wf_.empty()) fail(where, "the layer is empty (default-constructed or moved from)");
  }

  // Everything forward checks, before any memory is touched.
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
                     const MatrixView<T>& normalized = MatrixView<T>()) const {
    check_ready(kForward);
    check_norm_linear_views(kForward, in_, out_, x, y, normalized);
    check_workspace<T, B>(kForward, ws, workspace_size(x.rows), "workspace_size(x.rows)",
                          named("x", x), named("y", y), named("normalized", normalized));
  }

  // The fused (deferred) path, docs/math.md §7.2 / §7.3. x: [tokens x in], y: [tokens x out], in
  // the backend's memory, both may be strided. If `normalized` is given ([tokens x in]), the
  // normalized activations γ ⊙ norm(x) + β are written there too, for callers that need them
  // (this costs the write the fused path otherwise saves).
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws,
               const MatrixView<T>& normalized, const Stream& stream = Stream()) const {
    check_forward(x, y, ws, normalized);
    const auto n_t = static_cast<std::size_t>(x.rows), out_size = static_cast<std::size_t>(out_);
    CallScratch<B> scratch(ws, workspace_size(x.rows), stream);
    NormLinearCall<T, Stat> c;
    c.where = kForward;
    c.layer_norm = kLayerNorm;
    c.x = x;
    c.y = y;
    c.normalized = normalized;
    c.weight = wf_.data();
    c.row_sums = row_sums();
    c.bias = folded_bias();
    c.gamma = gamma_.data();
    c.beta = beta_.data();
    c.eps = eps_;
    c.center_threshold = center_threshold_;
    c.concurrent_stats = concurrent_stats_;
    c.stats = scratch.template take<Stat>(round_up_64(2 * n_t * sizeof(Stat)) / sizeof(Stat));
    c.acc = Ops::kFloatAccumulators
                ? scratch.template take<float>(round_up_64(n_t * out_size * 4) / 4)
                : nullptr;
    c.copy = kLayerNorm ? scratch.template take<T>(n_t * static_cast<std::size_t>(in_)) : nullptr;
    Ops::forward(c, state_, stream);
  }
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    forward(x, y, ws, MatrixView<T>(), stream);
  }

  // Device backends: whether forward runs the statistics on the layer's secondary stream,
  // concurrently with the GEMM, above 16 tokens (default true; LayerNorm also needs an infinite
  // center threshold). Off: everything on the caller's stream, in the order statistics, GEMM,
  // epilogue. The Cpu backend has no streams.
  template <class BB = B, class = std::enable_if_t<!std::is_same<BB, Cpu>::value>>
  void set_concurrent_stats(bool enabled) {
    concurrent_stats_ = enabled;
  }
  template <class BB = B, class = std::enable_if_t<!std::is_same<BB, Cpu>::value>>
  bool concurrent_stats() const {
    return concurrent_stats_;
  }

 protected:
  NormLinear() = default;

  // gamma, beta, bias may be null (γ = 1, β = 0, b = 0); host memory, in PyTorch's layouts. The
  // fold runs in double and rounds once: W' to T; c, b' to Stat. c sums the rounded W' the
  // product actually uses, so μ c cancels what μ 1 puts into W' x up to the product's own
  // rounding (docs/math.md §7.3).
  NormLinear(const char* where, index_t in, index_t out, const T* gamma, const T* beta,
             const T* weight, const T* bias, double eps)
      : in_(in), out_(out), eps_(eps) {
    check_norm_linear_args(where, in, out, gamma, beta, weight, bias, eps);
    using H = HostScalar<T>;
    const auto n = static_cast<std::size_t>(in), m = static_cast<std::size_t>(out);
    const bool has_bias = bias != nullptr || beta != nullptr;
    std::vector<T> wf(n * m);
    std::vector<Stat> c(kLayerNorm ? m : 0), bf(has_bias ? m : 0);
    for (std::size_t i = 0; i < m; ++i) {
      double csum = 0, bsum = bias ? H::to_double(bias[i]) : 0.0;
      for (std::size_t j = 0; j < n; ++j) {
        const double wij = H::to_double(weight[i * n + j]);
        wf[i * n + j] = H::from_double(wij * (gamma ? H::to_double(gamma[j]) : 1.0));
        csum += H::to_double(wf[i * n + j]);
        if (beta) bsum += wij * H::to_double(beta[j]);
      }
      if (kLayerNorm) c[i] = static_cast<Stat>(csum);
      if (has_bias) bf[i] = static_cast<Stat>(bsum);
    }
    wf_ = Storage<T, B>(wf.data(), in * out);
    if (kLayerNorm) c_ = Storage<Stat, B>(c.data(), out);
    if (has_bias) bf_ = Storage<Stat, B>(bf.data(), out);
    if (gamma) gamma_ = Storage<T, B>(gamma, in);
    if (beta) beta_ = Storage<T, B>(beta, in);
  }

  // LayerNorm only: the largest |μ|/σ of a call's tokens up to which forward uses the deferred
  // mean correction y = r (W'x − μ c) + b'. Above it, the product's rounding of the |μ|-sized
  // terms of W'x dominates (its relative error grows like u |μ|/σ, docs/math.md §7.4), so the
  // call subtracts μ from x first (one write pass, but r stays deferred). Infinity: always
  // deferred; 0: always centered. On the device backends a finite threshold costs a readback of
  // the statistics and a stream synchronization per call above 16 tokens.
  void set_center_threshold(double mu_over_sigma) {
    if (!(mu_over_sigma >= 0))
      fail("LayerNormLinear::set_center_threshold", "mu_over_sigma = ", mu_over_sigma,
           ", must be >= 0");
    center_threshold_ = mu_over_sigma;
  }
  double center_threshold() const { return center_threshold_; }

 private:
  index_t in_ = 0;
  index_t out_ = 0;
  double eps_ = 0;
  double center_threshold_ = 4.0;
  bool concurrent_stats_ = true;
  Storage<T, B> wf_;            // W'
  Storage<Stat, B> c_, bf_;     // c = W' 1 (LayerNorm), b' = W β + b (when β or b is given)
  Storage<T, B> gamma_, beta_;  // for the normalized side output; empty when not given
  typename Ops::State state_;   // the backend's execution resources (device: a second stream)
};

}  // namespace detail

template <class T, class Backend = Cpu>
class RMSNormLinear : public detail::NormLinear<T, Backend, false> {
 public:
  RMSNormLinear() = default;
  // Host gamma: [in] (null: no affine weight), weight: [out x in] (nn.Linear), bias: [out] or
  // null.
  RMSNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* weight,
                const T* bias, double eps = 1e-6)
      : detail::NormLinear<T, Backend, false>("RMSNormLinear", in_features, out_features, gamma,
                                              nullptr, weight, bias, eps) {}
};

template <class T, class Backend = Cpu>
class LayerNormLinear : public detail::NormLinear<T, Backend, true> {
 public:
  using detail::NormLinear<T, Backend, true>::set_center_threshold;
  using detail::NormLinear<T, Backend, true>::center_threshold;
  LayerNormLinear() = default;
  // Host gamma, beta: [in] (null: 1 and 0), weight: [out x in] (nn.Linear), bias: [out] or null.
  LayerNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* beta,
                  const T* weight, const T* bias, double eps = 1e-5)
      : detail::NormLinear<T, Backend, true>("LayerNormLinear", in_features, out_features, gamma,
                                             beta, weight, bias, eps) {}
};

}  // namespace ffnkit
