// Naive double-precision oracles for the structured linear layers (docs/math.md §3): forward,
// backward and materialize() for LowRank, BlockDiagonal, BlockDense and BlockShuffle (Monarch).
// Used by tests only, never by the library. Written with plain loops and the index formulas taken
// straight from docs/math.md §3, independently of the optimized backends, so that a shared mistake
// in an index formula cannot make an optimized layer agree with its own oracle.
//
// Layouts (PyTorch's, docs/math.md §1 notation): activations x are packed row-major [tokens x N],
// outputs [tokens x M]; every weight factor is packed row-major in the shape given at each
// function; a null bias pointer means "no bias".
//
// The backward functions take dy = dL/dy for a scalar loss L and return the gradients of L with
// respect to x, to each weight factor (same order and layout as the forward's arguments) and to
// the bias. They are derived by the chain rule through the same intermediates as the forward.
#pragma once

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace reference {

// Gradients returned by the *_backward oracles. `factors` follows the forward's weight arguments:
//   LowRank {dv, du}, BlockDiagonal {dw}, BlockDense {dv, du}, BlockShuffle {dw1, dw2}.
// `db` = sum over tokens of dy (size M), or empty when the layer has no bias.
struct StructuredGrads {
  std::vector<double> dx;
  std::vector<std::vector<double>> factors;
  std::vector<double> db;
};

namespace detail {

inline std::size_t sz(index_t v) { return static_cast<std::size_t>(v); }

inline void check_tokens(const char* where, index_t tokens) {
  if (tokens < 0) fail(where, "tokens = ", tokens, ", must be >= 0");
}

// An activation pointer may only be null when there is nothing to read.
inline void check_activation(const char* where, const char* name, const void* p, index_t tokens) {
  if (tokens > 0) check_not_null(where, name, p);
}

inline void check_rank(const char* where, index_t rank, index_t n, index_t m) {
  check_positive(where, "rank", rank);
  // rank == min(n, m) is accepted, as by the layers (the official BlockDense module allows it).
  if (rank > std::min(n, m))
    fail(where, "rank = ", rank, " exceeds min(n, m) = ", std::min(n, m), " (n = ", n, ", m = ", m,
         ")");
}

inline std::vector<double> bias_grad(const double* dy, index_t tokens, index_t m, bool has_bias) {
  std::vector<double> db;
  if (!has_bias) return db;
  db.assign(sz(m), 0.0);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t i = 0; i < m; ++i) db[sz(i)] += dy[t * m + i];
  return db;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// LowRank (docs/math.md §3.2): y = U (V x) + b, with v = V: [R x N], u = U: [M x R].
// ---------------------------------------------------------------------------------------------

inline std::vector<double> lowrank_forward(const double* x, index_t tokens, index_t n,
                                           const double* v, const double* u, index_t rank,
                                           const double* bias, index_t m) {
  const char* where = "reference::lowrank_forward";
  detail::check_tokens(where, tokens);
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  detail::check_rank(where, rank, n, m);
  detail::check_activation(where, "x", x, tokens);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  std::vector<double> y(detail::sz(tokens * m));
  std::vector<double> h(detail::sz(rank));
  for (index_t t = 0; t < tokens; ++t) {
    // h = V x: the rank-R bottleneck.
    for (index_t r = 0; r < rank; ++r) {
      double acc = 0.0;
      for (index_t j = 0; j < n; ++j) acc += v[r * n + j] * x[t * n + j];
      h[detail::sz(r)] = acc;
    }
    // y = U h + b.
    for (index_t i = 0; i < m; ++i) {
      double acc = bias ? bias[i] : 0.0;
      for (index_t r = 0; r < rank; ++r) acc += u[i * rank + r] * h[detail::sz(r)];
      y[detail::sz(t * m + i)] = acc;
    }
  }
  return y;
}

// W = U V: [M x N], so that lowrank_forward(x) == W x + b.
inline std::vector<double> lowrank_materialize(const double* v, const double* u, index_t n,
                                               index_t rank, index_t m) {
  const char* where = "reference::lowrank_materialize";
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  detail::check_rank(where, rank, n, m);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  std::vector<double> w(detail::sz(m * n));
  for (index_t i = 0; i < m; ++i) {
    for (index_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (index_t r = 0; r < rank; ++r) acc += u[i * rank + r] * v[r * n + j];
      w[detail::sz(i * n + j)] = acc;
    }
  }
  return w;
}

// With h = V x per token:  du[i][r] = Σ_t dy[t][i] h[t][r];  dh = Uᵀ dy;
//                          dv[r][j] = Σ_t dh[t][r] x[t][j];  dx = Vᵀ dh.
inline StructuredGrads lowrank_backward(const double* x, const double* dy, index_t tokens,
                                        index_t n, const double* v, const double* u, index_t rank,
                                        index_t m, bool has_bias) {
  const char* where = "reference::lowrank_backward";
  detail::check_tokens(where, tokens);
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  detail::check_rank(where, rank, n, m);
  detail::check_activation(where, "x", x, tokens);
  detail::check_activation(where, "dy", dy, tokens);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  StructuredGrads g;
  g.dx.assign(detail::sz(tokens * n), 0.0);
  std::vector<double> dv(detail::sz(rank * n), 0.0);
  std::vector<double> du(detail::sz(m * rank), 0.0);
  std::vector<double> h(detail::sz(rank)), dh(detail::sz(rank));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t r = 0; r < rank; ++r) {
      double acc = 0.0;
      for (index_t j = 0; j < n; ++j) acc += v[r * n + j] * x[t * n + j];
      h[detail::sz(r)] = acc;
    }
    for (index_t i = 0; i < m; ++i)
      for (index_t r = 0; r < rank; ++r)
        du[detail::sz(i * rank + r)] += dy[t * m + i] * h[detail::sz(r)];
    for (index_t r = 0; r < rank; ++r) {
      double acc = 0.0;
      for (index_t i = 0; i < m; ++i) acc += u[i * rank + r] * dy[t * m + i];
      dh[detail::sz(r)] = acc;
    }
    for (index_t r = 0; r < rank; ++r)
      for (index_t j = 0; j < n; ++j) dv[detail::sz(r * n + j)] += dh[detail::sz(r)] * x[t * n + j];
    for (index_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (index_t r = 0; r < rank; ++r) acc += v[r * n + j] * dh[detail::sz(r)];
      g.dx[detail::sz(t * n + j)] = acc;
    }
  }
  g.factors.push_back(std::move(dv));
  g.factors.push_back(std::move(du));
  g.db = detail::bias_grad(dy, tokens, m, has_bias);
  return g;
}

// ---------------------------------------------------------------------------------------------
// BlockDiagonal (docs/math.md §3.3): B independent blocks W_b: [M/B x N/B], y_b = W_b x_b (+ b).
// w: [B, M/B, N/B]; block b, row i, col j at w[(b*(M/B) + i)*(N/B) + j]. x_b = x[b*N/B ..),
// y_b = y[b*M/B ..).
// ---------------------------------------------------------------------------------------------

namespace detail {
inline void check_block_diagonal(const char* where, index_t n, index_t blocks, index_t m) {
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  // docs/math.md §3.3: B must divide both N and M.
  check_divides(where, "blocks", blocks, "n", n);
  check_divides(where, "blocks", blocks, "m", m);
}
}  // namespace detail

inline std::vector<double> block_diagonal_forward(const double* x, index_t tokens, index_t n,
                                                  const double* w, index_t blocks,
                                                  const double* bias, index_t m) {
  const char* where = "reference::block_diagonal_forward";
  detail::check_tokens(where, tokens);
  detail::check_block_diagonal(where, n, blocks, m);
  detail::check_activation(where, "x", x, tokens);
  check_not_null(where, "w", w);

  const index_t nb = n / blocks, mb = m / blocks;
  std::vector<double> y(detail::sz(tokens * m));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < mb; ++i) {
        double acc = bias ? bias[k * mb + i] : 0.0;
        for (index_t j = 0; j < nb; ++j) acc += w[(k * mb + i) * nb + j] * x[t * n + k * nb + j];
        y[detail::sz(t * m + k * mb + i)] = acc;
      }
    }
  }
  return y;
}

// Dense [M x N]: block k sits at rows [k*M/B, (k+1)*M/B), cols [k*N/B, (k+1)*N/B); zeros elsewhere.
inline std::vector<double> block_diagonal_materialize(const double* w, index_t n, index_t blocks,
                                                      index_t m) {
  const char* where = "reference::block_diagonal_materialize";
  detail::check_block_diagonal(where, n, blocks, m);
  check_not_null(where, "w", w);

  const index_t nb = n / blocks, mb = m / blocks;
  std::vector<double> dense(detail::sz(m * n), 0.0);
  for (index_t k = 0; k < blocks; ++k)
    for (index_t i = 0; i < mb; ++i)
      for (index_t j = 0; j < nb; ++j)
        dense[detail::sz((k * mb + i) * n + k * nb + j)] = w[(k * mb + i) * nb + j];
  return dense;
}

// Per block: dw_b = Σ_t dy_b x_bᵀ;  dx_b = W_bᵀ dy_b.
inline StructuredGrads block_diagonal_backward(const double* x, const double* dy, index_t tokens,
                                               index_t n, const double* w, index_t blocks,
                                               index_t m, bool has_bias) {
  const char* where = "reference::block_diagonal_backward";
  detail::check_tokens(where, tokens);
  detail::check_block_diagonal(where, n, blocks, m);
  detail::check_activation(where, "x", x, tokens);
  detail::check_activation(where, "dy", dy, tokens);
  check_not_null(where, "w", w);

  const index_t nb = n / blocks, mb = m / blocks;
  StructuredGrads g;
  g.dx.assign(detail::sz(tokens * n), 0.0);
  std::vector<double> dw(detail::sz(blocks * mb * nb), 0.0);
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < mb; ++i) {
        const double d = dy[t * m + k * mb + i];
        for (index_t j = 0; j < nb; ++j) {
          dw[detail::sz((k * mb + i) * nb + j)] += d * x[t * n + k * nb + j];
          g.dx[detail::sz(t * n + k * nb + j)] += w[(k * mb + i) * nb + j] * d;
        }
      }
    }
  }
  g.factors.push_back(std::move(dw));
  g.db = detail::bias_grad(dy, tokens, m, has_bias);
  return g;
}

// ---------------------------------------------------------------------------------------------
// BlockDense (docs/math.md §3.4): y = U (blockdiag(V_1..V_B) x) + b, no shuffle between the stages.
// v: [B, R/B, N/B] (block k maps x_k = x[k*N/B ..) to h[k*R/B ..)), u = U: [M x R].
// ---------------------------------------------------------------------------------------------

namespace detail {
inline void check_block_dense(const char* where, index_t n, index_t blocks, index_t rank,
                              index_t m) {
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  detail::check_rank(where, rank, n, m);
  // The block-diagonal stage splits N into B inputs and R into B outputs; U is dense, so M is free.
  check_divides(where, "blocks", blocks, "n", n);
  check_divides(where, "blocks", blocks, "rank", rank);
}
}  // namespace detail

inline std::vector<double> block_dense_forward(const double* x, index_t tokens, index_t n,
                                               const double* v, index_t blocks, index_t rank,
                                               const double* u, const double* bias, index_t m) {
  const char* where = "reference::block_dense_forward";
  detail::check_tokens(where, tokens);
  detail::check_block_dense(where, n, blocks, rank, m);
  detail::check_activation(where, "x", x, tokens);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  const index_t nb = n / blocks, rb = rank / blocks;
  std::vector<double> y(detail::sz(tokens * m));
  std::vector<double> h(detail::sz(rank));
  for (index_t t = 0; t < tokens; ++t) {
    // h = blockdiag(V_1..V_B) x.
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < rb; ++i) {
        double acc = 0.0;
        for (index_t j = 0; j < nb; ++j) acc += v[(k * rb + i) * nb + j] * x[t * n + k * nb + j];
        h[detail::sz(k * rb + i)] = acc;
      }
    }
    // y = U h + b.
    for (index_t i = 0; i < m; ++i) {
      double acc = bias ? bias[i] : 0.0;
      for (index_t r = 0; r < rank; ++r) acc += u[i * rank + r] * h[detail::sz(r)];
      y[detail::sz(t * m + i)] = acc;
    }
  }
  return y;
}

// W[i][k*N/B + j] = Σ_{r < R/B} U[i][k*R/B + r] V_k[r][j]: column block k of W only sees the
// columns of U that block k of the first stage feeds.
inline std::vector<double> block_dense_materialize(const double* v, const double* u, index_t n,
                                                   index_t blocks, index_t rank, index_t m) {
  const char* where = "reference::block_dense_materialize";
  detail::check_block_dense(where, n, blocks, rank, m);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  const index_t nb = n / blocks, rb = rank / blocks;
  std::vector<double> w(detail::sz(m * n));
  for (index_t i = 0; i < m; ++i) {
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t j = 0; j < nb; ++j) {
        double acc = 0.0;
        for (index_t r = 0; r < rb; ++r) acc += u[i * rank + k * rb + r] * v[(k * rb + r) * nb + j];
        w[detail::sz(i * n + k * nb + j)] = acc;
      }
    }
  }
  return w;
}

// With h = blockdiag(V) x per token:  du[i][r] = Σ_t dy[t][i] h[t][r];  dh = Uᵀ dy;
// dv_k[i][j] = Σ_t dh[t][k*R/B + i] x[t][k*N/B + j];  dx_k = V_kᵀ dh_k.
inline StructuredGrads block_dense_backward(const double* x, const double* dy, index_t tokens,
                                            index_t n, const double* v, index_t blocks,
                                            index_t rank, const double* u, index_t m,
                                            bool has_bias) {
  const char* where = "reference::block_dense_backward";
  detail::check_tokens(where, tokens);
  detail::check_block_dense(where, n, blocks, rank, m);
  detail::check_activation(where, "x", x, tokens);
  detail::check_activation(where, "dy", dy, tokens);
  check_not_null(where, "v", v);
  check_not_null(where, "u", u);

  const index_t nb = n / blocks, rb = rank / blocks;
  StructuredGrads g;
  g.dx.assign(detail::sz(tokens * n), 0.0);
  std::vector<double> dv(detail::sz(blocks * rb * nb), 0.0);
  std::vector<double> du(detail::sz(m * rank), 0.0);
  std::vector<double> h(detail::sz(rank)), dh(detail::sz(rank));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < rb; ++i) {
        double acc = 0.0;
        for (index_t j = 0; j < nb; ++j) acc += v[(k * rb + i) * nb + j] * x[t * n + k * nb + j];
        h[detail::sz(k * rb + i)] = acc;
      }
    }
    for (index_t i = 0; i < m; ++i)
      for (index_t r = 0; r < rank; ++r)
        du[detail::sz(i * rank + r)] += dy[t * m + i] * h[detail::sz(r)];
    for (index_t r = 0; r < rank; ++r) {
      double acc = 0.0;
      for (index_t i = 0; i < m; ++i) acc += u[i * rank + r] * dy[t * m + i];
      dh[detail::sz(r)] = acc;
    }
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < rb; ++i) {
        const double d = dh[detail::sz(k * rb + i)];
        for (index_t j = 0; j < nb; ++j) {
          dv[detail::sz((k * rb + i) * nb + j)] += d * x[t * n + k * nb + j];
          g.dx[detail::sz(t * n + k * nb + j)] += v[(k * rb + i) * nb + j] * d;
        }
      }
    }
  }
  g.factors.push_back(std::move(dv));
  g.factors.push_back(std::move(du));
  g.db = detail::bias_grad(dy, tokens, m, has_bias);
  return g;
}

// ---------------------------------------------------------------------------------------------
// BlockShuffle / Monarch (docs/math.md §3.5). q = min(N, M)/B is stage 1's block output width.
//   w1: [B, q, N/B]    stage 1: z[k*q + i] = Σ_j w1[k][i][j] x[k*N/B + j]
//   w2: [B, M/B, q]    stage 2: v_k[s] = Σ_r w2[k][s][r] u_k[r], with u_k[r] = z[r*B + k]
//                      output:  y[s*B + k] = v_k[s] (+ b)
// This is Monarch's blockdiag_butterfly_multiply with stage 1 (k=B, q, p=N/B) and stage 2
// (l=B, s=M/B, r=q): its rearranges 'b (r l) -> b l r' and 'b s l -> b (s l)' are exactly the two
// index maps below. Both maps live in one place so forward, backward and materialize agree.
// ---------------------------------------------------------------------------------------------

// docs/math.md §3.5: "Stage-2 block b takes as its input the elements b, b+B, b+2B, …" of the
// flattened stage-1 output, so its r-th input is element r*B + b.
inline index_t shuffle_input_index(index_t block, index_t r, index_t blocks) {
  return r * blocks + block;
}

// docs/math.md §3.5: "Element s of stage-2 block b's output goes to position s·B + b" of the
// output.
inline index_t shuffle_output_index(index_t block, index_t s, index_t blocks) {
  return s * blocks + block;
}

namespace detail {
inline void check_block_shuffle(const char* where, index_t n, index_t blocks, index_t m) {
  check_positive(where, "n", n);
  check_positive(where, "m", m);
  // B must divide the stage-1 input width N and the stage-2 output width M; q = min(N, M)/B is then
  // integral too, since min(N, M) is one of the two.
  check_divides(where, "blocks", blocks, "n", n);
  check_divides(where, "blocks", blocks, "m", m);
}
}  // namespace detail

inline std::vector<double> block_shuffle_forward(const double* x, index_t tokens, index_t n,
                                                 const double* w1, const double* w2, index_t blocks,
                                                 const double* bias, index_t m) {
  const char* where = "reference::block_shuffle_forward";
  detail::check_tokens(where, tokens);
  detail::check_block_shuffle(where, n, blocks, m);
  detail::check_activation(where, "x", x, tokens);
  check_not_null(where, "w1", w1);
  check_not_null(where, "w2", w2);

  const index_t nb = n / blocks, mb = m / blocks, q = std::min(n, m) / blocks;
  std::vector<double> y(detail::sz(tokens * m));
  std::vector<double> z(detail::sz(blocks * q));
  for (index_t t = 0; t < tokens; ++t) {
    // Stage 1: block k maps x[k*N/B ..) to z[k*q ..).
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < q; ++i) {
        double acc = 0.0;
        for (index_t j = 0; j < nb; ++j) acc += w1[(k * q + i) * nb + j] * x[t * n + k * nb + j];
        z[detail::sz(k * q + i)] = acc;
      }
    }
    // Stage 2 reads z through the input shuffle and writes y through the output shuffle.
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t s = 0; s < mb; ++s) {
        double acc = 0.0;
        for (index_t r = 0; r < q; ++r)
          acc += w2[(k * mb + s) * q + r] * z[detail::sz(shuffle_input_index(k, r, blocks))];
        const index_t o = shuffle_output_index(k, s, blocks);
        y[detail::sz(t * m + o)] = acc + (bias ? bias[o] : 0.0);
      }
    }
  }
  return y;
}

// Dense [M x N]: W[s*B + k][c*N/B + j] = Σ_r w2[k][s][r] w1[c][i][j], where stage-1 element
// r*B + k = c*q + i (i.e. the path x_j -> z[c*q + i] -> u_k[r] -> y[s*B + k]).
inline std::vector<double> block_shuffle_materialize(const double* w1, const double* w2, index_t n,
                                                     index_t blocks, index_t m) {
  const char* where = "reference::block_shuffle_materialize";
  detail::check_block_shuffle(where, n, blocks, m);
  check_not_null(where, "w1", w1);
  check_not_null(where, "w2", w2);

  const index_t nb = n / blocks, mb = m / blocks, q = std::min(n, m) / blocks;
  std::vector<double> w(detail::sz(m * n), 0.0);
  for (index_t k = 0; k < blocks; ++k) {
    for (index_t s = 0; s < mb; ++s) {
      const index_t row = shuffle_output_index(k, s, blocks);
      for (index_t r = 0; r < q; ++r) {
        const index_t zi = shuffle_input_index(k, r, blocks);
        const index_t c = zi / q, i = zi % q;  // stage-1 block and row that produce z[zi]
        for (index_t j = 0; j < nb; ++j)
          w[detail::sz(row * n + c * nb + j)] +=
              w2[(k * mb + s) * q + r] * w1[(c * q + i) * nb + j];
      }
    }
  }
  return w;
}

// Chain rule back through the forward's intermediates, per token:
//   dv_k[s] = dy[s*B + k];  dw2[k][s][r] += dv_k[s] u_k[r];  du_k[r] = Σ_s w2[k][s][r] dv_k[s];
//   dz[r*B + k] = du_k[r] (the shuffle is a permutation, so its adjoint is the same index map);
//   dw1[c][i][j] += dz[c*q + i] x[c*N/B + j];  dx[c*N/B + j] = Σ_i w1[c][i][j] dz[c*q + i].
inline StructuredGrads block_shuffle_backward(const double* x, const double* dy, index_t tokens,
                                              index_t n, const double* w1, const double* w2,
                                              index_t blocks, index_t m, bool has_bias) {
  const char* where = "reference::block_shuffle_backward";
  detail::check_tokens(where, tokens);
  detail::check_block_shuffle(where, n, blocks, m);
  detail::check_activation(where, "x", x, tokens);
  detail::check_activation(where, "dy", dy, tokens);
  check_not_null(where, "w1", w1);
  check_not_null(where, "w2", w2);

  const index_t nb = n / blocks, mb = m / blocks, q = std::min(n, m) / blocks;
  StructuredGrads g;
  g.dx.assign(detail::sz(tokens * n), 0.0);
  std::vector<double> dw1(detail::sz(blocks * q * nb), 0.0);
  std::vector<double> dw2(detail::sz(blocks * mb * q), 0.0);
  std::vector<double> z(detail::sz(blocks * q)), dz(detail::sz(blocks * q));
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t i = 0; i < q; ++i) {
        double acc = 0.0;
        for (index_t j = 0; j < nb; ++j) acc += w1[(k * q + i) * nb + j] * x[t * n + k * nb + j];
        z[detail::sz(k * q + i)] = acc;
      }
    }
    std::fill(dz.begin(), dz.end(), 0.0);
    for (index_t k = 0; k < blocks; ++k) {
      for (index_t s = 0; s < mb; ++s) {
        const double d = dy[t * m + shuffle_output_index(k, s, blocks)];
        for (index_t r = 0; r < q; ++r) {
          const std::size_t zi = detail::sz(shuffle_input_index(k, r, blocks));
          dw2[detail::sz((k * mb + s) * q + r)] += d * z[zi];
          dz[zi] += w2[(k * mb + s) * q + r] * d;
        }
      }
    }
    for (index_t c = 0; c < blocks; ++c) {
      for (index_t i = 0; i < q; ++i) {
        const double d = dz[detail::sz(c * q + i)];
        for (index_t j = 0; j < nb; ++j) {
          dw1[detail::sz((c * q + i) * nb + j)] += d * x[t * n + c * nb + j];
          g.dx[detail::sz(t * n + c * nb + j)] += w1[(c * q + i) * nb + j] * d;
        }
      }
    }
  }
  g.factors.push_back(std::move(dw1));
  g.factors.push_back(std::move(dw2));
  g.db = detail::bias_grad(dy, tokens, m, has_bias);
  return g;
}

}  // namespace reference
}  // namespace ffnkit
