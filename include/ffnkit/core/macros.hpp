// Portability macros shared by the host compiler, nvcc and the CUDA emulation build.
#pragma once

// One function body serves the CPU backend, CUDA device code and the CudaEmu build
// (docs/design.md). Only nvcc needs the qualifiers: the emulation compiles device code as plain
// host code (its header defines __host__/__device__ as nothing), so every host compiler build drops
// them.
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

// GCC 12 and older warn "'__Y' may be used uninitialized" inside their own avx512fintrin.h
// wherever an AVX-512 intrinsic whose pass-through operand is _mm512_undefined_*() gets inlined
// (GCC bug 105593, fixed in GCC 13): Eigen's packet math does that under -mavx512f, i.e. in every
// -march=native build on an AVX-512 CPU. The suppression wraps only the Eigen includes
// (cpu/eigen.hpp), which also covers ffnkit code that inlines Eigen, and only on those compilers.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#define FFNKIT_GCC_PR105593_BEGIN                                                            \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define FFNKIT_GCC_PR105593_END _Pragma("GCC diagnostic pop")
#else
#define FFNKIT_GCC_PR105593_BEGIN
#define FFNKIT_GCC_PR105593_END
#endif

#define FFNKIT_VERSION_MAJOR 0
#define FFNKIT_VERSION_MINOR 1
#define FFNKIT_VERSION_PATCH 0
