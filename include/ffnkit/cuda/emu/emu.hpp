// CPU emulation of the CUDA device environment (docs/cuda.md, "CudaEmu"). Kernel sources written
// for nvcc are compiled by the host compiler with -DFFNKIT_CUDA_EMU against this header and run on
// the fiber-based thread-block executor in ffnkit/cuda/emu/executor.hpp. Kernels should include
// ffnkit/cuda/device_compat.cuh rather than this file directly.
#pragma once

#if !defined(FFNKIT_CUDA_EMU)
#error "ffnkit/cuda/emu/emu.hpp needs -DFFNKIT_CUDA_EMU (link the ffnkit::cuda_emu target)"
#endif
#if defined(__CUDACC__)
#error "ffnkit/cuda/emu/emu.hpp is for the host compiler; nvcc builds use the real CUDA headers"
#endif

// System headers first: <math.h> declares glibc's own __expf, __logf, ... which the intrinsic
// macros below must not rewrite.
#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The CUDA headers that work on the host. cuda_runtime.h must never be included here: it declares
// the device built-ins (threadIdx, __syncthreads, ...) that this header emulates.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/emu/executor.hpp"

// host_defines.h spells the execution-space qualifiers as attributes; for g++ they are nothing,
// except __shared__: one OS thread runs one block's fibers at a time, so a static thread_local is
// exactly "one copy per resident block". Like real shared memory it is not reinitialised.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __constant__
#define __managed__
#define __launch_bounds__(...)
// __restrict__ is a native g++ keyword; nothing to do.

// Dynamic shared memory: a `type*` named `name` pointing at the current block's buffer (sized by
// the launch's dynamic_smem_bytes, 128-byte aligned, filled with 0xFF bytes at block start so that
// reads of unwritten data show up as NaN / -1). Use it as a declaration statement in a kernel body.
#define FFNKIT_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::ffnkit::emu::detail::dynamic_smem())

// Built-in variables. They are not macros (driver_types.h uses these names) but per-OS-thread
// globals that the scheduler sets before it resumes each fiber.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace ffnkit::emu::detail {

// The warp collectives the emulator implements; all 32 lanes of a warp must call the same one.
enum class WarpOp : int { kShfl, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

// Largest value a shuffle can move (covers double2 / long long2 / float4).
constexpr std::size_t kMaxShuffleBytes = 16;

// Block barrier; `predicate_mode` 0 = plain, 1 = count, 2 = and, 3 = or. Returns the reduction.
int syncthreads(int predicate_mode, int predicate);

// Deposits this lane's `size` bytes at `value` plus `param` (source lane / delta / lane mask /
// predicate), waits until all 32 lanes of the warp arrived and copies this lane's result to `out`.
void warp_exchange(WarpOp op, const char* api, unsigned mask, int width, const void* value,
                   std::size_t size, long long param, void* out);

// The current block's dynamic shared memory (valid only inside a kernel).
unsigned char* dynamic_smem();

// Index of the OS worker thread running the current block (for tests of parallel execution).
int worker_index();

template <class T>
inline void check_shuffle_type() {
  static_assert(sizeof(T) <= kMaxShuffleBytes, "emulated shuffles move at most 16 bytes");
  static_assert(std::is_standard_layout_v<T>, "shuffled type must be a plain value type");
}

template <class T>
inline T shuffle(WarpOp op, const char* api, unsigned mask, T var, long long param, int width) {
  check_shuffle_type<T>();
  T out(var);
  // Bytes are copied: __half2 is standard layout but not trivially copyable (user-provided copy).
  warp_exchange(op, api, mask, width, static_cast<const void*>(&var), sizeof(T), param,
                static_cast<void*>(&out));
  return out;
}

inline unsigned vote(WarpOp op, const char* api, unsigned mask, int predicate) {
  unsigned out = 0;
  warp_exchange(op, api, mask, warpSize, &predicate, sizeof(predicate), predicate, &out);
  return out;
}

// A CAS loop over any 2/4/8-byte value; the generic __atomic builtins compare bytes, which is what
// CUDA's float atomics do too (and they stay lock-free for these sizes).
template <class T, class F>
inline T atomic_update(T* address, F update) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired = update(old);
  while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED)) {
    desired = update(old);
  }
  return old;
}

}  // namespace ffnkit::emu::detail

// ---- Synchronisation --------------------------------------------------------------------------

inline void __syncthreads() { ffnkit::emu::detail::syncthreads(0, 0); }
inline int __syncthreads_count(int predicate) {
  return ffnkit::emu::detail::syncthreads(1, predicate);
}
inline int __syncthreads_and(int predicate) {
  return ffnkit::emu::detail::syncthreads(2, predicate);
}
inline int __syncthreads_or(int predicate) {
  return ffnkit::emu::detail::syncthreads(3, predicate);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ffnkit::emu::detail::warp_exchange(ffnkit::emu::detail::WarpOp::kSyncWarp, "__syncwarp", mask,
                                     warpSize, nullptr, 0, 0, nullptr);
}

// Device-wide fence: blocks really run in parallel on OS threads.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// A block lives on one OS thread, so only the compiler needs fencing.
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

[[noreturn]] inline void __trap() { ffnkit::fail("__trap", "kernel called __trap()"); }

// ---- Warp shuffles and votes (full mask, width 32 only) ----------------------------------------

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  return ffnkit::emu::detail::shuffle(ffnkit::emu::detail::WarpOp::kShfl, "__shfl_sync", mask, var,
                                      srcLane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ffnkit::emu::detail::shuffle(ffnkit::emu::detail::WarpOp::kShflUp, "__shfl_up_sync", mask,
                                      var, delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ffnkit::emu::detail::shuffle(ffnkit::emu::detail::WarpOp::kShflDown, "__shfl_down_sync",
                                      mask, var, delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  return ffnkit::emu::detail::shuffle(ffnkit::emu::detail::WarpOp::kShflXor, "__shfl_xor_sync",
                                      mask, var, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ffnkit::emu::detail::vote(ffnkit::emu::detail::WarpOp::kBallot, "__ballot_sync", mask,
                                   predicate);
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(
      ffnkit::emu::detail::vote(ffnkit::emu::detail::WarpOp::kAny, "__any_sync", mask, predicate));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(
      ffnkit::emu::detail::vote(ffnkit::emu::detail::WarpOp::kAll, "__all_sync", mask, predicate));
}

// ---- Atomics (real atomics: blocks run concurrently on different OS threads) -------------------

inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* a, float v) {
  return ffnkit::emu::detail::atomic_update(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
  return ffnkit::emu::detail::atomic_update(a, [v](double old) { return old + v; });
}
inline __half atomicAdd(__half* a, __half v) {
  return ffnkit::emu::detail::atomic_update(
      a, [v](__half old) { return __float2half(__half2float(old) + __half2float(v)); });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  return ffnkit::emu::detail::atomic_update(a, [v](__nv_bfloat16 old) {
    return __float2bfloat16(__bfloat162float(old) + __bfloat162float(v));
  });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned* a, unsigned v) {
  return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);
}

inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* a, unsigned v) {
  return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);
}
inline float atomicExch(float* a, float v) {
  float old;
  __atomic_exchange(a, &v, &old, __ATOMIC_SEQ_CST);
  return old;
}

inline int atomicCAS(int* a, int compare, int val) {
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // holds the old value whether or not the swap happened
}
inline unsigned atomicCAS(unsigned* a, unsigned compare, unsigned val) {
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare,
                                    unsigned long long val) {
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}

inline int atomicMax(int* a, int v) {
  return ffnkit::emu::detail::atomic_update(a, [v](int old) { return old > v ? old : v; });
}
inline unsigned atomicMax(unsigned* a, unsigned v) {
  return ffnkit::emu::detail::atomic_update(a, [v](unsigned old) { return old > v ? old : v; });
}
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
  return ffnkit::emu::detail::atomic_update(
      a, [v](unsigned long long old) { return old > v ? old : v; });
}
inline int atomicMin(int* a, int v) {
  return ffnkit::emu::detail::atomic_update(a, [v](int old) { return old < v ? old : v; });
}
inline unsigned atomicMin(unsigned* a, unsigned v) {
  return ffnkit::emu::detail::atomic_update(a, [v](unsigned old) { return old < v ? old : v; });
}
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
  return ffnkit::emu::detail::atomic_update(
      a, [v](unsigned long long old) { return old < v ? old : v; });
}
inline int atomicAnd(int* a, int v) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAnd(unsigned* a, unsigned v) {
  return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* a, unsigned v) {
  return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);
}
inline int atomicXor(int* a, int v) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicXor(unsigned* a, unsigned v) {
  return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);
}
// CUDA's wrapping increment/decrement: ((old >= v) ? 0 : old + 1), ((old == 0 || old > v) ? v : old
// - 1).
inline unsigned atomicInc(unsigned* a, unsigned v) {
  return ffnkit::emu::detail::atomic_update(a,
                                            [v](unsigned old) { return old >= v ? 0u : old + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned v) {
  return ffnkit::emu::detail::atomic_update(
      a, [v](unsigned old) { return (old == 0 || old > v) ? v : old - 1; });
}

// ---- Math intrinsics: correct rather than fast (the *_rn forms are exact in IEEE float) -------

namespace ffnkit::emu::intrinsic {
inline float expf_(float x) { return std::exp(x); }
inline float exp10f_(float x) { return std::pow(10.0f, x); }
inline float logf_(float x) { return std::log(x); }
inline float log2f_(float x) { return std::log2(x); }
inline float log10f_(float x) { return std::log10(x); }
inline float powf_(float x, float y) { return std::pow(x, y); }
inline float sinf_(float x) { return std::sin(x); }
inline float cosf_(float x) { return std::cos(x); }
inline float tanf_(float x) { return std::tan(x); }
inline float tanhf_(float x) { return std::tanh(x); }
inline void sincosf_(float x, float* s, float* c) {
  *s = std::sin(x);
  *c = std::cos(x);
}
}  // namespace ffnkit::emu::intrinsic

// glibc's <math.h> already declares extern "C" functions with these exact names, so defining them
// would clash (or interpose libm symbols); macros redirect kernel calls instead.
#define __expf(x) (::ffnkit::emu::intrinsic::expf_(x))
#define __exp10f(x) (::ffnkit::emu::intrinsic::exp10f_(x))
#define __logf(x) (::ffnkit::emu::intrinsic::logf_(x))
#define __log2f(x) (::ffnkit::emu::intrinsic::log2f_(x))
#define __log10f(x) (::ffnkit::emu::intrinsic::log10f_(x))
#define __powf(x, y) (::ffnkit::emu::intrinsic::powf_((x), (y)))
#define __sinf(x) (::ffnkit::emu::intrinsic::sinf_(x))
#define __cosf(x) (::ffnkit::emu::intrinsic::cosf_(x))
#define __tanf(x) (::ffnkit::emu::intrinsic::tanf_(x))
#define __tanhf(x) (::ffnkit::emu::intrinsic::tanhf_(x))
#define __sincosf(x, s, c) (::ffnkit::emu::intrinsic::sincosf_((x), (s), (c)))

inline float __fdividef(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
// Via double so the result is the correctly rounded 1/sqrt(x) in all but pathological cases.
inline float __frsqrt_rn(float x) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x)));
}
inline float rsqrtf(float x) { return __frsqrt_rn(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// Clamps to [0, 1]; NaN becomes 0 as on the GPU.
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, sizeof(d));
  return d;
}
inline long long __double_as_longlong(double x) {
  long long l;
  std::memcpy(&l, &x, sizeof(l));
  return l;
}
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// The read-only data cache does not exist on the CPU: a plain load.
template <class T>
inline T __ldg(const T* ptr) {
  return *ptr;
}

// CUDA's global min/max overloads (std::min/max are templates and would not mix int/unsigned).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
// Mixed signedness follows CUDA: the comparison and result are unsigned.
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
