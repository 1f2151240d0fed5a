// Naive double-precision oracle of the fast feedforward layer (docs/math.md §6), used by the tests
// only. Written from the spec's pseudo-code with plain loops, independently of the optimized
// backends: per token and tree, walk from the root, λ = <x, w_in[n]> + b_in[n], y += GELU(λ)
// w_out[n], n = 2n + 1 + (λ > 0).
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

}  // namespace reference
}  // namespace ffnkit
