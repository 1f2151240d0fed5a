// Host-side view of the emulated CUDA backend (ffnkit::cuda_emu): the same launchers as
// ffnkit/cuda/ops.hpp, running on the CPU emulator. Link ffnkit::cuda_emu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/emu/executor.hpp"
#include "ffnkit/cuda/emu/runtime.hpp"

#define FFNKIT_CUDA_NS cuda_emu
#include "ffnkit/cuda/ops_api.inc"
#undef FFNKIT_CUDA_NS
