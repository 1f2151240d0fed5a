// What every backend's DenseFFN shares: the two projections, the activation, SwiGLU's fused
// gate/up layout, the seeded factories, the accessors and the counts. Each backend adds only its
// weight fusion for SwiGLU and its forward.
#pragma once

#include <cstdint>
#include <utility>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/core/rng.hpp"
#include "ffnkit/detail/ffn_checks.hpp"

namespace ffnkit {
namespace detail {

// CRTP: Self is the backend's DenseFFN<T, B>, Linear its DenseLinear<T, B>.
template <class Self, class Linear>
class DenseFFNCommon {
 public:
  // Seeded N(0, 0.02^2) weights and biases; d_out defaults to d_model.
  static Self random(index_t d_model, index_t d_ff, Activation act, std::uint64_t seed,
                     bool with_bias = true, index_t d_out = 0) {
    if (d_out == 0) d_out = d_model;
    return Self(Linear::random(d_model, d_ff, splitmix64(seed + 1), with_bias),
                Linear::random(d_ff, d_out, splitmix64(seed + 2), with_bias), act);
  }
  static Self random_swiglu(index_t d_model, index_t d_ff, std::uint64_t seed,
                            bool with_bias = false, index_t d_out = 0) {
    if (d_out == 0) d_out = d_model;
    return Self::swiglu(Linear::random(d_model, d_ff, splitmix64(seed + 3), with_bias),
                        Linear::random(d_model, d_ff, splitmix64(seed + 4), with_bias),
                        Linear::random(d_ff, d_out, splitmix64(seed + 5), with_bias));
  }

  index_t d_model() const { return up_.in_features(); }
  index_t d_ff() const { return d_ff_; }
  index_t d_out() const { return down_.out_features(); }
  bool gated() const { return gated_; }
  Activation activation() const { return act_; }
  // For SwiGLU, rows [0, d_ff) of up() are the gate and rows [d_ff, 2 d_ff) the up projection.
  const Linear& up() const { return up_; }
  const Linear& down() const { return down_; }

  index_t parameter_count() const { return up_.parameter_count() + down_.parameter_count(); }
  double flops_per_token() const { return up_.flops_per_token() + down_.flops_per_token(); }

  // Bytes of scratch forward needs for `tokens` rows (device memory on the device backends): the
  // hidden activations.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens) * static_cast<std::size_t>(up_.out_features()) *
           sizeof(typename Linear::Scalar);
  }

 protected:
  DenseFFNCommon() = default;

  // y = down(act(up(x))): up: d_model -> d_ff, down: d_ff -> d_out.
  DenseFFNCommon(Linear up, Linear down, Activation act)
      : up_(std::move(up)), down_(std::move(down)), act_(act) {
    check_ffn_pieces(up_, down_);
    d_ff_ = up_.out_features();
  }

  // SwiGLU from its fused [2 d_ff x d_model] gate/up projection (one GEMM makes both halves).
  static Self make_gated(Linear fused_gate_up, Linear down, index_t d_ff) {
    Self ffn;
    DenseFFNCommon& base = ffn;  // the members, through the class that declares them
    base.up_ = std::move(fused_gate_up);
    base.down_ = std::move(down);
    base.act_ = Activation::kSilu;
    base.gated_ = true;
    base.d_ff_ = d_ff;
    return ffn;
  }

  Linear up_;
  Linear down_;
  Activation act_ = Activation::kGeluTanh;
  bool gated_ = false;
  index_t d_ff_ = 0;
};

}  // namespace detail
}  // namespace ffnkit
