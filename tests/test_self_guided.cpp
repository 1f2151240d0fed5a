// Self-guided training (docs/math.md §5): the α schedule, the blend y = α W x + (1 − α) S(x) + b
// against the float64 oracle (reference::linear on the guide and on S's materialize()), the
// stochastic decisions, backward against central finite differences in double, dropping the guide,
// and bad inputs. Runs over every structured layer family, float and double, on the Cpu backend;
// the blend and its backward also on every device backend and storage type (SelfGuidedBackendTest).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ffnkit/reference.hpp"
#include "ffnkit/self_guided.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::GuardedMatrix;
using Kind = AlphaSchedule::Kind;

// ---------------------------------------------------------------------------------------------
// The schedule.
// ---------------------------------------------------------------------------------------------

constexpr double kPi = 3.14159265358979323846;

TEST(SelfGuidedSchedule, CosineValuesAtKeyPoints) {
  const AlphaSchedule s = AlphaSchedule::cosine(100);  // ratio 0.5 by default: T = 50
  EXPECT_EQ(s.kind, Kind::kCosine);
  EXPECT_EQ(s.decay_steps(), 50);
  EXPECT_EQ(s.alpha(0), 1.0);
  EXPECT_NEAR(s.alpha(25), 0.5, 1e-15);
  EXPECT_NEAR(s.alpha(10), 0.5 * (1.0 + std::cos(kPi * 10.0 / 50.0)), 1e-15);
  EXPECT_EQ(s.alpha(50), 0.0);
  EXPECT_EQ(s.alpha(51), 0.0);
  EXPECT_EQ(s.alpha(100), 0.0);
  EXPECT_EQ(s.alpha(1000000), 0.0);
  // Non-increasing over the whole run, within [0, 1].
  for (index_t t = 1; t <= 120; ++t) {
    EXPECT_LE(s.alpha(t), s.alpha(t - 1)) << "t=" << t;
    EXPECT_GE(s.alpha(t), 0.0);
  }
  // The default-constructed configuration is cosine with ratio 0.5.
  AlphaSchedule d;
  EXPECT_EQ(d.kind, Kind::kCosine);
  EXPECT_EQ(d.ratio, 0.5);
}

TEST(SelfGuidedSchedule, LinearValuesAtKeyPoints) {
  const AlphaSchedule s = AlphaSchedule::linear(40, 0.25);  // T = 10
  EXPECT_EQ(s.kind, Kind::kLinear);
  EXPECT_EQ(s.decay_steps(), 10);
  EXPECT_EQ(s.alpha(0), 1.0);
  EXPECT_DOUBLE_EQ(s.alpha(5), 0.5);
  EXPECT_DOUBLE_EQ(s.alpha(3), 0.7);
  EXPECT_EQ(s.alpha(10), 0.0);
  EXPECT_EQ(s.alpha(11), 0.0);
  EXPECT_EQ(s.alpha(40), 0.0);
}

TEST(SelfGuidedSchedule, RatioEdgeCasesAndRounding) {
  for (Kind k : {Kind::kCosine, Kind::kLinear}) {
    SCOPED_TRACE(to_string(k));
    // ratio 0 and total_steps 0 both give T = 0: no guidance at all, α = 0 from step 0.
    const AlphaSchedule zero_ratio(100, 0.0, k), zero_total(0, 0.5, k);
    EXPECT_EQ(zero_ratio.decay_steps(), 0);
    EXPECT_EQ(zero_total.decay_steps(), 0);
    EXPECT_EQ(zero_ratio.alpha(0), 0.0);
    EXPECT_EQ(zero_total.alpha(0), 0.0);
    EXPECT_EQ(zero_total.alpha(7), 0.0);
    // ratio 1: the guide decays over the whole run.
    const AlphaSchedule full(10, 1.0, k);
    EXPECT_EQ(full.decay_steps(), 10);
    EXPECT_EQ(full.alpha(0), 1.0);
    EXPECT_GT(full.alpha(9), 0.0);
    EXPECT_EQ(full.alpha(10), 0.0);
    // T = round(ratio × total_steps), half away from zero.
    EXPECT_EQ(AlphaSchedule(5, 0.5, k).decay_steps(), 3);   // 2.5 -> 3
    EXPECT_EQ(AlphaSchedule(7, 0.5, k).decay_steps(), 4);   // 3.5 -> 4
    EXPECT_EQ(AlphaSchedule(10, 0.3, k).decay_steps(), 3);  // 3.0000000000000004 -> 3
    EXPECT_EQ(AlphaSchedule(10, 0.34, k).decay_steps(), 3);
    EXPECT_EQ(AlphaSchedule(10, 0.36, k).decay_steps(), 4);
    // T = 1: α = 1 at step 0 and 0 from step 1.
    const AlphaSchedule one(2, 0.5, k);
    EXPECT_EQ(one.alpha(0), 1.0);
    EXPECT_EQ(one.alpha(1), 0.0);
  }
}

TEST(SelfGuidedSchedule, BadArgumentsAreClearErrors) {
  EXPECT_TRUE(test::throws_error([] { AlphaSchedule(10, -0.1); }, {"ratio = -0.1", "[0, 1]"}));
  EXPECT_TRUE(test::throws_error([] { AlphaSchedule(10, 1.5); }, {"ratio = 1.5", "[0, 1]"}));
  EXPECT_TRUE(test::throws_error(
      [] { AlphaSchedule(10, std::numeric_limits<double>::quiet_NaN()); }, {"ratio = nan"}));
  EXPECT_TRUE(test::throws_error([] { AlphaSchedule(-1); }, {"total_steps = -1", ">= 0"}));
  EXPECT_TRUE(test::throws_error([] { AlphaSchedule::linear(-5, 0.5); }, {"total_steps = -5"}));
  EXPECT_TRUE(test::throws_error([] { AlphaSchedule(10).alpha(-3); }, {"step = -3"}));
  // Fields edited after construction are re-validated on use.
  AlphaSchedule s(10);
  s.ratio = 2.0;
  EXPECT_TRUE(test::throws_error([&] { s.alpha(0); }, {"AlphaSchedule::alpha", "ratio = 2"}));
  EXPECT_TRUE(test::throws_error([&] { s.decay_steps(); }, {"ratio = 2"}));
  s.ratio = 0.5;
  s.total_steps = -7;
  EXPECT_TRUE(test::throws_error([&] { s.alpha(0); }, {"total_steps = -7"}));
}

// ---------------------------------------------------------------------------------------------
// The layer: one typed suite over every structured family, float and double.
// ---------------------------------------------------------------------------------------------

// How each family is built for a test shape (every shape used here has even widths >= 4).
template <class L>
struct Family;
template <class T>
struct Family<LowRankLinear<T, Cpu>> {
  static const char* name() { return "LowRank"; }
  static LowRankLinear<T, Cpu> make(index_t in, index_t out, std::uint64_t seed, bool bias) {
    // stddev 0.3 keeps S's outputs on the same O(1) scale as the guide's.
    return LowRankLinear<T, Cpu>::random(in, out, std::max<index_t>(1, std::min(in, out) / 2), seed,
                                         bias, 0.3);
  }
};
template <class T>
struct Family<BlockShuffleLinear<T, Cpu>> {
  static const char* name() { return "BlockShuffle"; }
  static BlockShuffleLinear<T, Cpu> make(index_t in, index_t out, std::uint64_t seed, bool bias) {
    return BlockShuffleLinear<T, Cpu>::random(in, out, 2, seed, bias, 0.3);
  }
};
template <class T>
struct Family<BlockDiagonalLinear<T, Cpu>> {
  static const char* name() { return "BlockDiagonal"; }
  static BlockDiagonalLinear<T, Cpu> make(index_t in, index_t out, std::uint64_t seed, bool bias) {
    return BlockDiagonalLinear<T, Cpu>::random(in, out, 2, seed, bias, 0.3);
  }
};
template <class T>
struct Family<BlockDenseLinear<T, Cpu>> {
  static const char* name() { return "BlockDense"; }
  static BlockDenseLinear<T, Cpu> make(index_t in, index_t out, std::uint64_t seed, bool bias) {
    const index_t rank = 2 * std::max<index_t>(1, std::min(in, out) / 4);  // < min, even
    return BlockDenseLinear<T, Cpu>::random(in, out, 2, rank, seed, bias, 0.3);
  }
};

struct CaseName {
  template <class L>
  static std::string GetName(int) {
    return std::string(Family<L>::name()) + "_" + test::Scalar<typename L::Scalar>::name();
  }
};

template <class L>
class SelfGuidedTest : public ::testing::Test {};
using AllCases = ::testing::Types<LowRankLinear<float>, LowRankLinear<double>,
                                  BlockShuffleLinear<float>, BlockShuffleLinear<double>,
                                  BlockDiagonalLinear<float>, BlockDiagonalLinear<double>,
                                  BlockDenseLinear<float>, BlockDenseLinear<double>>;
TYPED_TEST_SUITE(SelfGuidedTest, AllCases, CaseName);

template <class L>
class SelfGuidedGradTest : public ::testing::Test {};
using DoubleCases = ::testing::Types<LowRankLinear<double>, BlockShuffleLinear<double>,
                                     BlockDiagonalLinear<double>, BlockDenseLinear<double>>;
TYPED_TEST_SUITE(SelfGuidedGradTest, DoubleCases, CaseName);

// Index of the parameter called `name` in params(), or -1.
template <class T>
int param_index(const std::vector<ParamView<T>>& p, const std::string& name) {
  for (std::size_t i = 0; i < p.size(); ++i)
    if (p[i].name == name) return static_cast<int>(i);
  return -1;
}

// Overwrites the guide with N(0, 1/in) values, so that W differs from S and the tests can tell
// the two branches apart (at construction W = materialize(S)).
template <class SG>
void randomize_guide(SG& sg, std::uint64_t seed) {
  using T = typename SG::Scalar;
  auto p = sg.params();
  const int g = param_index(p, "guide");
  ASSERT_GE(g, 0);
  const auto v = test::random_vector<T>(p[g].size, seed, 1.0 / std::sqrt(double(sg.in_features())));
  std::copy(v.begin(), v.end(), p[g].data);
}

// The oracle: α W x + (1 − α) S x + b in float64, with W the guide and S's dense equivalent
// its materialize(), each applied by reference::linear.
std::vector<double> blend_oracle(const std::vector<double>& x, index_t tokens, index_t in,
                                 index_t out, const std::vector<double>& w,
                                 const std::vector<double>& s, const std::vector<double>& b,
                                 double a) {
  const auto yw = reference::linear(x.data(), tokens, in, w.data(), nullptr, out);
  const auto ys = reference::linear(x.data(), tokens, in, s.data(), nullptr, out);
  std::vector<double> y(yw.size());
  for (index_t t = 0; t < tokens; ++t)
    for (index_t m = 0; m < out; ++m) {
      const std::size_t i = static_cast<std::size_t>(t * out + m);
      y[i] = a * yw[i] + (1.0 - a) * ys[i] + (b.empty() ? 0.0 : b[m]);
    }
  return y;
}

// Bitwise equality of two guarded windows of the same shape.
template <class T>
::testing::AssertionResult bitwise_equal(const GuardedMatrix<T>& a, const GuardedMatrix<T>& b) {
  for (index_t r = 0; r < a.rows(); ++r)
    if (std::memcmp(a.data() + r * a.stride(), b.data() + r * b.stride(),
                    static_cast<std::size_t>(a.cols()) * sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "row " << r << " differs";
  return ::testing::AssertionSuccess();
}

// tokens, in, out: odd token counts, up and down projections, square.
const std::vector<std::tuple<index_t, index_t, index_t>> kShapes = {
    {1, 8, 12}, {7, 12, 8}, {33, 16, 16}, {255, 10, 6}, {5, 64, 256}};

TYPED_TEST(SelfGuidedTest, BlendMatchesOracleAtEveryAlpha) {
  using L = TypeParam;
  using T = typename L::Scalar;
  // cosine over 8 steps with ratio 0.5: T = 4, α = 1, 0.854, 0.5, 0.146, then 0.
  const AlphaSchedule sched = AlphaSchedule::cosine(8);
  for (auto [tokens, in, out] : kShapes) {
    for (bool bias : {true, false}) {
      SCOPED_TRACE(testing::Message()
                   << "tokens=" << tokens << " in=" << in << " out=" << out << " bias=" << bias);
      const L s = Family<L>::make(in, out, 3 + in + out, bias);
      SelfGuided<L> sg(s, sched, /*stochastic=*/false);
      randomize_guide(sg, 17 + in);
      GuardedMatrix<T> x(tokens, in, 3);
      x.set(test::random_vector<T>(tokens * in, 5 + tokens));
      const auto x64 = x.to_double();
      const auto w64 = test::to_double(std::vector<T>(sg.guide(), sg.guide() + out * in));
      const auto s64 = test::to_double(s.materialize());
      const auto b64 = bias ? test::to_double(s.bias_host()) : std::vector<double>();
      for (index_t step = 0; step <= 5; ++step) {
        SCOPED_TRACE(testing::Message() << "step=" << step << " alpha=" << sg.alpha());
        ASSERT_EQ(sg.step_count(), step);
        ASSERT_EQ(sg.alpha(), sched.alpha(step));
        GuardedMatrix<T> y(tokens, out, 2);
        const SelfGuidedDecision d = sg.forward(x.cview(), y.view());
        ASSERT_TRUE(y.guards_intact());
        ASSERT_TRUE(x.guards_intact());
        EXPECT_EQ(d.step, step);
        EXPECT_EQ(d.alpha, sg.alpha());
        // Non-stochastic: the dense branch runs exactly when α > 0.
        EXPECT_EQ(d.used_guide, sg.alpha() > 0.0);
        EXPECT_EQ(sg.last_used_guide(), d.used_guide);
        const auto ref = blend_oracle(x64, tokens, in, out, w64, s64, b64, sg.alpha());
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), ref)));
        if (step == 0) {
          // α = 1: exactly the dense layer W x + b.
          const auto dense = reference::linear(x64.data(), tokens, in, w64.data(),
                                               bias ? b64.data() : nullptr, out);
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), dense)));
        }
        if (sg.alpha() == 0.0) {
          // α = 0: S(x) bitwise (the dense branch is never computed).
          GuardedMatrix<T> ys(tokens, out, 2);
          s.forward(x.cview(), ys.view());
          EXPECT_TRUE(bitwise_equal(y, ys));
        }
        // materialize() is the same blend as a dense weight.
        const auto wm = test::to_double(sg.materialize());
        const auto ref_m =
            reference::linear(x64.data(), tokens, in, wm.data(), bias ? b64.data() : nullptr, out);
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), ref_m)));
        sg.step();
      }
    }
  }
}

TYPED_TEST(SelfGuidedTest, AtStepZeroTheBlendEqualsS) {
  using L = TypeParam;
  using T = typename L::Scalar;
  const index_t tokens = 7, in = 12, out = 8;
  const L s = Family<L>::make(in, out, 21, true);
  SelfGuided<L> sg(s, AlphaSchedule::cosine(100), /*stochastic=*/false);
  EXPECT_EQ(sg.step_count(), 0);
  EXPECT_EQ(sg.alpha(), 1.0);
  ASSERT_TRUE(sg.has_guide());
  // The guide is S's dense equivalent, bit for bit.
  const auto m = s.materialize();
  ASSERT_EQ(0, std::memcmp(sg.guide(), m.data(), m.size() * sizeof(T)));
  EXPECT_EQ(sg.guide_bytes(), static_cast<std::size_t>(out * in) * sizeof(T));
  // So forward at every α of the decay equals S(x) (to rounding) while the guide is untouched.
  GuardedMatrix<T> x(tokens, in, 1);
  x.set(test::random_vector<T>(tokens * in, 2));
  const auto ref = reference::linear(x.to_double().data(), tokens, in, test::to_double(m).data(),
                                     test::to_double(s.bias_host()).data(), out);
  for (int i = 0; i < 60; ++i, sg.step()) {
    GuardedMatrix<T> y(tokens, out, 1);
    sg.forward(x.cview(), y.view());
    ASSERT_TRUE(y.guards_intact());
    EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), ref)))
        << "step " << sg.step_count();
  }
  // Accessors pass S's through.
  EXPECT_EQ(sg.in_features(), in);
  EXPECT_EQ(sg.out_features(), out);
  EXPECT_TRUE(sg.has_bias());
  EXPECT_EQ(0, std::memcmp(sg.bias(), s.bias(), out * sizeof(T)));
  EXPECT_EQ(0, std::memcmp(sg.structured().materialize().data(), m.data(), m.size() * sizeof(T)));
}

TYPED_TEST(SelfGuidedTest, StochasticDecisionsAreSeededAndFrequencyIsAlpha) {
  using L = TypeParam;
  using T = typename L::Scalar;
  const index_t tokens = 3, in = 8, out = 8, n = 4000;
  const L s = Family<L>::make(in, out, 4, true);
  GuardedMatrix<T> x(tokens, in);
  x.set(test::random_vector<T>(tokens * in, 9));
  // Linear over 8 steps, ratio 0.5: T = 4, α = 1, 0.75, 0.5, 0.25, 0.
  const AlphaSchedule sched = AlphaSchedule::linear(8);
  auto decisions = [&](std::uint64_t seed, index_t steps) {
    SelfGuided<L> sg(s, sched, /*stochastic=*/true, seed);
    for (index_t i = 0; i < steps; ++i) sg.step();
    std::vector<bool> d;
    GuardedMatrix<T> y(tokens, out);
    for (index_t i = 0; i < n; ++i) d.push_back(sg.forward(x.cview(), y.view()).used_guide);
    return d;
  };
  for (index_t steps = 0; steps <= 5; ++steps) {
    const double a = sched.alpha(steps);
    SCOPED_TRACE(testing::Message() << "alpha=" << a);
    const auto d1 = decisions(42, steps), d2 = decisions(42, steps);
    EXPECT_EQ(d1, d2) << "same seed, different decisions";
    const double freq = static_cast<double>(std::count(d1.begin(), d1.end(), true)) / n;
    if (a == 0.0 || a == 1.0) {
      EXPECT_EQ(freq, a);  // never / always
      continue;
    }
    EXPECT_NE(d1, decisions(43, steps)) << "different seeds, same decisions";
    const double sigma = std::sqrt(a * (1.0 - a) / n);
    EXPECT_NEAR(freq, a, 5.0 * sigma);
    // The documented stream: one U[0, 1) draw of Rng(seed) per forward, dense iff u < α.
    Rng rng(42);
    for (index_t i = 0; i < n; ++i) ASSERT_EQ(d1[i], rng.uniform() < a) << "forward " << i;
  }
}

TYPED_TEST(SelfGuidedTest, StochasticOutputIsEitherTheBlendOrS) {
  using L = TypeParam;
  using T = typename L::Scalar;
  const index_t tokens = 7, in = 12, out = 16;
  const L s = Family<L>::make(in, out, 8, true);
  SelfGuided<L> sg(s, AlphaSchedule::cosine(8), /*stochastic=*/true, 7);
  randomize_guide(sg, 3);
  SelfGuided<L> twin = sg;  // same guide, same RNG state
  SelfGuided<L> blended(sg.structured(), AlphaSchedule::cosine(8), /*stochastic=*/false);
  {
    auto bp = blended.params();
    std::copy(sg.guide(), sg.guide() + out * in, bp[param_index(bp, "guide")].data);
  }
  for (int i = 0; i < 2; ++i) sg.step(), twin.step(), blended.step();  // α = 0.5
  GuardedMatrix<T> x(tokens, in, 2), yb(tokens, out, 1), ys(tokens, out, 1);
  x.set(test::random_vector<T>(tokens * in, 1));
  blended.forward(x.cview(), yb.view());
  s.forward(x.cview(), ys.view());
  int used = 0, skipped = 0;
  for (int i = 0; i < 64; ++i) {
    GuardedMatrix<T> y(tokens, out, 1), y2(tokens, out, 1), yr(tokens, out, 1);
    const SelfGuidedDecision d = sg.forward(x.cview(), y.view());
    ASSERT_TRUE(y.guards_intact());
    EXPECT_TRUE(bitwise_equal(y, d.used_guide ? yb : ys)) << "forward " << i;
    // A copy carries the RNG state: it makes the same decisions.
    EXPECT_EQ(twin.forward(x.cview(), y2.view()).used_guide, d.used_guide);
    // recompute() replays the decision without drawing.
    sg.recompute(x.cview(), yr.view(), d);
    EXPECT_TRUE(bitwise_equal(y, yr));
    (d.used_guide ? used : skipped)++;
  }
  EXPECT_GT(used, 0);
  EXPECT_GT(skipped, 0);
}

TYPED_TEST(SelfGuidedTest, DropGuideFreesMemoryAndLeavesS) {
  using L = TypeParam;
  using T = typename L::Scalar;
  const index_t tokens = 33, in = 16, out = 8;
  for (bool stochastic : {false, true}) {
    SCOPED_TRACE(testing::Message() << "stochastic=" << stochastic);
    const L s = Family<L>::make(in, out, 12, true);
    SelfGuided<L> sg(s, AlphaSchedule::cosine(4), stochastic, 5);  // T = 2
    randomize_guide(sg, 8);
    const std::size_t guide_bytes = static_cast<std::size_t>(out * in) * sizeof(T);
    EXPECT_EQ(sg.guide_bytes(), guide_bytes);
    EXPECT_TRUE(test::throws_error([&] { sg.drop_guide(); },
                                   {"SelfGuided::drop_guide", "alpha = 1", "step 0"}));
    sg.step();
    EXPECT_TRUE(test::throws_error([&] { sg.drop_guide(); }, {"alpha = 0.5", "step 1", "T = 2"}));
    EXPECT_TRUE(sg.has_guide());
    sg.step();
    ASSERT_EQ(sg.alpha(), 0.0);
    const auto params_before = sg.params();
    const index_t count_before = sg.parameter_count();
    GuardedMatrix<T> x(tokens, in, 1), y_s(tokens, out, 3), y_before(tokens, out, 3);
    x.set(test::random_vector<T>(tokens * in, 4));
    s.forward(x.cview(), y_s.view());
    sg.forward(x.cview(), y_before.view());
    EXPECT_TRUE(bitwise_equal(y_before, y_s));

    sg.drop_guide();
    EXPECT_FALSE(sg.has_guide());
    EXPECT_EQ(sg.guide(), nullptr);
    EXPECT_EQ(sg.guide_bytes(), 0u);
    EXPECT_EQ(guide_bytes - sg.guide_bytes(), static_cast<std::size_t>(out * in) * sizeof(T));
    const auto params_after = sg.params();
    EXPECT_EQ(params_after.size() + 1, params_before.size());
    EXPECT_EQ(param_index(params_after, "guide"), -1);
    EXPECT_EQ(params_after.back().name, "bias");
    EXPECT_EQ(sg.parameter_count(), count_before - out * in);
    EXPECT_EQ(sg.parameter_count(), s.parameter_count());
    EXPECT_NO_THROW(sg.drop_guide());  // a second drop is a no-op

    // Forward is S.forward, bitwise, at every later step; materialize() is S's.
    for (int i = 0; i < 3; ++i, sg.step()) {
      GuardedMatrix<T> y(tokens, out, 3);
      EXPECT_FALSE(sg.forward(x.cview(), y.view()).used_guide);
      ASSERT_TRUE(y.guards_intact());
      EXPECT_TRUE(bitwise_equal(y, y_s));
    }
    const auto m = sg.materialize(), ms = s.materialize();
    EXPECT_EQ(0, std::memcmp(m.data(), ms.data(), m.size() * sizeof(T)));

    // Backward is S.backward with the guide's slot gone.
    GuardedMatrix<T> dy(tokens, out);
    dy.set(test::random_vector<T>(tokens * out, 6));
    std::vector<T> dx(tokens * in), dx_s(tokens * in);
    auto grads = sg.make_grads();
    auto L_copy = s;
    auto grads_s = L_copy.make_grads();
    GuardedMatrix<T> y(tokens, out);
    sg.forward(x.cview(), y.view());
    sg.backward(x.cview(), dy.cview(), make_view(dx.data(), tokens, in), grads);
    s.backward(x.cview(), dy.cview(), make_view(dx_s.data(), tokens, in), grads_s);
    EXPECT_EQ(dx, dx_s);
    EXPECT_EQ(grads, grads_s);
  }
}

TYPED_TEST(SelfGuidedTest, BadInputsGetClearErrors) {
  using L = TypeParam;
  using T = typename L::Scalar;
  const index_t in = 8, out = 12;
  SelfGuided<L> sg(Family<L>::make(in, out, 1, true), AlphaSchedule::cosine(10));
  std::vector<T> xb(4 * in * 2), yb(4 * out * 2), db(4 * out), dxb(4 * in);
  T* x = xb.data();
  T* y = yb.data();
  auto fwd = [&](MatrixView<const T> xv, MatrixView<T> yv) { sg.forward(xv, yv); };
  // Mismatched shapes, zero tokens, null data, aliasing.
  EXPECT_TRUE(test::throws_error(
      [&] {
        fwd({x, 4, in - 1}, {y, 4, out});
      },
      {"SelfGuided::forward", "x.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        fwd({x, 4, in}, {y, 4, out + 2});
      },
      {"y.cols = 14", "out_features = 12"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        fwd({x, 4, in}, {y, 3, out});
      },
      {"y.rows = 3", "x.rows = 4"}));
  EXPECT_TRUE(test::throws_error([&] { fwd({x, 0, in}, {y, 0, out}); }, {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(test::throws_error([&] { fwd({nullptr, 4, in}, {y, 4, out}); }, {"x.data", "null"}));
  EXPECT_TRUE(test::throws_error([&] { fwd({y, 4, in}, {y, 4, out}); }, {"overlap"}));
  // A forward that threw drew no decision: backward still has none.
  auto grads = sg.make_grads();
  const MatrixView<const T> xv(x, 4, in), dyv(db.data(), 4, out);
  const MatrixView<T> dxv(dxb.data(), 4, in);
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, grads); },
                                 {"SelfGuided::backward", "no forward"}));
  fwd(xv, {y, 4, out});
  EXPECT_NO_THROW(sg.backward(xv, dyv, dxv, grads));
  // Backward shapes and gradient buffers.
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.backward(xv, {db.data(), 4, out - 1}, dxv, grads);
      },
      {"dy.cols = 11", "out_features = 12"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.backward(xv, {db.data(), 3, out}, dxv, grads);
      },
      {"dy.rows = 3", "x.rows = 4"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.backward(xv, dyv, {dxb.data(), 4, in + 1}, grads);
      },
      {"dx.cols = 9", "in_features = 8"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.backward({x, 0, in}, {db.data(), 0, out}, dxv, grads);
      },
      {"x.rows (tokens) = 0"}));
  auto short_grads = grads;
  short_grads.pop_back();
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, short_grads); },
                                 {"grads.size() = ", std::to_string(grads.size() - 1)}));
  auto bad_guide = grads;
  const int g = param_index(sg.params(), "guide");
  bad_guide[g].resize(5);
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, bad_guide); },
                                 {"(guide).size() = 5", std::to_string(out * in)}));
  // Decisions: stale (another step), forged α, dense branch at α = 0.
  const SelfGuidedDecision d = sg.last_decision();
  sg.step();
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, grads, d); },
                                 {"decision.step = 0", "step_count() = 1"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.recompute(xv, {y, 4, out}, d);
      },
      {"SelfGuided::recompute", "decision.step = 0"}));
  SelfGuidedDecision forged{1, 0.25, true};
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, grads, forged); },
                                 {"decision.alpha = 0.25", "alpha() = "}));
  EXPECT_TRUE(test::throws_error([&] { sg.backward(xv, dyv, dxv, grads, SelfGuidedDecision{}); },
                                 {"decision.step = -1"}));
  for (int i = 0; i < 10; ++i) sg.step();
  ASSERT_EQ(sg.alpha(), 0.0);
  EXPECT_TRUE(test::throws_error(
      [&] {
        sg.recompute(xv, {y, 4, out}, SelfGuidedDecision{sg.step_count(), 0.0, true});
      },
      {"used_guide", "alpha = 0"}));
  // Construction: an empty structured layer, a bad schedule.
  EXPECT_TRUE(test::throws_error([] { SelfGuided<L>(L(), AlphaSchedule::cosine(10)); }, {"empty"}));
  AlphaSchedule bad;
  bad.ratio = 1.25;
  EXPECT_TRUE(test::throws_error([&] { SelfGuided<L>(Family<L>::make(in, out, 1, true), bad); },
                                 {"SelfGuided", "ratio = 1.25"}));
  // A moved-from layer is an error, not a null GEMM.
  SelfGuided<L> moved = std::move(sg);
  EXPECT_NO_THROW(moved.forward(xv, {y, 4, out}));
  EXPECT_TRUE(test::throws_error([&] { sg.forward(xv, {y, 4, out}); }, {"moved from"}));
  EXPECT_TRUE(test::throws_error([&] { sg.drop_guide(); }, {"moved from"}));
}

TYPED_TEST(SelfGuidedTest, CountsParametersAndExpectedFlops) {
  using L = TypeParam;
  const index_t in = 16, out = 32;
  const L s = Family<L>::make(in, out, 2, true);
  SelfGuided<L> det(s, AlphaSchedule::linear(8), false), sto(s, AlphaSchedule::linear(8), true);
  EXPECT_EQ(det.parameter_count(), s.parameter_count() + in * out);
  const double dense = 2.0 * in * out, fs = s.flops_per_token();
  EXPECT_DOUBLE_EQ(det.expected_flops_per_token(), dense);  // α = 1: S is skipped
  det.step(), det.step(), sto.step(), sto.step();           // α = 0.5
  EXPECT_DOUBLE_EQ(det.expected_flops_per_token(), dense + fs);
  EXPECT_DOUBLE_EQ(sto.expected_flops_per_token(), 0.5 * (dense + fs) + 0.5 * fs);
  for (int i = 0; i < 2; ++i) det.step(), sto.step();  // α = 0
  EXPECT_DOUBLE_EQ(det.expected_flops_per_token(), fs);
  EXPECT_DOUBLE_EQ(sto.expected_flops_per_token(), fs);
}

// ---------------------------------------------------------------------------------------------
// Backward against central finite differences, in double (docs/math.md §8.7).
// ---------------------------------------------------------------------------------------------

// Checks every gradient backward(…, d) returns — each factor entry, the guide, the bias and dx —
// against central differences of L = Σ y ⊙ r, with y recomputed under the same decision d.
template <class L>
void check_against_finite_differences(SelfGuided<L>& sg, index_t tokens,
                                      const SelfGuidedDecision& d) {
  const index_t in = sg.in_features(), out = sg.out_features();
  std::vector<double> x = test::random_vector<double>(tokens * in, 31);
  const std::vector<double> r = test::random_vector<double>(tokens * out, 32);
  const MatrixView<const double> xv(x.data(), tokens, in), rv(r.data(), tokens, out);
  auto loss = [&] {
    std::vector<double> y(static_cast<std::size_t>(tokens * out));
    sg.recompute(xv, make_view(y.data(), tokens, out), d);
    double l = 0;
    for (std::size_t i = 0; i < y.size(); ++i) l += y[i] * r[i];
    return l;
  };
  auto params = sg.params();
  auto grads = sg.make_grads();
  for (auto& g : grads) std::fill(g.begin(), g.end(), 1e300);  // backward must overwrite
  std::vector<double> dx(static_cast<std::size_t>(tokens * in), 1e300);
  sg.backward(xv, rv, make_view(dx.data(), tokens, in), grads, d);
  // L is linear in each single entry, so central differences are exact up to rounding:
  // ~eps Σ|y r| / h ≈ 1e-10 here.
  const double h = 1e-5, tol = 1e-7;
  auto fd = [&](double* p) {
    const double saved = *p;
    *p = saved + h;
    const double lp = loss();
    *p = saved - h;
    const double lm = loss();
    *p = saved;
    return (lp - lm) / (2 * h);
  };
  for (std::size_t i = 0; i < params.size(); ++i) {
    for (index_t j = 0; j < params[i].size; ++j) {
      const double want = fd(params[i].data + j);
      ASSERT_NEAR(grads[i][j], want, tol * (1 + std::abs(want)))
          << params[i].name << "[" << j << "], alpha = " << d.alpha
          << ", used_guide = " << d.used_guide;
    }
  }
  for (index_t j = 0; j < tokens * in; ++j) {
    const double want = fd(x.data() + j);
    ASSERT_NEAR(dx[j], want, tol * (1 + std::abs(want))) << "dx[" << j << "]";
  }
  // The guide's gradient is exactly zero when the dense branch did not run.
  const int g = param_index(params, "guide");
  if (g >= 0 && !d.used_guide) {
    for (double v : grads[g]) ASSERT_EQ(v, 0.0);
  }
}

TYPED_TEST(SelfGuidedGradTest, BackwardMatchesFiniteDifferencesInBothBranches) {
  using L = TypeParam;
  // Up, down and square projections; with and without bias.
  const std::vector<std::tuple<index_t, index_t, index_t>> shapes = {
      {3, 4, 8}, {2, 8, 4}, {5, 6, 6}};
  for (auto [tokens, in, out] : shapes) {
    for (bool bias : {true, false}) {
      SCOPED_TRACE(testing::Message()
                   << "tokens=" << tokens << " in=" << in << " out=" << out << " bias=" << bias);
      SelfGuided<L> sg(Family<L>::make(in, out, 9 + in, bias), AlphaSchedule::cosine(8), true, 11);
      randomize_guide(sg, 77);
      // α = 1 (step 0): the dense branch only.
      SelfGuidedDecision d{0, 1.0, true};
      check_against_finite_differences(sg, tokens, d);
      sg.step();  // α = 0.854: the blend, and the skipped branch of a stochastic draw
      d = SelfGuidedDecision{1, sg.alpha(), true};
      check_against_finite_differences(sg, tokens, d);
      d.used_guide = false;
      check_against_finite_differences(sg, tokens, d);
      sg.step();  // α = 0.5, the decisions a stochastic forward actually drew
      std::vector<double> xx(tokens * in, 0.5), yy(tokens * out);
      bool seen[2] = {false, false};
      for (int i = 0; i < 64 && !(seen[0] && seen[1]); ++i) {
        const auto di = sg.forward({xx.data(), tokens, in}, {yy.data(), tokens, out});
        if (seen[di.used_guide]) continue;
        seen[di.used_guide] = true;
        check_against_finite_differences(sg, tokens, di);
      }
      EXPECT_TRUE(seen[0] && seen[1]);
      for (int i = 0; i < 2; ++i) sg.step();  // α = 0: S alone
      check_against_finite_differences(sg, tokens, SelfGuidedDecision{4, 0.0, false});
    }
  }
}

TYPED_TEST(SelfGuidedGradTest, BackwardWithoutTokenUsesTheLastForward) {
  using L = TypeParam;
  const index_t tokens = 5, in = 8, out = 4;
  SelfGuided<L> sg(Family<L>::make(in, out, 3, true), AlphaSchedule::cosine(8), true, 2);
  randomize_guide(sg, 1);
  sg.step(), sg.step();  // α = 0.5
  const auto x = test::random_vector<double>(tokens * in, 1);
  const auto dy = test::random_vector<double>(tokens * out, 2);
  const MatrixView<const double> xv(x.data(), tokens, in), dyv(dy.data(), tokens, out);
  std::vector<double> y(tokens * out);
  for (int i = 0; i < 16; ++i) {
    const auto d = sg.forward(xv, make_view(y.data(), tokens, out));
    auto g1 = sg.make_grads(), g2 = g1;
    std::vector<double> dx1(tokens * in), dx2(tokens * in);
    sg.backward(xv, dyv, make_view(dx1.data(), tokens, in), g1);
    sg.backward(xv, dyv, make_view(dx2.data(), tokens, in), g2, d);
    EXPECT_EQ(g1, g2);
    EXPECT_EQ(dx1, dx2);
    // dx is optional.
    auto g3 = sg.make_grads();
    sg.backward(xv, dyv, MatrixView<double>(), g3, d);
    EXPECT_EQ(g1, g3);
  }
}

// ---------------------------------------------------------------------------------------------
// Every backend: the blend and its backward on Cpu, CudaEmu and Cuda, in every storage type,
// against the float64 oracle and against the Cpu double SelfGuided of the same parameters.
// ---------------------------------------------------------------------------------------------

// The four families with the same structural arguments on any scalar and backend.
template <template <class, class> class L>
struct FamilyOn;
template <>
struct FamilyOn<LowRankLinear> {
  template <class T, class B>
  static LowRankLinear<T, B> make(index_t in, index_t out, std::uint64_t seed) {
    return LowRankLinear<T, B>::random(in, out, std::min(in, out) / 2, seed, true, 0.3);
  }
};
template <>
struct FamilyOn<BlockDiagonalLinear> {
  template <class T, class B>
  static BlockDiagonalLinear<T, B> make(index_t in, index_t out, std::uint64_t seed) {
    return BlockDiagonalLinear<T, B>::random(in, out, 2, seed, true, 0.3);
  }
};
template <>
struct FamilyOn<BlockDenseLinear> {
  template <class T, class B>
  static BlockDenseLinear<T, B> make(index_t in, index_t out, std::uint64_t seed) {
    return BlockDenseLinear<T, B>::random(in, out, 2, std::min(in, out) / 2, seed, true, 0.3);
  }
};
template <>
struct FamilyOn<BlockShuffleLinear> {
  template <class T, class B>
  static BlockShuffleLinear<T, B> make(index_t in, index_t out, std::uint64_t seed) {
    return BlockShuffleLinear<T, B>::random(in, out, 4, seed, true, 0.3);
  }
};
template <class Fn>
void for_each_family_on(Fn&& fn) {
  fn("LowRank", FamilyOn<LowRankLinear>());
  fn("BlockDiagonal", FamilyOn<BlockDiagonalLinear>());
  fn("BlockDense", FamilyOn<BlockDenseLinear>());
  fn("BlockShuffle", FamilyOn<BlockShuffleLinear>());
}

// The Cpu double twin of a layer on any backend: the same structure, every parameter copied.
template <class M, class L>
auto cpu_double_twin(M, L& layer, std::uint64_t seed) {
  auto twin = M::template make<double, Cpu>(layer.in_features(), layer.out_features(), seed);
  auto src = layer.params();
  auto dst = twin.params();
  EXPECT_EQ(src.size(), dst.size());
  for (std::size_t i = 0; i < src.size() && i < dst.size(); ++i) {
    const auto v = test::to_double(test::to_host<typename L::Backend>(src[i].data, src[i].size));
    std::copy(v.begin(), v.end(), dst[i].data);
  }
  return twin;
}

template <class P>
class SelfGuidedBackendTest : public ::testing::Test {
 public:
  using T = typename P::Scalar;
  using B = typename P::Backend;
};
TYPED_TEST_SUITE(SelfGuidedBackendTest, ::testing::Types<FFNKIT_ALL_COMBOS>, test::ComboName);

// Forward at α = 1, in between and 0, and backward at each, on the backend, against the Cpu double
// SelfGuided of the same parameters (itself checked against finite differences above) and the
// blend oracle; then drop_guide leaves exactly S.
TYPED_TEST(SelfGuidedBackendTest, BlendAndBackwardMatchTheCpuDoubleTwin) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t tokens = 9, in = 16, out = 24;
  for_each_family_on([&](const char* name, auto maker) {
    SCOPED_TRACE(name);
    auto s = decltype(maker)::template make<T, B>(in, out, 11);
    auto s64 = cpu_double_twin(maker, s, 11);
    // cosine over 8 steps with ratio 0.5: α = 1, 0.854, 0.5, 0.146, then 0.
    const AlphaSchedule sched = AlphaSchedule::cosine(8);
    SelfGuided<decltype(s)> sg(s, sched, /*stochastic=*/false);
    SelfGuided<decltype(s64)> ref(s64, sched, /*stochastic=*/false);
    // A guide that differs from S, so the two branches can be told apart; the twin gets the same
    // values as rounded to T.
    const auto guide_t = test::random_vector<T>(out * in, 29, 1.0 / std::sqrt(double(in)));
    sg.load_guide(guide_t.data());
    const auto guide64 = test::to_double(guide_t);
    ref.load_guide(guide64.data());
    GuardedMatrix<T> x(tokens, in, 1), dy(tokens, out, 2);
    x.set(test::random_vector<T>(tokens * in, 3));
    dy.set(test::random_vector<T>(tokens * out, 4));
    const auto x64 = x.to_double(), dy64 = dy.to_double();
    const auto sm = test::to_double(s.materialize()), b64 = test::to_double(s.bias_host());
    for (index_t step = 0; step <= 4; ++step, sg.step(), ref.step()) {
      SCOPED_TRACE(testing::Message() << "step=" << step << " alpha=" << sg.alpha());
      GuardedMatrix<T> y(tokens, out, 5), dx(tokens, in, 6);
      auto grads = test::grads_for(sg);
      test::for_each_schedule<B>([&] {
        test::BackendMatrix<B, T> xb(x), yb(y), dyb(dy), dxb(dx);
        sg.forward(xb.cview(), yb.view());
        sg.backward(xb.cview(), dyb.cview(), dxb.view(), grads);
        yb.sync_to_host();
        dxb.sync_to_host();
      });
      ASSERT_TRUE(y.guards_intact());
      ASSERT_TRUE(dx.guards_intact());
      const auto y_ref = blend_oracle(x64, tokens, in, out, guide64, sm, b64, sg.alpha());
      EXPECT_TRUE(
          test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), y_ref)));

      std::vector<double> y64(static_cast<std::size_t>(tokens * out)),
          dx64(static_cast<std::size_t>(tokens * in));
      auto g64 = ref.make_grads();
      ref.forward(make_view<const double>(x64.data(), tokens, in),
                  make_view(y64.data(), tokens, out));
      ref.backward(make_view<const double>(x64.data(), tokens, in),
                   make_view<const double>(dy64.data(), tokens, out),
                   make_view(dx64.data(), tokens, in), g64);
      EXPECT_TRUE(
          test::within_tolerance<T>(test::compare(dx.data(), tokens, in, dx.stride(), dx64)));
      ASSERT_EQ(grads.size(), g64.size());
      const auto names = ref.params();
      for (std::size_t i = 0; i < g64.size(); ++i) {
        SCOPED_TRACE(names[i].name);
        const auto g = test::grad_host(grads[i]);
        const auto n = static_cast<index_t>(g.size());
        EXPECT_TRUE(test::within_tolerance<T>(test::compare(g.data(), 1, n, n, g64[i])));
      }
    }
    // α has reached 0: dropping the guide gives its memory back and leaves S's output, bit for bit.
    ASSERT_EQ(sg.alpha(), 0.0);
    EXPECT_EQ(sg.guide_bytes(), static_cast<std::size_t>(out * in) * sizeof(T));
    GuardedMatrix<T> before(tokens, out, 7), after(tokens, out, 7);
    {
      test::BackendMatrix<B, T> xb(x), yb(before);
      sg.forward(xb.cview(), yb.view());
      yb.sync_to_host();
    }
    sg.drop_guide();
    EXPECT_FALSE(sg.has_guide());
    EXPECT_EQ(sg.guide_bytes(), 0u);
    EXPECT_EQ(sg.parameter_count(), s.parameter_count());
    {
      test::BackendMatrix<B, T> xb(x), yb(after);
      sg.forward(xb.cview(), yb.view());
      yb.sync_to_host();
    }
    EXPECT_TRUE(bitwise_equal(before, after));
  });
}

}  // namespace
}  // namespace ffnkit
