// cuda/kernels/fff.cu compiled by the host compiler for the emulator (FFNKIT_CUDA_EMU), into
// ffnkit::cuda_emu.
#include "../kernels/fff.cu"
