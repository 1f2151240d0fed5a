// One table per device backend (Cuda, CudaEmu) naming its runtime and launchers, so each layer's
// device implementation is written once and instantiated for both.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
    template <class T, class... A>                                                  \
    static Status bias_activation(A&&... a) {                                       \
      return ns::BiasActivation<T>(std::forward<A>(a)...);                          \
    }                                                                               \
    template <class T, class... A>                                                  \
    static Status swiglu(A&&... a) {                                                \
      return ns::SwiGlu<T>(std::forward<A>(a)...);                                  \
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
