// Seeded initialisers of the structured layers (docs/math.md §3.9), computed in double on the
// host for every backend and rounded once to the layer's scalar. Both go through the
// eigen-decomposition of the smaller Gram matrix, which is exact for the well-conditioned Gaussian
// matrices drawn here and costs O(max·min² + min³) instead of a full SVD (seconds instead of
// minutes at d = 2048).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/rng.hpp"
#include "ffnkit/detail/eigen.hpp"

FFNKIT_GCC_PR105593_BEGIN
#include <Eigen/Eigenvalues>
FFNKIT_GCC_PR105593_END

namespace ffnkit {
namespace detail {

inline MatrixXdRow gaussian(index_t rows, index_t cols, std::uint64_t seed, double stddev) {
  MatrixXdRow g(rows, cols);
  fill_normal(g.data(), rows * cols, seed, 0.0, stddev);
  return g;
}

// Spectral init of a rank-R factorization W ≈ U V (docs/math.md §3.2): draw W ~ N(0, stddev²) [M x
// N], take its SVD W = P S Qᵀ, and return V = sqrt(S_R) Q_Rᵀ [R x N] and U = P_R sqrt(S_R) [M x R],
// so U V is the best rank-R approximation of W.
inline void spectral_factors(index_t m, index_t n, index_t rank, std::uint64_t seed, double stddev,
                             MatrixXdRow* u, MatrixXdRow* v) {
  const MatrixXdRow w = gaussian(m, n, seed, stddev);
  const bool tall = m >= n;
  // Eigenvectors of the smaller Gram matrix are the singular vectors on that side.
  const Eigen::MatrixXd gram =
      tall ? Eigen::MatrixXd(w.transpose() * w) : Eigen::MatrixXd(w * w.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
  if (eig.info() != Eigen::Success) fail("spectral_factors", "eigen-decomposition failed");
  const index_t k = gram.rows();
  *u = MatrixXdRow(m, rank);
  *v = MatrixXdRow(rank, n);
  for (index_t r = 0; r < rank; ++r) {
    const index_t col = k - 1 - r;  // eigenvalues ascend; take the largest first
    const double s2 = std::max(eig.eigenvalues()(col), 0.0);
    const double s = std::sqrt(s2);
    const Eigen::VectorXd side = eig.eigenvectors().col(col);  // unit singular vector
    // The other side's singular vector is W q / s (or Wᵀ p / s); s > 0 for Gaussian draws.
    const Eigen::VectorXd other =
        tall ? Eigen::VectorXd(w * side / s) : Eigen::VectorXd(w.transpose() * side / s);
    const double root = std::sqrt(s);
    const Eigen::VectorXd q = tall ? side : other;  // right singular vector (length n)
    const Eigen::VectorXd p = tall ? other : side;  // left singular vector (length m)
    v->row(r) = root * q.transpose();
    u->col(r) = root * p;
  }
}

// A matrix with orthonormal rows or columns (whichever are fewer): the polar factor P Qᵀ of a
// Gaussian draw G = P S Qᵀ (docs/math.md §3.4's "U Vh of its own SVD").
inline MatrixXdRow orthonormal(index_t rows, index_t cols, std::uint64_t seed) {
  const MatrixXdRow g = gaussian(rows, cols, seed, 1.0);
  const bool tall = rows >= cols;
  const Eigen::MatrixXd gram =
      tall ? Eigen::MatrixXd(g.transpose() * g) : Eigen::MatrixXd(g * g.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
  if (eig.info() != Eigen::Success) fail("orthonormal", "eigen-decomposition failed");
  // (GᵀG)^(-1/2), then G (GᵀG)^(-1/2) = P Qᵀ (tall); symmetric for wide.
  const Eigen::VectorXd inv_sqrt = eig.eigenvalues().cwiseMax(1e-300).cwiseSqrt().cwiseInverse();
  const Eigen::MatrixXd root =
      eig.eigenvectors() * inv_sqrt.asDiagonal() * eig.eigenvectors().transpose();
  return tall ? MatrixXdRow(g * root) : MatrixXdRow(root * g);
}

}  // namespace detail
}  // namespace ffnkit
