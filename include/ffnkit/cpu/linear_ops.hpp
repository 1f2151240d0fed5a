// The Cpu backend's LinearOps (detail/backend.hpp): the products and elementwise passes the dense
// and structured layers and their FFNs are written against, on Eigen (its products routed to
// OpenBLAS when FFNKIT_USE_OPENBLAS) and OpenMP. Views may be strided; weights are PyTorch-layout
// [out x in] row-major. The `where` arguments name the calling layer for device errors; the Cpu
// passes cannot fail once the layer has checked its arguments.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/gemm.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/cpu/structured_ops.hpp"
#include "ffnkit/detail/backend.hpp"

namespace ffnkit {
namespace detail {

template <class T>
struct LinearOps<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");
  using Stream = cpu::Stream;
  using View = MatrixView<T>;
  using ConstView = MatrixView<const T>;

  // y = act(x Wᵀ + b). Without an activation the bias is prefilled and the GEMM accumulates onto
  // it (one streaming write); with one, bias and activation are one pass after the product.
  static void linear(const char*, const ConstView& x, const T* w, index_t out, const T* bias,
                     Activation act, const View& y, const Stream&) {
    if (act == Activation::kIdentity) {
      cpu::linear(x, w, out, bias, y);
    } else {
      cpu::linear<T>(x, w, out, nullptr, y);
      cpu::bias_activation_inplace(y, bias, act);
    }
  }

  // y (+)= x Wᵀ, W: [out x x.cols].
  static void gemm_xwt(const char*, const ConstView& x, const T* w, index_t out, const View& y,
                       bool accumulate, const Stream&) {
    cpu::gemm_xwt(x, w, out, y, accumulate);
  }

  // dW = dyᵀ x (overwritten); dx (+)= dy W unless dx.data is null.
  static void gemm_xwt_backward(const char*, const ConstView& x, const ConstView& dy, const T* w,
                                T* dw, const View& dx, bool accumulate_dx, const Stream&) {
    cpu::gemm_xwt_backward(x, dy, w, dw, dx, accumulate_dx);
  }

  // y_b = x_b W_bᵀ for b < blocks, W: [blocks, y.cols / blocks, x.cols / blocks].
  static void block_xwt(const char*, const ConstView& x, const T* w, index_t blocks, const View& y,
                        const Stream&) {
    cpu::block_xwt(x, w, blocks, y.cols / blocks, y);
  }

  static void block_xwt_backward(const char*, const ConstView& x, const ConstView& dy, const T* w,
                                 index_t blocks, T* dw, const View& dx, const Stream&) {
    cpu::block_xwt_backward(x, dy, w, blocks, dw, dx);
  }

  // y = act(y + b) in place; nothing to do without bias and activation.
  static void bias_activation(const char*, const View& y, const T* bias, Activation act,
                              const Stream&) {
    cpu::bias_activation_inplace(y, bias, act);
  }

  // db = Σ_t dy[t, :].
  static void bias_grad(const char*, const ConstView& dy, T* db, const Stream&) {
    cpu::bias_grad(dy, db);
  }

  // Each row of src is a row-major [blocks x inner] matrix S; dst's row gets its transpose,
  // dst[t, i blocks + b] = act(S[b][i] + bias[i blocks + b]) (BlockShuffle's permutation,
  // docs/math.md §3.5). The activation runs on the row while it is in cache.
  static void transpose_blocks(const char*, const ConstView& src, const View& dst, index_t blocks,
                               index_t inner, const T* bias, Activation act, const Stream&) {
    cpu::parallel_for(dst.rows, blocks * inner, [&](std::int64_t t) {
      const T* in = src.row(t);
      T* out = dst.row(t);
      for (index_t i = 0; i < inner; ++i)
        for (index_t b = 0; b < blocks; ++b)
          out[i * blocks + b] = in[b * inner + i] + (bias ? bias[i * blocks + b] : T(0));
      if (act != Activation::kIdentity)
        cpu::detail::bias_activation_run<T>(out, nullptr, blocks * inner, act);
    });
  }

  // For gate_up [rows x 2F] holding (gate | up) per row: gate = SiLU(gate + bg) (up + bu) in place.
  static void swiglu(const char*, const View& gate_up, const T* gate_bias, const T* up_bias,
                     const Stream&) {
    cpu::swiglu_inplace(gate_up, gate_bias, up_bias);
  }

  // g *= act'(pre).
  static void activation_grad(const char*, const View& g, const ConstView& pre, Activation act,
                              const Stream&) {
    cpu::multiply_activation_grad(g, pre, act);
  }

  // SwiGLU's backward for a = SiLU(g) u (docs/math.md §2.5): with da in d_act,
  // d_gate = da u SiLU'(g) and d_act becomes du = da SiLU(g).
  static void swiglu_grad(const char*, const View& d_act, const ConstView& gate,
                          const ConstView& up, const View& d_gate, const Stream&) {
    const index_t f = d_act.cols;
    cpu::parallel_for(d_act.rows, 4 * f, [&](std::int64_t r) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> du(d_act.row(r), f), dg(d_gate.row(r), f);
      Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> g(gate.row(r), f), u(up.row(r), f);
      const auto s = (T(1) + (-g).exp()).inverse().eval();
      dg = du * u * s * (T(1) + g * (T(1) - s));
      du *= g * s;
    });
  }

  // y = α x + β y + γ b (b: [y.cols] or null; x unused when α = 0).
  static void axpby(const char*, const ConstView& x, const View& y, double alpha, double beta,
                    const T* bias, double gamma, const Stream&) {
    const T a = static_cast<T>(alpha), bt = static_cast<T>(beta), c = static_cast<T>(gamma);
    cpu::parallel_for(y.rows, y.cols, [&](std::int64_t r) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> yr(y.row(r), y.cols);
      if (beta == 0.0) {
        yr = a * Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(x.row(r), y.cols);
      } else {
        yr *= bt;
        if (alpha != 0.0)
          yr += a * Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(x.row(r), y.cols);
      }
      if (bias) yr += c * Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias, y.cols);
    });
  }
};

}  // namespace detail
}  // namespace ffnkit
