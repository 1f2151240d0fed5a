// Float64 oracles for the deferred-normalization layers (docs/math.md §7), computed the plain
// unfused way: normalize each token in double (two-pass mean and variance), then the product.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace reference {

// y[t] = W (γ ⊙ norm(x[t]) + β) + b, with norm = x r (RMSNorm) or (x − μ) r (LayerNorm).
// x: [tokens x n] packed, W: [m x n] row-major; gamma/beta/bias may be empty (1, 0, 0).
inline std::vector<double> norm_linear(
    bool layer_norm, const std::vector<double>& x, index_t tokens, index_t n, index_t m,
    const std::vector<double>& gamma, const std::vector<double>& beta, const std::vector<double>& w,
    const std::vector<double>& bias, double eps, std::vector<double>* normalized = nullptr) {
  std::vector<double> y(static_cast<std::size_t>(tokens * m));
  std::vector<double> xn(static_cast<std::size_t>(n));
  if (normalized) normalized->assign(static_cast<std::size_t>(tokens * n), 0.0);
  for (index_t t = 0; t < tokens; ++t) {
    const double* xr = x.data() + t * n;
    double mean = 0;
    if (layer_norm) {
      for (index_t j = 0; j < n; ++j) mean += xr[j];
      mean /= static_cast<double>(n);
    }
    double ss = 0;
    for (index_t j = 0; j < n; ++j) ss += (xr[j] - mean) * (xr[j] - mean);
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
    for (index_t j = 0; j < n; ++j) {
      xn[j] =
          (xr[j] - mean) * r * (gamma.empty() ? 1.0 : gamma[j]) + (beta.empty() ? 0.0 : beta[j]);
      if (normalized) (*normalized)[t * n + j] = xn[j];
    }
    for (index_t i = 0; i < m; ++i) {
      double acc = bias.empty() ? 0.0 : bias[i];
      const double* wr = w.data() + i * n;
      for (index_t j = 0; j < n; ++j) acc += wr[j] * xn[j];
      y[t * m + i] = acc;
    }
  }
  return y;
}

// y[q] = softmax(s[q] + mask[q]) V. s, mask: [queries x keys] packed (mask may be empty), V:
// [keys x dim]. A row whose every score is −inf gives zeros.
inline std::vector<double> softmax_v(const std::vector<double>& s, const std::vector<double>& mask,
                                     index_t queries, index_t keys, const std::vector<double>& v,
                                     index_t dim) {
  std::vector<double> y(static_cast<std::size_t>(queries * dim), 0.0);
  std::vector<double> p(static_cast<std::size_t>(keys));
  for (index_t q = 0; q < queries; ++q) {
    double mx = -std::numeric_limits<double>::infinity();
    for (index_t k = 0; k < keys; ++k) {
      p[k] = s[q * keys + k] + (mask.empty() ? 0.0 : mask[q * keys + k]);
      mx = std::max(mx, p[k]);
    }
    if (mx == -std::numeric_limits<double>::infinity()) continue;
    double sum = 0;
    for (index_t k = 0; k < keys; ++k) sum += (p[k] = std::exp(p[k] - mx));
    for (index_t k = 0; k < keys; ++k) {
      const double pk = p[k] / sum;
      for (index_t j = 0; j < dim; ++j) y[q * dim + j] += pk * v[k * dim + j];
    }
  }
  return y;
}

}  // namespace reference
}  // namespace ffnkit
