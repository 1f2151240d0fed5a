// The one include for kernel sources (.cuh) that build both with nvcc and, under -DFFNKIT_CUDA_EMU,
// with the host compiler against the CPU emulation (docs/cuda.md).
#pragma once

#if defined(FFNKIT_CUDA_EMU)
#include "ffnkit/cuda/emu/emu.hpp"
#elif defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#error "ffnkit/cuda/device_compat.cuh needs nvcc or -DFFNKIT_CUDA_EMU (link ffnkit::cuda_emu)"
#endif

// FFNKIT_DYNAMIC_SHARED(type, name) declares `type* name` pointing at the block's dynamic shared
// memory (the launch's smem bytes, at least 16-byte aligned). It is a declaration statement for a
// kernel body. All kernels share one untyped extern array because nvcc rejects extern __shared__
// arrays of the same name with different element types in one translation unit.
#if !defined(FFNKIT_DYNAMIC_SHARED)
#define FFNKIT_DYNAMIC_SHARED(type, name)                                  \
  extern __shared__ __align__(16) unsigned char ffnkit_dynamic_smem_raw[]; \
  type* name = reinterpret_cast<type*>(ffnkit_dynamic_smem_raw)
#endif
