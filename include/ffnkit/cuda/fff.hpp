// FastFeedForward on the device backends (Cuda, CudaEmu), SPEC §1.9: the warp-per-token forward
// of ffnkit/cuda/kernels/fff.cuh, fp32 storage. The constructors take host weights in PyTorch
// layout, as the Cpu layer's do (and go through it, so both store w_out the same way); views and
// the optional leaves buffer point to device memory. Inference only: training runs on the Cpu
// backend.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/fff.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {
namespace detail {

template <class B>
class DeviceFastFeedForward {
 public:
  using Scalar = float;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  using Buffer = typename Api::template Buffer<float>;

  DeviceFastFeedForward() = default;
  DeviceFastFeedForward(index_t in_features, index_t out_features, index_t trees, index_t depth,
                        const float* linear_in_weight, const float* linear_in_bias,
                        const float* linear_out_weight)
      : DeviceFastFeedForward(FastFeedForward<float, Cpu>(in_features, out_features, trees, depth,
                                                          linear_in_weight, linear_in_bias,
                                                          linear_out_weight)) {}
  // The same weights as a Cpu layer (seeded init: random() below gives the Cpu layer's weights).
  explicit DeviceFastFeedForward(const FastFeedForward<float, Cpu>& host)
      : in_(host.in_features()),
        out_(host.out_features()),
        trees_(host.trees()),
        depth_(host.depth()),
        w_in_(host.linear_in_weight(), static_cast<std::size_t>(host.neurons_total() * in_)),
        b_in_(host.linear_in_bias(), static_cast<std::size_t>(host.neurons_total())),
        w_out_(host.w_out(), static_cast<std::size_t>(host.neurons_total() * out_)) {}

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  index_t trees() const { return trees_; }
  index_t depth() const { return depth_; }
  index_t nodes_per_tree() const { return (index_t(2) << depth_) - 1; }
  index_t neurons_total() const { return trees_ * nodes_per_tree(); }
  index_t neurons_per_token() const { return trees_ * (depth_ + 1); }
  index_t parameter_count() const { return neurons_total() * (in_ + out_ + 1); }
  double flops_per_token() const {
    return 2.0 * static_cast<double>(neurons_per_token()) * static_cast<double>(in_ + out_);
  }

  // y = Σ over each token's path of GELU(λ) w_out (SPEC §1.9); `leaves` ([tokens x K], device
  // memory) receives each token's leaf per tree when given. Asynchronous on `stream`.
  void forward(const MatrixView<const float>& x, const MatrixView<float>& y,
               std::int32_t* leaves = nullptr, const Stream& stream = Stream()) const {
    constexpr const char* where = "FastFeedForward::forward";
    if (in_ == 0) fail(where, "the layer is empty (default-constructed or moved from)");
    check_fff_forward(where, in_, out_, x, y);
    throw_if_error(Api::template fff_forward<float>(
                       x.data, x.row_stride, w_in_.data(), b_in_.data(), w_out_.data(), y.data,
                       y.row_stride, x.rows, in_, out_, trees_, depth_, leaves, stream),
                   where);
  }

 private:
  index_t in_ = 0, out_ = 0, trees_ = 0, depth_ = 0;
  Buffer w_in_, b_in_, w_out_;
};

}  // namespace detail

#if defined(FFNKIT_WITH_CUDA_EMU)
template <>
class FastFeedForward<float, CudaEmu> : public detail::DeviceFastFeedForward<CudaEmu> {
 public:
  using detail::DeviceFastFeedForward<CudaEmu>::DeviceFastFeedForward;
  static FastFeedForward random(index_t in, index_t out, index_t trees, index_t depth,
                                std::uint64_t seed) {
    return FastFeedForward(FastFeedForward<float, Cpu>::random(in, out, trees, depth, seed));
  }
};
#endif
#if defined(FFNKIT_WITH_CUDA)
template <>
class FastFeedForward<float, Cuda> : public detail::DeviceFastFeedForward<Cuda> {
 public:
  using detail::DeviceFastFeedForward<Cuda>::DeviceFastFeedForward;
  static FastFeedForward random(index_t in, index_t out, index_t trees, index_t depth,
                                std::uint64_t seed) {
    return FastFeedForward(FastFeedForward<float, Cpu>::random(in, out, trees, depth, seed));
  }
};
#endif

}  // namespace ffnkit
