// What every kernel source (kernels/*.cuh) shares: launch(kernel, grid, block, smem_bytes, stream,
// args...), the only way ffnkit launches a kernel, so the same source builds with nvcc (a <<<>>>
// launch) and under the emulator (the fiber executor; synchronous); the grid-size policy; and the
// explicit instantiation of a family's launchers. Include from kernel sources only, after
// device_compat.cuh.
//
// Everything here but the launchers lives in an unnamed namespace: nvcc and the emulator compile
// these sources into two libraries that link into one binary, and only the launchers, templated on
// the backend tag, may be seen across translation units (docs/cuda.md, "Launchers").
#pragma once

#include <algorithm>
#include <utility>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/cuda/limits.hpp"

#if defined(FFNKIT_CUDA_EMU)
#include "ffnkit/cuda/emu/executor.hpp"
#include "ffnkit/cuda/emu/runtime.hpp"
#else
#include "ffnkit/cuda/runtime.hpp"
#endif

namespace ffnkit {
namespace cuda {
namespace {

// The backend tag this translation unit's launchers are instantiated for.
#if defined(FFNKIT_CUDA_EMU)
using BuildBackend = CudaEmu;
#else
using BuildBackend = Cuda;
#endif

// Returns kSuccess, or kRuntimeError when the launch itself failed (bad configuration, no
// device); under emulation an invalid configuration throws ffnkit::Error naming the dimension.
template <class... KernelArgs, class... Args>
Status launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem_bytes,
              const StreamOf<BuildBackend>& stream, Args&&... args) {
#if defined(FFNKIT_CUDA_EMU)
  ::ffnkit::cuda_emu::trace(::ffnkit::cuda_emu::TraceOp::kLaunch, stream.handle());
  emu::launch_kernel(kernel, grid, block, smem_bytes, std::forward<Args>(args)...);
  return Status::kSuccess;
#else
  // clang-format off
  kernel<<<grid, block, smem_bytes, static_cast<cudaStream_t>(stream.handle())>>>(
      std::forward<Args>(args)...);
  // clang-format on
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kRuntimeError;
#endif
}

// How many blocks a grid-stride kernel launches: a policy, not a limit. On a GPU, enough along x
// to fill the largest device, and a block per row along y up to the hardware's limit; under
// emulation a few either way, so each fiber loops (and the grid-stride arithmetic gets exercised)
// instead of spawning one fiber per element.
#if defined(FFNKIT_CUDA_EMU)
constexpr long long kLaunchBlocksX = 8;
constexpr long long kLaunchBlocksY = 4;
#else
constexpr long long kLaunchBlocksX = 4096;
constexpr long long kLaunchBlocksY = kMaxGridDimYZ;
#endif

// Blocks along x for `work_items` independent items, `block_threads` items per block per pass.
inline unsigned grid_blocks(long long work_items, unsigned block_threads) {
  const long long needed = (work_items + block_threads - 1) / block_threads;
  return static_cast<unsigned>(std::clamp(needed, 1LL, kLaunchBlocksX));
}

// `x_blocks` along x and a block per row along y, for kernels looping over rows by gridDim.y (not
// the FFF kernels: maybe_unused, or nvcc warns of an unreferenced internal function there).
[[maybe_unused]] inline dim3 grid_rows(unsigned x_blocks, long long rows) {
  return dim3(x_blocks, static_cast<unsigned>(std::clamp(rows, 1LL, kLaunchBlocksY)), 1);
}

}  // namespace
}  // namespace cuda
}  // namespace ffnkit

// The explicit instantiations of one family's launchers (its list, launchers.hpp) for float,
// __half and __nv_bfloat16 and this build's backend tag; a kernel translation unit's only content
// after its family's header.
#define FFNKIT_INSTANTIATE_LAUNCHER(Name, T, params) \
  template Status Name<T, BuildBackend> FFNKIT_LAUNCHER_PARAMS(BuildBackend, params);
#define FFNKIT_INSTANTIATE_LAUNCHERS(LIST)         \
  namespace ffnkit {                               \
  namespace cuda {                                 \
  LIST(FFNKIT_INSTANTIATE_LAUNCHER, float)         \
  LIST(FFNKIT_INSTANTIATE_LAUNCHER, __half)        \
  LIST(FFNKIT_INSTANTIATE_LAUNCHER, __nv_bfloat16) \
  }                                                \
  }
