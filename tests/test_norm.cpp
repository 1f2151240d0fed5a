// Deferred normalization (docs/math.md §7): RMSNormLinear, LayerNormLinear and SoftmaxLinear, the
// fused path against the unfused path against the float64 oracle, with sentinel guards and strided
// views; mean offsets |μ|/σ up to 1000 against the stated bound, scores that overflow a naive exp,
// masked and fully masked rows, ε edge cases, odd widths, 1 token and every bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <tuple>

#include "ffnkit/norm.hpp"
#include "ffnkit/reference.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::Combo;
using test::GuardedMatrix;

template <class P>
class NormTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
  void SetUp() override { FFNKIT_SKIP_IF_UNAVAILABLE(B); }
};

// The Cpu backend; the device backends (Cuda, CudaEmu) are tested in test_norm_cuda.cpp.
using NormCombos = ::testing::Types<Combo<float, Cpu>, Combo<double, Cpu>>;
TYPED_TEST_SUITE(NormTest, NormCombos, test::ComboName);

constexpr double kInf = std::numeric_limits<double>::infinity();

// One layer's parameters, drawn in T and kept in double for the oracle.
template <class T>
struct NormCase {
  index_t in, out;
  bool layer_norm;
  std::vector<T> gamma, beta, weight, bias;
  double eps = 1e-5;

  NormCase(bool ln, index_t n, index_t m, std::uint64_t seed, bool affine = true,
           bool with_bias = true)
      : in(n), out(m), layer_norm(ln) {
    weight = test::random_vector<T>(n * m, seed, 1.0 / std::sqrt(static_cast<double>(n)));
    if (affine) {
      gamma = test::random_vector<T>(n, seed + 1, 0.3);
      for (auto& g : gamma) g = static_cast<T>(g + T(1));
      if (ln) beta = test::random_vector<T>(n, seed + 2, 0.3);
    }
    if (with_bias) bias = test::random_vector<T>(m, seed + 3, 0.3);
  }
  const T* ptr(const std::vector<T>& v) const { return v.empty() ? nullptr : v.data(); }
  LayerNormLinear<T, Cpu> make_ln() const {
    return LayerNormLinear<T, Cpu>(in, out, ptr(gamma), ptr(beta), weight.data(), ptr(bias), eps);
  }
  RMSNormLinear<T, Cpu> make_rms() const {
    return RMSNormLinear<T, Cpu>(in, out, ptr(gamma), weight.data(), ptr(bias), eps);
  }
  std::vector<double> reference(const GuardedMatrix<T>& x,
                                std::vector<double>* normalized = nullptr) const {
    return reference::norm_linear(layer_norm, x.to_double(), x.rows(), in, out,
                                  test::to_double(gamma), test::to_double(beta),
                                  test::to_double(weight), test::to_double(bias), eps, normalized);
  }
};

// Runs fused and unfused on x (into guarded outputs) and checks both against the oracle.
template <class T, class Layer>
void check_both_paths(const Layer& layer, const NormCase<T>& c, const GuardedMatrix<T>& x,
                      index_t pad, const test::Tolerance& tol = test::tolerance<T>()) {
  const auto ref = c.reference(x);
  const index_t tokens = x.rows();
  GuardedMatrix<T> y(tokens, c.out, pad), yu(tokens, c.out, pad);
  layer.forward(x.cview(), y.view());
  layer.forward_unfused(x.cview(), yu.view());
  ASSERT_TRUE(y.guards_intact());
  ASSERT_TRUE(yu.guards_intact());
  EXPECT_TRUE(
      test::within_tolerance<T>(test::compare(y.data(), tokens, c.out, y.stride(), ref), tol))
      << "fused";
  EXPECT_TRUE(
      test::within_tolerance<T>(test::compare(yu.data(), tokens, c.out, yu.stride(), ref), tol))
      << "unfused";
}

// Odd widths, 1 token, both sides of the decode/GEMM switch (16 tokens), BERT and 4k widths.
const std::vector<std::tuple<index_t, index_t, index_t>> kNormShapes = {
    // tokens, in, out
    {1, 1, 1},     {1, 13, 29},   {7, 33, 5},     {16, 257, 129}, {17, 64, 64},
    {33, 255, 63}, {255, 29, 31}, {7, 768, 3072}, {2, 4096, 130},
};

TYPED_TEST(NormTest, FusedAndUnfusedMatchReferenceWithGuardsAndStrides) {
  using T = typename TestFixture::T;
  for (auto [tokens, in, out] : kNormShapes) {
    for (bool ln : {false, true}) {
      for (bool affine : {true, false}) {
        for (index_t pad : {0, 3}) {
          const bool bias = pad == 0;
          SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " in=" << in << " out=" << out
                                          << " layer_norm=" << ln << " affine=" << affine
                                          << " bias=" << bias << " pad=" << pad);
          NormCase<T> c(ln, in, out, 100 + in + out, affine, bias);
          GuardedMatrix<T> x(tokens, in, pad);
          x.set(test::random_vector<T>(tokens * in, 7 + tokens, 2.0));
          if (ln)
            check_both_paths(c.make_ln(), c, x, pad);
          else
            check_both_paths(c.make_rms(), c, x, pad);
          ASSERT_TRUE(x.guards_intact());
        }
      }
    }
  }
}

TYPED_TEST(NormTest, ReturnsNormalizedActivations) {
  using T = typename TestFixture::T;
  for (index_t tokens : {1, 5, 40}) {
    for (bool ln : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " layer_norm=" << ln);
      NormCase<T> c(ln, 37, 70, 9);
      GuardedMatrix<T> x(tokens, 37, 2), y(tokens, 70), xn(tokens, 37, 1), xnu(tokens, 37, 1);
      x.set(test::random_vector<T>(tokens * 37, 3, 3.0));
      std::vector<double> nref;
      const auto ref = c.reference(x, &nref);
      for (bool fused : {true, false}) {
        GuardedMatrix<T>& out = fused ? xn : xnu;
        if (ln) {
          const auto layer = c.make_ln();
          fused ? layer.forward(x.cview(), y.view(), {}, out.view())
                : layer.forward_unfused(x.cview(), y.view(), {}, out.view());
        } else {
          const auto layer = c.make_rms();
          fused ? layer.forward(x.cview(), y.view(), {}, out.view())
                : layer.forward_unfused(x.cview(), y.view(), {}, out.view());
        }
        ASSERT_TRUE(out.guards_intact());
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(out.data(), tokens, 37, out.stride(), nref)))
            << (fused ? "fused" : "unfused") << " normalized";
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(y.data(), tokens, 70, y.stride(), ref)));
      }
    }
  }
}

// The error bound (docs/deferred_norm.md): with ρ = |μ|/σ the largest mean offset of a call and u
// the unit roundoff, the default LayerNormLinear::forward keeps
//   max_rel <= 64 u (1 + ρ) sqrt(N / 256)  (float: 3.8e-6 (1 + ρ) at N = 256)
// because above ρ = 4 it subtracts μ before the product; the unfused path obeys the same bound.
// Forced fully deferred (center_threshold = inf), the product of |μ|-sized inputs costs more:
//   max_rel <= 256 u (1 + ρ) sqrt(N / 256).
double ln_bound(double unit, double rho, index_t n, double factor) {
  return factor * unit * (1.0 + rho) * std::sqrt(std::max(1.0, static_cast<double>(n) / 256.0));
}

TYPED_TEST(NormTest, LayerNormMeanOffsetsStayWithinTheStatedBound) {
  using T = typename TestFixture::T;
  const double u = std::numeric_limits<T>::epsilon() / 2;
  for (index_t n : {255, 1024, 4096}) {
    for (index_t tokens : {3, 33}) {
      for (double rho : {0.0, 10.0, 100.0, 1000.0}) {
        SCOPED_TRACE(testing::Message()
                     << "in=" << n << " tokens=" << tokens << " |mu|/sigma=" << rho);
        NormCase<T> c(true, n, 96, 41 + n);
        GuardedMatrix<T> x(tokens, n);
        std::vector<double> xd(static_cast<std::size_t>(tokens * n));
        fill_normal(xd.data(), tokens * n, 5 + tokens, 0.0, 0.5);
        // Alternate the sign of the offset between tokens; σ = 0.5.
        for (index_t t = 0; t < tokens; ++t)
          for (index_t j = 0; j < n; ++j) xd[t * n + j] += (t % 2 ? -1 : 1) * rho * 0.5;
        x.set(std::vector<T>(xd.begin(), xd.end()));
        const auto ref = c.reference(x);
        auto layer = c.make_ln();
        GuardedMatrix<T> y(tokens, 96), yu(tokens, 96), yd(tokens, 96);
        layer.forward(x.cview(), y.view());
        layer.forward_unfused(x.cview(), yu.view());
        layer.set_center_threshold(kInf);
        layer.forward(x.cview(), yd.view());
        const auto e = test::compare(y.data(), tokens, 96, 96, ref);
        const auto eu = test::compare(yu.data(), tokens, 96, 96, ref);
        const auto ed = test::compare(yd.data(), tokens, 96, 96, ref);
        EXPECT_EQ(e.non_finite + eu.non_finite + ed.non_finite, 0);
        EXPECT_LE(e.max_rel, ln_bound(u, rho, n, 64)) << "default forward";
        EXPECT_LE(eu.max_rel, ln_bound(u, rho, n, 64)) << "unfused";
        EXPECT_LE(ed.max_rel, ln_bound(u, rho, n, 256)) << "forced deferred";
        // The documented bound (docs/math.md §7.4): within 10x of the unfused path at |μ|/σ <= 100
        // (floored at 8 u so two results at the rounding floor are not compared on noise).
        if (rho <= 100) {
          EXPECT_LE(e.max_rel, 10 * std::max(eu.max_rel, 8 * u));
        }
        if (std::getenv("FFNKIT_PRINT_ERRORS"))
          std::printf("LN %s N=%ld T=%ld rho=%g default=%.3g unfused=%.3g deferred=%.3g\n",
                      test::Scalar<T>::name(), static_cast<long>(n), static_cast<long>(tokens), rho,
                      e.max_rel, eu.max_rel, ed.max_rel);
        ::testing::Test::RecordProperty(
            "max_rel_fused_" + std::to_string(n) + "_" + std::to_string(int(rho)),
            std::to_string(e.max_rel));
      }
    }
  }
}

TYPED_TEST(NormTest, RMSNormIsIndifferentToMeanOffsets) {
  using T = typename TestFixture::T;
  for (double rho : {0.0, 10.0, 100.0, 1000.0}) {
    SCOPED_TRACE(testing::Message() << "|mu|/sigma=" << rho);
    NormCase<T> c(false, 300, 40, 77);
    for (index_t tokens : {1, 20}) {
      GuardedMatrix<T> x(tokens, 300);
      std::vector<double> xd(static_cast<std::size_t>(tokens * 300));
      fill_normal(xd.data(), tokens * 300, 3, rho, 1.0);
      x.set(std::vector<T>(xd.begin(), xd.end()));
      check_both_paths(c.make_rms(), c, x, 0);
    }
  }
}

TYPED_TEST(NormTest, EpsilonEdgeCases) {
  using T = typename TestFixture::T;
  for (double eps : {1e-30, 1e-12, 1e-5, 1e3}) {
    for (bool ln : {false, true}) {
      for (int kind = 0; kind < 3; ++kind) {  // random, all-zero tokens, constant tokens
        for (index_t tokens : {1, 20}) {
          SCOPED_TRACE(testing::Message() << "eps=" << eps << " layer_norm=" << ln
                                          << " kind=" << kind << " tokens=" << tokens);
          NormCase<T> c(ln, 65, 33, 5);
          c.eps = eps;
          GuardedMatrix<T> x(tokens, 65);
          std::vector<T> v = test::random_vector<T>(tokens * 65, 8);
          if (kind == 1) std::fill(v.begin(), v.end(), T(0));
          if (kind == 2) std::fill(v.begin(), v.end(), T(3.25));
          x.set(v);
          // An all-zero RMSNorm token with ε = 1e-30 has r = 1e15: y = r (W'0) + b = b exactly,
          // and LayerNorm's constant tokens have x − μ = 0 exactly (the shifted sums find μ =
          // x[0]).
          if (ln)
            check_both_paths(c.make_ln(), c, x, 0);
          else
            check_both_paths(c.make_rms(), c, x, 0);
        }
      }
    }
  }
}

TYPED_TEST(NormTest, NormBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  NormCase<T> c(true, 8, 4, 1);
  const T* w = c.weight.data();
  using test::throws_error;
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, Cpu>(0, 4, nullptr, w, nullptr); },
                           {"RMSNormLinear", "in_features = 0"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, Cpu>(8, -1, nullptr, nullptr, w, nullptr); },
                           {"LayerNormLinear", "out_features = -1"}));
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, Cpu>(8, 4, nullptr, nullptr, nullptr); },
                           {"weight is a null pointer"}));
  for (double eps : {0.0, -1e-5, std::nan(""), kInf}) {
    EXPECT_TRUE(throws_error(
        [&] { LayerNormLinear<T, Cpu>(8, 4, nullptr, nullptr, w, nullptr, eps); }, {"eps = "}));
    EXPECT_TRUE(
        throws_error([&] { RMSNormLinear<T, Cpu>(8, 4, nullptr, w, nullptr, eps); }, {"eps = "}));
  }
  if (std::is_same<T, float>::value) {
    EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, Cpu>(8, 4, nullptr, w, nullptr, 1e-50); },
                             {"eps = 1e-50", "rounds to 0"}));
  }
  std::vector<T> g(8, T(1));
  g[5] = std::numeric_limits<T>::quiet_NaN();
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, Cpu>(8, 4, g.data(), w, nullptr); },
                           {"gamma[5]", "not finite"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, Cpu>(8, 4, nullptr, g.data(), w, nullptr); },
                           {"beta[5]", "not finite"}));

  auto layer = c.make_ln();
  std::vector<T> xs(3 * 9), ys(3 * 5), ns(3 * 8);
  const MatrixView<const T> x(xs.data(), 3, 8);
  const MatrixView<T> y(ys.data(), 3, 4);
  EXPECT_TRUE(throws_error([&] { layer.forward(MatrixView<const T>(xs.data(), 3, 9), y); },
                           {"LayerNormLinear::forward", "x.cols = 9", "in_features = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.forward_unfused(x, MatrixView<T>(ys.data(), 3, 5)); },
                           {"forward_unfused", "y.cols = 5", "out_features = 4"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(x, MatrixView<T>(ys.data(), 2, 4)); },
                           {"y.rows = 2", "x.rows = 3"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(MatrixView<const T>(xs.data(), 0, 8), y); },
                           {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(MatrixView<const T>(nullptr, 3, 8), y); },
                           {"x.data is a null pointer"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(MatrixView<const T>(ys.data(), 3, 4), y); },
                           {"x.cols = 4"}));
  EXPECT_TRUE(throws_error(
      [&] {
        layer.forward(MatrixView<const T>(xs.data(), 3, 8), MatrixView<T>(xs.data() + 1, 3, 4));
      },
      {"overlap"}));
  char small[8];
  EXPECT_TRUE(throws_error(
      [&] {
        layer.forward_unfused(x, y, Workspace{small, sizeof small});
      },
      {"workspace.bytes = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(x, y, {}, MatrixView<T>(ns.data(), 3, 7)); },
                           {"normalized.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.set_center_threshold(-1); }, {"mu_over_sigma = -1"}));
  LayerNormLinear<T, Cpu> empty;
  EXPECT_TRUE(throws_error([&] { empty.forward(x, y); }, {"empty"}));
}

// --- SoftmaxLinear ------------------------------------------------------------------------------

struct SoftmaxShape {
  index_t queries, keys, dim;
};

template <class T>
void check_softmax(const SoftmaxLinear<T, Cpu>& op, index_t q, index_t keys, index_t dim,
                   double scale, double offset, bool masked, index_t pad, std::uint64_t seed) {
  GuardedMatrix<T> s(q, keys, pad), v(keys, dim, pad), mask(q, keys, pad);
  std::vector<double> sd(static_cast<std::size_t>(q * keys));
  fill_normal(sd.data(), q * keys, seed, offset, scale);
  s.set(std::vector<T>(sd.begin(), sd.end()));
  v.set(test::random_vector<T>(keys * dim, seed + 1));
  std::vector<T> md(static_cast<std::size_t>(q * keys), T(0));
  if (masked) {
    // Scattered −inf, a finite penalty, and fully masked rows 0 and q−1 (when q > 2).
    for (index_t i = 0; i < q; ++i)
      for (index_t k = 0; k < keys; ++k) {
        T& mv = md[i * keys + k];
        if ((i * 7 + k * 3) % 5 == 0) mv = -std::numeric_limits<T>::infinity();
        if (k % 11 == 3) mv = T(-2.5);
        if (q > 2 && (i == 0 || i == q - 1)) mv = -std::numeric_limits<T>::infinity();
        // A masked prefix longer than a tile (a sliding window): whole tiles, and with few
        // queries a whole key split, see only −inf before the first live key.
        if ((q > 3 ? i == 1 : i == 0) && k < keys / 2) mv = -std::numeric_limits<T>::infinity();
      }
  }
  mask.set(md);
  const auto ref =
      reference::softmax_v(s.to_double(), masked ? mask.to_double() : std::vector<double>(), q,
                           keys, v.to_double(), dim);
  GuardedMatrix<T> y(q, dim, pad), yu(q, dim, pad);
  const MatrixView<const T> mv = masked ? mask.cview() : MatrixView<const T>();
  op.forward(s.cview(), v.cview(), y.view(), mv);
  op.forward_unfused(s.cview(), v.cview(), yu.view(), mv);
  ASSERT_TRUE(y.guards_intact());
  ASSERT_TRUE(yu.guards_intact());
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), q, dim, y.stride(), ref)))
      << "one-pass";
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(yu.data(), q, dim, yu.stride(), ref)))
      << "three-pass";
  if (masked && q > 2) {
    for (index_t j = 0; j < dim; ++j) {
      ASSERT_EQ(y.at(0, j), T(0)) << "fully masked row must be exactly zero";
      ASSERT_EQ(y.at(q - 1, j), T(0));
      ASSERT_EQ(yu.at(0, j), T(0));
    }
  }
}

TYPED_TEST(NormTest, SoftmaxMatchesReferenceMaskedAndUnmasked) {
  using T = typename TestFixture::T;
  const std::vector<SoftmaxShape> shapes = {
      {1, 1, 1},      {1, 7, 33},    {5, 255, 64},  {33, 256, 17},
      {40, 257, 128}, {70, 1000, 7}, {1, 5000, 64}, {3, 2049, 128},
  };
  for (const auto& sh : shapes) {
    for (bool masked : {false, true}) {
      for (index_t pad : {0, 2}) {
        SCOPED_TRACE(testing::Message()
                     << "queries=" << sh.queries << " keys=" << sh.keys << " dim=" << sh.dim
                     << " masked=" << masked << " pad=" << pad);
        // Small tiles too, so several tiles, a ragged last tile and the key split are exercised.
        for (auto tiles : {std::pair<index_t, index_t>{256, 32}, {16, 3}}) {
          const SoftmaxLinear<T, Cpu> op(tiles.first, tiles.second);
          check_softmax(op, sh.queries, sh.keys, sh.dim, 3.0, 0.0, masked, pad, 17 + sh.keys);
        }
      }
    }
  }
}

TYPED_TEST(NormTest, SoftmaxLargeMagnitudeScoresDoNotOverflow) {
  using T = typename TestFixture::T;
  // exp(1e4) overflows both float and double; the running max keeps every exponent <= 0. Scores
  // rise along the keys so the max moves tile after tile and the rescaling is exercised.
  const SoftmaxLinear<T, Cpu> op(64, 8);
  for (double offset : {1e4, -1e4, 3e4}) {
    for (double scale : {1.0, 30.0, 1e3}) {
      SCOPED_TRACE(testing::Message() << "offset=" << offset << " scale=" << scale);
      check_softmax(op, 9, 700, 32, scale, offset, false, 0, 3);
      check_softmax(op, 9, 700, 32, scale, offset, true, 1, 4);
    }
  }
  GuardedMatrix<T> s(2, 300), v(300, 8), y(2, 8);
  std::vector<T> sv(600);
  for (index_t k = 0; k < 300; ++k) sv[k] = sv[300 + k] = static_cast<T>(1e4 + 10.0 * k);
  s.set(sv);
  v.set(test::random_vector<T>(300 * 8, 1));
  op.forward(s.cview(), v.cview(), y.view());
  const auto ref = reference::softmax_v(s.to_double(), {}, 2, 300, v.to_double(), 8);
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), 2, 8, 8, ref)));
}

TYPED_TEST(NormTest, SoftmaxBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  using test::throws_error;
  const SoftmaxLinear<T, Cpu> op;
  std::vector<T> sb(4 * 10), vb(10 * 6), yb(4 * 6), mb(4 * 10);
  const MatrixView<const T> s(sb.data(), 4, 10), v(vb.data(), 10, 6), m(mb.data(), 4, 10);
  const MatrixView<T> y(yb.data(), 4, 6);
  EXPECT_TRUE(throws_error([&] { op.forward(s, MatrixView<const T>(vb.data(), 9, 6), y); },
                           {"SoftmaxLinear::forward", "v.rows = 9", "keys", "10"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, MatrixView<T>(yb.data(), 4, 5)); },
                           {"y.cols = 5", "head dim", "6"}));
  EXPECT_TRUE(throws_error([&] { op.forward_unfused(s, v, MatrixView<T>(yb.data(), 3, 6)); },
                           {"forward_unfused", "y.rows = 3", "queries", "4"}));
  EXPECT_TRUE(throws_error([&] { op.forward(MatrixView<const T>(sb.data(), 0, 10), v, y); },
                           {"s.rows (queries) = 0"}));
  EXPECT_TRUE(throws_error([&] { op.forward(MatrixView<const T>(sb.data(), 4, 0), v, y); },
                           {"s.cols (keys) = 0"}));
  EXPECT_TRUE(throws_error([&] { op.forward(MatrixView<const T>(nullptr, 4, 10), v, y); },
                           {"s.data is a null pointer"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, y, MatrixView<const T>(mb.data(), 4, 9)); },
                           {"mask.cols = 9"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, y, MatrixView<const T>(mb.data(), 3, 10)); },
                           {"mask.rows = 3"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, MatrixView<T>(sb.data(), 4, 6)); }, {"overlap"}));
  char small[4];
  EXPECT_TRUE(throws_error(
      [&] {
        op.forward_unfused(s, v, y, m, Workspace{small, 4});
      },
      {"workspace.bytes = 4"}));
  EXPECT_TRUE(throws_error(
      [&] {
        op.forward(s, v, y, m, Workspace{small, 4});
      },
      {"SoftmaxLinear::forward", "workspace.bytes = 4", "forward_workspace_size(4, 10, 6)"}));
  EXPECT_TRUE(throws_error([&] { SoftmaxLinear<T, Cpu>(0, 8); }, {"key_tile = 0"}));
  EXPECT_TRUE(throws_error([&] { SoftmaxLinear<T, Cpu>(8, -2); }, {"query_block = -2"}));
}

}  // namespace
}  // namespace ffnkit
