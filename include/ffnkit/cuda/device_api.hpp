// The device runtime of each backend tag (Cuda, CudaEmu) as one type, so each layer's device
// implementation is written once and instantiated for both. Kernels are not reached through it:
// layers call the launchers of ffnkit/cuda/launchers.hpp directly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/detail/backend.hpp"
#if defined(FFNKIT_WITH_CUDA)
#include "ffnkit/cuda/runtime.hpp"
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/emu/executor.hpp"  // the schedule controls (emu::ScopedSchedule) of CudaEmu
#include "ffnkit/cuda/emu/runtime.hpp"
#endif

namespace ffnkit {
namespace detail {

// A device backend's runtime: the namespace's Buffer<T>, Stream, Event, BlasHandle, Op, DataType,
// CopyKind, available, copy, fill_zero, wait_event, gemm, gemm_strided_batched, blas
// (ffnkit/cuda/runtime_api.inc), plus what every layer needs of Runtime<B> (detail/backend.hpp).
template <class Ns>
struct DeviceRuntime : Ns {
  template <class T>
  using Buffer = typename Ns::template Buffer<T>;
  using Stream = typename Ns::Stream;
  // The epilogue kernels' vector loads assume 16-byte alignment of every buffer they get.
  static constexpr std::size_t kWorkspaceAlignment = 16;

  template <class T>
  static Buffer<T> allocate(std::size_t n) {
    return Buffer<T>(n);
  }
  template <class T>
  static Buffer<T> upload(const T* host, index_t n) {
    return Buffer<T>(host, static_cast<std::size_t>(n));
  }
  template <class T>
  static std::vector<T> download(const Buffer<T>& b) {
    return b.to_host();
  }
  // A deep device-to-device copy, complete on return (later work may run on any stream).
  template <class T>
  static Buffer<T> clone(const Buffer<T>& b) {
    Buffer<T> out(b.size());
    const Stream stream;
    if (b.size()) {
      Ns::copy(out.data(), b.data(), b.bytes(), Ns::CopyKind::kDeviceToDevice, stream);
      stream.synchronize();
    }
    return out;
  }
  template <class T>
  static void zero(Buffer<T>& b, const Stream& stream) {
    if (b.size() != 0) Ns::fill_zero(b.data(), b.bytes(), stream);
  }
};

#if defined(FFNKIT_WITH_CUDA)
template <>
struct Runtime<Cuda> : DeviceRuntime<cuda::Runtime> {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <>
struct Runtime<CudaEmu> : DeviceRuntime<cuda_emu::Runtime> {};
#endif
template <class B>
using DeviceApi = Runtime<B>;

// Host-side conversions of the 16-bit storage types (the primary template: detail/backend.hpp).
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

// A deep device-to-device copy of `b`, complete on return.
template <class B, class T>
typename Runtime<B>::template Buffer<T> clone_buffer(
    const typename Runtime<B>::template Buffer<T>& b) {
  return Runtime<B>::clone(b);
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
