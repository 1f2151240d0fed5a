// core/: activations, RNG, views and errors, against independent double-precision formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <type_traits>

#include "ffnkit/core.hpp"
#include "ffnkit/reference.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

const Activation kAll[] = {Activation::kIdentity, Activation::kRelu, Activation::kGeluTanh,
                           Activation::kGeluErf, Activation::kSilu};

double grad(Activation a, double x) {
  return dispatch_activation(a, [&](auto fn) { return fn.grad(x); });
}

// Relative error allowed for an activation at x: `ulps` units of rounding times (1 + the
// function's condition number |x f'(x) / f(x)|). No float implementation can beat the condition
// number in the tails (an ulp of x moves GELU(-10) by ~90 ulp), and a cancellation bug exceeds it
// by orders of magnitude.
double allowed_rel(Activation a, double x, double eps, double ulps) {
  const double f = reference::activation(a, x);
  const double h = 1e-6 * std::max(1.0, std::abs(x));
  const double df = (reference::activation(a, x + h) - reference::activation(a, x - h)) / (2 * h);
  const double cond = f != 0 ? std::abs(x * df / f) : 1.0;
  return ulps * eps * (1.0 + cond);
}

template <class T>
void check_against_reference(double lo, double hi, double step, double ulps) {
  const double eps = std::numeric_limits<T>::epsilon();
  // Outputs below this are judged absolutely: float's normal range ends at 1.2e-38.
  const double tiny = std::is_same<T, float>::value ? 1e-30 : 1e-290;
  for (Activation a : kAll) {
    for (double xd = lo; xd <= hi; xd += step) {
      const T x = static_cast<T>(xd);
      const double r = reference::activation(a, static_cast<double>(x));
      const double got = dispatch_activation(a, [&](auto fn) { return fn(x); });
      if (std::abs(r) < tiny) {
        EXPECT_LE(std::abs(got), tiny) << to_string(a) << " x=" << x;
      } else {
        EXPECT_LE(std::abs(got - r) / std::abs(r),
                  allowed_rel(a, static_cast<double>(x), eps, ulps))
            << to_string(a) << " x=" << x << " got " << got << " want " << r;
      }
    }
  }
}

TEST(Activation, DoubleWithinFewUlpOfConditioningBound) {
  check_against_reference<double>(-40.0, 40.0, 0.0093, 8);
}

TEST(Activation, FloatWithinFewUlpOfConditioningBound) {
  check_against_reference<float>(-40.0, 40.0, 0.0093, 8);
}

TEST(Activation, GradientMatchesCentralDifference) {
  const double h = 1e-6;
  for (Activation a : kAll) {
    for (double x = -6.0; x <= 6.0; x += 0.0731) {
      if (a == Activation::kRelu && std::abs(x) < 2 * h) continue;  // the kink
      const double fd =
          (reference::activation(a, x + h) - reference::activation(a, x - h)) / (2 * h);
      EXPECT_NEAR(grad(a, x), fd, 1e-8) << to_string(a) << " x=" << x;
    }
  }
}

TEST(Activation, NamesRoundTripAndUnknownNameIsAnError) {
  for (Activation a : kAll) EXPECT_EQ(parse_activation(to_string(a)), a);
  EXPECT_TRUE(test::throws_error([] { parse_activation("gelu_fast"); }, {"gelu_fast"}));
}

TEST(Rng, SameSeedSameStreamDifferentSeedDifferentStream) {
  Rng a(7), b(7), c(8);
  std::set<std::uint64_t> seen;
  bool any_diff = false;
  for (int i = 0; i < 1000; ++i) {
    const auto va = a.next_u64();
    EXPECT_EQ(va, b.next_u64());
    any_diff |= va != c.next_u64();
    seen.insert(va);
  }
  EXPECT_TRUE(any_diff);
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(Rng, NormalHasUnitMomentsAndUniformIsInRange) {
  Rng rng(123);
  const int n = 200000;
  double sum = 0, sum_sq = 0, sum4 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = rng.normal();
    sum += z;
    sum_sq += z * z;
    sum4 += z * z * z * z;
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  // 5-sigma bounds: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/n), sd(E z^4) = sqrt(96/n).
  EXPECT_NEAR(mean, 0.0, 5 / std::sqrt(n));
  EXPECT_NEAR(var, 1.0, 5 * std::sqrt(2.0 / n));
  EXPECT_NEAR(sum4 / n, 3.0, 5 * std::sqrt(96.0 / n));
  for (int i = 0; i < 10000; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
}

TEST(View, StridedAccessSlicesAndConstConversion) {
  std::vector<float> buf(5 * 8);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  MatrixView<float> v(buf.data(), 5, 6, 8);
  EXPECT_EQ(v(2, 3), 19.f);
  EXPECT_FALSE(v.contiguous());
  const MatrixView<const float> c = v.rows_slice(3, 2);
  EXPECT_EQ(c.rows, 2);
  EXPECT_EQ(c(0, 0), 24.f);
  EXPECT_EQ(c.row(1)[5], 37.f);
}

TEST(View, CheckActivationNamesTheProblem) {
  std::vector<float> buf(64);
  auto check = [&](MatrixView<const float> v) { check_activation("f", "x", v, 8, "in_features"); };
  EXPECT_TRUE(test::throws_error([&] { check({buf.data(), 0, 8}); }, {"x.rows", "= 0"}));
  EXPECT_TRUE(test::throws_error([&] { check({nullptr, 2, 8}); }, {"x.data", "null"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        check({buf.data(), 2, 7});
      },
      {"x.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(test::throws_error([&] { check({buf.data(), 2, 8, 4}); }, {"row_stride = 4"}));
  EXPECT_NO_THROW(check({buf.data(), 2, 8, 9}));
}

TEST(Error, ChecksNameArgumentAndValue) {
  EXPECT_TRUE(
      test::throws_error([] { check_positive("Layer", "rank", -3); }, {"Layer", "rank", "-3"}));
  EXPECT_TRUE(test::throws_error([] { check_divides("Layer", "blocks", 5, "in_features", 768); },
                                 {"blocks = 5", "in_features = 768"}));
  EXPECT_TRUE(test::throws_error([] { check_not_null("Layer", "weight", nullptr); }, {"weight"}));
  const float bad[] = {1.f, NAN};
  EXPECT_TRUE(
      test::throws_error([&] { check_finite("Layer", "bias", bad, 2); }, {"bias[1]", "nan"}));
}

}  // namespace
}  // namespace ffnkit
