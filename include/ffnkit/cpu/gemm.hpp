// The one GEMM entry point of the CPU backend: y = x W^T (+ b) with PyTorch-layout W.
#pragma once

#include <algorithm>

#include "ffnkit/core/view.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"

namespace ffnkit {
namespace cpu {

// y[T x M] = x[T x N] * W^T + b, with W: [M x N] row-major and contiguous, b: [M] or null.
// x and y may be strided views; nothing is copied or packed outside the GEMM itself.
template <class T>
void linear(const MatrixView<const T>& x, const T* w, index_t out_features, const T* bias,
            const MatrixView<T>& y) {
  const index_t in_features = x.cols;
  auto run = [&](const MatrixView<const T>& xs, const T* ws, index_t m, const T* bs,
                 const MatrixView<T>& ys) {
    const Eigen::Map<const RowMatrix<T>> W(ws, m, in_features);
    auto Y = map(ys);
    if (bs) {
      // Prefilling with the bias and accumulating (beta = 1) costs one streaming write, instead of
      // a separate read-modify-write pass over y after the product.
      Y.rowwise() = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bs, m);
      Y.noalias() += map(xs) * W.transpose();
    } else {
      Y.noalias() = map(xs) * W.transpose();
    }
  };
  // Eigen's own GEMV (and its GEMM at a handful of rows) runs on one thread; split the output
  // features across threads so decode-sized calls use every core. BLAS threads these itself.
  constexpr index_t kSmallTokens = 16;
  const int threads = max_threads();
  if (!uses_blas() && x.rows <= kSmallTokens && threads > 1 && out_features >= 64 * threads) {
    const index_t per = ((out_features + threads - 1) / threads + 15) / 16 * 16;
    const index_t parts = (out_features + per - 1) / per;
    parallel_for(parts, per * in_features * x.rows, [&](std::int64_t p) {
      const index_t m0 = p * per;
      const index_t m = std::min(per, out_features - m0);
      const MatrixView<T> ys(y.data + m0, y.rows, m, y.row_stride);
      run(x, w + m0 * in_features, m, bias ? bias + m0 : nullptr, ys);
    });
    return;
  }
  run(x, w, out_features, bias, y);
}

}  // namespace cpu
}  // namespace ffnkit
