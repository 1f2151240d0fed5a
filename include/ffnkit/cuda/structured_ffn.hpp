// StructuredFFN<Up, Down> on the device backends (SPEC §1.6): the same API as the Cpu backend's,
// plus a stream. SwiGLU keeps gate and up side by side in one [tokens x 2 d_ff] buffer, so the
// dense FFN's SwiGLU kernel gates it in one pass; GELU/ReLU/SiLU ride on up's own bias pass.
#pragma once

#include <array>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/structured.hpp"

namespace ffnkit {
namespace detail {

template <class Up, class Down, class Derived>
class DeviceStructuredFFN {
 public:
  using Scalar = typename Up::Scalar;
  using Backend = typename Up::Backend;
  using T = Scalar;
  using B = Backend;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  using Buffer = typename Api::template Buffer<T>;
  using Grads = DeviceGradList<T, B>;
  static_assert(std::is_same<typename Down::Scalar, T>::value, "Up and Down share a scalar type");
  static_assert(std::is_same<typename Down::Backend, B>::value, "Up and Down share a backend");

  DeviceStructuredFFN() = default;

  // y = down(act(up(x))).
  DeviceStructuredFFN(Up up, Down down, Activation act = Activation::kGeluTanh)
      : up_(std::move(up)), down_(std::move(down)), act_(act) {
    check_equal("StructuredFFN", "down.in_features", down_.in_features(), "up.out_features",
                up_.out_features());
  }

  // SwiGLU: y = down(SiLU(gate(x)) * up(x)).
  static Derived swiglu(Up gate, Up up, Down down) {
    check_equal("StructuredFFN::swiglu", "up.in_features", up.in_features(), "gate.in_features",
                gate.in_features());
    check_equal("StructuredFFN::swiglu", "up.out_features", up.out_features(), "gate.out_features",
                gate.out_features());
    Derived f(std::move(up), std::move(down), Activation::kSilu);
    f.gate_ = std::make_unique<Up>(std::move(gate));
    return f;
  }

  DeviceStructuredFFN(DeviceStructuredFFN&&) noexcept = default;
  DeviceStructuredFFN& operator=(DeviceStructuredFFN&&) noexcept = default;

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

  // The hidden activations ([tokens x 2 d_ff] for SwiGLU) plus the larger sublayer scratch, each
  // rounded up to 16 bytes so every piece stays aligned for the vector kernels.
  std::size_t workspace_size(index_t tokens) const {
    return round16(hidden_bytes(tokens)) +
           std::max(up_.workspace_size(tokens), down_.workspace_size(tokens));
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    constexpr const char* where = "StructuredFFN::forward";
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "y", y, d_out(), "d_out");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    const std::size_t need = workspace_size(x.rows);
    Buffer owned;
    unsigned char* base = static_cast<unsigned char*>(ws.data);
    if (base == nullptr) {
      owned = Buffer((need + sizeof(T) - 1) / sizeof(T));
      base = reinterpret_cast<unsigned char*>(owned.data());
    } else if (ws.bytes < need) {
      fail(where, "workspace.bytes = ", ws.bytes, ", need workspace_size(", x.rows, ") = ", need);
    } else if (reinterpret_cast<std::uintptr_t>(base) % 16 != 0) {
      fail(where, "workspace.data is not aligned to 16 bytes");
    }
    const index_t t = x.rows, f = d_ff();
    T* h = reinterpret_cast<T*>(base);
    const std::size_t head = round16(hidden_bytes(t));
    const Workspace sub{base + head, need - head};
    if (gated()) {
      // gate | up side by side; SwiGlu writes SiLU(gate) * up over the gate half.
      gate_->forward(x, MatrixView<T>(h, t, f, 2 * f), sub, Activation::kIdentity, stream);
      up_.forward(x, MatrixView<T>(h + f, t, f, 2 * f), sub, Activation::kIdentity, stream);
      throw_if_error(Api::template swiglu<T>(h, nullptr, nullptr, t, f, 2 * f, stream), where);
      down_.forward(MatrixView<const T>(h, t, f, 2 * f), y, sub, Activation::kIdentity, stream);
    } else {
      up_.forward(x, MatrixView<T>(h, t, f), sub, act_, stream);
      down_.forward(MatrixView<const T>(h, t, f), y, sub, Activation::kIdentity, stream);
    }
    if (owned.data()) stream.synchronize();  // the owned scratch is freed on return
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
  Grads make_grads() { return make_device_grads<B>(params()); }

  // Gradients in params() order into device buffers; dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) {
    constexpr const char* where = "StructuredFFN::backward";
    check_activation(where, "x", x, d_model(), "d_model");
    check_activation(where, "dy", dy, d_out(), "d_out");
    check_equal(where, "dy.rows", dy.rows, "x.rows", x.rows);
    check_grads(where, params(), grads);
    const index_t t = x.rows, f = d_ff();
    const std::size_t n_gate = gate_ ? gate_->params().size() : 0, n_up = up_.params().size();
    const std::size_t hidden = static_cast<std::size_t>(t * f);
    // Buffers kept across calls (device allocation per step is slow); grown, never shrunk.
    T* act = buffer(0, hidden);
    T* dact = buffer(1, hidden);
    const MatrixView<T> dactv(dact, t, f);
    if (gate_) {
      // pre = gate | up (recomputed); act = SiLU(gate) * up through a copy SwiGlu may overwrite.
      T* pre = buffer(2, 2 * hidden);
      T* tmp = buffer(3, 2 * hidden);
      gate_->forward(x, MatrixView<T>(pre, t, f, 2 * f), {}, Activation::kIdentity, stream);
      up_.forward(x, MatrixView<T>(pre + f, t, f, 2 * f), {}, Activation::kIdentity, stream);
      copy(where, pre, 2 * f, tmp, 2 * f, t, 2 * f, stream);
      throw_if_error(Api::template swiglu<T>(tmp, nullptr, nullptr, t, f, 2 * f, stream), where);
      copy(where, tmp, 2 * f, act, f, t, f, stream);
      with_slice(grads, n_gate + n_up, grads.size(), [&](Grads& g) {
        down_.backward(MatrixView<const T>(act, t, f), dy, dactv, g, stream);
      });
      // dg = da u SiLU'(g) into tmp; da becomes du = da SiLU(g).
      throw_if_error(
          Api::template swiglu_grad<T>(dact, f, pre, pre + f, 2 * f, tmp, f, t, f, stream), where);
      with_slice(grads, n_gate, n_gate + n_up,
                 [&](Grads& g) { up_.backward(x, MatrixView<const T>(dactv), dx, g, stream); });
      T* dx_gate = dx.data ? buffer(4, static_cast<std::size_t>(t * d_model())) : nullptr;
      with_slice(grads, 0, n_gate, [&](Grads& g) {
        gate_->backward(x, MatrixView<const T>(tmp, t, f), MatrixView<T>(dx_gate, t, d_model()), g,
                        stream);
      });
      if (dx.data)  // dx += the gate branch's input gradient
        throw_if_error(Api::template axpby<T>(dx_gate, d_model(), dx.data, dx.row_stride, t,
                                              d_model(), 1.0f, 1.0f, nullptr, 0.0f, stream),
                       where);
    } else {
      T* pre = buffer(2, hidden);
      up_.forward(x, MatrixView<T>(pre, t, f), {}, Activation::kIdentity, stream);
      copy(where, pre, f, act, f, t, f, stream);
      throw_if_error(Api::template bias_activation<T>(act, nullptr, t, f, f, act_, stream), where);
      with_slice(grads, n_gate + n_up, grads.size(), [&](Grads& g) {
        down_.backward(MatrixView<const T>(act, t, f), dy, dactv, g, stream);
      });
      throw_if_error(Api::template activation_grad<T>(dact, f, pre, f, t, f, act_, stream), where);
      with_slice(grads, 0, n_up,
                 [&](Grads& g) { up_.backward(x, MatrixView<const T>(dactv), dx, g, stream); });
    }
    stream.synchronize();
  }

 private:
  std::size_t hidden_bytes(index_t tokens) const {
    return static_cast<std::size_t>(tokens * d_ff()) * (gated() ? 2 : 1) * sizeof(T);
  }
  static std::size_t round16(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

  static void copy(const char* where, const T* src, index_t src_stride, T* dst, index_t dst_stride,
                   index_t rows, index_t cols, const Stream& stream) {
    throw_if_error(Api::template axpby<T>(src, src_stride, dst, dst_stride, rows, cols, 1.0f, 0.0f,
                                          nullptr, 0.0f, stream),
                   where);
  }

  // Runs fn on grads[begin, end) as a list of its own, moving the buffers (no copies).
  template <class Fn>
  static void with_slice(Grads& grads, std::size_t begin, std::size_t end, Fn&& fn) {
    Grads sub(std::make_move_iterator(grads.begin() + begin),
              std::make_move_iterator(grads.begin() + end));
    fn(sub);
    std::move(sub.begin(), sub.end(), grads.begin() + begin);
  }

  T* buffer(std::size_t i, std::size_t n) {
    if (scratch_[i].size() < n) scratch_[i] = Buffer(n);
    return scratch_[i].data();
  }

  Up up_;
  Down down_;
  Activation act_ = Activation::kGeluTanh;
  std::unique_ptr<Up> gate_;
  std::array<Buffer, 5> scratch_;
};

}  // namespace detail

#define FFNKIT_DEVICE_STRUCTURED_FFN(Backend)                                                 \
  template <class Up, class Down>                                                             \
  class StructuredFFN<Up, Down, Backend>                                                      \
      : public detail::DeviceStructuredFFN<Up, Down, StructuredFFN<Up, Down, Backend>> {      \
   public:                                                                                    \
    using detail::DeviceStructuredFFN<Up, Down,                                               \
                                      StructuredFFN<Up, Down, Backend>>::DeviceStructuredFFN; \
    StructuredFFN() = default;                                                                \
  };
#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEVICE_STRUCTURED_FFN(Cuda)
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEVICE_STRUCTURED_FFN(CudaEmu)
#endif
#undef FFNKIT_DEVICE_STRUCTURED_FFN

}  // namespace ffnkit
