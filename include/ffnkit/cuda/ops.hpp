// Host-side view of the real CUDA backend (ffnkit::cuda): runtime plus launcher declarations.
// Needs only the CUDA headers that work with any host compiler; link ffnkit::cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/runtime.hpp"

#define FFNKIT_CUDA_NS cuda
#include "ffnkit/cuda/ops_api.inc"
#undef FFNKIT_CUDA_NS
