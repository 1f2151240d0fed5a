// Eigen for ffnkit's host-side math (seeded initialisation, the norm fold, materialize) and the
// CPU backend. ffnkit includes Eigen only here and in detail/init.hpp (Eigen/Eigenvalues), inside
// the GCC 12 AVX-512 workaround of core/macros.hpp.
#pragma once

#include "ffnkit/core/macros.hpp"

FFNKIT_GCC_PR105593_BEGIN
#include <Eigen/Core>
FFNKIT_GCC_PR105593_END

namespace ffnkit {
namespace detail {

// PyTorch's layouts: a weight is a row-major [out x in] matrix.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
using MatrixXdRow = RowMatrix<double>;

}  // namespace detail
}  // namespace ffnkit
