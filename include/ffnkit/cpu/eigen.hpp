// Eigen at the CPU backend's boundary: views become Maps (no copies), weights are row-major
// [out x in] matrices exactly as PyTorch stores them.
#pragma once

#include "ffnkit/core/view.hpp"
#include "ffnkit/detail/eigen.hpp"

namespace ffnkit {
namespace cpu {

using detail::RowMatrix;
using detail::Vector;

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
