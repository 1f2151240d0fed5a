// The emulated device runtime (ffnkit::cuda_emu): the same API as ffnkit/cuda/runtime.hpp, with
// device memory in host memory and cuBLAS replaced by a reference GEMM with cuBLAS's exact
// column-major semantics. Link ffnkit::cuda_emu.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "ffnkit/core/error.hpp"

#define FFNKIT_CUDA_NS cuda_emu
#include "ffnkit/cuda/runtime_api.inc"
#undef FFNKIT_CUDA_NS
