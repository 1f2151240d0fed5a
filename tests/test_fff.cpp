// FastFeedForward (docs/math.md §6): forward against the naive float64 oracle, including every
// token's path, on both CPU kernels (which must agree bit for bit); the branch rule at exact ties;
// K > 1 trees, depth 0, 1 token and odd token counts; adversarial inputs (every token on one path)
// and inputs spread over every leaf; backward against central finite differences in double with the
// path held fixed; and every bad input. The device layers (fp32, fp16, bf16; CudaEmu in CI): both
// forward kernels against the oracle and the Cpu paths, the grouped kernel against the
// warp-per-token one bit for bit, and the device backward against the Cpu backward and finite
// differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <type_traits>
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

// docs/math.md §6's rule: λ > 0 goes right, λ == 0 (either sign of zero) goes left.
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

// ---- the device backends: both forward kernels and backward, against the oracle and the Cpu ----
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
// Unit roundoff of the 16-bit storage types (0 for float: the harness's float tolerance applies).
template <class T>
double unit_roundoff() {
  if (std::is_same<T, __half>::value) return std::ldexp(1.0, -11);
  if (std::is_same<T, __nv_bfloat16>::value) return std::ldexp(1.0, -8);
  return 0.0;
}

// The device layers compute λ, GELU and every sum in fp32 from T values the oracle also sees
// (weights and inputs rounded to T first), and round a 16-bit result once at the end: its error is
// that one rounding, at most u relative per element (u the unit roundoff), plus the fp32 sums'
// error, far below 5e-5 here. A 16-bit accumulator rounded at every level would add one such
// error per level and break the bound.
template <class T>
test::Tolerance device_tolerance() {
  const double u = unit_roundoff<T>();
  if (u == 0.0) return test::tolerance<float>();
  return {u * u + 1e-10, u + 5e-5};
}

const char* kernel_name(FffKernel k) {
  if (k == FffKernel::kAuto) return "kernel chosen by kAuto";
  return k == FffKernel::kGrouped ? "grouped kernel" : "warp-per-token kernel";
}

// Forward of the T layer on B with both kernels: guards, every path against the oracle and the Cpu
// float layer on the same (rounded) weights and inputs wherever |λ| is not within float rounding of
// 0, and the output on the layer's own paths within device_tolerance<T>().
template <class B, class T>
void check_device_forward(const Case& c, std::uint64_t seed, bool same_path_bias) {
  SCOPED_TRACE(make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth,
                            " tokens=", c.tokens, " ", test::Scalar<T>::name()));
  auto host0 = FastFeedForward<float>::random(c.in, c.out, c.trees, c.depth, seed);
  if (same_path_bias) {  // adversarial: every b_in huge, every token on the rightmost path
    const std::vector<float> bi(static_cast<std::size_t>(host0.neurons_total()), 1000.f);
    const auto wo = host0.linear_out_weight();
    host0 = FastFeedForward<float>(c.in, c.out, c.trees, c.depth, host0.linear_in_weight(),
                                   bi.data(), wo.data());
  }
  const FastFeedForward<T, B> dev(host0);
  const auto host = dev.to_cpu();  // the weights as the device holds them
  GuardedMatrix<T> x(c.tokens, c.in, 3);
  x.set(test::random_vector<T>(c.tokens * c.in, seed + 1, c.x_stddev));
  const auto x64 = x.to_double();
  const std::vector<float> xf(x64.begin(), x64.end());
  // The Cpu kernel's paths: the same branch rule, on a λ summed in another order, so the paths
  // agree except where |λ| is within rounding of 0.
  std::vector<float> ycpu(static_cast<std::size_t>(c.tokens * c.out));
  std::vector<std::int32_t> lcpu(static_cast<std::size_t>(c.tokens * c.trees));
  host.forward(make_view<const float>(xf.data(), c.tokens, c.in),
               make_view(ycpu.data(), c.tokens, c.out), lcpu.data());
  const auto w = weights64(host);
  reference::FffRouting routing;
  reference::fff(w, x64.data(), c.tokens, &routing);
  test::BackendMatrix<B, T> xd(x);
  for (FffKernel kernel : {FffKernel::kPerToken, FffKernel::kGrouped}) {
    SCOPED_TRACE(kernel_name(kernel));
    GuardedMatrix<T> y(c.tokens, c.out, 5);
    test::BackendMatrix<B, T> yd(y);
    test::BackendBuffer<B, std::int32_t> leaves_d(static_cast<std::size_t>(c.tokens * c.trees));
    test::for_each_schedule<B>([&] {
      dev.forward(xd.cview(), yd.view(), leaves_d.data(), kernel);
      yd.sync_to_host();
      EXPECT_TRUE(y.guards_intact());
      const auto leaves = leaves_d.download();
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
      EXPECT_TRUE(test::within_tolerance<T>(
          test::compare(y.data(), c.tokens, c.out, y.stride(), ref), device_tolerance<T>()));
      if (same_path_bias) {
        for (std::int32_t l : leaves) EXPECT_EQ(l, 2 * ((index_t(1) << c.depth) - 1));
      }
    });
  }
}

template <class B, class T>
void device_suite() {
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  check_device_forward<B, T>({33, 17, 1, 3, 7, 1.0}, 41, false);
  check_device_forward<B, T>({64, 48, 3, 4, 37, 1.0}, 42, false);  // K > 1
  check_device_forward<B, T>({20, 9, 2, 0, 1, 1.0}, 43, false);    // depth 0, 1 token
  check_device_forward<B, T>({40, 24, 1, 5, 65, 1.0}, 44, true);   // every token on one path
  if (std::is_same<T, float>::value) {
    check_device_forward<B, T>({768, 768, 1, 11, 5, 1.0}, 45, false);
  } else {
    check_device_forward<B, T>({96, 80, 1, 9, 9, 1.0}, 45, false);  // 10 levels summed in fp32
  }
}

// Device backward (fp32 compute) on the paths its own forward recorded, against the Cpu double
// backward of the same (rounded) weights, inputs and paths; for float also against the Cpu float
// backward. Rows no token visited are exactly zero; two runs give the same bits.
template <class B, class T>
void check_device_backward(const Case& c, std::uint64_t seed) {
  SCOPED_TRACE(make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth,
                            " tokens=", c.tokens, " ", test::Scalar<T>::name()));
  auto dev = FastFeedForward<T, B>::random(c.in, c.out, c.trees, c.depth, seed);
  const auto host = dev.to_cpu();
  const index_t rows = host.neurons_total();
  GuardedMatrix<T> x(c.tokens, c.in, 2), dy(c.tokens, c.out, 1), y(c.tokens, c.out);
  x.set(test::random_vector<T>(c.tokens * c.in, seed + 1));
  dy.set(test::random_vector<T>(c.tokens * c.out, seed + 2));
  test::BackendMatrix<B, T> xd(x), dyd(dy), yd(y);
  test::BackendBuffer<B, std::int32_t> leaves_d(static_cast<std::size_t>(c.tokens * c.trees));
  dev.forward(xd.cview(), yd.view(), leaves_d.data());
  const auto leaves = leaves_d.download();
  // The reference: the Cpu double layer on the same weights, inputs and paths.
  const auto wo = host.linear_out_weight();
  const std::vector<double> wi64(host.linear_in_weight(), host.linear_in_weight() + rows * c.in),
      bi64(host.linear_in_bias(), host.linear_in_bias() + rows), wo64(wo.begin(), wo.end());
  const FastFeedForward<double> fd(c.in, c.out, c.trees, c.depth, wi64.data(), bi64.data(),
                                   wo64.data());
  const auto x64 = x.to_double(), dy64 = dy.to_double();
  auto fdm = fd;
  auto gd = make_grads(fdm.params());
  std::vector<double> dx64(x64.size());
  fd.backward(make_view<const double>(x64.data(), c.tokens, c.in), leaves.data(),
              make_view<const double>(dy64.data(), c.tokens, c.out),
              make_view(dx64.data(), c.tokens, c.in), gd);
  std::set<index_t> visited;
  for (index_t t = 0; t < c.tokens; ++t)
    for (index_t k = 0; k < c.trees; ++k)
      for (index_t n = leaves[t * c.trees + k];; n = (n - 1) / 2) {
        visited.insert(k * host.nodes_per_tree() + n);
        if (n == 0) break;
      }
  auto grads = dev.make_grads();
  std::vector<std::vector<T>> first;
  test::for_each_schedule<B>([&] {
    GuardedMatrix<T> dx(c.tokens, c.in, 3);
    test::BackendMatrix<B, T> dxd(dx);
    dev.backward(xd.cview(), leaves_d.data(), dyd.cview(), dxd.view(), grads);
    dxd.sync_to_host();
    EXPECT_TRUE(dx.guards_intact());
    EXPECT_TRUE(test::within_tolerance<T>(
        test::compare(dx.data(), c.tokens, c.in, dx.stride(), dx64), device_tolerance<T>()));
    const index_t widths[3] = {c.in, 1, c.out};
    for (std::size_t i = 0; i < 3; ++i) {
      SCOPED_TRACE(make_message("grads[", i, "]"));
      const auto g = grads[i].to_host();
      const std::vector<double> ref(gd[i].begin(), gd[i].end());
      EXPECT_TRUE(
          test::within_tolerance<T>(test::compare(g.data(), 1, static_cast<index_t>(g.size()),
                                                  static_cast<index_t>(g.size()), ref),
                                    device_tolerance<T>()));
      for (index_t r = 0; r < rows; ++r) {
        if (visited.count(r)) continue;
        for (index_t j = 0; j < widths[i]; ++j)
          EXPECT_EQ(test::Scalar<T>::to_double(g[r * widths[i] + j]), 0.0) << "unvisited row " << r;
      }
      if (first.size() < 3) {
        first.push_back(g);
      } else {  // deterministic: the second schedule's run gives the same bits
        EXPECT_EQ(std::memcmp(first[i].data(), g.data(), g.size() * sizeof(T)), 0);
      }
    }
  });
  if (c.depth > 1) {  // some rows are untouched (a depth-0 tree is one visited node)
    EXPECT_LT(visited.size(), static_cast<std::size_t>(rows));
  }
  if (std::is_same<T, float>::value) {  // the Cpu float backward of the same parameters
    auto hm = host;
    auto gf = make_grads(hm.params());
    const std::vector<float> xf(x64.begin(), x64.end()), dyf(dy64.begin(), dy64.end());
    host.backward(make_view<const float>(xf.data(), c.tokens, c.in), leaves.data(),
                  make_view<const float>(dyf.data(), c.tokens, c.out), MatrixView<float>(), gf);
    for (std::size_t i = 0; i < 3; ++i) {
      const std::vector<double> ref(gf[i].begin(), gf[i].end());
      const auto g = grads[i].to_host();
      EXPECT_TRUE(test::within_tolerance<float>(test::compare(
          g.data(), 1, static_cast<index_t>(g.size()), static_cast<index_t>(g.size()), ref)))
          << "grads[" << i << "] against the Cpu float backward";
    }
  }
}
#endif

#if defined(FFNKIT_WITH_CUDA_EMU)
TEST(FffDevice, CudaEmuForwardMatchesOracleAndCpuPaths) { device_suite<CudaEmu, float>(); }
TEST(FffDevice, CudaEmuHalfForwardMatchesOracleAndCpuPaths) { device_suite<CudaEmu, __half>(); }
TEST(FffDevice, CudaEmuBf16ForwardMatchesOracleAndCpuPaths) {
  device_suite<CudaEmu, __nv_bfloat16>();
}

// The device kernels' branch rule at exact ties: the TiesGoLeft weights (λ = b exactly).
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
  for (FffKernel kernel : {FffKernel::kPerToken, FffKernel::kGrouped}) {
    dev.forward(MatrixView<const float>(x.data(), tokens, n),
                MatrixView<float>(y.data(), tokens, m), leaves.data(), kernel);
    for (std::int32_t l : leaves.download()) EXPECT_EQ(l, 9) << kernel_name(kernel);
  }
}

// The grouped kernel against the warp-per-token kernel over many tokens, bit for bit (leaves and
// fp32 outputs), with exact ties: w_in rows antisymmetric in pairs (w[2i+1] = −w[2i]) and b_in = 0
// at every even node, so a token whose x pairs are equal has λ = 0 exactly there in any summation
// order (lane l and l+1 hold negated partial sums), while the others spread over the tree.
TEST(FffDevice, CudaEmuGroupedMatchesPerTokenBitForBit) {
  // Depth 8: the grouped mode groups levels 0..7 (520 >> 7 >= 4 tokens per node on average) and
  // walks level 8 per token, so the hand-over is covered too. 520 >= kGroupedMinTokens: kAuto
  // takes the grouped kernel.
  const index_t n = 32, m = 16, k = 2, depth = 8, tokens = 520;
  const auto f0 = FastFeedForward<float>::random(n, m, k, depth, 51);
  const index_t rows = f0.neurons_total();
  std::vector<float> wi(f0.linear_in_weight(), f0.linear_in_weight() + rows * n),
      bi(f0.linear_in_bias(), f0.linear_in_bias() + rows);
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 1; j < n; j += 2) wi[r * n + j] = -wi[r * n + j - 1];
    if ((r % f0.nodes_per_tree()) % 2 == 0) bi[r] = 0.f;
  }
  const auto wo = f0.linear_out_weight();
  const FastFeedForward<float> host(n, m, k, depth, wi.data(), bi.data(), wo.data());
  const FastFeedForward<float, CudaEmu> dev(host);
  EXPECT_TRUE(dev.uses_grouped(tokens));  // kAuto's choice at this count
  EXPECT_FALSE(dev.uses_grouped(FastFeedForward<float, CudaEmu>::kGroupedMinTokens - 1));
  auto xs = test::random_vector<float>(tokens * n, 52);
  for (index_t t = 0; t < tokens; t += 4)
    for (index_t j = 1; j < n; j += 2) xs[t * n + j] = xs[t * n + j - 1];  // tie tokens
  GuardedMatrix<float> x(tokens, n, 1);
  x.set(xs);
  test::BackendMatrix<CudaEmu, float> xd(x);
  std::vector<std::int32_t> leaves[3];
  std::vector<float> ys[3];
  const FffKernel kernels[3] = {FffKernel::kPerToken, FffKernel::kGrouped, FffKernel::kAuto};
  test::for_each_schedule<CudaEmu>([&] {
    for (int i = 0; i < 3; ++i) {
      GuardedMatrix<float> y(tokens, m, 2);
      test::BackendMatrix<CudaEmu, float> yd(y);
      test::BackendBuffer<CudaEmu, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
      dev.forward(xd.cview(), yd.view(), ld.data(), kernels[i]);
      yd.sync_to_host();
      EXPECT_TRUE(y.guards_intact());
      leaves[i] = ld.download();
      ys[i].clear();
      for (index_t r = 0; r < tokens; ++r)
        ys[i].insert(ys[i].end(), y.data() + r * y.stride(), y.data() + r * y.stride() + m);
    }
    for (int i = 1; i < 3; ++i) {
      EXPECT_EQ(leaves[i], leaves[0]) << kernel_name(kernels[i]);
      EXPECT_EQ(std::memcmp(ys[i].data(), ys[0].data(), ys[0].size() * sizeof(float)), 0)
          << kernel_name(kernels[i]) << ": outputs differ from the warp-per-token kernel's";
    }
  });
  const auto w = weights64(host);
  const auto x64 = x.to_double();
  reference::FffRouting routing;
  reference::fff(w, x64.data(), tokens, &routing);
  std::set<std::int32_t> distinct;
  for (index_t i = 0; i < tokens * k; ++i) {
    const bool tie = (i / k) % 4 == 0;
    if (tie) {
      EXPECT_EQ(routing.min_margin[i], 0.0) << "token " << i / k << " met no tie";
    }
    if (tie || routing.min_margin[i] > ambiguous_margin<float>()) {
      EXPECT_EQ(leaves[1][i], routing.leaves[i]) << "token " << i / k << ", tree " << i % k;
    }
    distinct.insert(leaves[1][i]);
  }
  EXPECT_GE(distinct.size(), 200u);  // of 256 leaves: the tokens spread
}

TEST(FffDevice, CudaEmuBackwardMatchesCpu) {
  check_device_backward<CudaEmu, float>({33, 17, 2, 4, 29, 1.0}, 61);
  check_device_backward<CudaEmu, float>({20, 9, 1, 0, 1, 1.0}, 62);  // depth 0, 1 token
}
TEST(FffDevice, CudaEmuHalfBackwardMatchesCpu) {
  check_device_backward<CudaEmu, __half>({33, 17, 2, 4, 29, 1.0}, 63);
}
TEST(FffDevice, CudaEmuBf16BackwardMatchesCpu) {
  check_device_backward<CudaEmu, __nv_bfloat16>({33, 17, 2, 4, 29, 1.0}, 64);
}

// The device backward against central differences of the float64 oracle with the device's paths
// held fixed (the Cpu FffBackward pattern); fp32 gradients, so a float-sized tolerance.
TEST(FffDevice, CudaEmuBackwardMatchesFiniteDifferences) {
  const index_t n = 7, m = 5, k = 2, depth = 2, tokens = 3, rows = k * 7;
  auto dev = FastFeedForward<float, CudaEmu>::random(n, m, k, depth, 71);
  const auto xs = test::random_vector<float>(tokens * n, 72);
  const auto dys = test::random_vector<float>(tokens * m, 73);
  test::BackendBuffer<CudaEmu, float> xd(xs.size()), dyd(dys.size()), yd(dys.size()),
      dxd(xs.size());
  test::BackendBuffer<CudaEmu, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
  xd.upload(xs);
  dyd.upload(dys);
  const MatrixView<const float> xv(xd.data(), tokens, n), dyv(dyd.data(), tokens, m);
  dev.forward(xv, MatrixView<float>(yd.data(), tokens, m), ld.data());
  auto grads = dev.make_grads();
  dev.backward(xv, ld.data(), dyv, MatrixView<float>(dxd.data(), tokens, n), grads);
  const auto leaves = ld.download();
  const auto dx = dxd.download();
  std::vector<std::vector<float>> g;
  for (auto& b : grads) g.push_back(b.to_host());
  const std::vector<double> x0(xs.begin(), xs.end());
  auto loss = [&](const reference::FffWeights& w, const std::vector<double>& x) {
    const auto out = reference::fff(w, x.data(), tokens, nullptr, leaves.data());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * dys[i];
    return s;
  };
  const auto w0 = weights64(dev.to_cpu());
  const double h = 1e-6;
  auto fd = [&](auto&& perturb) {
    auto wp = w0, wm = w0;
    auto xp = x0, xm = x0;
    perturb(wp, xp, h);
    perturb(wm, xm, -h);
    return (loss(wp, xp) - loss(wm, xm)) / (2 * h);
  };
  auto near = [](double a, double b) { return std::abs(a - b) <= 1e-5 * (1 + std::abs(b)); };
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < n; ++j)
      EXPECT_PRED2(near, g[0][r * n + j],
                   fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                     w.w_in[r * n + j] += e;
                   }))
          << "w_in row " << r << " col " << j;
    EXPECT_PRED2(near, g[1][r], fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                   w.b_in[r] += e;
                 }))
        << "b_in row " << r;
    for (index_t j = 0; j < m; ++j)
      EXPECT_PRED2(near, g[2][r * m + j],
                   fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                     w.w_out[j * rows + r] += e;
                   }))
          << "w_out row " << r << " col " << j;
  }
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j)
      EXPECT_PRED2(
          near, dx[t * n + j],
          fd([&](reference::FffWeights&, std::vector<double>& x, double e) { x[t * n + j] += e; }))
          << "dx token " << t << " col " << j;
}

TEST(FffDevice, CudaEmuBadInputs) {
  const auto dev = FastFeedForward<float, CudaEmu>::random(16, 8, 1, 2, 1);
  test::BackendBuffer<CudaEmu, float> x(5 * 16), y(5 * 8), dy(5 * 8), dx(5 * 16);
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
  // The grouped kernel's rows must fit 48 KB of shared memory.
  const auto wide = FastFeedForward<float, CudaEmu>::random(12288, 1, 1, 0, 1);
  test::BackendBuffer<CudaEmu, float> xw(12288), yw(1);
  EXPECT_TRUE(test::throws_error(
      [&] {
        wide.forward(MatrixView<const float>(xw.data(), 1, 12288),
                     MatrixView<float>(yw.data(), 1, 1), nullptr, FffKernel::kGrouped);
      },
      {"in_features + out_features = 12289", "12288"}));
  // A 16-bit layer needs fp32 accumulators: a too-small workspace is rejected.
  const auto half = FastFeedForward<__half, CudaEmu>::random(16, 8, 1, 2, 1);
  test::BackendBuffer<CudaEmu, __half> xh(5 * 16), yh(5 * 8);
  test::BackendBuffer<CudaEmu, unsigned char> ws(16);
  EXPECT_TRUE(test::throws_error(
      [&] {
        half.forward(MatrixView<const __half>(xh.data(), 5, 16),
                     MatrixView<__half>(yh.data(), 5, 8), nullptr, FffKernel::kAuto,
                     Workspace{ws.data(), 16});
      },
      {"workspace.bytes = 16", "need 160"}));
  // Backward: leaves that are not leaves, wrong gradient buffers.
  auto dm = FastFeedForward<float, CudaEmu>::random(16, 8, 1, 2, 1);
  auto grads = dm.make_grads();
  test::BackendBuffer<CudaEmu, std::int32_t> leaves(5);
  leaves.upload({3, 4, 5, 1, 6});  // leaves of depth 2 are 3..6: node 1 is inner
  const MatrixView<const float> xv(x.data(), 5, 16), dyv(dy.data(), 5, 8);
  const MatrixView<float> dxv(dx.data(), 5, 16);
  EXPECT_TRUE(test::throws_error([&] { dm.backward(xv, leaves.data(), dyv, dxv, grads); },
                                 {"FastFeedForward::backward", "leaves[3]", "= 1", "3..6"}));
  EXPECT_TRUE(test::throws_error([&] { dm.backward(xv, nullptr, dyv, dxv, grads); },
                                 {"leaves is a null pointer"}));
  grads.pop_back();
  EXPECT_TRUE(test::throws_error([&] { dm.backward(xv, leaves.data(), dyv, dxv, grads); },
                                 {"grads.size() = 2"}));
}
#endif
#if defined(FFNKIT_WITH_CUDA)
TEST(FffDevice, CudaForwardMatchesOracleAndCpuPaths) { device_suite<Cuda, float>(); }
TEST(FffDevice, CudaHalfForwardMatchesOracleAndCpuPaths) { device_suite<Cuda, __half>(); }
TEST(FffDevice, CudaBackwardMatchesCpu) {
  FFNKIT_SKIP_IF_UNAVAILABLE(Cuda);
  check_device_backward<Cuda, float>({33, 17, 2, 4, 29, 1.0}, 61);
}
#endif

}  // namespace
}  // namespace ffnkit
