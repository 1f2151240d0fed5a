// FastFeedForward (SPEC §1.9): forward against the naive float64 oracle, including every token's
// path, on both CPU kernels (which must agree bit for bit); the branch rule at exact ties; K > 1
// trees, depth 0, 1 token and odd token counts; adversarial inputs (every token on one path) and
// inputs spread over every leaf; backward against central finite differences in double with the
// path held fixed; and every bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "ffnkit/fff.hpp"
#include "ffnkit/reference/compare.hpp"
#include "ffnkit/reference/fff.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::GuardedMatrix;

template <class T>
reference::FffWeights weights64(const FastFeedForward<T, Cpu>& f) {
  reference::FffWeights w;
  w.in = f.in_features();
  w.out = f.out_features();
  w.trees = f.trees();
  w.depth = f.depth();
  const index_t rows = f.neurons_total();
  w.w_in.assign(f.linear_in_weight(), f.linear_in_weight() + rows * w.in);
  w.b_in.assign(f.linear_in_bias(), f.linear_in_bias() + rows);
  const auto wo = f.linear_out_weight();
  w.w_out.assign(wo.begin(), wo.end());
  return w;
}

// A float rounding of λ can flip a branch only where the oracle's |λ| is within a few rounding
// errors of 0 (relative to |x| |w_in|): such tokens are excluded from the path comparison, and
// there must be few of them.
template <class T>
double ambiguous_margin() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-12;
}

struct Case {
  index_t in, out, trees, depth, tokens;
  double x_stddev;
};

template <class T>
class FffTest : public ::testing::Test {};
using CpuCombos = ::testing::Types<test::Combo<float, Cpu>, test::Combo<double, Cpu>>;
TYPED_TEST_SUITE(FffTest, CpuCombos, test::ComboName);

// Runs both kernels on `f` over x (with row padding, guards checked), and checks outputs and
// paths against the oracle; returns the leaves.
template <class T>
std::vector<std::int32_t> check_forward(const FastFeedForward<T, Cpu>& f, const std::vector<T>& xs,
                                        index_t tokens, bool exact_ties = false) {
  const index_t n = f.in_features(), m = f.out_features(), k = f.trees();
  GuardedMatrix<T> x(tokens, n, 3);
  x.set(xs);
  std::vector<std::int32_t> leaves[2];
  std::vector<T> ys[2];
  const FffKernel kernels[2] = {FffKernel::kPerToken, FffKernel::kGrouped};
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i == 0 ? "per-token kernel" : "grouped kernel");
    GuardedMatrix<T> y(tokens, m, 5);
    leaves[i].assign(static_cast<std::size_t>(tokens * k), -1);
    f.forward(x.cview(), y.view(), leaves[i].data(), kernels[i]);
    EXPECT_TRUE(y.guards_intact());
    for (index_t r = 0; r < tokens; ++r)
      ys[i].insert(ys[i].end(), y.data() + r * y.stride(), y.data() + r * y.stride() + m);
  }
  // The two kernels sum in the same order: the same bits, hence the same paths.
  EXPECT_EQ(leaves[0], leaves[1]);
  EXPECT_TRUE(std::equal(ys[0].begin(), ys[0].end(), ys[1].begin(), [](T a, T b) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
  })) << "per-token and grouped outputs differ";
  const auto w = weights64(f);
  const auto x64 = x.to_double();
  reference::FffRouting routing;
  reference::fff(w, x64.data(), tokens, &routing);
  index_t ambiguous = 0;
  for (index_t i = 0; i < tokens * k; ++i) {
    // With exact ties (λ == 0 in every precision) the oracle must agree on those too.
    if (!exact_ties && routing.min_margin[i] <= ambiguous_margin<T>()) {
      ++ambiguous;
      continue;
    }
    EXPECT_EQ(leaves[0][i], routing.leaves[i]) << "token " << i / k << ", tree " << i % k;
  }
  EXPECT_LE(ambiguous, std::max<index_t>(1, tokens * k / 100));
  // The output on the layer's own paths (identical to the oracle's wherever they are certain).
  const auto ref = reference::fff(w, x64.data(), tokens, nullptr, leaves[0].data());
  EXPECT_TRUE(test::within_tolerance<T>(reference::compare(ys[0].data(), tokens, m, m, ref)));
  return leaves[0];
}

TYPED_TEST(FffTest, ForwardMatchesOracleWithPaths) {
  using T = typename TypeParam::Scalar;
  const Case cases[] = {
      {33, 17, 1, 3, 7, 1.0},      // odd widths and tokens
      {64, 48, 3, 4, 255, 1.0},    // K > 1
      {20, 9, 2, 0, 1, 1.0},       // depth 0: one neuron per tree, 1 token
      {40, 24, 1, 6, 1000, 1.0},   // many tokens: the grouped kernel's buckets
      {768, 768, 1, 11, 33, 1.0},  // UltraFastBERT-1x11
      {50, 30, 2, 5, 1, 1.0},      // 1 token, K > 1
      // Wide rows and many tokens: blocks of 85 (768 wide) or 256 (256 wide) tokens, so the
      // grouped kernel routes the top levels in blocks (S = 3, S = 2) before bucketing; K = 2
      // takes the separate output pass, K = 1 the one fused into the buckets' loop.
      {768, 64, 1, 8, 700, 1.0},
      {256, 32, 2, 7, 1200, 1.0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth,
                              " tokens=", c.tokens));
    const auto f = FastFeedForward<T>::random(c.in, c.out, c.trees, c.depth, 11 + c.depth);
    check_forward(f, test::random_vector<T>(c.tokens * c.in, 3, c.x_stddev), c.tokens);
  }
}

// kAuto picks a kernel by token count; whichever it picks gives the same result.
TYPED_TEST(FffTest, AutoKernelAgreesAcrossTokenCounts) {
  using T = typename TypeParam::Scalar;
  const auto f = FastFeedForward<T>::random(24, 16, 2, 5, 3);
  const index_t tokens = FastFeedForward<T>::kGroupedMinTokens + 9;
  const auto xs = test::random_vector<T>(tokens * 24, 8);
  std::vector<T> all(static_cast<std::size_t>(tokens * 16)), one(16);
  f.forward(make_view(xs.data(), tokens, 24), make_view(all.data(), tokens, 16));
  for (index_t t : {index_t(0), tokens - 1}) {
    f.forward(make_view(xs.data() + t * 24, 1, 24), make_view(one.data(), 1, 16));
    EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + t * 16)) << "token " << t;
  }
}

// SPEC §1.9's rule: λ > 0 goes right, λ == 0 (either sign of zero) goes left.
TYPED_TEST(FffTest, TiesGoLeft) {
  using T = typename TypeParam::Scalar;
  const index_t n = 32, m = 8, depth = 3, rows = 15;
  // Every w_in row pairs +1 with -1 and x pairs equal integers: λ = b exactly, whatever the
  // summation order.
  std::vector<T> wi(static_cast<std::size_t>(rows * n)), bi(rows, T(0)), wo(m * rows);
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < n; ++j) wi[r * n + j] = (j % 2) ? T(-1) : T(1);
  for (index_t i = 0; i < m * rows; ++i) wo[i] = T(0.01) * static_cast<T>(i % 7);
  bi[0] = T(0);                                  // root: a tie, left to node 1
  bi[1] = std::numeric_limits<T>::denorm_min();  // node 1: the smallest λ > 0, right to node 4
  bi[4] = -T(0);                                 // node 4: -0 is a tie too, left to node 9
  bi[9] = T(1.5);  // the leaf: routes nothing, and gives y a scale the comparison can judge
  const FastFeedForward<T> f(n, m, 1, depth, wi.data(), bi.data(), wo.data());
  std::vector<T> xs(static_cast<std::size_t>(3 * n));
  for (index_t t = 0; t < 3; ++t)
    for (index_t j = 0; j < n; ++j) xs[t * n + j] = static_cast<T>((j / 2) * (t + 1) - 5);
  const auto leaves = check_forward(f, xs, 3, /*exact_ties=*/true);
  for (std::int32_t l : leaves) EXPECT_EQ(l, 9);
}

// Adversarial: every token takes the same path (here the rightmost), as with UltraFastBERT's
// uninitialised-weight benchmark; the grouped kernel then has one group per level.
TYPED_TEST(FffTest, AllTokensOnOnePath) {
  using T = typename TypeParam::Scalar;
  const index_t n = 48, m = 40, depth = 6, rows = 127, tokens = 999;
  auto f0 = FastFeedForward<T>::random(n, m, 1, depth, 5);
  std::vector<T> bi(rows, T(1000));
  const auto wo = f0.linear_out_weight();
  const FastFeedForward<T> f(n, m, 1, depth, f0.linear_in_weight(), bi.data(), wo.data());
  const auto leaves = check_forward(f, test::random_vector<T>(tokens * n, 4), tokens);
  for (std::int32_t l : leaves) EXPECT_EQ(l, rows - 1);
}

// Every leaf reached: level d's nodes all read coordinate d, and token t's coordinates are the
// bits of t mod 2^(D+1), so the tokens cover every leaf equally.
TYPED_TEST(FffTest, TokensSpreadOverAllLeaves) {
  using T = typename TypeParam::Scalar;
  const index_t n = 9, m = 6, depth = 4, rows = 31, tokens = 3 * 16 + 1;
  std::vector<T> wi(static_cast<std::size_t>(rows * n), T(0)), bi(rows, T(0));
  for (index_t r = 0; r < rows; ++r) {
    index_t d = 0;
    for (index_t q = r + 1; q > 1; q /= 2) ++d;  // the level of heap node r
    wi[r * n + d] = T(1);
  }
  const auto wo = test::random_vector<T>(m * rows, 6);
  const FastFeedForward<T> f(n, m, 1, depth, wi.data(), bi.data(), wo.data());
  std::vector<T> xs(static_cast<std::size_t>(tokens * n));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j) xs[t * n + j] = ((t >> j) & 1) ? T(0.75) : T(-0.5);
  const auto leaves = check_forward(f, xs, tokens);
  const std::set<std::int32_t> distinct(leaves.begin(), leaves.end());
  EXPECT_EQ(distinct.size(), 16u);
  // Random weights and inputs spread too (what the benchmarks rely on).
  const auto fr = FastFeedForward<T>::random(64, 32, 1, 5, 9);
  const auto lr = check_forward(fr, test::random_vector<T>(2000 * 64, 10), 2000);
  EXPECT_EQ(std::set<std::int32_t>(lr.begin(), lr.end()).size(), 32u);
}

TYPED_TEST(FffTest, CountsAndLayout) {
  using T = typename TypeParam::Scalar;
  const auto f = FastFeedForward<T>::random(768, 512, 2, 11, 1);
  EXPECT_EQ(f.nodes_per_tree(), 4095);
  EXPECT_EQ(f.neurons_total(), 8190);
  EXPECT_EQ(f.neurons_per_token(), 24);
  EXPECT_EQ(f.parameter_count(), 8190 * (768 + 512 + 1));
  auto g = FastFeedForward<T>::random(768, 512, 2, 11, 1);
  const auto p = g.params();
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].shape, (std::vector<index_t>{8190, 768}));
  EXPECT_EQ(p[1].shape, (std::vector<index_t>{8190}));
  EXPECT_EQ(p[2].shape, (std::vector<index_t>{8190, 512}));
  // Seeded: the same seed gives the same weights; PyTorch layout round-trips.
  EXPECT_TRUE(
      std::equal(f.linear_in_weight(), f.linear_in_weight() + 8190 * 768, g.linear_in_weight()));
  const auto wo = f.linear_out_weight();
  const FastFeedForward<T> h(768, 512, 2, 11, f.linear_in_weight(), f.linear_in_bias(), wo.data());
  EXPECT_EQ(h.linear_out_weight(), wo);
  EXPECT_EQ(wo[3 * 8190 + 5], f.w_out()[5 * 512 + 3]);  // column k·nodes + n of linear_out
}

// Backward on the recorded paths against central differences of the float64 oracle with the same
// paths held fixed, in double; only visited nodes get gradient.
TEST(FffBackward, MatchesFiniteDifferencesOnFixedPaths) {
  const index_t n = 7, m = 5, k = 2, depth = 2, tokens = 3, rows = k * 7;
  const auto f = FastFeedForward<double>::random(n, m, k, depth, 21);
  const auto xs = test::random_vector<double>(tokens * n, 22);
  const auto dys = test::random_vector<double>(tokens * m, 23);
  std::vector<double> y(static_cast<std::size_t>(tokens * m));
  std::vector<std::int32_t> leaves(static_cast<std::size_t>(tokens * k));
  f.forward(make_view(xs.data(), tokens, n), make_view(y.data(), tokens, m), leaves.data());
  auto fm = f;
  auto grads = make_grads(fm.params());
  GuardedMatrix<double> dx(tokens, n, 2);
  f.backward(make_view(xs.data(), tokens, n), leaves.data(), make_view(dys.data(), tokens, m),
             dx.view(), grads);
  EXPECT_TRUE(dx.guards_intact());

  auto loss = [&](const reference::FffWeights& w, const std::vector<double>& x) {
    const auto out = reference::fff(w, x.data(), tokens, nullptr, leaves.data());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * dys[i];
    return s;
  };
  const auto w0 = weights64(f);
  const double h = 1e-6;
  auto fd = [&](auto&& perturb) {
    auto wp = w0, wm = w0;
    auto xp = xs, xm = xs;
    perturb(wp, xp, h);
    perturb(wm, xm, -h);
    return (loss(wp, xp) - loss(wm, xm)) / (2 * h);
  };
  auto near = [](double a, double b) { return std::abs(a - b) <= 1e-7 * (1 + std::abs(b)); };
  // The visited rows.
  std::set<index_t> visited;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t kk = 0; kk < k; ++kk)
      for (index_t nn = leaves[t * k + kk];; nn = (nn - 1) / 2) {
        visited.insert(kk * 7 + nn);
        if (nn == 0) break;
      }
  for (index_t r = 0; r < rows; ++r) {
    const bool v = visited.count(r) > 0;
    for (index_t j = 0; j < n; ++j) {
      const double num = fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
        w.w_in[r * n + j] += e;
      });
      EXPECT_PRED2(near, grads[0][r * n + j], num) << "w_in row " << r << " col " << j;
      if (!v) {
        EXPECT_EQ(grads[0][r * n + j], 0.0);
      }
    }
    const double nb =
        fd([&](reference::FffWeights& w, std::vector<double>&, double e) { w.b_in[r] += e; });
    EXPECT_PRED2(near, grads[1][r], nb) << "b_in row " << r;
    for (index_t j = 0; j < m; ++j) {
      // w_out is stored [rows x M]; the oracle holds PyTorch's [M x rows].
      const double num = fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
        w.w_out[j * rows + r] += e;
      });
      EXPECT_PRED2(near, grads[2][r * m + j], num) << "w_out row " << r << " col " << j;
      if (!v) {
        EXPECT_EQ(grads[2][r * m + j], 0.0);
      }
    }
  }
  EXPECT_LT(visited.size(), static_cast<std::size_t>(rows));  // some rows are untouched
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j) {
      const double num =
          fd([&](reference::FffWeights&, std::vector<double>& x, double e) { x[t * n + j] += e; });
      EXPECT_PRED2(near, dx.at(t, j), num) << "dx token " << t << " col " << j;
    }
}

// The float backward agrees with the double one on the same weights and paths.
TEST(FffBackward, FloatMatchesDouble) {
  const index_t n = 96, m = 40, k = 2, depth = 5, tokens = 67;
  const auto fd = FastFeedForward<double>::random(n, m, k, depth, 31);
  const auto wo64 = fd.linear_out_weight();
  const index_t rows = fd.neurons_total();
  const std::vector<float> wi(fd.linear_in_weight(), fd.linear_in_weight() + rows * n),
      bi(fd.linear_in_bias(), fd.linear_in_bias() + rows), wo(wo64.begin(), wo64.end());
  const FastFeedForward<float> ff(n, m, k, depth, wi.data(), bi.data(), wo.data());
  const auto xf = test::random_vector<float>(tokens * n, 32);
  const auto dyf = test::random_vector<float>(tokens * m, 33);
  const std::vector<double> xd(xf.begin(), xf.end()), dyd(dyf.begin(), dyf.end());
  std::vector<float> yf(static_cast<std::size_t>(tokens * m));
  std::vector<std::int32_t> leaves(static_cast<std::size_t>(tokens * k));
  ff.forward(make_view(xf.data(), tokens, n), make_view(yf.data(), tokens, m), leaves.data());
  auto f1 = ff;
  auto f2 = fd;
  auto gf = make_grads(f1.params());
  auto gd = make_grads(f2.params());
  std::vector<float> dxf(xf.size());
  std::vector<double> dxd(xd.size());
  ff.backward(make_view(xf.data(), tokens, n), leaves.data(), make_view(dyf.data(), tokens, m),
              make_view(dxf.data(), tokens, n), gf);
  fd.backward(make_view(xd.data(), tokens, n), leaves.data(), make_view(dyd.data(), tokens, m),
              make_view(dxd.data(), tokens, n), gd);
  EXPECT_TRUE(test::within_tolerance<float>(reference::compare(dxf.data(), tokens, n, n, dxd)));
  for (std::size_t i = 0; i < gf.size(); ++i) {
    SCOPED_TRACE(make_message("grads[", i, "]"));
    const std::vector<double> ref(gd[i].begin(), gd[i].end());
    EXPECT_TRUE(test::within_tolerance<float>(reference::compare(
        gf[i].data(), 1, static_cast<index_t>(ref.size()), static_cast<index_t>(ref.size()), ref)));
  }
}

TEST(FffErrors, BadConstructionArguments) {
  using test::throws_error;
  std::vector<float> w(64, 0.f);
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(0, 4, 1, 2, 1); },
                           {"FastFeedForward::random", "in_features = 0"}));
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(4, 4, 0, 2, 1); }, {"trees = 0"}));
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(4, 4, 1, -1, 1); }, {"depth = -1"}));
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(4, 4, 1, 40, 1); },
                           {"depth = 40", "too large"}));
  // Depth 25 at N = M = 4096: 2^26 neurons of 8193 floats, ~2.2 TB.
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(4096, 4096, 1, 25, 1); },
                           {"depth = 25", "bytes", "memory"}));
  EXPECT_TRUE(throws_error([] { FastFeedForward<float>::random(4, 4, 200, 23, 1); },
                           {"trees = 200", "int32"}));
  EXPECT_TRUE(throws_error([&] { FastFeedForward<float>(2, 2, 1, 1, nullptr, w.data(), w.data()); },
                           {"linear_in_weight is a null pointer"}));
  w[5] = std::nanf("");
  EXPECT_TRUE(throws_error(
      [&] { FastFeedForward<float>(2, 2, 1, 1, w.data(), w.data() + 10, w.data() + 20); },
      {"linear_in_weight[5]", "not finite"}));
}

TEST(FffErrors, BadForwardAndBackwardArguments) {
  using test::throws_error;
  const auto f = FastFeedForward<float>::random(16, 8, 2, 3, 1);
  std::vector<float> x(5 * 16, 0.5f), y(5 * 8), dy(5 * 8, 1.f), dx(5 * 16);
  std::vector<std::int32_t> leaves(5 * 2);
  f.forward(make_view<const float>(x.data(), 5, 16), make_view(y.data(), 5, 8), leaves.data());
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(x.data(), 5, 15), make_view(y.data(), 5, 8)); },
      {"FastFeedForward::forward", "x.cols = 15", "in_features = 16"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(x.data(), 5, 16), make_view(y.data(), 5, 7)); },
      {"y.cols = 7", "out_features = 8"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(x.data(), 0, 16), make_view(y.data(), 0, 8)); },
      {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(nullptr, 5, 16), make_view(y.data(), 5, 8)); },
      {"x.data is a null pointer"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(x.data(), 5, 16), make_view(y.data(), 4, 8)); },
      {"y.rows = 4", "x.rows = 5"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(make_view<const float>(x.data(), 2, 16), make_view(x.data() + 8, 2, 8)); },
      {"overlap"}));
  EXPECT_TRUE(throws_error(
      [&] {
        FastFeedForward<float>().forward(make_view<const float>(x.data(), 5, 16),
                                         make_view(y.data(), 5, 8));
      },
      {"empty"}));
  char small[8];
  EXPECT_TRUE(throws_error(
      [&] {
        f.forward(make_view<const float>(x.data(), 5, 16), make_view(y.data(), 5, 8), nullptr,
                  FffKernel::kAuto, Workspace{small, sizeof small});
      },
      {"FastFeedForward::forward", "workspace.bytes = 8", "need workspace_size(5)"}));
  auto fm = f;
  auto grads = make_grads(fm.params());
  const auto xv = make_view<const float>(x.data(), 5, 16);
  const auto dyv = make_view<const float>(dy.data(), 5, 8);
  const auto dxv = make_view(dx.data(), 5, 16);
  EXPECT_TRUE(throws_error([&] { f.backward(xv, nullptr, dyv, dxv, grads); },
                           {"FastFeedForward::backward", "leaves is a null pointer"}));
  auto bad = leaves;
  bad[3] = 2;  // an inner node, not a leaf of a depth-3 tree (leaves 7..14)
  EXPECT_TRUE(throws_error([&] { f.backward(xv, bad.data(), dyv, dxv, grads); },
                           {"leaves[3]", "token 1, tree 1", "= 2", "7..14"}));
  EXPECT_TRUE(throws_error(
      [&] { f.backward(xv, leaves.data(), make_view<const float>(dy.data(), 4, 8), dxv, grads); },
      {"dy.rows = 4"}));
  auto short_grads = grads;
  short_grads[2].pop_back();
  EXPECT_TRUE(throws_error([&] { f.backward(xv, leaves.data(), dyv, dxv, short_grads); },
                           {"grads[2] (w_out).size()"}));
  // dx is optional.
  f.backward(xv, leaves.data(), dyv, MatrixView<float>(), grads);
}

// ---- the device backends: the warp-per-token kernel against the oracle and the Cpu paths ------
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
template <class B>
void check_device_forward(const Case& c, std::uint64_t seed, bool same_path_bias) {
  SCOPED_TRACE(
      make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth, " tokens=", c.tokens));
  auto host = FastFeedForward<float>::random(c.in, c.out, c.trees, c.depth, seed);
  if (same_path_bias) {  // adversarial: every b_in huge, every token on the rightmost path
    const std::vector<float> bi(static_cast<std::size_t>(host.neurons_total()), 1000.f);
    const auto wo = host.linear_out_weight();
    host = FastFeedForward<float>(c.in, c.out, c.trees, c.depth, host.linear_in_weight(), bi.data(),
                                  wo.data());
  }
  const FastFeedForward<float, B> dev(host);
  const auto xs = test::random_vector<float>(c.tokens * c.in, seed + 1, c.x_stddev);
  GuardedMatrix<float> x(c.tokens, c.in, 3), y(c.tokens, c.out, 5);
  x.set(xs);
  test::BackendMatrix<B, float> xd(x), yd(y);
  test::BackendBuffer<B, std::int32_t> leaves_d(static_cast<std::size_t>(c.tokens * c.trees));
  test::for_each_schedule<B>([&] {
    dev.forward(xd.cview(), yd.view(), leaves_d.data());
    yd.sync_to_host();
    EXPECT_TRUE(y.guards_intact());
    const auto leaves = leaves_d.download();
    // The Cpu kernel's paths: the same branch rule, on a λ summed in another order, so the paths
    // agree except where |λ| is within rounding of 0.
    std::vector<float> ycpu(static_cast<std::size_t>(c.tokens * c.out));
    std::vector<std::int32_t> lcpu(leaves.size());
    host.forward(x.cview(), make_view(ycpu.data(), c.tokens, c.out), lcpu.data());
    const auto w = weights64(host);
    const auto x64 = x.to_double();
    reference::FffRouting routing;
    reference::fff(w, x64.data(), c.tokens, &routing);
    index_t ambiguous = 0;
    for (std::size_t i = 0; i < leaves.size(); ++i) {
      if (routing.min_margin[i] <= ambiguous_margin<float>()) {
        ++ambiguous;
        continue;
      }
      EXPECT_EQ(leaves[i], routing.leaves[i]) << "token " << i / c.trees;
      EXPECT_EQ(leaves[i], lcpu[i]) << "token " << i / c.trees;
    }
    EXPECT_LE(ambiguous, std::max<index_t>(1, c.tokens * c.trees / 100));
    const auto ref = reference::fff(w, x64.data(), c.tokens, nullptr, leaves.data());
    std::vector<float> yh;
    for (index_t r = 0; r < c.tokens; ++r)
      yh.insert(yh.end(), y.data() + r * y.stride(), y.data() + r * y.stride() + c.out);
    EXPECT_TRUE(
        test::within_tolerance<float>(reference::compare(yh.data(), c.tokens, c.out, c.out, ref)));
    if (same_path_bias) {
      for (std::int32_t l : leaves) EXPECT_EQ(l, 2 * ((index_t(1) << c.depth) - 1));
    }
  });
}

template <class B>
void device_suite() {
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  check_device_forward<B>({33, 17, 1, 3, 7, 1.0}, 41, false);
  check_device_forward<B>({64, 48, 3, 4, 37, 1.0}, 42, false);  // K > 1
  check_device_forward<B>({20, 9, 2, 0, 1, 1.0}, 43, false);    // depth 0, 1 token
  check_device_forward<B>({40, 24, 1, 5, 65, 1.0}, 44, true);   // every token on one path
  check_device_forward<B>({768, 768, 1, 11, 5, 1.0}, 45, false);
}
#endif

#if defined(FFNKIT_WITH_CUDA_EMU)
TEST(FffDevice, CudaEmuForwardMatchesOracleAndCpuPaths) { device_suite<CudaEmu>(); }
// The device kernel's branch rule at exact ties: the TiesGoLeft weights (λ = b exactly).
TEST(FffDevice, CudaEmuTiesGoLeft) {
  const index_t n = 32, m = 8, depth = 3, rows = 15, tokens = 3;
  std::vector<float> wi(static_cast<std::size_t>(rows * n)), bi(rows, 0.f), wo(m * rows, 0.01f);
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < n; ++j) wi[r * n + j] = (j % 2) ? -1.f : 1.f;
  bi[1] = std::numeric_limits<float>::denorm_min();  // right at node 1
  bi[4] = -0.f;                                      // a tie at node 4: left
  const FastFeedForward<float, CudaEmu> dev(n, m, 1, depth, wi.data(), bi.data(), wo.data());
  std::vector<float> xs(static_cast<std::size_t>(tokens * n));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j) xs[t * n + j] = static_cast<float>((j / 2) * (t + 1) - 5);
  test::BackendBuffer<CudaEmu, float> x(xs.size()), y(static_cast<std::size_t>(tokens * m));
  test::BackendBuffer<CudaEmu, std::int32_t> leaves(tokens);
  x.upload(xs);
  dev.forward(MatrixView<const float>(x.data(), tokens, n), MatrixView<float>(y.data(), tokens, m),
              leaves.data());
  for (std::int32_t l : leaves.download()) EXPECT_EQ(l, 9);
}

TEST(FffDevice, CudaEmuBadInputs) {
  const auto dev = FastFeedForward<float, CudaEmu>::random(16, 8, 1, 2, 1);
  test::BackendBuffer<CudaEmu, float> x(5 * 16), y(5 * 8);
  EXPECT_TRUE(test::throws_error(
      [&] {
        dev.forward(MatrixView<const float>(x.data(), 5, 15), MatrixView<float>(y.data(), 5, 8));
      },
      {"FastFeedForward::forward", "x.cols = 15", "in_features = 16"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        dev.forward(MatrixView<const float>(x.data(), 0, 16), MatrixView<float>(y.data(), 0, 8));
      },
      {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(test::throws_error([] { FastFeedForward<float, CudaEmu>::random(4, 4, 1, 40, 1); },
                                 {"depth = 40"}));
}
#endif
#if defined(FFNKIT_WITH_CUDA)
TEST(FffDevice, CudaForwardMatchesOracleAndCpuPaths) { device_suite<Cuda>(); }
#endif

}  // namespace
}  // namespace ffnkit
