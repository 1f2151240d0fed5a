// launch(kernel, grid, block, smem_bytes, stream, args...): the only way ffnkit launches a kernel,
// so the same source builds with nvcc (a <<<>>> launch) and under the emulator (the fiber
// executor; synchronous). Include from kernel sources only, after device_compat.cuh.
#pragma once

#include <utility>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/device_compat.cuh"

#if defined(FFNKIT_CUDA_EMU)
#include "ffnkit/cuda/emu/executor.hpp"
#include "ffnkit/cuda/emu/runtime.hpp"
#else
#include "ffnkit/cuda/runtime.hpp"
#endif

namespace ffnkit {
namespace FFNKIT_KERNEL_NS {

// Returns kSuccess, or kRuntimeError when the launch itself failed (bad configuration, no
// device); under emulation an invalid configuration throws ffnkit::Error naming the dimension.
template <class... KernelArgs, class... Args>
Status launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, std::size_t smem_bytes,
              const Stream& stream, Args&&... args) {
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

// A kernel grid for `work_items` independent items in grid-stride loops: enough blocks to fill a
// large GPU, capped; under emulation a few blocks, so each fiber loops (and the grid-stride
// arithmetic gets exercised) instead of spawning one fiber per element.
inline unsigned grid_blocks(long long work_items, unsigned block_threads) {
#if defined(FFNKIT_CUDA_EMU)
  constexpr long long kMaxBlocks = 8;
#else
  constexpr long long kMaxBlocks = 4096;
#endif
  const long long needed = (work_items + block_threads - 1) / block_threads;
  return static_cast<unsigned>(needed < 1 ? 1 : (needed < kMaxBlocks ? needed : kMaxBlocks));
}

}  // namespace FFNKIT_KERNEL_NS
}  // namespace ffnkit
