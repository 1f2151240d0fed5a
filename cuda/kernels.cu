// The CUDA kernels of every layer family, compiled by nvcc into ffnkit::cuda. The same kernel
// headers are compiled for the emulator by cuda/emu/kernels_emu.cpp.
#include "kernel_instances.inc"
