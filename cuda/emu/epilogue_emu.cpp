// cuda/kernels/epilogue.cu compiled by the host compiler for the emulator (FFNKIT_CUDA_EMU), into
// ffnkit::cuda_emu.
#include "../kernels/epilogue.cu"
