// Non-owning views of row-major [tokens x features] buffers, the form engines hand us.
#pragma once

#include <cstddef>
#include <type_traits>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/macros.hpp"

namespace ffnkit {

// A row-major matrix view: `rows` tokens of `cols` features, consecutive rows `row_stride`
// elements apart (row_stride >= cols lets callers pass a slice of a wider buffer, e.g. Q out of a
// fused QKV activation). The view never owns or allocates.
template <class T>
struct MatrixView {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t row_stride = 0;

  constexpr MatrixView() = default;
  FFNKIT_HOST_DEVICE constexpr MatrixView(T* d, index_t r, index_t c, index_t stride)
      : data(d), rows(r), cols(c), row_stride(stride) {}
  // Densely packed rows.
  FFNKIT_HOST_DEVICE constexpr MatrixView(T* d, index_t r, index_t c)
      : data(d), rows(r), cols(c), row_stride(c) {}

  // A mutable view converts to a read-only one.
  template <class U,
            class = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  FFNKIT_HOST_DEVICE constexpr MatrixView(const MatrixView<U>& other)
      : data(other.data), rows(other.rows), cols(other.cols), row_stride(other.row_stride) {}

  FFNKIT_HOST_DEVICE T* row(index_t r) const { return data + r * row_stride; }
  FFNKIT_HOST_DEVICE T& operator()(index_t r, index_t c) const { return data[r * row_stride + c]; }
  FFNKIT_HOST_DEVICE bool contiguous() const { return row_stride == cols; }
  // Rows [first, first + count) as a view of the same buffer.
  FFNKIT_HOST_DEVICE MatrixView rows_slice(index_t first, index_t count) const {
    return MatrixView(data + first * row_stride, count, cols, row_stride);
  }
};

template <class T>
using ConstMatrixView = MatrixView<const T>;

template <class T>
MatrixView<T> make_view(T* data, index_t rows, index_t cols, index_t row_stride = -1) {
  return MatrixView<T>(data, rows, cols, row_stride < 0 ? cols : row_stride);
}

// The checks every layer's forward runs on an activation view: non-null, at least one token, the
// expected width, and a row stride that cannot make rows overlap.
template <class T>
void check_activation(const char* where, const char* name, const MatrixView<T>& v,
                      index_t expected_cols, const char* expected_name) {
  if (v.rows <= 0) fail(where, name, ".rows (tokens) = ", v.rows, ", must be > 0");
  if (v.data == nullptr) fail(where, name, ".data is a null pointer");
  if (v.cols != expected_cols)
    fail(where, name, ".cols = ", v.cols, ", expected ", expected_name, " = ", expected_cols);
  if (v.row_stride < v.cols)
    fail(where, name, ".row_stride = ", v.row_stride, " is smaller than ", name,
         ".cols = ", v.cols);
}

// Input and output must not alias: the layers read x while writing y. The message names both.
template <class T, class U>
void check_no_overlap(const char* where, const MatrixView<T>& x, const MatrixView<U>& y,
                      const char* x_name = "x", const char* y_name = "y") {
  const char* x0 = reinterpret_cast<const char*>(x.data);
  const char* x1 = reinterpret_cast<const char*>(x.data + (x.rows - 1) * x.row_stride + x.cols);
  const char* y0 = reinterpret_cast<const char*>(y.data);
  const char* y1 = reinterpret_cast<const char*>(y.data + (y.rows - 1) * y.row_stride + y.cols);
  if (x0 < y1 && y0 < x1)
    fail(where, "input ", x_name, " and output ", y_name, " overlap in memory");
}

// The views of one forward call: x [tokens x in], y [tokens x out], not overlapping. The width
// names are the layer's own (in_features, d_model, ...), so the message names what to fix.
template <class T>
void check_forward_views(const char* where, index_t in, index_t out, const MatrixView<const T>& x,
                         const MatrixView<T>& y, const char* in_name = "in_features",
                         const char* out_name = "out_features") {
  check_activation(where, "x", x, in, in_name);
  check_activation(where, "y", y, out, out_name);
  check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
  check_no_overlap(where, x, y);
}

// The views of one backward call: x [tokens x in], dy [tokens x out], and dx [tokens x in] unless
// dx.data is null (the caller does not want the input gradient), dx overlapping neither input.
template <class T>
void check_backward_views(const char* where, index_t in, index_t out, const MatrixView<const T>& x,
                          const MatrixView<const T>& dy, const MatrixView<T>& dx,
                          const char* in_name = "in_features",
                          const char* out_name = "out_features") {
  check_activation(where, "x", x, in, in_name);
  check_activation(where, "dy", dy, out, out_name);
  check_equal(where, "dy.rows", dy.rows, "x.rows", x.rows);
  if (dx.data) {
    check_activation(where, "dx", dx, in, in_name);
    check_equal(where, "dx.rows", dx.rows, "x.rows", x.rows);
    check_no_overlap(where, x, dx, "x", "dx");
    check_no_overlap(where, dy, dx, "dy", "dx");
  }
}

// Caller-provided scratch memory (CUTLASS's workspace): query `workspace_size()`, pass the buffer
// to `forward`. An empty workspace makes the layer use its own internal buffer.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

}  // namespace ffnkit
