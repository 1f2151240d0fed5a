// The CUDA kernel sources compiled by the host compiler for the emulator (FFNKIT_CUDA_EMU), into
// ffnkit::cuda_emu. Identical instantiations to cuda/kernels.cu.
#include "../kernel_instances.inc"
