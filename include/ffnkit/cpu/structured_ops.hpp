// The GEMM building blocks of the structured layers on the CPU backend: dense and block-diagonal
// products and their backward, all on strided views (a block of x is a column slice with the
// full row stride: no gather copies). Weights are PyTorch-layout [out x in] row-major.
#pragma once

#include "ffnkit/core/view.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"

namespace ffnkit {
namespace cpu {

template <class T>
using ConstWeightMap = Eigen::Map<const RowMatrix<T>>;

// Y (+)= X Wᵀ, W: [out x in]. accumulate = false overwrites Y.
template <class T>
void gemm_xwt(const MatrixView<const T>& x, const T* w, index_t out, const MatrixView<T>& y,
              bool accumulate) {
  const ConstWeightMap<T> W(w, out, x.cols);
  auto Y = map(y);
  if (accumulate) {
    Y.noalias() += map(x) * W.transpose();
  } else {
    Y.noalias() = map(x) * W.transpose();
  }
}

// Backward of Y = X Wᵀ: dW = dYᵀ X [out x in] (overwritten), dX (+)= dY W when dx.data != null.
template <class T>
void gemm_xwt_backward(const MatrixView<const T>& x, const MatrixView<const T>& dy, const T* w,
                       T* dw, const MatrixView<T>& dx, bool accumulate_dx) {
  Eigen::Map<RowMatrix<T>> dW(dw, dy.cols, x.cols);
  dW.noalias() = map(dy).transpose() * map(x);
  if (dx.data) {
    const ConstWeightMap<T> W(w, dy.cols, x.cols);
    auto dX = map(dx);
    if (accumulate_dx) {
      dX.noalias() += map(dy) * W;
    } else {
      dX.noalias() = map(dy) * W;
    }
  }
}

// Block-diagonal product: for b < blocks, Y[:, b*out_b ..] = X[:, b*in_b ..] W_bᵀ, with
// W: [blocks, out_b, in_b]. Each block is one GEMM on column slices of the caller's views.
template <class T>
void block_xwt(const MatrixView<const T>& x, const T* w, index_t blocks, index_t out_b,
               const MatrixView<T>& y) {
  const index_t in_b = x.cols / blocks;
  for (index_t b = 0; b < blocks; ++b) {
    const MatrixView<const T> xb(x.data + b * in_b, x.rows, in_b, x.row_stride);
    const MatrixView<T> yb(y.data + b * out_b, y.rows, out_b, y.row_stride);
    gemm_xwt(xb, w + b * out_b * in_b, out_b, yb, false);
  }
}

// Backward of block_xwt: dW (overwritten) and dX (overwritten when dx.data != null).
template <class T>
void block_xwt_backward(const MatrixView<const T>& x, const MatrixView<const T>& dy, const T* w,
                        index_t blocks, T* dw, const MatrixView<T>& dx) {
  const index_t in_b = x.cols / blocks, out_b = dy.cols / blocks;
  for (index_t b = 0; b < blocks; ++b) {
    const MatrixView<const T> xb(x.data + b * in_b, x.rows, in_b, x.row_stride);
    const MatrixView<const T> dyb(dy.data + b * out_b, dy.rows, out_b, dy.row_stride);
    const MatrixView<T> dxb(dx.data ? dx.data + b * in_b : nullptr, dx.rows, in_b, dx.row_stride);
    gemm_xwt_backward(xb, dyb, w + b * out_b * in_b, dw + b * out_b * in_b, dxb, false);
  }
}

// db = Σ_tokens dY.
template <class T>
void bias_grad(const MatrixView<const T>& dy, T* db) {
  Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(db, dy.cols) = map(dy).colwise().sum();
}

// Y[t, :] = bias (row broadcast), the prefill that lets the last GEMM accumulate onto the bias.
template <class T>
void fill_rows(const MatrixView<T>& y, const T* bias) {
  map(y).rowwise() = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias, y.cols);
}

}  // namespace cpu
}  // namespace ffnkit
