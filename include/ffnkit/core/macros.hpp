// Portability macros shared by the host compiler, nvcc and the CUDA emulation build.
#pragma once

// One function body serves the CPU backend, CUDA device code and the CudaEmu build (SPEC §2).
// Only nvcc needs the qualifiers: the emulation compiles device code as plain host code (its
// header defines __host__/__device__ as nothing), so every host compiler build drops them.
#if defined(__CUDACC__)
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

// Loop unrolling hint that both nvcc and the host compiler (emulation builds) understand.
#if defined(__CUDACC__)
#define FFNKIT_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define FFNKIT_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define FFNKIT_UNROLL _Pragma("GCC unroll 16")
#else
#define FFNKIT_UNROLL
#endif

#define FFNKIT_VERSION_MAJOR 0
#define FFNKIT_VERSION_MINOR 1
#define FFNKIT_VERSION_PATCH 0
