// StructuredFFN<Up, Down> on the device backends (docs/math.md §3.7): the same API as the Cpu
// backend's, plus a stream. SwiGLU keeps gate and up side by side in one [tokens x 2 d_ff] buffer
// (written by one gate|up layer, or by the two layers each into its half), so the dense FFN's
// SwiGLU kernel gates it in one pass; GELU/ReLU/SiLU ride on up's own bias pass. The orchestration
// is shared with the Cpu backend (detail::StructuredFFNCommon); this adds device scratch and the
// kernels.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/cuda/structured.hpp"
#include "ffnkit/detail/structured_ffn_common.hpp"

namespace ffnkit {
namespace detail {

template <class Up, class Down, class Derived>
class DeviceStructuredFFN : public StructuredFFNCommon<Up, Down, Derived> {
  using Base = StructuredFFNCommon<Up, Down, Derived>;
  friend Base;

 public:
  using T = typename Base::T;
  using B = typename Base::Backend;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  using Buffer = typename Api::template Buffer<T>;
  using Grads = DeviceGradList<T, B>;
  using Base::Base;
  DeviceStructuredFFN() = default;

  // The hidden activations ([tokens x 2 d_ff] for SwiGLU) plus the largest sublayer scratch, each
  // rounded up to 16 bytes so every piece stays aligned for the vector kernels.
  std::size_t workspace_size(index_t tokens) const {
    return round16(this->hidden_bytes(tokens)) + this->sublayer_workspace(tokens);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    constexpr const char* where = "StructuredFFN::forward";
    this->check_forward(where, x, y);
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
    const std::size_t head = round16(this->hidden_bytes(x.rows));
    this->forward_with(x, y, reinterpret_cast<T*>(base), Workspace{base + head, need - head},
                       stream);
    if (owned.data()) stream.synchronize();  // the owned scratch is freed on return
  }

  Grads make_grads() { return make_device_grads<B>(this->params()); }

  // Gradients in params() order into device buffers; dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) {
    this->backward_with(x, dy, dx, grads, stream);
    stream.synchronize();
  }

 private:
  static constexpr const char* kWhere = "StructuredFFN";
  static std::size_t round16(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

  // h = act(h), or for SwiGLU SiLU(gate) * up over the gate half of h = gate | up.
  void activate(const MatrixView<T>& h, const Stream& stream) const {
    throw_if_error(this->gated() ? cuda::SwiGlu<T, B>(h.data, nullptr, nullptr, h.rows, h.cols / 2,
                                                      h.row_stride, stream)
                                 : cuda::BiasActivation<T, B>(h.data, nullptr, h.rows, h.cols,
                                                              h.row_stride, this->act_, stream),
                   kWhere);
  }

  // dh holds d(act) (SwiGLU: in its up half); becomes d(pre) (SwiGLU: d(gate | up)).
  void hidden_grad(const MatrixView<T>& dh, const MatrixView<const T>& pre,
                   const Stream& stream) const {
    const index_t f = this->d_ff();
    throw_if_error(
        this->gated()
            ? cuda::SwiGluGrad<T, B>(dh.data + f, dh.row_stride, pre.data, pre.data + f,
                                     pre.row_stride, dh.data, dh.row_stride, dh.rows, f, stream)
            : cuda::ActivationGrad<T, B>(dh.data, dh.row_stride, pre.data, pre.row_stride, dh.rows,
                                         f, this->act_, stream),
        kWhere);
  }

  // dst = src (beta 0) and dst += src (beta 1).
  static void copy(const MatrixView<const T>& src, const MatrixView<T>& dst, const Stream& stream) {
    axpby(src, dst, 0.0f, stream);
  }
  static void accumulate(const MatrixView<const T>& src, const MatrixView<T>& dst,
                         const Stream& stream) {
    axpby(src, dst, 1.0f, stream);
  }
  static void axpby(const MatrixView<const T>& src, const MatrixView<T>& dst, float beta,
                    const Stream& stream) {
    throw_if_error(cuda::Axpby<T, B>(src.data, src.row_stride, dst.data, dst.row_stride, src.rows,
                                     src.cols, 1.0f, beta, nullptr, 0.0f, stream),
                   kWhere);
  }

  // Scratch buffer `i` of backward, kept across calls (device allocation per step is slow); grown,
  // never shrunk.
  T* buffer(std::size_t i, std::size_t n) {
    if (scratch_[i].size() < n) scratch_[i] = Buffer(n);
    return scratch_[i].data();
  }

  std::array<Buffer, 4> scratch_;
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
