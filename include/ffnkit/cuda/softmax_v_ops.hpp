// The device backends' SoftmaxVOps (detail/norm_ops.hpp), for Cuda and CudaEmu alike:
// y = softmax(s + mask) V per query row (docs/math.md §7.5). forward is one SoftmaxV kernel (one
// pass, online running max, fp32 state per thread, its key tiles fixed at 128 and staged through
// shared memory: no workspace); the three-pass baseline is SoftmaxRows into a [queries x keys]
// buffer of P, then one GEMM P V.
#pragma once

#include <cstddef>
#include <type_traits>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/norm_ops.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct DeviceSoftmaxVOps {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");
  using Api = Runtime<B>;
  using Stream = typename Api::Stream;

  // The kernel keeps its state in registers and shared memory; key_tile and query_block are the
  // Cpu backend's blocking and do not apply.
  static std::size_t workspace_size(index_t, index_t, index_t, index_t, index_t) { return 0; }

  static void forward(const char* where, const MatrixView<const T>& s, const MatrixView<const T>& v,
                      const MatrixView<T>& y, const MatrixView<const T>& mask, index_t, index_t, T*,
                      const Stream& stream) {
    throw_if_error(
        cuda::SoftmaxV<T, B>(s.data, s.row_stride, mask.data, mask.row_stride, v.data, v.row_stride,
                             y.data, y.row_stride, s.rows, s.cols, v.cols, stream),
        where);
  }

  // The three-pass baseline: P = softmax(s + mask) into p ([queries x keys], ld keys), y = P V.
  static void three_pass(const char* where, const MatrixView<const T>& s,
                         const MatrixView<const T>& v, const MatrixView<T>& y,
                         const MatrixView<const T>& mask, T* p, const Stream& stream) {
    const index_t q = s.rows, keys = s.cols, dim = v.cols;
    throw_if_error(cuda::SoftmaxRows<T, B>(s.data, s.row_stride, mask.data, mask.row_stride, p,
                                           keys, q, keys, stream),
                   where);
    // Row-major y = P V is column-major y^T (dim x q) = V^T (dim x keys, V's buffer as is) P^T.
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    Api::gemm(Api::blas(stream), Op::kN, Op::kN, to_blas_int(where, "dim", dim),
              to_blas_int(where, "queries", q), to_blas_int(where, "keys", keys), 1.0f, v.data, dt,
              to_blas_int(where, "v.row_stride", v.row_stride), p, dt,
              to_blas_int(where, "keys", keys), 0.0f, y.data, dt,
              to_blas_int(where, "y.row_stride", y.row_stride));
  }
};

#if defined(FFNKIT_WITH_CUDA)
template <class T>
struct SoftmaxVOps<T, Cuda> : DeviceSoftmaxVOps<T, Cuda> {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
struct SoftmaxVOps<T, CudaEmu> : DeviceSoftmaxVOps<T, CudaEmu> {};
#endif

}  // namespace detail
}  // namespace ffnkit
