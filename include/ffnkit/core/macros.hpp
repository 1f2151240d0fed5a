// Portability macros shared by the host compiler, nvcc and the CUDA emulation build.
#pragma once

// One function body serves the CPU backend, CUDA device code and the CudaEmu build (SPEC §2).
// Under nvcc (__CUDACC__) or the emulator (FFNKIT_CUDA_EMU, where the emulation header defines
// __host__/__device__ as nothing) the qualifiers are spelled out; a plain host build drops them.
#if defined(__CUDACC__) || defined(FFNKIT_CUDA_EMU)
#define FFNKIT_HOST_DEVICE __host__ __device__
#define FFNKIT_DEVICE __device__
#else
#define FFNKIT_HOST_DEVICE
#define FFNKIT_DEVICE
#endif

#if defined(__CUDACC__)
#define FFNKIT_FORCEINLINE __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define FFNKIT_FORCEINLINE inline __attribute__((always_inline))
#else
#define FFNKIT_FORCEINLINE inline
#endif

#define FFNKIT_VERSION_MAJOR 0
#define FFNKIT_VERSION_MINOR 1
#define FFNKIT_VERSION_PATCH 0
