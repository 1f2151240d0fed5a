// Naive double-precision oracles for the dense layers (docs/math.md §2). Used by tests and by the
// benchmark table's error column, never by the library itself. Deliberately written with plain
// loops and the textbook formulas, independently of the optimized backends and of core/activation.
#pragma once

#include <cmath>
#include <vector>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace reference {

// In long double, and in the forms that stay accurate for x << 0: 0.5 x (1 + tanh(u)) equals
// x / (1 + exp(-2u)), and 0.5 x (1 + erf(z)) equals 0.5 x erfc(-z); the left-hand forms lose every
// digit in the negative tail (1 + tanh(u) rounds to 0 long before GELU(x) underflows).
inline double activation(Activation a, double xd) {
  const long double pi = 3.141592653589793238462643383279502884L;
  const long double x = xd;
  switch (a) {
    case Activation::kIdentity:
      return xd;
    case Activation::kRelu:
      return xd > 0.0 ? xd : 0.0;
    case Activation::kGeluTanh:
      return static_cast<double>(
          x / (1.0L + std::exp(-2.0L * std::sqrt(2.0L / pi) * (x + 0.044715L * x * x * x))));
    case Activation::kGeluErf:
      return static_cast<double>(0.5L * x * std::erfc(-x / std::sqrt(2.0L)));
    case Activation::kSilu:
      return static_cast<double>(x / (1.0L + std::exp(-x)));
  }
  fail("reference::activation", "activation = ", static_cast<int>(a), " is unknown");
}

// y[t, m] = sum_n x[t, n] w[m, n] + b[m], with x: [tokens x in], w: [out x in] (PyTorch layout),
// b: [out] or null. Returns [tokens x out] row-major.
inline std::vector<double> linear(const double* x, index_t tokens, index_t in, const double* w,
                                  const double* b, index_t out) {
  std::vector<double> y(static_cast<std::size_t>(tokens * out));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t m = 0; m < out; ++m) {
      double acc = b ? b[m] : 0.0;
      for (index_t n = 0; n < in; ++n) acc += x[t * in + n] * w[m * in + n];
      y[t * out + m] = acc;
    }
  }
  return y;
}

inline void apply_activation(Activation a, std::vector<double>& v) {
  for (double& e : v) e = activation(a, e);
}

// y = W2 act(W1 x + b1) + b2 (docs/math.md §2). w1: [d_ff x d_in], w2: [d_out x d_ff].
inline std::vector<double> ffn(const double* x, index_t tokens, index_t d_in, const double* w1,
                               const double* b1, index_t d_ff, Activation act, const double* w2,
                               const double* b2, index_t d_out) {
  std::vector<double> h = linear(x, tokens, d_in, w1, b1, d_ff);
  apply_activation(act, h);
  return linear(h.data(), tokens, d_ff, w2, b2, d_out);
}

// y = W2 (SiLU(Wg x + bg) * (Wu x + bu)) + b2 (docs/math.md §2; biases optional, LLaMA has none).
inline std::vector<double> swiglu_ffn(const double* x, index_t tokens, index_t d_in,
                                      const double* wg, const double* bg, const double* wu,
                                      const double* bu, index_t d_ff, const double* w2,
                                      const double* b2, index_t d_out) {
  std::vector<double> g = linear(x, tokens, d_in, wg, bg, d_ff);
  const std::vector<double> u = linear(x, tokens, d_in, wu, bu, d_ff);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = activation(Activation::kSilu, g[i]) * u[i];
  return linear(g.data(), tokens, d_ff, w2, b2, d_out);
}

}  // namespace reference
}  // namespace ffnkit
