// The launch limits of every architecture ffnkit builds for (sm_80, sm_90): what the kernels'
// grids are capped by and what the emulator validates each launch against, so both use the same
// numbers. Host-compilable, no CUDA header needed.
#pragma once

#include <cstddef>

namespace ffnkit {
namespace cuda {

inline constexpr unsigned kMaxThreadsPerBlock = 1024;
inline constexpr unsigned kMaxBlockDimXY = 1024;
inline constexpr unsigned kMaxBlockDimZ = 64;
inline constexpr unsigned kMaxGridDimX = 2147483647u;
inline constexpr unsigned kMaxGridDimYZ = 65535;
// 48 KiB: what a launch gets on a GPU unless the kernel opts in with cudaFuncSetAttribute, which
// the emulator does not model; a kernel that fits here fits on every supported device.
inline constexpr std::size_t kMaxDynamicSmemBytes = 48 * 1024;

}  // namespace cuda
}  // namespace ffnkit
