// One table per device backend (Cuda, CudaEmu) naming its runtime and launchers, so each layer's
// device implementation is written once and instantiated for both.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <utility>

#include "ffnkit/core.hpp"
#if defined(FFNKIT_WITH_CUDA)
#include "ffnkit/cuda/ops.hpp"
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/emu/ops.hpp"
#endif

namespace ffnkit {
namespace detail {

template <class B>
struct DeviceApi;

#define FFNKIT_DEFINE_DEVICE_API(Backend, ns)                                       \
  template <>                                                                       \
  struct DeviceApi<Backend> {                                                       \
    template <class T>                                                              \
    using Buffer = ns::DeviceBuffer<T>;                                             \
    using Stream = ns::Stream;                                                      \
    using Event = ns::Event;                                                        \
    using BlasHandle = ns::BlasHandle;                                              \
    using Op = ns::Op;                                                              \
    using DataType = ns::DataType;                                                  \
    using CopyKind = ns::CopyKind;                                                  \
    static bool available(std::string* why) { return ns::device_available(why); }   \
    /* One cuBLAS handle per thread, as cuBLAS recommends; created on first use. */ \
    static BlasHandle& blas(const Stream& stream) {                                 \
      thread_local BlasHandle handle;                                               \
      handle.set_stream(stream);                                                    \
      return handle;                                                                \
    }                                                                               \
    template <class... A>                                                           \
    static void gemm(A&&... a) {                                                    \
      ns::gemm(std::forward<A>(a)...);                                              \
    }                                                                               \
    template <class... A>                                                           \
    static void copy(A&&... a) {                                                    \
      ns::copy(std::forward<A>(a)...);                                              \
    }                                                                               \
    static void wait_event(const Stream& stream, const Event& event) {              \
      ns::wait_event(stream, event);                                                \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status bias_activation(A&&... a) {                                       \
      return ns::BiasActivation<T>(std::forward<A>(a)...);                          \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status swiglu(A&&... a) {                                                \
      return ns::SwiGlu<T>(std::forward<A>(a)...);                                  \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status transpose_blocks(A&&... a) {                                      \
      return ns::TransposeBlocks<T>(std::forward<A>(a)...);                         \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status column_sum(A&&... a) {                                            \
      return ns::ColumnSum<T>(std::forward<A>(a)...);                               \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status axpby(A&&... a) {                                                 \
      return ns::Axpby<T>(std::forward<A>(a)...);                                   \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status activation_grad(A&&... a) {                                       \
      return ns::ActivationGrad<T>(std::forward<A>(a)...);                          \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status swiglu_grad(A&&... a) {                                           \
      return ns::SwiGluGrad<T>(std::forward<A>(a)...);                              \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status row_stats(A&&... a) {                                             \
      return ns::RowStats<T>(std::forward<A>(a)...);                                \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status normalize_rows(A&&... a) {                                        \
      return ns::NormalizeRows<T>(std::forward<A>(a)...);                           \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status norm_epilogue(A&&... a) {                                         \
      return ns::NormEpilogue<T>(std::forward<A>(a)...);                            \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status softmax_v(A&&... a) {                                             \
      return ns::SoftmaxV<T>(std::forward<A>(a)...);                                \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status softmax_rows(A&&... a) {                                          \
      return ns::SoftmaxRows<T>(std::forward<A>(a)...);                             \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status norm_decode(A&&... a) {                                           \
      return ns::NormDecode<T>(std::forward<A>(a)...);                              \
    }                                                                               \
    template <class... A>                                                           \
    static void gemm_strided_batched(A&&... a) {                                    \
      ns::gemm_strided_batched(std::forward<A>(a)...);                              \
    }                                                                               \
    template <class... A>                                                           \
    static void fill_zero(A&&... a) {                                               \
      ns::fill_zero(std::forward<A>(a)...);                                         \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status fff_forward(A&&... a) {                                           \
      return ns::FffForward<T>(std::forward<A>(a)...);                              \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status fff_grouped_forward(A&&... a) {                                   \
      return ns::FffGroupedForward<T>(std::forward<A>(a)...);                       \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status fff_backward_tokens(A&&... a) {                                   \
      return ns::FffBackwardTokens<T>(std::forward<A>(a)...);                       \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status fff_backward_nodes(A&&... a) {                                    \
      return ns::FffBackwardNodes<T>(std::forward<A>(a)...);                        \
    }                                                                               \
  };

#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEFINE_DEVICE_API(Cuda, cuda)
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEFINE_DEVICE_API(CudaEmu, cuda_emu)
#endif
#undef FFNKIT_DEFINE_DEVICE_API

// Host-side conversions between a storage type and double (initialisation, checks, tests).
template <class T>
struct HostScalar {
  static T from_double(double v) { return static_cast<T>(v); }
  static double to_double(T v) { return static_cast<double>(v); }
};
template <>
struct HostScalar<__half> {
  static __half from_double(double v) { return __float2half_rn(static_cast<float>(v)); }
  static double to_double(__half v) { return static_cast<double>(__half2float(v)); }
};
template <>
struct HostScalar<__nv_bfloat16> {
  static __nv_bfloat16 from_double(double v) { return __float2bfloat16_rn(static_cast<float>(v)); }
  static double to_double(__nv_bfloat16 v) { return static_cast<double>(__bfloat162float(v)); }
};

// The cuBLAS element type of T, in backend B's enum.
template <class B, class T>
typename DeviceApi<B>::DataType data_type_of() {
  using D = typename DeviceApi<B>::DataType;
  if (std::is_same<T, __half>::value) return D::kF16;
  if (std::is_same<T, __nv_bfloat16>::value) return D::kBF16;
  return D::kF32;
}

// A deep device-to-device copy of `b`, complete on return (later work may run on any stream).
template <class B, class T>
typename DeviceApi<B>::template Buffer<T> clone_buffer(
    const typename DeviceApi<B>::template Buffer<T>& b) {
  typename DeviceApi<B>::template Buffer<T> out(b.size());
  const typename DeviceApi<B>::Stream stream;
  if (b.size()) {
    DeviceApi<B>::copy(out.data(), b.data(), b.bytes(), DeviceApi<B>::CopyKind::kDeviceToDevice,
                       stream);
    stream.synchronize();
  }
  return out;
}

// Load-time check of host weights of any storage type: every element finite.
template <class T>
void check_host_finite(const char* where, const char* name, const T* p, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    const double v = HostScalar<T>::to_double(p[i]);
    if (!std::isfinite(v)) fail(where, name, "[", i, "] = ", v, " is not finite");
  }
}

// Throws the launcher's failure as an ffnkit::Error at the C++ API boundary.
inline void throw_if_error(Status s, const char* where) {
  if (s != Status::kSuccess) fail(where, "kernel launch failed: ", to_string(s));
}

inline int to_blas_int(const char* where, const char* name, index_t v) {
  if (v > 2147483647) fail(where, name, " = ", v, " exceeds cuBLAS's 32-bit int range");
  return static_cast<int>(v);
}

}  // namespace detail
}  // namespace ffnkit
