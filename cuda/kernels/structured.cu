// The structured launchers (FFNKIT_STRUCTURED_LAUNCHERS) for float, __half and __nv_bfloat16:
// compiled by nvcc into ffnkit::cuda, and by the host compiler for the emulator into
// ffnkit::cuda_emu through cuda/emu/structured_emu.cpp. One translation unit per family, so the
// families compile in parallel.
#include "ffnkit/cuda/kernels/structured.cuh"

FFNKIT_INSTANTIATE_LAUNCHERS(FFNKIT_STRUCTURED_LAUNCHERS)
