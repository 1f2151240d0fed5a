// The CPU backend's vectorized bias + activation pass against the float64 formulas, over the whole
// range where the approximations switch regimes (Eigen's tanh clamps, erf saturates).
#include <gtest/gtest.h>

#include <limits>
#include <type_traits>

#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/reference.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

// Same bound as the scalar functors' test: `ulps` roundings times (1 + condition number).
double allowed_rel(Activation a, double x, double eps, double ulps) {
  const double f = reference::activation(a, x);
  const double h = 1e-6 * std::max(1.0, std::abs(x));
  const double df = (reference::activation(a, x + h) - reference::activation(a, x - h)) / (2 * h);
  return ulps * eps * (1.0 + (f != 0 ? std::abs(x * df / f) : 1.0));
}

template <class T>
void check_epilogue(Activation act, double ulps) {
  const index_t rows = 3, cols = 5000;  // several chunks per row, with a ragged last chunk
  std::vector<T> h(rows * cols), bias(cols);
  for (index_t i = 0; i < rows * cols; ++i) h[i] = static_cast<T>(-30.0 + 60.0 * i / (rows * cols));
  for (index_t j = 0; j < cols; ++j) bias[j] = static_cast<T>(0.001 * (j % 17));
  std::vector<T> expected_in = h;
  cpu::bias_activation_inplace(make_view(h.data(), rows, cols), bias.data(), act);
  const double eps = std::numeric_limits<T>::epsilon();
  const double tiny = std::is_same<T, float>::value ? 1e-30 : 1e-290;
  for (index_t i = 0; i < rows * cols; ++i) {
    // The pass adds the bias in T, then applies the activation.
    const T x = static_cast<T>(expected_in[i] + bias[i % cols]);
    const double r = reference::activation(act, static_cast<double>(x));
    if (std::abs(r) < tiny) {
      ASSERT_LE(std::abs(h[i]), tiny) << to_string(act) << " x=" << x;
    } else {
      ASSERT_LE(std::abs(h[i] - r) / std::abs(r), allowed_rel(act, x, eps, ulps))
          << to_string(act) << " x=" << x << " got " << h[i] << " want " << r;
    }
  }
}

TEST(CpuEpilogue, FloatActivationsAccurateOverWideRange) {
  for (Activation a : {Activation::kIdentity, Activation::kRelu, Activation::kGeluTanh,
                       Activation::kGeluErf, Activation::kSilu})
    check_epilogue<float>(a, 8);
}

TEST(CpuEpilogue, DoubleActivationsAccurateOverWideRange) {
  for (Activation a : {Activation::kIdentity, Activation::kRelu, Activation::kGeluTanh,
                       Activation::kGeluErf, Activation::kSilu})
    check_epilogue<double>(a, 8);
}

TEST(CpuEpilogue, SwiGluGateMatchesFormulaAndLeavesUpHalf) {
  const index_t rows = 4, f = 2100;
  std::vector<float> buf(rows * 2 * f), bg(f), bu(f);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = std::sin(0.37f * i) * 6.f;
  for (index_t j = 0; j < f; ++j) bg[j] = 0.01f * (j % 5), bu[j] = -0.02f * (j % 3);
  const std::vector<float> in = buf;
  cpu::swiglu_inplace(make_view(buf.data(), rows, 2 * f), bg.data(), bu.data());
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 0; j < f; ++j) {
      const double g = double(in[r * 2 * f + j]) + bg[j], u = double(in[r * 2 * f + f + j]) + bu[j];
      const double expect = reference::activation(Activation::kSilu, g) * u;
      ASSERT_NEAR(buf[r * 2 * f + j], expect, 4e-6 * std::max(1.0, std::abs(expect)));
      ASSERT_EQ(buf[r * 2 * f + f + j], in[r * 2 * f + f + j]);  // up half untouched
    }
  }
}

// The activation backward pass: g *= act'(pre), against central differences of the oracle.
template <class T>
void check_activation_grad(double tol) {
  const index_t rows = 2, cols = 3000;
  std::vector<T> pre(rows * cols), g(rows * cols, T(1));
  for (index_t i = 0; i < rows * cols; ++i)
    pre[i] = static_cast<T>(-12.0 + 24.0 * i / (rows * cols));
  for (Activation act : {Activation::kIdentity, Activation::kRelu, Activation::kGeluTanh,
                         Activation::kGeluErf, Activation::kSilu}) {
    std::fill(g.begin(), g.end(), T(1));
    cpu::multiply_activation_grad(make_view(g.data(), rows, cols),
                                  make_view<const T>(pre.data(), rows, cols), act);
    for (index_t i = 0; i < rows * cols; ++i) {
      const double x = static_cast<double>(pre[i]), h = 1e-5;
      if (act == Activation::kRelu && std::abs(x) < 2 * h) continue;  // the kink
      const double fd =
          (reference::activation(act, x + h) - reference::activation(act, x - h)) / (2 * h);
      ASSERT_NEAR(static_cast<double>(g[i]), fd, tol * std::max(1.0, std::abs(fd)))
          << to_string(act) << " x=" << x;
    }
  }
}

TEST(CpuEpilogue, ActivationGradientMatchesFiniteDifferences) {
  check_activation_grad<float>(2e-6);
  check_activation_grad<double>(1e-9);
}

}  // namespace
}  // namespace ffnkit
