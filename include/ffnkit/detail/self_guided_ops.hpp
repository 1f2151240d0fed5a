// The backend-specific steps of SelfGuided (docs/math.md §5): where the guide lives, the guide's
// GEMMs, the blend, scaled copies and the bias gradient. SelfGuided itself is written once against
// this interface; the Cpu steps use Eigen and the GEMM wrappers, the device steps cuBLAS and the
// structured kernels (Axpby, ColumnSum), so every backend computes the same sequence of products.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/structured_ops.hpp"
#include "ffnkit/structured.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/launchers.hpp"
#endif

namespace ffnkit {
namespace detail {

template <class T, class B>
struct SelfGuidedOps;

template <class T>
struct SelfGuidedOps<T, Cpu> {
  using Storage = std::vector<T>;
  using Grads = GradList<T>;
  // The Cpu backend is synchronous; the stream parameter exists so that one signature serves all.
  struct Stream {
    void synchronize() const {}
  };

  static Storage upload(std::vector<T> host) { return host; }
  static Grads make_grads(const std::vector<ParamView<T>>& p) { return ffnkit::make_grads(p); }
  static void check_host(const char* where, const char* name, const T* p, index_t n) {
    check_finite(where, name, p, n);
  }
  static std::vector<T> to_host(const Storage& s) { return s; }
  static std::size_t bytes(const Storage& s) { return s.capacity() * sizeof(T); }
  static void release(Storage& s) { Storage().swap(s); }  // clear() would keep the capacity
  static Storage scratch(index_t n) { return Storage(static_cast<std::size_t>(n)); }
  static void zero(std::vector<T>& g, const Stream&) { std::fill(g.begin(), g.end(), T(0)); }
  // a g + (1 − a) w, in the precision blend() uses.
  static T blend_host(T g, T w, double a) {
    return static_cast<T>(a) * g + static_cast<T>(1.0 - a) * w;
  }

  template <class S>
  static void structured_forward(const S& s, const MatrixView<const T>& x, const MatrixView<T>& y,
                                 Workspace ws, const Stream&) {
    s.forward(x, y, ws);
  }
  template <class S>
  static void structured_backward(const S& s, const MatrixView<const T>& x,
                                  const MatrixView<const T>& dy, const MatrixView<T>& dx, Grads& g,
                                  const Stream&) {
    s.backward(x, dy, dx, g);
  }

  // y = x Wᵀ (+ b when bias is not null).
  static void dense_forward(const char*, const MatrixView<const T>& x, const T* w, index_t out,
                            const T* bias, const MatrixView<T>& y, const Stream&) {
    if (bias) cpu::fill_rows(y, bias);
    cpu::gemm_xwt(x, w, out, y, bias != nullptr);
  }
  // dW = dyᵀ x; dx = dy W, or dx += dy W when accumulate.
  static void dense_backward(const char*, const MatrixView<const T>& x,
                             const MatrixView<const T>& dy, const T* w, T* dw,
                             const MatrixView<T>& dx, bool accumulate, const Stream&) {
    cpu::gemm_xwt_backward(x, dy, w, dw, dx, accumulate);
  }
  // y = a y + (1 − a) s + a b: y holds W x, s holds S(x) + b, so b is counted once.
  static void blend(const char*, const MatrixView<T>& y, const MatrixView<const T>& s, double a,
                    const T* bias, const Stream&) {
    auto Y = cpu::map(y);
    Y = static_cast<T>(a) * Y + static_cast<T>(1.0 - a) * cpu::map(s);
    if (bias)
      Y.rowwise() +=
          static_cast<T>(a) * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, y.cols);
  }
  // dst = factor src.
  static void scale(const char*, const MatrixView<T>& dst, const MatrixView<const T>& src,
                    double factor, const Stream&) {
    cpu::map(dst) = static_cast<T>(factor) * cpu::map(src);
  }
  static void bias_grad(const char*, const MatrixView<const T>& dy, T* out, const Stream&) {
    cpu::bias_grad(dy, out);
  }
};

#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
// The device steps reuse the structured layers' cuBLAS wrappers (protected in their base, so this
// derives from it to re-export them) and the structured kernels.
template <class T, class B>
struct SelfGuidedDeviceOps : DeviceStructuredBase<T, B> {
  using Base = DeviceStructuredBase<T, B>;
  using Api = typename Base::Api;
  using Stream = typename Base::Stream;
  using Storage = typename Base::Buffer;
  using Grads = typename Base::Grads;

  static Storage upload(const std::vector<T>& host) { return Storage(host.data(), host.size()); }
  static Grads make_grads(const std::vector<ParamView<T>>& p) { return make_device_grads<B>(p); }
  static void check_host(const char* where, const char* name, const T* p, index_t n) {
    check_host_finite(where, name, p, n);
  }
  static std::vector<T> to_host(const Storage& s) { return s.to_host(); }
  static std::size_t bytes(const Storage& s) { return s.bytes(); }
  static void release(Storage& s) { s = Storage(); }
  static Storage scratch(index_t n) { return Storage(static_cast<std::size_t>(n)); }
  static void zero(Storage& g, const Stream& stream) {
    if (g.size() != 0) Api::fill_zero(g.data(), g.bytes(), stream);
  }
  // a g + (1 − a) w in fp32, as blend()'s kernel computes it.
  static T blend_host(T g, T w, double a) {
    const float v = static_cast<float>(a) * static_cast<float>(HostScalar<T>::to_double(g)) +
                    static_cast<float>(1.0 - a) * static_cast<float>(HostScalar<T>::to_double(w));
    return HostScalar<T>::from_double(v);
  }

  template <class S>
  static void structured_forward(const S& s, const MatrixView<const T>& x, const MatrixView<T>& y,
                                 Workspace ws, const Stream& stream) {
    s.forward(x, y, ws, Activation::kIdentity, stream);
  }
  template <class S>
  static void structured_backward(const S& s, const MatrixView<const T>& x,
                                  const MatrixView<const T>& dy, const MatrixView<T>& dx, Grads& g,
                                  const Stream& stream) {
    s.backward(x, dy, dx, g, stream);
  }

  static void dense_forward(const char* where, const MatrixView<const T>& x, const T* w,
                            index_t out, const T* bias, const MatrixView<T>& y,
                            const Stream& stream) {
    Base::gemm_xwt(where, x, w, out, y, 0.0f, stream);
    if (bias)
      throw_if_error(cuda::BiasActivation<T, B>(y.data, bias, y.rows, y.cols, y.row_stride,
                                                Activation::kIdentity, stream),
                     where);
  }
  static void dense_backward(const char* where, const MatrixView<const T>& x,
                             const MatrixView<const T>& dy, const T* w, T* dw,
                             const MatrixView<T>& dx, bool accumulate, const Stream& stream) {
    Base::gemm_xwt_backward(where, x, dy, w, dw, dx, accumulate ? 1.0f : 0.0f, stream);
  }
  static void blend(const char* where, const MatrixView<T>& y, const MatrixView<const T>& s,
                    double a, const T* bias, const Stream& stream) {
    // One pass, in fp32: y = (1 − a) s + a y + a b.
    throw_if_error(cuda::Axpby<T, B>(s.data, s.row_stride, y.data, y.row_stride, y.rows, y.cols,
                                     static_cast<float>(1.0 - a), static_cast<float>(a), bias,
                                     static_cast<float>(a), stream),
                   where);
  }
  static void scale(const char* where, const MatrixView<T>& dst, const MatrixView<const T>& src,
                    double factor, const Stream& stream) {
    throw_if_error(
        cuda::Axpby<T, B>(src.data, src.row_stride, dst.data, dst.row_stride, dst.rows, dst.cols,
                          static_cast<float>(factor), 0.0f, nullptr, 0.0f, stream),
        where);
  }
  static void bias_grad(const char* where, const MatrixView<const T>& dy, T* out,
                        const Stream& stream) {
    throw_if_error(cuda::ColumnSum<T, B>(dy.data, dy.rows, dy.cols, dy.row_stride, out, stream),
                   where);
  }
};

#if defined(FFNKIT_WITH_CUDA)
template <class T>
struct SelfGuidedOps<T, Cuda> : SelfGuidedDeviceOps<T, Cuda> {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
struct SelfGuidedOps<T, CudaEmu> : SelfGuidedDeviceOps<T, CudaEmu> {};
#endif
#endif

}  // namespace detail
}  // namespace ffnkit
