#include "ffnkit/build_info.hpp"

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/macros.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"

namespace ffnkit {

std::string build_info() {
  std::string compiler =
#if defined(__clang__)
      make_message("clang ", __clang_major__, ".", __clang_minor__);
#elif defined(__GNUC__)
      make_message("g++ ", __GNUC__, ".", __GNUC_MINOR__);
#else
      "unknown compiler";
#endif
  return make_message("ffnkit ", FFNKIT_VERSION_MAJOR, ".", FFNKIT_VERSION_MINOR, ".",
                      FFNKIT_VERSION_PATCH, " | ", compiler, " | Eigen ", EIGEN_WORLD_VERSION, ".",
                      EIGEN_MAJOR_VERSION, ".", EIGEN_MINOR_VERSION,
                      " | GEMM: ", cpu::uses_blas() ? "OpenBLAS via EIGEN_USE_BLAS" : "Eigen",
                      " | OpenMP threads: ", cpu::max_threads(), " | CUDA: ",
#ifdef FFNKIT_WITH_CUDA_BUILD
                      "compiled"
#else
                      "not compiled"
#endif
  );
}

}  // namespace ffnkit
