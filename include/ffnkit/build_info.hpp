// What this build of ffnkit runs on: printed at the top of benchmark tables and test logs so a
// figure is never quoted without its configuration.
#pragma once

#include <string>

namespace ffnkit {

// One line, e.g. "ffnkit 0.1.0 | g++ 12.2 | Eigen 3.4.0 | GEMM: OpenBLAS via EIGEN_USE_BLAS |
// OpenMP threads: 2 | CUDA: compiled". Defined in src/build_info.cpp (target ffnkit::build_info).
std::string build_info();

}  // namespace ffnkit
