// Eigen at the CPU backend's boundary: views become Maps (no copies), weights are row-major
// [out x in] matrices exactly as PyTorch stores them.
// ffnkit includes Eigen only here (and Eigen/Eigenvalues in cpu/init.hpp), inside the GCC 12
// AVX-512 workaround of core/macros.hpp.
#pragma once

#include "ffnkit/core/macros.hpp"

FFNKIT_GCC_PR105593_BEGIN
#include <Eigen/Core>
FFNKIT_GCC_PR105593_END

#include "ffnkit/core/view.hpp"

namespace ffnkit {
namespace cpu {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

template <class T>
using ConstRowMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using RowMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class T>
ConstRowMap<T> map(const MatrixView<const T>& v) {
  return ConstRowMap<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.row_stride));
}
template <class T>
RowMap<T> map(const MatrixView<T>& v) {
  return RowMap<T>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.row_stride));
}

// True when Eigen's products are routed to an external BLAS (FFNKIT_USE_OPENBLAS, the default
// where OpenBLAS is found: it is the faster GEMM on the machines we measured, docs/benchmarks.md).
constexpr bool uses_blas() {
#ifdef EIGEN_USE_BLAS
  return true;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace ffnkit
