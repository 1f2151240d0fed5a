// fp32 <-> storage type conversions usable in kernels (nvcc) and under the emulator (host); in an
// unnamed namespace like everything of the kernel sources but the launchers (launch.cuh).
#pragma once

#include "ffnkit/core/macros.hpp"
#include "ffnkit/cuda/device_compat.cuh"

namespace ffnkit {
namespace cuda {
namespace {

template <class T>
struct Convert;
template <>
struct Convert<float> {
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float to_float(float v) { return v; }
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float from_float(float v) { return v; }
};
template <>
struct Convert<__half> {
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float to_float(__half v) { return __half2float(v); }
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE __half from_float(float v) {
    return __float2half_rn(v);
  }
};
template <>
struct Convert<__nv_bfloat16> {
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float to_float(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  static FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
};

// N consecutive elements moved as one aligned load/store (16 bytes: float4, 8 halves).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

}  // namespace
}  // namespace cuda
}  // namespace ffnkit
