// Backend tags. A layer is templated on scalar and backend: DenseLinear<float, Cpu>.
#pragma once

namespace ffnkit {

// Eigen on the host, OpenMP threads.
struct Cpu {
  static constexpr const char* name() { return "Cpu"; }
};
// The CUDA kernel sources compiled by the host compiler and run by ffnkit's thread-block
// emulator (docs/cuda.md, tier 2). Needs no GPU.
struct CudaEmu {
  static constexpr const char* name() { return "CudaEmu"; }
};
// The real CUDA device (docs/cuda.md, tier 3).
struct Cuda {
  static constexpr const char* name() { return "Cuda"; }
};

namespace detail {
// What backend B supplies to every layer: owning buffers and a stream (detail/backend.hpp).
template <class B>
struct Runtime;
}  // namespace detail

}  // namespace ffnkit
