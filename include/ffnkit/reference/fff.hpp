// Naive double-precision oracle of the fast feedforward layer (docs/math.md §6), used by the tests
// and the benchmarks' error column only. Written from the spec's pseudo-code with plain loops,
// independently of the optimized backends: per token and tree, walk from the root,
// λ = <x, w_in[n]> + b_in[n], y += GELU(λ) w_out[n], n = 2n + 1 + (λ > 0); and the gradients of
// §6.6 on fixed paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "ffnkit/core/activation.hpp"
#include "ffnkit/core/error.hpp"
#include "ffnkit/reference/dense.hpp"

namespace ffnkit {
namespace reference {

// The weights in PyTorch layout, widened to double: linear_in [K·nodes x N] with bias [K·nodes],
// linear_out [M x K·nodes] without bias.
struct FffWeights {
  index_t in = 0, out = 0, trees = 0, depth = 0;
  std::vector<double> w_in, b_in, w_out;
  index_t nodes() const { return (index_t(2) << depth) - 1; }
};

// The oracle's weights from an FFF layer on any backend, through its host copies in PyTorch
// layout (linear_in_weight_host(), linear_in_bias_host(), linear_out_weight_host()), each element
// widened to double by `widen`.
template <class Layer, class Widen>
FffWeights weights_of(const Layer& f, Widen widen) {
  FffWeights w;
  w.in = f.in_features();
  w.out = f.out_features();
  w.trees = f.trees();
  w.depth = f.depth();
  const auto wide = [&](const auto& v) {
    std::vector<double> d(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) d[i] = widen(v[i]);
    return d;
  };
  w.w_in = wide(f.linear_in_weight_host());
  w.b_in = wide(f.linear_in_bias_host());
  w.w_out = wide(f.linear_out_weight_host());
  return w;
}

// What the oracle routed: per token and tree the leaf (node index inside the tree, heap order) and
// the smallest |λ| met on the way, relative to |x| |w_in[n]|, so a test can tell a path that a
// float rounding could flip from one it cannot.
struct FffRouting {
  std::vector<std::int32_t> leaves;  // [tokens x K]
  std::vector<double> min_margin;    // [tokens x K]
};

// y[t] = Σ_k Σ_d GELU(λ_{k,d}) w_out[:, k·nodes + n_{k,d}], with the path taken either by the
// oracle's own routing (`fixed_leaves == nullptr`) or fixed to the given leaves (for the
// finite-difference checks, which hold the path fixed). Returns [tokens x M].
inline std::vector<double> fff(const FffWeights& w, const double* x, index_t tokens,
                               FffRouting* routing = nullptr,
                               const std::int32_t* fixed_leaves = nullptr) {
  const index_t nodes = w.nodes(), K = w.trees, N = w.in, M = w.out;
  std::vector<double> y(static_cast<std::size_t>(tokens * M), 0.0);
  if (routing) {
    routing->leaves.assign(static_cast<std::size_t>(tokens * K), 0);
    routing->min_margin.assign(static_cast<std::size_t>(tokens * K), INFINITY);
  }
  for (index_t t = 0; t < tokens; ++t) {
    const double* xt = x + t * N;
    double xnorm = 0;
    for (index_t i = 0; i < N; ++i) xnorm += xt[i] * xt[i];
    xnorm = std::sqrt(xnorm);
    for (index_t k = 0; k < K; ++k) {
      // The nodes of a fixed path, root first: the leaf's ancestors.
      std::vector<index_t> path(static_cast<std::size_t>(w.depth + 1));
      if (fixed_leaves) {
        index_t n = fixed_leaves[t * K + k];
        for (index_t d = w.depth; d >= 0; --d) {
          path[d] = n;
          n = (n - 1) / 2;
        }
      }
      index_t n = 0;
      for (index_t d = 0; d <= w.depth; ++d) {
        if (fixed_leaves) n = path[d];
        const index_t row = k * nodes + n;
        // <x, w_in> first, then + b_in, as docs/math.md §6 writes it: a bias far below the terms of
        // the dot (a tie broken by the smallest subnormal) is not absorbed into them.
        double dot = 0, wnorm = 0;
        for (index_t i = 0; i < N; ++i) {
          dot += xt[i] * w.w_in[row * N + i];
          wnorm += w.w_in[row * N + i] * w.w_in[row * N + i];
        }
        const double lambda = dot + w.b_in[row];
        const double g = activation(Activation::kGeluErf, lambda);
        for (index_t m = 0; m < M; ++m) y[t * M + m] += g * w.w_out[m * K * nodes + row];
        if (routing) {
          const double scale = xnorm * std::sqrt(wnorm) + std::abs(w.b_in[row]);
          double& mm = routing->min_margin[t * K + k];
          mm = std::fmin(mm, scale > 0 ? std::abs(lambda) / scale : 0.0);
        }
        if (d < w.depth) n = 2 * n + 1 + (lambda > 0.0 ? 1 : 0);  // a tie (λ == 0) goes left
      }
      if (routing) routing->leaves[t * K + k] = static_cast<std::int32_t>(n);
    }
  }
  return y;
}

// GELU_erf'(z) = Φ(z) + z φ(z), in long double.
inline double gelu_erf_grad(double zd) {
  const long double z = zd, pi = 3.141592653589793238462643383279502884L;
  return static_cast<double>(0.5L * std::erfc(-z / std::sqrt(2.0L)) +
                             z * std::exp(-0.5L * z * z) / std::sqrt(2.0L * pi));
}

// The gradients of L = Σ dy ⊙ y with every path fixed to `leaves` (docs/math.md §6.6): per
// token, tree and level, with ρ the visited row, g = GELU(λ) and δ = <dy, w_out[ρ]> GELU'(λ),
// ∂w_out[ρ] += g dy, ∂w_in[ρ] += δ x, ∂b_in[ρ] += δ, dx += δ w_in[ρ].
struct FffGrads {
  std::vector<double> dx;     // [tokens x N]
  std::vector<double> w_in;   // [K·nodes x N]
  std::vector<double> b_in;   // [K·nodes]
  std::vector<double> w_out;  // [K·nodes x M]: the layer's stored layout, one row per node
};

inline FffGrads fff_backward(const FffWeights& w, const double* x, const double* dy, index_t tokens,
                             const std::int32_t* leaves) {
  const index_t rows = w.trees * w.nodes(), N = w.in, M = w.out;
  FffGrads gr;
  gr.dx.assign(static_cast<std::size_t>(tokens * N), 0.0);
  gr.w_in.assign(static_cast<std::size_t>(rows * N), 0.0);
  gr.b_in.assign(static_cast<std::size_t>(rows), 0.0);
  gr.w_out.assign(static_cast<std::size_t>(rows * M), 0.0);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t k = 0; k < w.trees; ++k)
      for (index_t n = leaves[t * w.trees + k];; n = (n - 1) / 2) {
        const index_t row = k * w.nodes() + n;
        double lambda = 0, back = 0;
        for (index_t i = 0; i < N; ++i) lambda += x[t * N + i] * w.w_in[row * N + i];
        lambda += w.b_in[row];
        for (index_t m = 0; m < M; ++m) back += dy[t * M + m] * w.w_out[m * rows + row];
        const double g = activation(Activation::kGeluErf, lambda);
        const double delta = back * gelu_erf_grad(lambda);
        for (index_t m = 0; m < M; ++m) gr.w_out[row * M + m] += g * dy[t * M + m];
        for (index_t i = 0; i < N; ++i) {
          gr.w_in[row * N + i] += delta * x[t * N + i];
          gr.dx[t * N + i] += delta * w.w_in[row * N + i];
        }
        gr.b_in[row] += delta;
        if (n == 0) break;
      }
  return gr;
}

}  // namespace reference
}  // namespace ffnkit
