// cuda/kernels/norm.cu compiled by the host compiler for the emulator (FFNKIT_CUDA_EMU), into
// ffnkit::cuda_emu.
#include "../kernels/norm.cu"
