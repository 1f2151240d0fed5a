// The device timer of every CUDA case (cases_cuda.cpp, cases_fff_cuda.cpp, cases_norm_cuda.cpp),
// written once: two cudaEvents recorded on a stream around the work a call queues there. Included
// only where the Cuda backend is built (FFNKIT_WITH_CUDA); the emulator is never benchmarked, its
// timings would say nothing about a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/runtime.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {

// Throws, naming `call` and the runtime's error string, unless e is cudaSuccess.
inline void check_cuda(cudaError_t e, const char* call) {
  if (e != cudaSuccess) fail(call, cudaGetErrorString(e));
}

// Throws a device case's skip reason (`where`, kNoDevice and why) when no device is usable: the
// benchmark body turns it into a visible skip, which the table folds into one line.
inline void require_device(const char* where) {
  std::string why;
  if (!cuda::device_available(&why)) fail(where, kNoDevice, why);
}

// Two owned timing events. The constructor checks for a device first, so a runner whose first
// member is its timer skips with the no-device reason before it allocates or initialises anything.
class DeviceTimer {
 public:
  explicit DeviceTimer(const char* where) {
    require_device(where);
    check_cuda(cudaEventCreate(&start_), "cudaEventCreate");
    const cudaError_t e = cudaEventCreate(&stop_);
    if (e != cudaSuccess)
      cudaEventDestroy(start_);  // no destructor runs for a throwing constructor
    check_cuda(e, "cudaEventCreate");
  }
  ~DeviceTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;

  // Seconds on the device of the work fn() queues on `stream` (all of it must go there), waited
  // for before returning.
  template <class Fn>
  double seconds(const cuda::Stream& stream, Fn&& fn) {
    const auto s = static_cast<cudaStream_t>(stream.handle());
    check_cuda(cudaEventRecord(start_, s), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(stop_, s), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return ms * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace bench
}  // namespace ffnkit
