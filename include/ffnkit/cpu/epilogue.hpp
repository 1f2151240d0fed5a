// The fused bias + activation pass that follows a GEMM (one read and one write of the hidden
// activations instead of two passes). Vectorized through Eigen's array packet math.
#pragma once

#include <algorithm>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/view.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"

namespace ffnkit {
namespace cpu {

namespace detail {

// Columns handled per task: big enough to amortize a task, small enough to stay in L1/L2.
constexpr index_t kEpilogueChunk = 2048;

template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// v = act(v + bias) on one contiguous run. Same formulas as core/activation.hpp (the forms that are
// accurate in both tails), written as Eigen array expressions so that exp vectorizes.
template <class T>
void bias_activation_run(T* v, const T* bias, index_t n, Activation act) {
  ArrayMap<T> a(v, n);
  if (bias) a += ConstArrayMap<T>(bias, n);
  switch (act) {
    case Activation::kIdentity:
      break;
    case Activation::kRelu:
      a = a.max(T(0));
      break;
    case Activation::kGeluTanh: {
      const T k0 = T(GeluTanhFn::kSqrt2OverPi), k1 = T(GeluTanhFn::kCubic);
      a = a / (T(1) + (T(-2) * k0 * (a + k1 * a * a * a)).exp());
      break;
    }
    case Activation::kGeluErf: {
      // Eigen has no vectorized erfc, and erf's form cancels for x << 0: scalar, but accurate.
      const GeluErfFn fn;
      for (index_t i = 0; i < n; ++i) v[i] = fn(v[i]);
      break;
    }
    case Activation::kSilu:
      a = a / (T(1) + (-a).exp());
      break;
  }
}

// Runs fn(row, first_col, count) over [rows x cols] in tasks of at most kEpilogueChunk columns,
// split across OpenMP threads when the work pays for it: every elementwise pass's loop.
template <class Fn>
void for_each_chunk(index_t rows, index_t cols, index_t cost_per_element, Fn&& fn) {
  const index_t chunks_per_row = (cols + kEpilogueChunk - 1) / kEpilogueChunk;
  const index_t chunk = std::min<index_t>(cols, kEpilogueChunk);
  parallel_for(rows * chunks_per_row, cost_per_element * chunk, [&](std::int64_t task) {
    const index_t r = task / chunks_per_row;
    const index_t c0 = (task % chunks_per_row) * kEpilogueChunk;
    fn(r, c0, std::min(kEpilogueChunk, cols - c0));
  });
}

}  // namespace detail

// h = act(h + bias) in place, bias: [h.cols] or null.
template <class T>
void bias_activation_inplace(const MatrixView<T>& h, const T* bias, Activation act) {
  if (!bias && act == Activation::kIdentity) return;
  detail::for_each_chunk(h.rows, h.cols, 1, [&](index_t r, index_t c0, index_t n) {
    detail::bias_activation_run(h.row(r) + c0, bias ? bias + c0 : nullptr, n, act);
  });
}

// SwiGLU's gate: for a [rows x 2F] buffer holding (gate | up) per row, writes
// silu(gate + bg) * (up + bu) into the gate half, so the next GEMM reads it with row stride 2F.
template <class T>
void swiglu_inplace(const MatrixView<T>& gate_up, const T* gate_bias, const T* up_bias) {
  const index_t f = gate_up.cols / 2;
  detail::for_each_chunk(gate_up.rows, f, 2, [&](index_t r, index_t c0, index_t n) {
    T* g = gate_up.row(r) + c0;
    T* u = gate_up.row(r) + f + c0;
    detail::bias_activation_run(g, gate_bias ? gate_bias + c0 : nullptr, n, Activation::kSilu);
    detail::ArrayMap<T> ga(g, n);
    detail::ArrayMap<T> ua(u, n);
    if (up_bias) {
      ga *= ua + detail::ConstArrayMap<T>(up_bias + c0, n);
    } else {
      ga *= ua;
    }
  });
}

namespace detail {

// g *= act'(pre) on one contiguous run, vectorized with the same formulas as
// core/activation.hpp's grad().
template <class T>
void multiply_activation_grad_run(T* g, const T* pre, index_t n, Activation act) {
  ArrayMap<T> ga(g, n);
  ConstArrayMap<T> x(pre, n);
  switch (act) {
    case Activation::kIdentity:
      break;
    case Activation::kRelu:
      ga = (x > T(0)).select(ga, T(0));
      break;
    case Activation::kGeluTanh: {
      const T k0 = T(GeluTanhFn::kSqrt2OverPi), k1 = T(GeluTanhFn::kCubic);
      const auto s = (T(1) + (T(-2) * k0 * (x + k1 * x * x * x)).exp()).inverse().eval();
      const auto du = (k0 * (T(1) + T(3) * k1 * x * x)).eval();
      ga *= s + T(2) * x * s * (T(1) - s) * du;
      break;
    }
    case Activation::kGeluErf: {
      const GeluErfFn fn;
      for (index_t i = 0; i < n; ++i) g[i] *= fn.grad(pre[i]);
      break;
    }
    case Activation::kSilu: {
      const auto s = (T(1) + (-x).exp()).inverse().eval();
      ga *= s * (T(1) + x * (T(1) - s));
      break;
    }
  }
}

}  // namespace detail

// g *= act'(pre) elementwise over [rows x cols] (both contiguous views of the same shape): the
// activation's backward in an FFN, threaded and vectorized like the forward epilogue.
template <class T>
void multiply_activation_grad(const MatrixView<T>& g, const MatrixView<const T>& pre,
                              Activation act) {
  if (act == Activation::kIdentity) return;
  detail::for_each_chunk(g.rows, g.cols, 1, [&](index_t r, index_t c0, index_t n) {
    detail::multiply_activation_grad_run(g.row(r) + c0, pre.row(r) + c0, n, act);
  });
}

}  // namespace cpu
}  // namespace ffnkit
