// The structured layers (docs/math.md §3) on every backend that has them: forward against two
// independent float64 oracles (the naive per-factor formulas, and the dense forward of the
// layer's own materialize()), backward against the oracle's gradients, against central finite
// differences in double, and against the materialized dense gradient, plus every bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "ffnkit/cpu/eigen.hpp"
FFNKIT_GCC_PR105593_BEGIN
#include <Eigen/SVD>
FFNKIT_GCC_PR105593_END
#include "ffnkit/reference.hpp"
#include "ffnkit/structured.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::GuardedMatrix;

// ---- the float64 oracle for each family, fed from the layer's own parameters --------------------

// A parameter of a layer on backend B, copied to the host in double.
template <class B, class T>
std::vector<double> p64(const ParamView<T>& p) {
  return test::to_double(test::to_host<B>(p.data, p.size));
}
template <class L>
std::vector<double> bias64(L& l) {
  return test::to_double(l.bias_host());
}

template <class T, class B>
std::vector<double> ref_forward(LowRankLinear<T, B>& l, const std::vector<double>& x, index_t t) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]), b = bias64(l);
  return reference::lowrank_forward(x.data(), t, l.in_features(), v.data(), u.data(), l.rank(),
                                    b.empty() ? nullptr : b.data(), l.out_features());
}
template <class T, class B>
std::vector<double> ref_forward(BlockDiagonalLinear<T, B>& l, const std::vector<double>& x,
                                index_t t) {
  auto p = l.params();
  const auto w = p64<B>(p[0]), b = bias64(l);
  return reference::block_diagonal_forward(x.data(), t, l.in_features(), w.data(), l.blocks(),
                                           b.empty() ? nullptr : b.data(), l.out_features());
}
template <class T, class B>
std::vector<double> ref_forward(BlockDenseLinear<T, B>& l, const std::vector<double>& x,
                                index_t t) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]), b = bias64(l);
  return reference::block_dense_forward(x.data(), t, l.in_features(), v.data(), l.blocks(),
                                        l.rank(), u.data(), b.empty() ? nullptr : b.data(),
                                        l.out_features());
}
template <class T, class B>
std::vector<double> ref_forward(BlockShuffleLinear<T, B>& l, const std::vector<double>& x,
                                index_t t) {
  auto p = l.params();
  const auto w1 = p64<B>(p[0]), w2 = p64<B>(p[1]), b = bias64(l);
  return reference::block_shuffle_forward(x.data(), t, l.in_features(), w1.data(), w2.data(),
                                          l.blocks(), b.empty() ? nullptr : b.data(),
                                          l.out_features());
}

template <class T, class B>
reference::StructuredGrads ref_backward(LowRankLinear<T, B>& l, const std::vector<double>& x,
                                        const std::vector<double>& dy, index_t t) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]);
  return reference::lowrank_backward(x.data(), dy.data(), t, l.in_features(), v.data(), u.data(),
                                     l.rank(), l.out_features(), l.has_bias());
}
template <class T, class B>
reference::StructuredGrads ref_backward(BlockDiagonalLinear<T, B>& l, const std::vector<double>& x,
                                        const std::vector<double>& dy, index_t t) {
  auto p = l.params();
  const auto w = p64<B>(p[0]);
  return reference::block_diagonal_backward(x.data(), dy.data(), t, l.in_features(), w.data(),
                                            l.blocks(), l.out_features(), l.has_bias());
}
template <class T, class B>
reference::StructuredGrads ref_backward(BlockDenseLinear<T, B>& l, const std::vector<double>& x,
                                        const std::vector<double>& dy, index_t t) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]);
  return reference::block_dense_backward(x.data(), dy.data(), t, l.in_features(), v.data(),
                                         l.blocks(), l.rank(), u.data(), l.out_features(),
                                         l.has_bias());
}
template <class T, class B>
reference::StructuredGrads ref_backward(BlockShuffleLinear<T, B>& l, const std::vector<double>& x,
                                        const std::vector<double>& dy, index_t t) {
  auto p = l.params();
  const auto w1 = p64<B>(p[0]), w2 = p64<B>(p[1]);
  return reference::block_shuffle_backward(x.data(), dy.data(), t, l.in_features(), w1.data(),
                                           w2.data(), l.blocks(), l.out_features(), l.has_bias());
}

// ---- one instance of every family at a shape
// -----------------------------------------------------

// Calls fn(name, layer) for each family at in = n, out = m with `blocks` blocks (which must divide
// n and m) and a rank that fits every family's constraints.
template <class T, class B = Cpu, class Fn>
void for_each_family(index_t n, index_t m, index_t blocks, std::uint64_t seed, bool bias, Fn&& fn) {
  const index_t small = std::min(n, m);
  const index_t lr_rank = std::max<index_t>(1, small / 3);
  index_t bd_rank = (small - 1) / blocks * blocks;  // below min(n, m), a multiple of blocks
  {
    auto l = LowRankLinear<T, B>::random(n, m, lr_rank, seed, bias);
    fn("LowRank", l);
  }
  {
    auto l = BlockDiagonalLinear<T, B>::random(n, m, blocks, seed, bias);
    fn("BlockDiagonal", l);
  }
  if (bd_rank >= blocks) {
    auto l = BlockDenseLinear<T, B>::random(n, m, blocks, bd_rank, seed, bias);
    fn("BlockDense", l);
  }
  {
    // The largest rank the official module accepts: min(n, m), which `blocks` divides.
    auto l = BlockDenseLinear<T, B>::random(n, m, blocks, small, seed, bias);
    fn("BlockDense rank=min(in,out)", l);
  }
  {
    auto l = BlockShuffleLinear<T, B>::random(n, m, blocks, seed, bias);
    fn("BlockShuffle", l);
  }
}

template <class P>
class StructuredTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
};
using Combos = ::testing::Types<FFNKIT_ALL_COMBOS>;
TYPED_TEST_SUITE(StructuredTest, Combos, test::ComboName);

// What runs on the Cpu backend only (pre-merge's calibration times host code).
template <class P>
class StructuredCpuTest : public StructuredTest<P> {};
using CpuCombos = ::testing::Types<test::Combo<float, Cpu>, test::Combo<double, Cpu>>;
TYPED_TEST_SUITE(StructuredCpuTest, CpuCombos, test::ComboName);

// in, out, blocks: up and down projections, square, blocks 1..4, widths not multiples of 8.
const std::vector<std::tuple<index_t, index_t, index_t>> kShapes = {
    {12, 18, 3}, {30, 20, 2}, {8, 8, 4}, {6, 9, 1}, {36, 12, 4}, {96, 384, 4}};

TYPED_TEST(StructuredTest, ForwardMatchesBothOraclesWithGuards) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  test::for_each_schedule<B>([&] {
    for (auto [n, m, blocks] : kShapes) {
      for (index_t tokens : {1, 7, 33, 255}) {
        for (bool bias : {true, false}) {
          for_each_family<T, B>(n, m, blocks, 17 + n + m, bias, [&](const char* name, auto& layer) {
            SCOPED_TRACE(testing::Message() << name << " in=" << n << " out=" << m << " blocks="
                                            << blocks << " tokens=" << tokens << " bias=" << bias);
            GuardedMatrix<T> x(tokens, n, 3), y(tokens, m, 2);
            x.set(test::random_vector<T>(tokens * n, 5 + tokens));
            {
              test::BackendMatrix<B, T> xb(x), yb(y);
              layer.forward(xb.cview(), yb.view());
              yb.sync_to_host();
            }
            ASSERT_TRUE(y.guards_intact());
            const auto xd = x.to_double();
            // Oracle 1: the naive per-factor formulas of docs/math.md §3.
            EXPECT_TRUE(test::within_tolerance<T>(
                test::compare(y.data(), tokens, m, y.stride(), ref_forward(layer, xd, tokens))));
            // Oracle 2: the dense forward of the layer's own materialize().
            const auto w = test::to_double(layer.materialize());
            const auto b = bias64(layer);
            const auto dense = reference::linear(xd.data(), tokens, n, w.data(),
                                                 b.empty() ? nullptr : b.data(), m);
            EXPECT_TRUE(
                test::within_tolerance<T>(test::compare(y.data(), tokens, m, y.stride(), dense)));
          });
        }
      }
    }
  });
}

TYPED_TEST(StructuredTest, BackwardMatchesOracleAndMaterializedDenseGradient) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  test::for_each_schedule<B>([&] {
    for (auto [n, m, blocks] : kShapes) {
      for (index_t tokens : {1, 33}) {
        for_each_family<T, B>(n, m, blocks, 5 + n, true, [&](const char* name, auto& layer) {
          SCOPED_TRACE(testing::Message() << name << " in=" << n << " out=" << m
                                          << " blocks=" << blocks << " tokens=" << tokens);
          GuardedMatrix<T> x(tokens, n, 1), dy(tokens, m, 1), dx(tokens, n, 2);
          x.set(test::random_vector<T>(tokens * n, 1 + tokens));
          dy.set(test::random_vector<T>(tokens * m, 2 + tokens));
          auto grads_b = test::grads_for(layer);
          {
            test::BackendMatrix<B, T> xb(x), dyb(dy), dxb(dx);
            layer.backward(xb.cview(), dyb.cview(), dxb.view(), grads_b);
            dxb.sync_to_host();
          }
          std::vector<std::vector<T>> grads;
          for (const auto& g : grads_b) grads.push_back(test::grad_host(g));
          ASSERT_TRUE(dx.guards_intact());
          const auto xd = x.to_double(), dyd = dy.to_double();
          const auto ref = ref_backward(layer, xd, dyd, tokens);
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(dx.data(), tokens, n, dx.stride(), ref.dx)));
          ASSERT_EQ(grads.size(), ref.factors.size() + 1);
          for (std::size_t i = 0; i < ref.factors.size(); ++i) {
            SCOPED_TRACE(testing::Message() << "factor " << i);
            const auto& g = grads[i];
            EXPECT_TRUE(test::within_tolerance<T>(
                test::compare(g.data(), 1, static_cast<index_t>(g.size()),
                              static_cast<index_t>(g.size()), ref.factors[i])));
          }
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(grads.back().data(), 1, m, m, ref.db)));
          // dx = dy W for the materialized W: the structured chain rule agrees with the dense one.
          const auto w = test::to_double(layer.materialize());
          std::vector<double> wt(static_cast<std::size_t>(n * m));
          for (index_t i = 0; i < m; ++i)
            for (index_t j = 0; j < n; ++j) wt[j * m + i] = w[i * n + j];
          const auto dense_dx = reference::linear(dyd.data(), tokens, m, wt.data(), nullptr, n);
          EXPECT_TRUE(test::within_tolerance<T>(
              test::compare(dx.data(), tokens, n, dx.stride(), dense_dx)));
        });
      }
    }
  });
}

// Checks backward's gradients (every parameter entry, and x) against central differences of
// L = Σ dy ⊙ forward(x), in double. Works for any model with forward/backward/params.
template <class Model>
void expect_gradients_match_finite_differences(Model& model, index_t tokens, index_t n, index_t m,
                                               double tol) {
  auto x = test::random_vector<double>(tokens * n, 11);
  const auto dy = test::random_vector<double>(tokens * m, 12);
  std::vector<double> y(tokens * m), dx(tokens * n);
  auto loss = [&] {
    model.forward(make_view<const double>(x.data(), tokens, n), make_view(y.data(), tokens, m));
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += dy[i] * y[i];
    return s;
  };
  auto grads = model.make_grads();
  model.backward(make_view<const double>(x.data(), tokens, n),
                 make_view<const double>(dy.data(), tokens, m), make_view(dx.data(), tokens, n),
                 grads);
  const double h = 1e-6;
  auto fd = [&](double* v) {
    const double keep = *v;
    *v = keep + h;
    const double up = loss();
    *v = keep - h;
    const double down = loss();
    *v = keep;
    return (up - down) / (2 * h);
  };
  auto params = model.params();
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < params[k].size; ++i)
      EXPECT_NEAR(grads[k][i], fd(params[k].data + i), tol) << params[k].name << "[" << i << "]";
  for (index_t i = 0; i < tokens * n; ++i) EXPECT_NEAR(dx[i], fd(&x[i]), tol) << "x[" << i << "]";
}

// Central differences of L = Σ dy ⊙ forward(x) in double, for every parameter entry and x.
TEST(StructuredGradient, MatchesFiniteDifferencesInDouble) {
  for (auto [n, m, blocks] :
       std::vector<std::tuple<index_t, index_t, index_t>>{{6, 9, 3}, {8, 4, 2}, {4, 4, 1}}) {
    const index_t tokens = 3;
    for_each_family<double>(n, m, blocks, 3, true, [&](const char* name, auto& layer) {
      SCOPED_TRACE(testing::Message() << name << " in=" << n << " out=" << m);
      expect_gradients_match_finite_differences(layer, tokens, n, m, 1e-7);
    });
  }
}

// Layers of paper size built from zero factors: counts do not depend on the values, and the
// seeded inits' eigen-decompositions would cost seconds each at these widths.
struct Zeros {
  std::vector<float> v = std::vector<float>(1 << 23, 0.f);
  const float* operator()() const { return v.data(); }
};

LowRankLinear<float> lowrank(index_t n, index_t m, index_t r, bool bias) {
  static const Zeros z;
  return LowRankLinear<float>(n, m, r, z(), z(), bias ? z() : nullptr);
}
BlockDiagonalLinear<float> blockdiag(index_t n, index_t m, index_t b) {
  static const Zeros z;
  return BlockDiagonalLinear<float>(n, m, b, z(), nullptr);
}
BlockDenseLinear<float> blockdense(index_t n, index_t m, index_t b, index_t r) {
  static const Zeros z;
  return BlockDenseLinear<float>(n, m, b, r, z(), z(), nullptr);
}
BlockShuffleLinear<float> shuffle(index_t n, index_t m, index_t b) {
  static const Zeros z;
  return BlockShuffleLinear<float>(n, m, b, z(), z(), nullptr);
}

TEST(StructuredCounts, MatchSpecFormulasAndPaperSettings) {
  // docs/math.md §3 parameter formulas (weights only, then the bias).
  const index_t n = 1024, m = 4096;
  EXPECT_EQ(lowrank(n, m, 512, false).parameter_count(), 512 * (n + m));
  EXPECT_EQ(lowrank(n, m, 512, true).parameter_count(), 512 * (n + m) + m);
  EXPECT_EQ(blockdiag(n, m, 4).parameter_count(), n * m / 4);
  EXPECT_EQ(blockdense(n, m, 4, 768).parameter_count(), 768 * (m + n / 4));
  EXPECT_EQ(shuffle(n, m, 4).parameter_count(), std::min(n, m) * (n + m) / 4);
  EXPECT_EQ(shuffle(m, n, 4).parameter_count(), std::min(n, m) * (n + m) / 4);
  EXPECT_DOUBLE_EQ(lowrank(n, m, 256, false).flops_per_token(), 2.0 * 256 * (n + m));
  EXPECT_DOUBLE_EQ(shuffle(n, m, 4).flops_per_token(), 2.0 * std::min(n, m) * (n + m) / 4);
  // docs/math.md §3.8: for the FFN pair d -> 4d -> d at d = 1024, LowRank R = d/2, d/4 and
  // BlockShuffle B = 2, 4 keep exactly 5/8 ("63%") and 5/16 ("32%") of the dense weights.
  const double dense = 2.0 * n * m;
  auto pair = [&](const auto& up, const auto& down) {
    return static_cast<double>(up.parameter_count() + down.parameter_count()) / dense;
  };
  EXPECT_NEAR(pair(lowrank(n, m, 512, false), lowrank(m, n, 512, false)), 5.0 / 8, 1e-12);
  EXPECT_NEAR(pair(lowrank(n, m, 256, false), lowrank(m, n, 256, false)), 5.0 / 16, 1e-12);
  EXPECT_NEAR(pair(shuffle(n, m, 2), shuffle(m, n, 2)), 5.0 / 8, 1e-12);
  EXPECT_NEAR(pair(shuffle(n, m, 4), shuffle(m, n, 4)), 5.0 / 16, 1e-12);
  // BlockDense's settings (B = 4, R = 768 / 384) land near, not exactly on, 5/8 and 5/16:
  // R (M + N/B) summed over both projections is 0.586 and 0.293 of the dense count.
  EXPECT_NEAR(pair(blockdense(n, m, 4, 768), blockdense(m, n, 4, 768)), 0.586, 0.001);
  EXPECT_NEAR(pair(blockdense(n, m, 4, 384), blockdense(m, n, 4, 384)), 0.293, 0.001);
}

TEST(StructuredInit, SpectralAndOrthonormal) {
  // LowRank: U V is the best rank-R approximation of the same Gaussian draw, so the residual's
  // Frobenius norm squared equals the sum of the discarded squared singular values; checked
  // indirectly: U V has rank R and ||U V||_F^2 <= ||W||_F^2.
  auto lr = LowRankLinear<double>::random(20, 30, 5, 9, false);
  const auto w = lr.materialize();
  Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> W(w.data(), 30, 20);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(W);
  EXPECT_LT(svd.singularValues()(5), 1e-12 * svd.singularValues()(0));
  EXPECT_GT(svd.singularValues()(4), 0.0);
  // BlockDense: every block of V has orthonormal rows, U has orthonormal columns.
  auto bd = BlockDenseLinear<double>::random(24, 40, 2, 12, 4, false);
  auto p = bd.params();
  Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> U(p[1].data, 40, 12);
  EXPECT_TRUE((U.transpose() * U).isIdentity(1e-12));
  for (index_t b = 0; b < 2; ++b) {
    Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> V(p[0].data + b * 6 * 12, 6,
                                                                       12);
    EXPECT_TRUE((V * V.transpose()).isIdentity(1e-12));
  }
  // At rank == min(in, out) too: square blocks of V and a square U, each orthogonal.
  for (auto [n, m, blocks] :
       std::vector<std::tuple<index_t, index_t, index_t>>{{24, 40, 2}, {40, 24, 4}}) {
    const index_t rank = std::min(n, m), r = rank / blocks, p_in = n / blocks;
    SCOPED_TRACE(testing::Message() << "in=" << n << " out=" << m << " rank=" << rank);
    auto full = BlockDenseLinear<double>::random(n, m, blocks, rank, 4, false);
    auto q = full.params();
    Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> Uf(q[1].data, m, rank);
    EXPECT_TRUE((Uf.transpose() * Uf).isIdentity(1e-12));
    for (index_t b = 0; b < blocks; ++b) {
      Eigen::Map<const Eigen::Matrix<double, -1, -1, Eigen::RowMajor>> V(q[0].data + b * r * p_in,
                                                                         r, p_in);
      EXPECT_TRUE((V * V.transpose()).isIdentity(1e-12));
    }
  }
}

TEST(StructuredErrors, BadShapesAndArgumentsAreNamed) {
  using test::throws_error;
  EXPECT_TRUE(throws_error([] { LowRankLinear<float>::random(8, 12, 9, 1); },
                           {"rank = 9", "min(in_features, out_features) = 8"}));
  EXPECT_TRUE(throws_error([] { LowRankLinear<float>::random(8, 12, 0, 1); }, {"rank = 0"}));
  EXPECT_TRUE(throws_error([] { BlockDiagonalLinear<float>::random(10, 12, 4, 1); },
                           {"blocks = 4", "in_features = 10"}));
  EXPECT_TRUE(throws_error([] { BlockDiagonalLinear<float>::random(12, 10, 4, 1); },
                           {"blocks = 4", "out_features = 10"}));
  EXPECT_TRUE(throws_error([] { BlockDenseLinear<float>::random(16, 32, 4, 20, 1); },
                           {"rank = 20", "exceeds min(in_features, out_features) = 16"}));
  EXPECT_NO_THROW(BlockDenseLinear<float>::random(16, 32, 4, 16, 1));  // rank == min(in, out)
  EXPECT_TRUE(throws_error([] { BlockDenseLinear<float>::random(16, 32, 4, 6, 1); },
                           {"blocks = 4", "rank = 6"}));
  EXPECT_TRUE(throws_error([] { BlockShuffleLinear<float>::random(12, 20, 3, 1); },
                           {"blocks = 3", "out_features = 20"}));
  EXPECT_TRUE(
      throws_error([] { BlockShuffleLinear<float>::random(12, 20, 0, 1); }, {"blocks = 0"}));
  std::vector<float> w(64, 0.1f);
  w[5] = NAN;
  EXPECT_TRUE(throws_error([&] { BlockDiagonalLinear<float>(8, 8, 1, w.data(), nullptr); },
                           {"weight[5]", "nan"}));
  EXPECT_TRUE(throws_error([&] { LowRankLinear<float>(8, 8, 2, nullptr, w.data(), nullptr); },
                           {"lr1", "null"}));
  // Forward and backward: mismatched shapes, zero tokens, null data, aliasing, wrong grads.
  auto l = BlockShuffleLinear<float>::random(8, 12, 2, 1);
  std::vector<float> x(4 * 8, 1.f), y(4 * 12), dx(4 * 8);
  EXPECT_TRUE(throws_error(
      [&] {
        l.forward({x.data(), 4, 7}, {y.data(), 4, 12});
      },
      {"x.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(throws_error(
      [&] {
        l.forward({x.data(), 4, 8}, {y.data(), 4, 11});
      },
      {"y.cols = 11", "out_features = 12"}));
  EXPECT_TRUE(throws_error(
      [&] {
        l.forward({x.data(), 0, 8}, {y.data(), 0, 12});
      },
      {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(throws_error([&] { l.forward({nullptr, 4, 8}, {y.data(), 4, 12}); }, {"x.data"}));
  EXPECT_TRUE(throws_error([&] { l.forward({y.data(), 4, 8}, {y.data(), 4, 12}); }, {"overlap"}));
  auto grads = l.make_grads();
  grads[1].pop_back();
  EXPECT_TRUE(throws_error(
      [&] {
        l.backward({x.data(), 4, 8}, {y.data(), 4, 12}, {dx.data(), 4, 8}, grads);
      },
      {"grads[1]", "blkdiag2"}));
  EXPECT_TRUE(throws_error(
      [&] {
        auto g = l.make_grads();
        l.backward({x.data(), 4, 8}, {y.data(), 3, 12}, {dx.data(), 4, 8}, g);
      },
      {"dy.rows = 3", "x.rows = 4"}));
  LowRankLinear<float> empty;
  EXPECT_TRUE(throws_error([&] { empty.forward({x.data(), 4, 8}, {y.data(), 4, 12}); }, {"empty"}));
}

// ---- StructuredFFN
// -------------------------------------------------------------------------------

template <class L>
std::vector<double> materialized(const L& l) {
  return test::to_double(l.materialize());
}

TYPED_TEST(StructuredTest, FfnMatchesDenseOracleOfMaterializedProjections) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t d = 24, f = 96;
  auto check = [&](const char* name, auto ffn) {
    for (index_t tokens : {1, 7, 33}) {
      SCOPED_TRACE(testing::Message() << name << " tokens=" << tokens);
      GuardedMatrix<T> x(tokens, d, 2), y(tokens, d, 1);
      x.set(test::random_vector<T>(tokens * d, 3 + tokens));
      test::for_each_schedule<B>([&] {
        test::BackendMatrix<B, T> xb(x), yb(y);
        ffn.forward(xb.cview(), yb.view());
        yb.sync_to_host();
      });
      ASSERT_TRUE(y.guards_intact());
      const auto xd = x.to_double();
      const auto w1 = materialized(ffn.up()), w2 = materialized(ffn.down());
      const auto b1 = bias64(ffn.up()), b2 = bias64(ffn.down());
      std::vector<double> ref;
      if (ffn.fused_gate_up()) {
        // up() is gate|up: rows [0, f) of its weight and bias are the gate's, [f, 2 f) up's.
        ref = reference::swiglu_ffn(xd.data(), tokens, d, w1.data(), b1.data(), w1.data() + f * d,
                                    b1.data() + f, f, w2.data(), b2.data(), d);
      } else if (ffn.gated()) {
        const auto wg = materialized(ffn.gate());
        const auto bg = bias64(const_cast<std::decay_t<decltype(ffn.gate())>&>(ffn.gate()));
        ref = reference::swiglu_ffn(xd.data(), tokens, d, wg.data(), bg.data(), w1.data(),
                                    b1.data(), f, w2.data(), b2.data(), d);
      } else {
        ref = reference::ffn(xd.data(), tokens, d, w1.data(), b1.data(), f, ffn.activation(),
                             w2.data(), b2.data(), d);
      }
      EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, d, y.stride(), ref)));
    }
  };
  using LR = LowRankLinear<T, B>;
  using BD = BlockDenseLinear<T, B>;
  using BS = BlockShuffleLinear<T, B>;
  check("lowrank gelu", StructuredFFN<LR, LR>(LR::random(d, f, 6, 1), LR::random(f, d, 6, 2)));
  check("blockdense relu", StructuredFFN<BD, BD>(BD::random(d, f, 2, 12, 1),
                                                 BD::random(f, d, 2, 12, 2), Activation::kRelu));
  check("blockshuffle gelu", StructuredFFN<BS, BS>(BS::random(d, f, 4, 1), BS::random(f, d, 4, 2)));
  check(
      "blockshuffle gelu_erf",
      StructuredFFN<BS, BS>(BS::random(d, f, 2, 1), BS::random(f, d, 2, 2), Activation::kGeluErf));
  check("mixed lowrank/shuffle",
        StructuredFFN<LR, BS>(LR::random(d, f, 8, 1), BS::random(f, d, 4, 2)));
  check("lowrank swiglu",
        StructuredFFN<LR, LR>::swiglu(LR::random(d, f, 6, 3), LR::random(d, f, 6, 4),
                                      LR::random(f, d, 6, 5)));
  check("blockshuffle swiglu",
        StructuredFFN<BS, BS>::swiglu(BS::random(d, f, 4, 3), BS::random(d, f, 4, 4),
                                      BS::random(f, d, 4, 5)));
  check("lowrank fused swiglu",
        StructuredFFN<LR, LR>::swiglu(LR::random(d, 2 * f, 6, 3), LR::random(f, d, 6, 5)));
  check("blockdense fused swiglu",
        StructuredFFN<BD, BD>::swiglu(BD::random(d, 2 * f, 2, 12, 3), BD::random(f, d, 2, 12, 5)));
  check("blockshuffle fused swiglu",
        StructuredFFN<BS, BS>::swiglu(BS::random(d, 2 * f, 4, 3), BS::random(f, d, 4, 5)));
}

// The same layer on the Cpu backend in double, built from the layer's own (rounded) parameters.
template <class T, class B>
LowRankLinear<double> cpu_double(LowRankLinear<T, B>& l) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]), b = bias64(l);
  return LowRankLinear<double>(l.in_features(), l.out_features(), l.rank(), v.data(), u.data(),
                               b.empty() ? nullptr : b.data());
}
template <class T, class B>
BlockDenseLinear<double> cpu_double(BlockDenseLinear<T, B>& l) {
  auto p = l.params();
  const auto v = p64<B>(p[0]), u = p64<B>(p[1]), b = bias64(l);
  return BlockDenseLinear<double>(l.in_features(), l.out_features(), l.blocks(), l.rank(), v.data(),
                                  u.data(), b.empty() ? nullptr : b.data());
}
template <class T, class B>
BlockShuffleLinear<double> cpu_double(BlockShuffleLinear<T, B>& l) {
  auto p = l.params();
  const auto w1 = p64<B>(p[0]), w2 = p64<B>(p[1]), b = bias64(l);
  return BlockShuffleLinear<double>(l.in_features(), l.out_features(), l.blocks(), w1.data(),
                                    w2.data(), b.empty() ? nullptr : b.data());
}

// The 16-bit tolerances bound one layer's roundings (~5-8 unit roundoffs, harness.hpp). Results
// with about twice as many roundings (an FFN's gradients, which pass through both layers' stored
// activations and gradients; or the difference of two results each within the per-layer bound)
// are held to twice that bound, still ~100x below the O(1) error of a wrong index, transpose or
// activation. float and double keep theirs.
template <class T>
test::Tolerance twice_the_roundings() {
  test::Tolerance tol = test::tolerance<T>();
  if (!std::is_same_v<T, float> && !std::is_same_v<T, double>) {
    tol.nmse *= 4.0;  // squared error: twice the relative error
    tol.max_rel *= 2.0;
  }
  return tol;
}

// Backward of the FFN on every backend against the Cpu backward in double of the same weights
// (itself checked against finite differences below): dx and every parameter's gradient.
TYPED_TEST(StructuredTest, FfnBackwardMatchesCpuDoubleBackward) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t d = 24, f = 96;
  // The FFN's gradients pass through both layers' stored activations and gradients.
  const test::Tolerance tol = twice_the_roundings<T>();
  auto check = [&](const char* name, auto ffn, auto ref) {
    for (index_t tokens : {1, 33}) {
      SCOPED_TRACE(testing::Message() << name << " tokens=" << tokens);
      GuardedMatrix<T> x(tokens, d, 1), dy(tokens, d, 2), dx(tokens, d, 3);
      x.set(test::random_vector<T>(tokens * d, 7 + tokens));
      dy.set(test::random_vector<T>(tokens * d, 8 + tokens));
      auto grads_b = test::grads_for(ffn);
      test::for_each_schedule<B>([&] {
        test::BackendMatrix<B, T> xb(x), dyb(dy), dxb(dx);
        ffn.backward(xb.cview(), dyb.cview(), dxb.view(), grads_b);
        dxb.sync_to_host();
      });
      ASSERT_TRUE(dx.guards_intact());
      const auto xd = x.to_double(), dyd = dy.to_double();
      std::vector<double> dx_ref(static_cast<std::size_t>(tokens * d));
      auto g_ref = ref.make_grads();
      ref.backward(make_view<const double>(xd.data(), tokens, d),
                   make_view<const double>(dyd.data(), tokens, d),
                   make_view(dx_ref.data(), tokens, d), g_ref);
      EXPECT_TRUE(
          test::within_tolerance<T>(test::compare(dx.data(), tokens, d, dx.stride(), dx_ref), tol));
      ASSERT_EQ(grads_b.size(), g_ref.size());
      const auto names = ref.params();
      for (std::size_t i = 0; i < g_ref.size(); ++i) {
        SCOPED_TRACE(names[i].name);
        const auto g = test::grad_host(grads_b[i]);
        const auto n = static_cast<index_t>(g.size());
        EXPECT_TRUE(test::within_tolerance<T>(test::compare(g.data(), 1, n, n, g_ref[i]), tol));
      }
    }
  };
  using LR = LowRankLinear<T, B>;
  using BD = BlockDenseLinear<T, B>;
  using BS = BlockShuffleLinear<T, B>;
  {
    StructuredFFN<LR, LR> ffn(LR::random(d, f, 6, 1), LR::random(f, d, 6, 2));
    StructuredFFN<LowRankLinear<double>, LowRankLinear<double>> ref(cpu_double(ffn.up()),
                                                                    cpu_double(ffn.down()));
    check("lowrank gelu", std::move(ffn), std::move(ref));
  }
  {
    // ReLU's derivative jumps at 0: a 16-bit pre-activation near 0 lands on the other side of the
    // kink from the double one, so half types check this mixed FFN with the smooth GELU (erf).
    const Activation act = std::is_same_v<T, float> ? Activation::kRelu : Activation::kGeluErf;
    StructuredFFN<BD, BS> ffn(BD::random(d, f, 2, 12, 1), BS::random(f, d, 4, 2), act);
    StructuredFFN<BlockDenseLinear<double>, BlockShuffleLinear<double>> ref(
        cpu_double(ffn.up()), cpu_double(ffn.down()), act);
    check("blockdense/shuffle relu (gelu_erf for 16-bit)", std::move(ffn), std::move(ref));
  }
  {
    auto ffn = StructuredFFN<BS, BS>::swiglu(BS::random(d, f, 4, 3), BS::random(d, f, 4, 4),
                                             BS::random(f, d, 4, 5));
    auto ref = StructuredFFN<BlockShuffleLinear<double>, BlockShuffleLinear<double>>::swiglu(
        cpu_double(const_cast<BS&>(ffn.gate())), cpu_double(ffn.up()), cpu_double(ffn.down()));
    check("blockshuffle swiglu", std::move(ffn), std::move(ref));
  }
  {
    auto ffn = StructuredFFN<LR, LR>::swiglu(LR::random(d, 2 * f, 6, 3), LR::random(f, d, 6, 5));
    auto ref = StructuredFFN<LowRankLinear<double>, LowRankLinear<double>>::swiglu(
        cpu_double(ffn.up()), cpu_double(ffn.down()));
    check("lowrank fused swiglu", std::move(ffn), std::move(ref));
  }
  {
    auto ffn =
        StructuredFFN<BD, BS>::swiglu(BD::random(d, 2 * f, 2, 12, 3), BS::random(f, d, 4, 5));
    auto ref = StructuredFFN<BlockDenseLinear<double>, BlockShuffleLinear<double>>::swiglu(
        cpu_double(ffn.up()), cpu_double(ffn.down()));
    check("blockdense/shuffle fused swiglu", std::move(ffn), std::move(ref));
  }
}

// ---- SwiGLU with gate|up in one layer, against the same FFN with two layers of its own --------

// Rows [begin, begin + count) of a row-major matrix `cols` wide, as T.
template <class T>
std::vector<T> rows_of(const std::vector<double>& m, index_t cols, index_t begin, index_t count) {
  std::vector<T> out;
  for (index_t i = begin * cols; i < (begin + count) * cols; ++i)
    out.push_back(test::Scalar<T>::from_double(m[i]));
  return out;
}
template <class T>
std::vector<T> all_of(const std::vector<double>& m) {
  return rows_of<T>(m, 1, 0, static_cast<index_t>(m.size()));
}
// Half `half` (0: the gate's outputs, 1: up's) of a gate|up layer's bias; empty without one.
template <class T>
std::vector<T> bias_half(const std::vector<double>& b, index_t f, index_t half) {
  return b.empty() ? std::vector<T>() : rows_of<T>(b, 1, half * f, f);
}
template <class T>
const T* or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

// Output half `half` of a gate|up layer as a layer of its own: the output factor's rows split,
// the input factor (LowRank's V, BlockDense's block-diagonal stage) copied into both halves.
template <class T, class B>
LowRankLinear<T, B> half_of(LowRankLinear<T, B>& l, index_t half) {
  auto p = l.params();
  const index_t f = l.out_features() / 2, r = l.rank();
  const auto v = all_of<T>(p64<B>(p[0])), u = rows_of<T>(p64<B>(p[1]), r, half * f, f);
  const auto b = bias_half<T>(bias64(l), f, half);
  return LowRankLinear<T, B>(l.in_features(), f, r, v.data(), u.data(), or_null(b));
}
template <class T, class B>
BlockDenseLinear<T, B> half_of(BlockDenseLinear<T, B>& l, index_t half) {
  auto p = l.params();
  const index_t f = l.out_features() / 2, r = l.rank();
  const auto v = all_of<T>(p64<B>(p[0])), u = rows_of<T>(p64<B>(p[1]), r, half * f, f);
  const auto b = bias_half<T>(bias64(l), f, half);
  return BlockDenseLinear<T, B>(l.in_features(), f, l.blocks(), r, v.data(), u.data(), or_null(b));
}
// BlockShuffle: output s B + b comes from row s of stage-2 block b, so the gate's outputs [0, f)
// are rows [0, f/B) of every block. Valid when in <= f: stage 1 (q = min(in, out)/B) is the same.
template <class T, class B>
BlockShuffleLinear<T, B> half_of(BlockShuffleLinear<T, B>& l, index_t half) {
  auto p = l.params();
  const index_t f = l.out_features() / 2, blocks = l.blocks(), s = f / blocks;
  const index_t q = std::min(l.in_features(), l.out_features()) / blocks;
  EXPECT_LE(l.in_features(), f) << "the gate|up BlockShuffle does not split into two";
  const auto w1 = all_of<T>(p64<B>(p[0])), b = bias_half<T>(bias64(l), f, half);
  const auto w2 = p64<B>(p[1]);
  std::vector<T> w2h;
  for (index_t k = 0; k < blocks; ++k) {
    const auto rows = rows_of<T>(w2, q, k * 2 * s + half * s, s);
    w2h.insert(w2h.end(), rows.begin(), rows.end());
  }
  return BlockShuffleLinear<T, B>(l.in_features(), f, blocks, w1.data(), w2h.data(), or_null(b));
}

// The fused form runs the shared factor once; it must compute the function of the split form.
TYPED_TEST(StructuredTest, FusedSwigluMatchesTheSplitForm) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t d = 24, f = 48;
  // `shared`: the parameters the split form holds twice (the input factor).
  auto check = [&](const char* name, auto gate_up, auto down, index_t shared) {
    using Up = decltype(gate_up);
    using Down = decltype(down);
    auto fused = StructuredFFN<Up, Down>::swiglu(gate_up, down);
    auto split = StructuredFFN<Up, Down>::swiglu(half_of(gate_up, 0), half_of(gate_up, 1), down);
    SCOPED_TRACE(name);
    EXPECT_TRUE(fused.gated());
    EXPECT_TRUE(fused.fused_gate_up());
    EXPECT_FALSE(split.fused_gate_up());
    EXPECT_EQ(fused.d_ff(), f);
    EXPECT_EQ(fused.d_model(), d);
    EXPECT_EQ(fused.parameter_count() + shared, split.parameter_count());
    EXPECT_DOUBLE_EQ(split.flops_per_token() - fused.flops_per_token(), 2.0 * shared);
    const auto params = fused.params();
    ASSERT_EQ(params.size(), gate_up.params().size() + down.params().size());
    for (std::size_t i = 0; i < params.size(); ++i)
      EXPECT_EQ(params[i].name.rfind(i < gate_up.params().size() ? "gate_up." : "down.", 0), 0u)
          << params[i].name;
    EXPECT_GE(fused.workspace_size(7), 7u * 2 * f * sizeof(T));
    for (index_t tokens : {1, 7, 33}) {
      SCOPED_TRACE(testing::Message() << "tokens=" << tokens);
      GuardedMatrix<T> x(tokens, d, 2), yf(tokens, d, 1), ys(tokens, d, 1);
      x.set(test::random_vector<T>(tokens * d, 9 + tokens));
      test::for_each_schedule<B>([&] {
        test::BackendMatrix<B, T> xb(x), yfb(yf), ysb(ys);
        // The fused form in exactly its workspace_size, the split one allocating its own.
        const std::size_t bytes = fused.workspace_size(tokens);
        test::BackendBuffer<B, T> ws((bytes + sizeof(T) - 1) / sizeof(T));
        fused.forward(xb.cview(), yfb.view(), Workspace{ws.data(), bytes});
        split.forward(xb.cview(), ysb.view());
        yfb.sync_to_host();
        ysb.sync_to_host();
      });
      ASSERT_TRUE(yf.guards_intact());
      ASSERT_TRUE(ys.guards_intact());
      EXPECT_TRUE(test::within_tolerance<T>(
          test::compare(yf.data(), tokens, d, yf.stride(), ys.to_double()),
          twice_the_roundings<T>()));
    }
  };
  using LR = LowRankLinear<T, B>;
  using BD = BlockDenseLinear<T, B>;
  using BS = BlockShuffleLinear<T, B>;
  for (bool bias : {true, false}) {
    SCOPED_TRACE(testing::Message() << "bias=" << bias);
    check("lowrank", LR::random(d, 2 * f, 6, 1, bias), LR::random(f, d, 6, 2, bias), 6 * d);
    check("blockdense", BD::random(d, 2 * f, 2, 12, 1, bias), BD::random(f, d, 2, 12, 2, bias),
          12 * d / 2);
    check("blockdense rank=min", BD::random(d, 2 * f, 4, d, 1, bias),
          BD::random(f, d, 4, d, 2, bias), d * d / 4);
    check("blockshuffle", BS::random(d, 2 * f, 4, 1, bias), BS::random(f, d, 4, 2, bias),
          d * d / 4);
  }
}

// The fused backward against the split form's, in double: dx and down's gradients agree, and the
// gate|up layer's gradients are the split layers' (the shared input factor's summed, the rest
// stacked gate first).
TEST(StructuredFfnGradient, FusedSwigluMatchesTheSplitForm) {
  using LR = LowRankLinear<double>;
  const index_t d = 6, f = 8, t = 5, r = 3;
  auto gate_up = LR::random(d, 2 * f, r, 1);
  const auto down = LR::random(f, d, r, 2);
  auto fused = StructuredFFN<LR, LR>::swiglu(gate_up, down);
  auto split = StructuredFFN<LR, LR>::swiglu(half_of(gate_up, 0), half_of(gate_up, 1), down);
  const auto x = test::random_vector<double>(t * d, 3), dy = test::random_vector<double>(t * d, 4);
  std::vector<double> dxf(t * d), dxs(t * d);
  auto gf = fused.make_grads(), gs = split.make_grads();
  fused.backward(make_view<const double>(x.data(), t, d), make_view<const double>(dy.data(), t, d),
                 make_view(dxf.data(), t, d), gf);
  split.backward(make_view<const double>(x.data(), t, d), make_view<const double>(dy.data(), t, d),
                 make_view(dxs.data(), t, d), gs);
  auto expect_equal = [](const std::vector<double>& got, const std::vector<double>& want,
                         const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    const auto n = static_cast<index_t>(got.size());
    EXPECT_TRUE(test::within_tolerance<double>(test::compare(got.data(), 1, n, n, want))) << what;
  };
  auto concat = [](std::vector<double> a, const std::vector<double>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  // fused: gate_up.{lr1, lr2, bias}, down.*; split: gate.{lr1, lr2, bias}, up.*, down.*.
  ASSERT_EQ(gf.size(), 6u);
  ASSERT_EQ(gs.size(), 9u);
  expect_equal(dxf, dxs, "dx");
  std::vector<double> lr1(gs[0].size());
  for (std::size_t i = 0; i < lr1.size(); ++i) lr1[i] = gs[0][i] + gs[3][i];
  expect_equal(gf[0], lr1, "gate_up.lr1 = gate.lr1 + up.lr1");
  expect_equal(gf[1], concat(gs[1], gs[4]), "gate_up.lr2 = [gate.lr2; up.lr2]");
  expect_equal(gf[2], concat(gs[2], gs[5]), "gate_up.bias = [gate.bias; up.bias]");
  for (std::size_t i = 3; i < 6; ++i) expect_equal(gf[i], gs[i + 3], "down");
}

// workspace_size covers every sublayer's scratch, the gate's too: a gate of higher rank than up
// needs more than up and down.
TEST(StructuredFfnWorkspace, CoversAGateLargerThanUp) {
  using LR = LowRankLinear<float>;
  const auto ffn = StructuredFFN<LR, LR>::swiglu(LR::random(8, 16, 8, 1), LR::random(8, 16, 2, 2),
                                                 LR::random(16, 8, 2, 3));
  const index_t t = 5;
  std::vector<float> x(t * 8, 0.5f), y(t * 8);
  std::vector<unsigned char> ws(ffn.workspace_size(t));
  EXPECT_NO_THROW(ffn.forward(make_view<const float>(x.data(), t, 8), make_view(y.data(), t, 8),
                              {ws.data(), ws.size()}));
}

TEST(StructuredErrors, SwigluArgumentsAreNamed) {
  using test::throws_error;
  using LR = LowRankLinear<float>;
  using FFN = StructuredFFN<LR, LR>;
  EXPECT_TRUE(throws_error([] { FFN::swiglu(LR::random(8, 15, 2, 1), LR::random(7, 8, 2, 2)); },
                           {"StructuredFFN::swiglu", "gate_up.out_features = 15", "odd"}));
  EXPECT_TRUE(throws_error([] { FFN::swiglu(LR::random(8, 16, 2, 1), LR::random(9, 8, 2, 2)); },
                           {"down.in_features = 9", "gate_up.out_features / 2 = 8"}));
  EXPECT_TRUE(throws_error(
      [] {
        FFN::swiglu(LR::random(8, 16, 2, 1), LR::random(8, 16, 2, 2), LR::random(15, 8, 2, 3));
      },
      {"down.in_features = 15", "up.out_features = 16"}));
  EXPECT_TRUE(throws_error(
      [] {
        FFN::swiglu(LR::random(8, 16, 2, 1), LR::random(8, 12, 2, 2), LR::random(16, 8, 2, 3));
      },
      {"up.out_features = 12", "gate.out_features = 16"}));
  auto fused = FFN::swiglu(LR::random(8, 16, 2, 1), LR::random(8, 8, 2, 2));
  EXPECT_TRUE(throws_error([&] { fused.gate(); }, {"StructuredFFN::gate", "fused"}));
  std::vector<float> x(4 * 8, 1.f), y(4 * 8);
  EXPECT_TRUE(throws_error(
      [&] {
        fused.forward({x.data(), 4, 7}, {y.data(), 4, 8});
      },
      {"x.cols = 7", "d_model = 8"}));
  auto g = fused.make_grads();
  g[1].pop_back();
  EXPECT_TRUE(throws_error(
      [&] {
        fused.backward({x.data(), 4, 8}, {y.data(), 4, 8}, {nullptr, 4, 8}, g);
      },
      {"grads[1]", "gate_up.lr2"}));
}

TEST(StructuredFfnGradient, MatchesFiniteDifferencesInDouble) {
  using LR = LowRankLinear<double>;
  using BS = BlockShuffleLinear<double>;
  const index_t d = 6, f = 12, tokens = 3;
  auto check = [&](const char* name, auto ffn) {
    SCOPED_TRACE(name);
    expect_gradients_match_finite_differences(ffn, tokens, d, d, 2e-7);
  };
  // backward keeps its hidden-sized buffers across calls: a larger call first, then the checked
  // smaller one, must not read stale or extra elements.
  auto after_larger_backward = [&](auto ffn) {
    const index_t big = 9;
    auto xb = test::random_vector<double>(big * d, 1),
         dyb = test::random_vector<double>(big * d, 2);
    std::vector<double> dxb(big * d);
    auto g = ffn.make_grads();
    ffn.backward(make_view<const double>(xb.data(), big, d),
                 make_view<const double>(dyb.data(), big, d), make_view(dxb.data(), big, d), g);
    return ffn;
  };
  check("lowrank gelu", StructuredFFN<LR, LR>(LR::random(d, f, 3, 1), LR::random(f, d, 3, 2)));
  check(
      "lowrank gelu after a larger backward",
      after_larger_backward(StructuredFFN<LR, LR>(LR::random(d, f, 3, 1), LR::random(f, d, 3, 2))));
  check("shuffle silu",
        StructuredFFN<BS, BS>(BS::random(d, f, 2, 1), BS::random(f, d, 2, 2), Activation::kSilu));
  check("lowrank swiglu",
        StructuredFFN<LR, LR>::swiglu(LR::random(d, f, 3, 3), LR::random(d, f, 3, 4),
                                      LR::random(f, d, 3, 5)));
  check("lowrank fused swiglu",
        StructuredFFN<LR, LR>::swiglu(LR::random(d, 2 * f, 3, 3), LR::random(f, d, 3, 5)));
  {
    using BD = BlockDenseLinear<double>;
    check("blockdense fused swiglu",
          StructuredFFN<BD, BD>::swiglu(BD::random(d, 2 * f, 2, 4, 3), BD::random(f, d, 2, 4, 5)));
    // Without biases, and fused gate|up after a larger call (backward's kept buffers).
    check("blockdense fused swiglu, no bias, after a larger backward",
          after_larger_backward(StructuredFFN<BD, BD>::swiglu(BD::random(d, 2 * f, 2, 6, 3, false),
                                                              BD::random(f, d, 2, 6, 5, false))));
  }
}

// ---- pre-merge (docs/math.md §4)
// ----------------------------------------------------------------------

TYPED_TEST(StructuredCpuTest, PreMergedBothPathsMatchTheOracle) {
  using T = typename TestFixture::T;
  auto check = [](const char* name, auto pm) {
    using PM = decltype(pm);
    const index_t n = pm.in_features(), m = pm.out_features();
    for (auto path : {PM::Path::kStructured, PM::Path::kDense}) {
      pm.set_path(path);
      for (index_t tokens : {1, 7, 33}) {
        for (Activation act : {Activation::kIdentity, Activation::kGeluTanh}) {
          SCOPED_TRACE(testing::Message() << name << " dense path=" << (path == PM::Path::kDense)
                                          << " tokens=" << tokens << " act=" << to_string(act));
          GuardedMatrix<T> x(tokens, n, 1), y(tokens, m, 1);
          x.set(test::random_vector<T>(tokens * n, tokens));
          pm.forward(x.cview(), y.view(), {}, act);
          ASSERT_TRUE(y.guards_intact());
          const auto w = materialized(pm.structured()), b = bias64(pm);
          auto ref = reference::linear(x.to_double().data(), tokens, n, w.data(), b.data(), m);
          reference::apply_activation(act, ref);
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(y.data(), tokens, m, y.stride(), ref)));
        }
      }
    }
  };
  check("blockshuffle",
        PreMerged<BlockShuffleLinear<T>>(BlockShuffleLinear<T>::random(24, 40, 4, 3)));
  // BlockDense at rank == min(in, out), the largest the official module accepts.
  check("blockdense rank=min",
        PreMerged<BlockDenseLinear<T>>(BlockDenseLinear<T>::random(40, 24, 4, 24, 3)));
}

TEST(PreMerged, CalibrateRecordsTheFasterPathPerPowerOfTwoBucket) {
  auto pm = PreMerged<LowRankLinear<float>>(LowRankLinear<float>::random(64, 256, 16, 1));
  const auto rows = pm.calibrate(64, 3);
  ASSERT_EQ(rows.size(), 7u);  // 1, 2, 4, ..., 64
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].tokens, index_t{1} << i);
    EXPECT_GT(rows[i].structured_seconds, 0.0);
    EXPECT_GT(rows[i].dense_seconds, 0.0);
    const auto expected = rows[i].dense_seconds < rows[i].structured_seconds
                              ? decltype(pm)::Path::kDense
                              : decltype(pm)::Path::kStructured;
    // Every count in [2^i, 2^(i+1)) takes the path measured at 2^i.
    EXPECT_EQ(pm.path(rows[i].tokens), expected);
    EXPECT_EQ(pm.path(2 * rows[i].tokens - 1), expected);
  }
  EXPECT_EQ(pm.path(100000), pm.path(64));  // beyond the range: the last decision
  EXPECT_TRUE(test::throws_error([&] { pm.calibrate(0); }, {"max_tokens = 0"}));
  EXPECT_EQ(pm.merged_bytes(), 64u * 256u * sizeof(float));
}

}  // namespace
}  // namespace ffnkit
