// The steps of SelfGuided (docs/math.md §5) on backend B: where the guide lives, the guide's
// GEMMs, the blend, scaled copies and the bias gradient. Written once, over the backend's Runtime
// and LinearOps (detail/backend.hpp), so every backend computes the same sequence of products.
#pragma once

#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/structured.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct SelfGuidedOps {
  using Ops = LinearOps<T, B>;
  using Stream = StreamOf<B>;
  using Storage = BufferOf<T, B>;
  using Grads = GradList<T, B>;

  static Storage upload(const std::vector<T>& host) {
    return Runtime<B>::template upload<T>(host.data(), static_cast<index_t>(host.size()));
  }
  static void check_host(const char* where, const char* name, const T* p, index_t n) {
    check_host_finite(where, name, p, n);
  }
  static std::vector<T> to_host(const Storage& s) { return Runtime<B>::download(s); }
  static std::size_t bytes(const Storage& s) { return s.size() * sizeof(T); }
  static void release(Storage& s) { s = Storage(); }  // clear() would keep a vector's capacity
  static Storage scratch(index_t n) {
    return Runtime<B>::template allocate<T>(static_cast<std::size_t>(n));
  }
  static void zero(Storage& g, const Stream& stream) { Runtime<B>::zero(g, stream); }
  // a g + (1 − a) w in the precision blend() computes it: T on Cpu, fp32 on the device.
  static T blend_host(T g, T w, double a) {
    using C = typename std::conditional<std::is_same<B, Cpu>::value, T, float>::type;
    const C v = static_cast<C>(a) * static_cast<C>(HostScalar<T>::to_double(g)) +
                static_cast<C>(1.0 - a) * static_cast<C>(HostScalar<T>::to_double(w));
    return HostScalar<T>::from_double(static_cast<double>(v));
  }

  template <class S>
  static void structured_forward(const S& s, const MatrixView<const T>& x, const MatrixView<T>& y,
                                 Workspace ws, const Stream& stream) {
    s.forward(x, y, ws, Activation::kIdentity, stream);
  }
  template <class S>
  static void structured_backward(const S& s, const MatrixView<const T>& x,
                                  const MatrixView<const T>& dy, const MatrixView<T>& dx, Grads& g,
                                  Workspace ws, const Stream& stream) {
    s.backward(x, dy, dx, g, ws, stream);
  }

  // y = x Wᵀ (+ b when bias is not null).
  static void dense_forward(const char* where, const MatrixView<const T>& x, const T* w,
                            index_t out, const T* bias, const MatrixView<T>& y,
                            const Stream& stream) {
    Ops::linear(where, x, w, out, bias, Activation::kIdentity, y, stream);
  }
  // dW = dyᵀ x; dx = dy W, or dx += dy W when accumulate.
  static void dense_backward(const char* where, const MatrixView<const T>& x,
                             const MatrixView<const T>& dy, const T* w, T* dw,
                             const MatrixView<T>& dx, bool accumulate, const Stream& stream) {
    Ops::gemm_xwt_backward(where, x, dy, w, dw, dx, accumulate, stream);
  }
  // y = a y + (1 − a) s + a b: y holds W x, s holds S(x) + b, so b is counted once.
  static void blend(const char* where, const MatrixView<T>& y, const MatrixView<const T>& s,
                    double a, const T* bias, const Stream& stream) {
    Ops::axpby(where, s, y, 1.0 - a, a, bias, a, stream);
  }
  // dst = factor src.
  static void scale(const char* where, const MatrixView<T>& dst, const MatrixView<const T>& src,
                    double factor, const Stream& stream) {
    Ops::axpby(where, src, dst, factor, 0.0, nullptr, 0.0, stream);
  }
  static void bias_grad(const char* where, const MatrixView<const T>& dy, T* out,
                        const Stream& stream) {
    Ops::bias_grad(where, dy, out, stream);
  }
};

}  // namespace detail
}  // namespace ffnkit
