// The real CUDA device runtime (ffnkit::cuda): DeviceBuffer, Stream, BlasHandle, gemm. Link
// ffnkit::cuda. Host-compilable: needs no CUDA headers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "ffnkit/core/error.hpp"

#define FFNKIT_CUDA_NS cuda
#include "ffnkit/cuda/runtime_api.inc"
#undef FFNKIT_CUDA_NS
