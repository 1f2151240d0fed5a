// The device runtime of each backend tag (Cuda, CudaEmu) as one type, so each layer's device
// implementation is written once and instantiated for both. Kernels are not reached through it:
// layers call the launchers of ffnkit/cuda/launchers.hpp directly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "ffnkit/core.hpp"
#if defined(FFNKIT_WITH_CUDA)
#include "ffnkit/cuda/runtime.hpp"
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/emu/executor.hpp"  // the schedule controls (emu::ScopedSchedule) of CudaEmu
#include "ffnkit/cuda/emu/runtime.hpp"
#endif

namespace ffnkit {
namespace detail {

// Buffer<T>, Stream, Event, BlasHandle, Op, DataType, CopyKind; available, copy, fill_zero,
// wait_event, gemm, gemm_strided_batched, blas (ffnkit/cuda/runtime_api.inc).
template <class B>
struct DeviceApi;
#if defined(FFNKIT_WITH_CUDA)
template <>
struct DeviceApi<Cuda> : cuda::Runtime {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <>
struct DeviceApi<CudaEmu> : cuda_emu::Runtime {};
#endif

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
