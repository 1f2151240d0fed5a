// The device backends' LinearOps (detail/backend.hpp), for Cuda and CudaEmu alike: every product
// is one cuBLAS call on strided views of the caller's buffers (a row-major y [t x m] is the
// column-major yᵀ, so y = x Wᵀ is yᵀ = op_T(W as stored) xᵀ); a block-diagonal product is one
// strided-batched call with batch = blocks (block b's input is columns [b p, (b+1) p) of x, so the
// batch stride of x is p elements and nothing is gathered); the elementwise passes are the
// launchers of cuda/launchers.hpp. All arithmetic is fp32 whatever the storage type.
#pragma once

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/backend.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct DeviceLinearOps {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");
  using Api = Runtime<B>;
  using Stream = typename Api::Stream;
  using View = MatrixView<T>;
  using ConstView = MatrixView<const T>;

  static void linear(const char* where, const ConstView& x, const T* w, index_t out, const T* bias,
                     Activation act, const View& y, const Stream& stream) {
    gemm_xwt(where, x, w, out, y, false, stream);
    bias_activation(where, y, bias, act, stream);
  }

  // y (+)= x Wᵀ, W: [out x x.cols] row-major.
  static void gemm_xwt(const char* where, const ConstView& x, const T* w, index_t out,
                       const View& y, bool accumulate, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const int k = to_blas_int(where, "in_features", x.cols);
    Api::gemm(Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "out_features", out),
              to_blas_int(where, "tokens", x.rows), k, 1.0f, w, dt, k, x.data, dt,
              to_blas_int(where, "x.row_stride", x.row_stride), accumulate ? 1.0f : 0.0f, y.data,
              dt, to_blas_int(where, "y.row_stride", y.row_stride));
  }

  // dW = dyᵀ x into dw ([dy.cols x x.cols]); dx (+)= dy W unless dx.data is null.
  static void gemm_xwt_backward(const char* where, const ConstView& x, const ConstView& dy,
                                const T* w, T* dw, const View& dx, bool accumulate_dx,
                                const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const int k = to_blas_int(where, "in_features", x.cols);
    const int n_out = to_blas_int(where, "out_features", dy.cols);
    const int t = to_blas_int(where, "tokens", x.rows);
    const int xs = to_blas_int(where, "x.row_stride", x.row_stride);
    const int dys = to_blas_int(where, "dy.row_stride", dy.row_stride);
    // dWᵀ (k x n_out, ld k) = xᵀ (k x t) · dy (t x n_out, dy stored as dyᵀ: op T).
    Api::gemm(Api::blas(stream), Op::kN, Op::kT, k, n_out, t, 1.0f, x.data, dt, xs, dy.data, dt,
              dys, 0.0f, dw, dt, k);
    // dxᵀ (k x t) = W as stored (k x n_out, ld k) · dyᵀ (n_out x t).
    if (dx.data)
      Api::gemm(Api::blas(stream), Op::kN, Op::kN, k, t, n_out, 1.0f, w, dt, k, dy.data, dt, dys,
                accumulate_dx ? 1.0f : 0.0f, dx.data, dt,
                to_blas_int(where, "dx.row_stride", dx.row_stride));
  }

  // y_b = x_b W_bᵀ for b < blocks: W: [blocks, s, p] (p = x.cols / blocks, s = y.cols / blocks).
  // One strided-batched call: block b's x, W and y start p, s p and s elements further on.
  static void block_xwt(const char* where, const ConstView& x, const T* w, index_t blocks,
                        const View& y, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const index_t p = x.cols / blocks, s = y.cols / blocks;
    const int pi = to_blas_int(where, "in_features / blocks", p);
    Api::gemm_strided_batched(
        Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "out_features / blocks", s),
        to_blas_int(where, "tokens", x.rows), pi, 1.0f, w, dt, pi, static_cast<long long>(s * p),
        x.data, dt, to_blas_int(where, "x.row_stride", x.row_stride), static_cast<long long>(p),
        0.0f, y.data, dt, to_blas_int(where, "y.row_stride", y.row_stride),
        static_cast<long long>(s), to_blas_int(where, "blocks", blocks));
  }

  // dW_b = dy_bᵀ x_b into dw ([blocks, s, p]); dx_b = dy_b W_b unless dx.data is null.
  static void block_xwt_backward(const char* where, const ConstView& x, const ConstView& dy,
                                 const T* w, index_t blocks, T* dw, const View& dx,
                                 const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const index_t p = x.cols / blocks, s = dy.cols / blocks;
    const int pi = to_blas_int(where, "in_features / blocks", p);
    const int si = to_blas_int(where, "out_features / blocks", s);
    const int t = to_blas_int(where, "tokens", x.rows), nb = to_blas_int(where, "blocks", blocks);
    const int xs = to_blas_int(where, "x.row_stride", x.row_stride);
    const int dys = to_blas_int(where, "dy.row_stride", dy.row_stride);
    Api::gemm_strided_batched(Api::blas(stream), Op::kN, Op::kT, pi, si, t, 1.0f, x.data, dt, xs,
                              static_cast<long long>(p), dy.data, dt, dys,
                              static_cast<long long>(s), 0.0f, dw, dt, pi,
                              static_cast<long long>(s * p), nb);
    if (dx.data)
      Api::gemm_strided_batched(
          Api::blas(stream), Op::kN, Op::kN, pi, t, si, 1.0f, w, dt, pi,
          static_cast<long long>(s * p), dy.data, dt, dys, static_cast<long long>(s), 0.0f, dx.data,
          dt, to_blas_int(where, "dx.row_stride", dx.row_stride), static_cast<long long>(p), nb);
  }

  // y = act(y + b) in one pass, skipped when there is nothing to do.
  static void bias_activation(const char* where, const View& y, const T* bias, Activation act,
                              const Stream& stream) {
    if (!bias && act == Activation::kIdentity) return;
    throw_if_error(
        cuda::BiasActivation<T, B>(y.data, bias, y.rows, y.cols, y.row_stride, act, stream), where);
  }

  static void bias_grad(const char* where, const ConstView& dy, T* db, const Stream& stream) {
    throw_if_error(cuda::ColumnSum<T, B>(dy.data, dy.rows, dy.cols, dy.row_stride, db, stream),
                   where);
  }

  static void transpose_blocks(const char* where, const ConstView& src, const View& dst,
                               index_t blocks, index_t inner, const T* bias, Activation act,
                               const Stream& stream) {
    throw_if_error(cuda::TransposeBlocks<T, B>(src.data, src.row_stride, dst.data, dst.row_stride,
                                               dst.rows, blocks, inner, bias, act, stream),
                   where);
  }

  static void swiglu(const char* where, const View& gate_up, const T* gate_bias, const T* up_bias,
                     const Stream& stream) {
    throw_if_error(cuda::SwiGlu<T, B>(gate_up.data, gate_bias, up_bias, gate_up.rows,
                                      gate_up.cols / 2, gate_up.row_stride, stream),
                   where);
  }

  static void activation_grad(const char* where, const View& g, const ConstView& pre,
                              Activation act, const Stream& stream) {
    throw_if_error(cuda::ActivationGrad<T, B>(g.data, g.row_stride, pre.data, pre.row_stride,
                                              g.rows, g.cols, act, stream),
                   where);
  }

  // gate and up share one row stride (the two halves of one pre-activation buffer).
  static void swiglu_grad(const char* where, const View& d_act, const ConstView& gate,
                          const ConstView& up, const View& d_gate, const Stream& stream) {
    throw_if_error(
        cuda::SwiGluGrad<T, B>(d_act.data, d_act.row_stride, gate.data, up.data, gate.row_stride,
                               d_gate.data, d_gate.row_stride, d_act.rows, d_act.cols, stream),
        where);
  }

  static void axpby(const char* where, const ConstView& x, const View& y, double alpha, double beta,
                    const T* bias, double gamma, const Stream& stream) {
    throw_if_error(cuda::Axpby<T, B>(x.data, x.row_stride, y.data, y.row_stride, y.rows, y.cols,
                                     static_cast<float>(alpha), static_cast<float>(beta), bias,
                                     static_cast<float>(gamma), stream),
                   where);
  }
};

#if defined(FFNKIT_WITH_CUDA)
template <class T>
struct LinearOps<T, Cuda> : DeviceLinearOps<T, Cuda> {};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
struct LinearOps<T, CudaEmu> : DeviceLinearOps<T, CudaEmu> {};
#endif

}  // namespace detail
}  // namespace ffnkit
