// Deferred normalization (docs/math.md §7) on every (scalar, backend) combination: RMSNormLinear,
// LayerNormLinear and SoftmaxLinear, the fused path and the unfused baseline
// (reference/unfused_norm.hpp) against the float64 oracle, through sentinel-guarded buffers
// mirrored into the backend's memory, with strided views, under two emulator schedule orders; mean
// offsets |μ|/σ up to 1000 against the stated bound, scores that overflow a naive exp, masked and
// fully masked rows, ε edge cases, odd widths, 1 token and every bad input. Then, on the device
// backends, the two-stream schedule and the statistics reduction shared by two kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ffnkit/norm.hpp"
#include "ffnkit/reference.hpp"
#include "ffnkit/reference/unfused_norm.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::BackendBuffer;
using test::BackendMatrix;
using test::Combo;
using test::GuardedMatrix;

template <class P>
class NormTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
  void SetUp() override { FFNKIT_SKIP_IF_UNAVAILABLE(B); }
};

using NormCombos = ::testing::Types<FFNKIT_ALL_COMBOS>;
TYPED_TEST_SUITE(NormTest, NormCombos, test::ComboName);

constexpr double kInf = std::numeric_limits<double>::infinity();

template <class B>
constexpr bool is_cpu() {
  return std::is_same<B, Cpu>::value;
}

template <class T>
constexpr bool is_fp16() {
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
  return std::is_same<T, __half>::value;
#else
  return false;
#endif
}

// The unit roundoff of the storage type.
template <class T>
double unit_roundoff() {
  if (std::is_same<T, double>::value) return std::ldexp(1.0, -53);
  if (sizeof(T) == 2) return std::ldexp(1.0, is_fp16<T>() ? -11 : -8);
  return std::ldexp(1.0, -24);
}

template <class T>
std::vector<T> from_double(const std::vector<double>& d) {
  std::vector<T> v(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) v[i] = test::Scalar<T>::from_double(d[i]);
  return v;
}

// One layer's host parameters, drawn in T and kept for the oracle and the unfused baseline.
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
      std::vector<double> g(static_cast<std::size_t>(n));
      fill_normal(g.data(), n, seed + 1, 1.0, 0.3);
      gamma = from_double<T>(g);
      if (ln) beta = test::random_vector<T>(n, seed + 2, 0.3);
    }
    if (with_bias) bias = test::random_vector<T>(m, seed + 3, 0.3);
  }
  const T* ptr(const std::vector<T>& v) const { return v.empty() ? nullptr : v.data(); }
  template <class B>
  LayerNormLinear<T, B> make_ln() const {
    return LayerNormLinear<T, B>(in, out, ptr(gamma), ptr(beta), weight.data(), ptr(bias), eps);
  }
  template <class B>
  RMSNormLinear<T, B> make_rms() const {
    return RMSNormLinear<T, B>(in, out, ptr(gamma), weight.data(), ptr(bias), eps);
  }
  template <class B>
  reference::UnfusedNormLinear<T, B> make_unfused() const {
    return reference::UnfusedNormLinear<T, B>(layer_norm, in, out, ptr(gamma), ptr(beta),
                                              weight.data(), ptr(bias), eps);
  }
  std::vector<double> reference(const GuardedMatrix<T>& x,
                                std::vector<double>* normalized = nullptr) const {
    return reference::norm_linear(layer_norm, x.to_double(), x.rows(), in, out,
                                  test::to_double(gamma), test::to_double(beta),
                                  test::to_double(weight), test::to_double(bias), eps, normalized);
  }
};

// Runs `layer` (fused or the unfused baseline) on backend mirrors of x into guarded y (and `xn`,
// if given); x's guards must survive too.
template <class B, class T, class Layer>
void run_path(const Layer& layer, GuardedMatrix<T>& x, GuardedMatrix<T>& y,
              GuardedMatrix<T>* xn = nullptr, Workspace ws = {}) {
  BackendMatrix<B, T> dx(x), dy(y);
  if (xn) {
    BackendMatrix<B, T> dn(*xn);
    layer.forward(dx.cview(), dy.view(), ws, dn.view());
    dn.sync_to_host();
  } else {
    layer.forward(dx.cview(), dy.view(), ws);
  }
  dy.sync_to_host();
  dx.sync_to_host();
  ASSERT_TRUE(x.guards_intact()) << "x";
}

// The fused layer and the unfused baseline on x, each against the oracle.
template <class B, class T, class Layer>
void check_both_paths(const Layer& layer, const NormCase<T>& c, GuardedMatrix<T>& x, index_t pad) {
  const auto ref = c.reference(x);
  const index_t tokens = x.rows();
  GuardedMatrix<T> y(tokens, c.out, pad), yu(tokens, c.out, pad);
  run_path<B>(layer, x, y);
  run_path<B>(c.template make_unfused<B>(), x, yu);
  ASSERT_TRUE(y.guards_intact()) << "fused";
  ASSERT_TRUE(yu.guards_intact()) << "unfused";
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, c.out, y.stride(), ref)))
      << "fused";
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(yu.data(), tokens, c.out, yu.stride(), ref)))
      << "unfused";
}

template <class B, class T>
void check_both_paths(const NormCase<T>& c, GuardedMatrix<T>& x, index_t pad) {
  if (c.layer_norm)
    check_both_paths<B>(c.template make_ln<B>(), c, x, pad);
  else
    check_both_paths<B>(c.template make_rms<B>(), c, x, pad);
}

// tokens, in, out: odd widths, 1 token, both sides of the decode switch (16 tokens); on the Cpu
// also BERT and 4k widths and 255 tokens (the emulator would take minutes over those), on the
// device backends a BERT-width product at 3 tokens.
template <class B>
std::vector<std::tuple<index_t, index_t, index_t>> norm_shapes() {
  std::vector<std::tuple<index_t, index_t, index_t>> shapes = {
      {1, 1, 1}, {1, 13, 29}, {7, 33, 5}, {16, 257, 129}, {17, 64, 64}, {33, 255, 63}};
  if (is_cpu<B>())
    shapes.insert(shapes.end(), {{255, 29, 31}, {7, 768, 3072}, {2, 4096, 130}});
  else
    shapes.push_back({3, 768, 515});
  return shapes;
}

TYPED_TEST(NormTest, FusedAndUnfusedMatchReferenceWithGuardsAndStrides) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  test::for_each_schedule<B>([&] {
    for (auto [tokens, in, out] : norm_shapes<B>()) {
      for (bool ln : {false, true}) {
        for (bool affine : {true, false}) {
          for (index_t pad : {0, 3}) {
            const bool bias = pad == 0;
            SCOPED_TRACE(testing::Message()
                         << "tokens=" << tokens << " in=" << in << " out=" << out
                         << " layer_norm=" << ln << " affine=" << affine << " pad=" << pad);
            NormCase<T> c(ln, in, out, 100 + in + out, affine, bias);
            GuardedMatrix<T> x(tokens, in, pad);
            x.set(test::random_vector<T>(tokens * in, 7 + tokens, 2.0));
            check_both_paths<B>(c, x, pad);
          }
        }
      }
    }
  });
}

TYPED_TEST(NormTest, ReturnsNormalizedActivationsAndUsesTheWorkspace) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  for (index_t tokens : {1, 5, 40}) {
    for (bool ln : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " layer_norm=" << ln);
      NormCase<T> c(ln, 37, 70, 9);
      GuardedMatrix<T> x(tokens, 37, 2);
      x.set(test::random_vector<T>(tokens * 37, 3, 3.0));
      std::vector<double> nref;
      const auto ref = c.reference(x, &nref);
      const auto lnl = c.template make_ln<B>();
      const auto rms = c.template make_rms<B>();
      const auto unfused = c.template make_unfused<B>();
      const std::size_t bytes =
          std::max(ln ? lnl.workspace_size(tokens) : rms.workspace_size(tokens),
                   unfused.workspace_size(tokens));
      BackendBuffer<B, unsigned char> ws(bytes);
      for (bool fused : {true, false}) {
        for (bool with_ws : {false, true}) {
          SCOPED_TRACE(testing::Message() << (fused ? "fused" : "unfused")
                                          << (with_ws ? ", workspace" : ", no workspace"));
          const Workspace w = with_ws ? Workspace{ws.data(), bytes} : Workspace{};
          GuardedMatrix<T> y(tokens, 70), xn(tokens, 37, 1);
          if (!fused)
            run_path<B>(unfused, x, y, &xn, w);
          else if (ln)
            run_path<B>(lnl, x, y, &xn, w);
          else
            run_path<B>(rms, x, y, &xn, w);
          ASSERT_TRUE(xn.guards_intact());
          ASSERT_TRUE(y.guards_intact());
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(xn.data(), tokens, 37, xn.stride(), nref)))
              << "normalized";
          EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, 70, 70, ref)));
        }
      }
    }
  }
}

// The error bound (docs/math.md §7.4): with ρ = |μ|/σ the largest mean offset of a call and u
// the unit roundoff of the storage type, the default LayerNormLinear::forward keeps
//   max_rel <= 64 u (1 + ρ) sqrt(N / 256)  (float: 3.8e-6 (1 + ρ) at N = 256)
// because above ρ = 4 it subtracts μ before the product; the unfused baseline obeys the same bound.
// Forced fully deferred (center_threshold = inf), the product of |μ|-sized inputs costs more:
//   max_rel <= 256 u (1 + ρ) sqrt(N / 256).
// For the 16-bit types the deferred correction runs on fp32 accumulators, so only the output
// rounding is at u.
double ln_bound(double unit, double rho, index_t n, double factor) {
  return factor * unit * (1.0 + rho) * std::sqrt(std::max(1.0, static_cast<double>(n) / 256.0));
}

TYPED_TEST(NormTest, LayerNormMeanOffsetsStayWithinTheStatedBound) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const double u = unit_roundoff<T>();
  // Widths and token counts (3: the decode path, 20 or 33: the GEMM path); the emulator skips
  // the 4k width.
  const std::vector<index_t> widths =
      is_cpu<B>() ? std::vector<index_t>{255, 1024, 4096} : std::vector<index_t>{255, 1024};
  for (index_t n : widths) {
    for (index_t tokens : {index_t(3), is_cpu<B>() ? index_t(33) : index_t(20)}) {
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
        x.set(from_double<T>(xd));
        const auto ref = c.reference(x);
        auto layer = c.template make_ln<B>();
        GuardedMatrix<T> y(tokens, 96), yu(tokens, 96), yd(tokens, 96);
        run_path<B>(layer, x, y);
        run_path<B>(c.template make_unfused<B>(), x, yu);
        layer.set_center_threshold(kInf);
        run_path<B>(layer, x, yd);
        const auto e = test::compare(y.data(), tokens, 96, 96, ref);
        const auto eu = test::compare(yu.data(), tokens, 96, 96, ref);
        const auto ed = test::compare(yd.data(), tokens, 96, 96, ref);
        EXPECT_EQ(e.non_finite + eu.non_finite + ed.non_finite, 0);
        EXPECT_LE(e.max_rel, ln_bound(u, rho, n, 64)) << "default forward";
        EXPECT_LE(eu.max_rel, ln_bound(u, rho, n, 64)) << "unfused";
        EXPECT_LE(ed.max_rel, ln_bound(u, rho, n, 256)) << "forced deferred";
        // The documented bound (docs/math.md §7.4): within 10x of the unfused baseline at
        // |μ|/σ <= 100 (floored at 8 u so two results at the rounding floor are not compared on
        // noise).
        if (rho <= 100) {
          EXPECT_LE(e.max_rel, 10 * std::max(eu.max_rel, 8 * u));
        }
        if (sizeof(T) == 2) {
          // 16-bit types: the centered and unfused paths stay at the output's rounding whatever ρ
          // (measured ~2.5 u); the deferred one adds the fp32 accumulators' ρ-sized error.
          EXPECT_LE(e.max_rel, 8 * u) << "default forward, flat in rho";
          EXPECT_LE(eu.max_rel, 8 * u) << "unfused, flat in rho";
          EXPECT_LE(ed.max_rel, 8 * u + ln_bound(unit_roundoff<float>(), rho, n, 256))
              << "forced deferred, fp32 accumulators";
        }
        if (std::getenv("FFNKIT_PRINT_ERRORS"))
          std::printf("LN %s %s N=%ld T=%ld rho=%g default=%.3g unfused=%.3g deferred=%.3g\n",
                      test::Scalar<T>::name(), B::name(), static_cast<long>(n),
                      static_cast<long>(tokens), rho, e.max_rel, eu.max_rel, ed.max_rel);
        ::testing::Test::RecordProperty(
            "max_rel_fused_" + std::to_string(n) + "_" + std::to_string(int(rho)),
            std::to_string(e.max_rel));
      }
    }
  }
}

TYPED_TEST(NormTest, RMSNormIsIndifferentToMeanOffsets) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  for (double rho : {0.0, 10.0, 100.0, 1000.0}) {
    SCOPED_TRACE(testing::Message() << "|mu|/sigma=" << rho);
    NormCase<T> c(false, 300, 40, 77);
    for (index_t tokens : {1, 20}) {
      GuardedMatrix<T> x(tokens, 300);
      std::vector<double> xd(static_cast<std::size_t>(tokens * 300));
      fill_normal(xd.data(), tokens * 300, 3, rho, 1.0);
      x.set(from_double<T>(xd));
      check_both_paths<B>(c, x, 0);
    }
  }
}

TYPED_TEST(NormTest, EpsilonEdgeCases) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
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
          if (kind == 1) std::fill(v.begin(), v.end(), test::Scalar<T>::from_double(0));
          if (kind == 2) std::fill(v.begin(), v.end(), test::Scalar<T>::from_double(3.25));
          x.set(v);
          // An all-zero RMSNorm token with ε = 1e-30 has r = 1e15: y = r (W'0) + b = b exactly,
          // and LayerNorm's constant tokens have x − μ = 0 exactly (the shifted sums find
          // μ = x[0]).
          check_both_paths<B>(c, x, 0);
        }
      }
    }
  }
}

TYPED_TEST(NormTest, NormBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using test::throws_error;
  NormCase<T> c(true, 8, 4, 1);
  const T* w = c.weight.data();
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(0, 4, nullptr, w, nullptr); },
                           {"RMSNormLinear", "in_features = 0"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, B>(8, -1, nullptr, nullptr, w, nullptr); },
                           {"LayerNormLinear", "out_features = -1"}));
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(8, 4, nullptr, nullptr, nullptr); },
                           {"weight is a null pointer"}));
  for (double eps : {0.0, -1e-5, std::nan(""), kInf}) {
    EXPECT_TRUE(throws_error(
        [&] { LayerNormLinear<T, B>(8, 4, nullptr, nullptr, w, nullptr, eps); }, {"eps = "}));
    EXPECT_TRUE(
        throws_error([&] { RMSNormLinear<T, B>(8, 4, nullptr, w, nullptr, eps); }, {"eps = "}));
  }
  if (!std::is_same<T, double>::value) {  // the statistics are fp32
    EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(8, 4, nullptr, w, nullptr, 1e-50); },
                             {"eps = 1e-50", "rounds to 0"}));
    EXPECT_TRUE(
        throws_error([&] { LayerNormLinear<T, B>(8, 4, nullptr, nullptr, w, nullptr, 1e-50); },
                     {"eps = 1e-50", "rounds to 0"}));
  }
  std::vector<T> g(8, test::Scalar<T>::from_double(1));
  g[5] = test::Scalar<T>::from_double(std::nan(""));
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(8, 4, g.data(), w, nullptr); },
                           {"gamma[5]", "not finite"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, B>(8, 4, nullptr, g.data(), w, nullptr); },
                           {"beta[5]", "not finite"}));

  auto layer = c.template make_ln<B>();
  const auto unfused = c.template make_unfused<B>();
  BackendBuffer<B, T> xs(3 * 9), ys(3 * 5), ns(3 * 8);
  const MatrixView<const T> x(xs.data(), 3, 8);
  const MatrixView<T> y(ys.data(), 3, 4);
  EXPECT_TRUE(throws_error([&] { layer.forward(MatrixView<const T>(xs.data(), 3, 9), y); },
                           {"LayerNormLinear::forward", "x.cols = 9", "in_features = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(x, MatrixView<T>(ys.data(), 3, 5)); },
                           {"y.cols = 5", "out_features = 4"}));
  EXPECT_TRUE(throws_error([&] { unfused.forward(x, MatrixView<T>(ys.data(), 3, 5)); },
                           {"UnfusedNormLinear::forward", "y.cols = 5", "out_features = 4"}));
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
  BackendBuffer<B, unsigned char> small(8);
  const Workspace small_ws{small.data(), 8};
  EXPECT_TRUE(
      throws_error([&] { layer.forward(x, y, small_ws); },
                   {"LayerNormLinear::forward", "workspace.bytes = 8", "workspace_size(x.rows)"}));
  EXPECT_TRUE(throws_error([&] { unfused.forward(x, y, small_ws); },
                           {"UnfusedNormLinear::forward", "workspace.bytes = 8"}));
  // A workspace must not overlap the call's views (here y, carved from its front).
  BackendBuffer<B, unsigned char> shared(layer.workspace_size(3) + 64);
  EXPECT_TRUE(throws_error(
      [&] {
        layer.forward(x, MatrixView<T>(reinterpret_cast<T*>(shared.data()), 3, 4),
                      Workspace{shared.data(), layer.workspace_size(3)});
      },
      {"workspace overlaps y"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(x, y, {}, MatrixView<T>(ns.data(), 3, 7)); },
                           {"normalized.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.set_center_threshold(-1); }, {"mu_over_sigma = -1"}));
  // can_implement answers the same checks without throwing.
  std::string why;
  EXPECT_TRUE(can_implement(layer, &why, x, y, Workspace{}));
  EXPECT_FALSE(can_implement(layer, &why, x, y, small_ws));
  EXPECT_NE(why.find("workspace_size(x.rows)"), std::string::npos) << why;
  EXPECT_FALSE(can_implement(layer, &why, x, y, Workspace{}, MatrixView<T>(ns.data(), 3, 7)));
  EXPECT_NE(why.find("normalized.cols = 7"), std::string::npos) << why;
  LayerNormLinear<T, B> empty;
  EXPECT_TRUE(throws_error([&] { empty.forward(x, y); }, {"empty"}));
  // A copy is deep: it still works after the original is gone; a moved-from layer is empty.
  LayerNormLinear<T, B> copy;
  {
    const auto tmp = c.template make_ln<B>();
    copy = tmp;
  }
  GuardedMatrix<T> hx(3, 8), hy(3, 4);
  hx.set(test::random_vector<T>(24, 2));
  run_path<B>(copy, hx, hy);
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(hy.data(), 3, 4, 4, c.reference(hx))));
  const auto moved = std::move(copy);
  EXPECT_TRUE(throws_error([&] { copy.forward(x, y); }, {"empty"}));
  EXPECT_EQ(moved.in_features(), 8);
}

// --- SoftmaxLinear ------------------------------------------------------------------------------

// One-pass and three-pass against the oracle. Scattered −inf, a finite penalty, fully masked rows
// 0 and q−1 (when q > 2), and a masked prefix longer than a tile (a sliding window: whole tiles,
// and with few queries a whole key split, see only −inf before the first live key).
template <class B, class T>
void check_softmax(const SoftmaxLinear<T, B>& op, index_t q, index_t keys, index_t dim,
                   double scale, double offset, bool masked, index_t pad, std::uint64_t seed) {
  GuardedMatrix<T> s(q, keys, pad), v(keys, dim, pad), mask(q, keys, pad);
  std::vector<double> sd(static_cast<std::size_t>(q * keys));
  fill_normal(sd.data(), q * keys, seed, offset, scale);
  s.set(from_double<T>(sd));
  v.set(test::random_vector<T>(keys * dim, seed + 1));
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<double> md(static_cast<std::size_t>(q * keys), 0.0);
  if (masked) {
    for (index_t i = 0; i < q; ++i)
      for (index_t k = 0; k < keys; ++k) {
        double& mv = md[i * keys + k];
        if ((i * 7 + k * 3) % 5 == 0) mv = ninf;
        if (k % 11 == 3) mv = -2.5;
        if (q > 2 && (i == 0 || i == q - 1)) mv = ninf;
        if ((q > 3 ? i == 1 : i == 0) && k < keys / 2) mv = ninf;
      }
  }
  mask.set(from_double<T>(md));
  const auto ref =
      reference::softmax_v(s.to_double(), masked ? mask.to_double() : std::vector<double>(), q,
                           keys, v.to_double(), dim);
  GuardedMatrix<T> y(q, dim, pad), yu(q, dim, pad);
  {
    BackendMatrix<B, T> ds(s), dv(v), dm(mask), dy(y), dyu(yu);
    const MatrixView<const T> mv = masked ? dm.cview() : MatrixView<const T>();
    const reference::UnfusedSoftmaxLinear<T, B> unfused;
    // With a workspace on the padded runs, allocating per call on the others.
    const std::size_t bytes =
        std::max(op.workspace_size(q, keys, dim), unfused.workspace_size(q, keys));
    BackendBuffer<B, unsigned char> ws(pad ? bytes : 0);
    const Workspace w = pad ? Workspace{ws.data(), bytes} : Workspace{};
    op.forward(ds.cview(), dv.cview(), dy.view(), mv, w);
    unfused.forward(ds.cview(), dv.cview(), dyu.view(), mv, w);
    dy.sync_to_host();
    dyu.sync_to_host();
  }
  ASSERT_TRUE(y.guards_intact());
  ASSERT_TRUE(yu.guards_intact());
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), q, dim, y.stride(), ref)))
      << "one-pass";
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(yu.data(), q, dim, yu.stride(), ref)))
      << "three-pass";
  if (masked && q > 2) {
    for (index_t j = 0; j < dim; ++j) {
      ASSERT_EQ(test::Scalar<T>::to_double(y.at(0, j)), 0.0) << "fully masked row must be zero";
      ASSERT_EQ(test::Scalar<T>::to_double(y.at(q - 1, j)), 0.0);
      ASSERT_EQ(test::Scalar<T>::to_double(yu.at(0, j)), 0.0);
    }
  }
}

// The Cpu backend's blocking: the default tiles, and small ones so several tiles, a ragged last
// tile and the key split are exercised. The device kernel's tiles are fixed (128 keys).
template <class T, class B>
std::vector<SoftmaxLinear<T, B>> softmax_ops() {
  if (is_cpu<B>()) return {SoftmaxLinear<T, B>(256, 32), SoftmaxLinear<T, B>(16, 3)};
  return {SoftmaxLinear<T, B>()};
}

TYPED_TEST(NormTest, SoftmaxMatchesReferenceMaskedAndUnmasked) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  struct Shape {
    index_t queries, keys, dim;
  };
  // Ragged last key tiles, dims below, at and above the device kernel's 128-column chunk, and on
  // the Cpu longer key ranges, split across threads at 1 to 3 queries.
  std::vector<Shape> shapes = {{1, 1, 1}, {1, 7, 33}, {5, 255, 64}};
  if (is_cpu<B>())
    shapes.insert(shapes.end(),
                  {{33, 256, 17}, {40, 257, 128}, {70, 1000, 7}, {1, 5000, 64}, {3, 2049, 128}});
  else
    shapes.insert(shapes.end(), {{6, 129, 130}, {40, 257, 17}, {1, 1000, 64}});
  test::for_each_schedule<B>([&] {
    for (const auto& sh : shapes) {
      for (bool masked : {false, true}) {
        for (index_t pad : {0, 2}) {
          for (const auto& op : softmax_ops<T, B>()) {
            SCOPED_TRACE(testing::Message() << "queries=" << sh.queries << " keys=" << sh.keys
                                            << " dim=" << sh.dim << " masked=" << masked
                                            << " pad=" << pad << " key_tile=" << op.key_tile());
            check_softmax<B, T>(op, sh.queries, sh.keys, sh.dim, 3.0, 0.0, masked, pad,
                                17 + sh.keys);
          }
        }
      }
    }
  });
}

TYPED_TEST(NormTest, SoftmaxLargeMagnitudeScoresDoNotOverflow) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  // exp(1e4) overflows both float and double; the running max keeps every exponent <= 0. On the
  // device the kernel computes in fp32, where exp(s) overflows at s > 88, so offsets of 1e3 (the
  // 16-bit types cannot hold 1e4 + noise meaningfully) and 3e4 (not for fp16, whose range ends at
  // 65504) make a naive exp overflow there.
  const SoftmaxLinear<T, B> op = is_cpu<B>() ? SoftmaxLinear<T, B>(64, 8) : SoftmaxLinear<T, B>();
  const std::vector<double> offsets =
      is_cpu<B>() ? std::vector<double>{1e4, -1e4, 3e4} : std::vector<double>{1e3, -1e3, 3e4};
  const std::vector<double> scales =
      is_cpu<B>() ? std::vector<double>{1.0, 30.0, 1e3} : std::vector<double>{1.0, 30.0};
  const index_t keys = is_cpu<B>() ? 700 : 300;
  for (double offset : offsets) {
    if (is_fp16<T>() && std::abs(offset) > 6e4 / 2) continue;
    for (double scale : scales) {
      SCOPED_TRACE(testing::Message() << "offset=" << offset << " scale=" << scale);
      check_softmax<B, T>(op, 9, keys, 32, scale, offset, false, 0, 3);
      check_softmax<B, T>(op, 9, keys, 32, scale, offset, true, 1, 4);
    }
  }
  // Scores rising along the keys, so the max moves tile after tile and the rescaling is exercised.
  GuardedMatrix<T> s(2, 300), v(300, 8), y(2, 8);
  std::vector<double> sv(600);
  for (index_t k = 0; k < 300; ++k) sv[k] = sv[300 + k] = 1e4 + 10.0 * k;
  s.set(from_double<T>(sv));
  v.set(test::random_vector<T>(300 * 8, 1));
  {
    BackendMatrix<B, T> ds(s), dv(v), dy(y);
    op.forward(ds.cview(), dv.cview(), dy.view());
    dy.sync_to_host();
  }
  const auto ref = reference::softmax_v(s.to_double(), {}, 2, 300, v.to_double(), 8);
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), 2, 8, 8, ref)));
}

TYPED_TEST(NormTest, SoftmaxBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using test::throws_error;
  const SoftmaxLinear<T, B> op;
  const reference::UnfusedSoftmaxLinear<T, B> unfused;
  BackendBuffer<B, T> sb(4 * 10), vb(10 * 6), yb(4 * 6), mb(4 * 10);
  const MatrixView<const T> s(sb.data(), 4, 10), v(vb.data(), 10, 6), m(mb.data(), 4, 10);
  const MatrixView<T> y(yb.data(), 4, 6);
  EXPECT_TRUE(throws_error([&] { op.forward(s, MatrixView<const T>(vb.data(), 9, 6), y); },
                           {"SoftmaxLinear::forward", "v.rows = 9", "keys", "10"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, MatrixView<T>(yb.data(), 4, 5)); },
                           {"y.cols = 5", "head dim", "6"}));
  EXPECT_TRUE(throws_error([&] { unfused.forward(s, v, MatrixView<T>(yb.data(), 3, 6)); },
                           {"UnfusedSoftmaxLinear::forward", "y.rows = 3", "queries", "4"}));
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
  BackendBuffer<B, unsigned char> small(4);
  EXPECT_TRUE(throws_error(
      [&] {
        unfused.forward(s, v, y, m, Workspace{small.data(), 4});
      },
      {"UnfusedSoftmaxLinear::forward", "workspace.bytes = 4"}));
  std::string why;
  EXPECT_TRUE(can_implement(op, &why, s, v, y, m, Workspace{}));
  if (op.workspace_size(4, 10, 6) > 4) {  // the Cpu backend's one pass needs scratch
    EXPECT_TRUE(throws_error(
        [&] {
          op.forward(s, v, y, m, Workspace{small.data(), 4});
        },
        {"SoftmaxLinear::forward", "workspace.bytes = 4",
         "workspace_size(s.rows, s.cols, v.cols)"}));
    EXPECT_FALSE(can_implement(op, &why, s, v, y, m, Workspace{small.data(), 4}));
  }
  EXPECT_TRUE(throws_error([&] { SoftmaxLinear<T, B>(0, 8); }, {"key_tile = 0"}));
  EXPECT_TRUE(throws_error([&] { SoftmaxLinear<T, B>(8, -2); }, {"query_block = -2"}));
}

// --- The device backends: the two-stream schedule and the shared statistics reduction -----------

#if defined(FFNKIT_WITH_CUDA_EMU)

template <class P>
class NormDeviceTest : public NormTest<P> {};

using NormDeviceCombos = ::testing::Types<Combo<float, CudaEmu>, Combo<__half, CudaEmu>,
                                          Combo<__nv_bfloat16, CudaEmu> FFNKIT_CUDA_COMBOS>;
TYPED_TEST_SUITE(NormDeviceTest, NormDeviceCombos, test::ComboName);

// Above 16 tokens forward runs RowStats on the layer's secondary stream while the GEMM runs on the
// caller's; that must give exactly the single-stream schedule's output (same kernels, same data),
// with and without the normalized side output, on the default and on a created caller stream.
TYPED_TEST(NormDeviceTest, ConcurrentStatisticsMatchTheSingleStreamScheduleBitwise) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using Stream = typename detail::DeviceApi<B>::Stream;
  for (index_t tokens : {17, 40}) {
    for (bool ln : {false, true}) {
      for (bool created : {false, true}) {
        SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " layer_norm=" << ln
                                        << " created stream=" << created);
        NormCase<T> c(ln, 45, 38, 21);
        GuardedMatrix<T> x(tokens, 45, 1);
        x.set(test::random_vector<T>(tokens * 45, 4, 2.0));
        const auto ref = c.reference(x);
        auto lnl = c.template make_ln<B>();
        lnl.set_center_threshold(kInf);  // LayerNorm overlaps only without the host readback
        auto rms = c.template make_rms<B>();
        const Stream caller = created ? Stream::create() : Stream();
        std::vector<std::vector<T>> ys, ns;
        for (bool concurrent : {true, false}) {
          lnl.set_concurrent_stats(concurrent);
          rms.set_concurrent_stats(concurrent);
          for (bool side_output : {false, true}) {
            GuardedMatrix<T> y(tokens, 38, 2), xn(tokens, 45, 1);
            {
              BackendMatrix<B, T> dx(x), dy(y), dn(xn);
              const MatrixView<T> nv = side_output ? dn.view() : MatrixView<T>();
              if (ln)
                lnl.forward(dx.cview(), dy.view(), {}, nv, caller);
              else
                rms.forward(dx.cview(), dy.view(), {}, nv, caller);
              caller.synchronize();
              dy.sync_to_host();
              dn.sync_to_host();
            }
            ASSERT_TRUE(y.guards_intact());
            ASSERT_TRUE(xn.guards_intact());
            EXPECT_TRUE(
                test::within_tolerance<T>(test::compare(y.data(), tokens, 38, y.stride(), ref)));
            ys.emplace_back(y.storage(), y.storage() + y.storage_size());
            if (side_output) ns.emplace_back(xn.storage(), xn.storage() + xn.storage_size());
          }
        }
        for (std::size_t i = 1; i < ys.size(); ++i)
          EXPECT_EQ(0, std::memcmp(ys[0].data(), ys[i].data(), ys[0].size() * sizeof(T)))
              << "output " << i << " differs from the concurrent schedule's";
        EXPECT_EQ(0, std::memcmp(ns[0].data(), ns[1].data(), ns[0].size() * sizeof(T)))
            << "normalized side output";
      }
    }
  }
}

// The emulator runs each call to completion when issued, so the schedule is checked on its trace
// of stream-ordered calls: fork event on the caller's stream S, the secondary stream X waits for it
// and runs the statistics, records the join event; the GEMM on S; S waits for the join before the
// epilogue kernel.
TYPED_TEST(NormDeviceTest, ConcurrentStatisticsForkAndJoinWithEvents) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  if constexpr (!std::is_same<B, CudaEmu>::value) {
    GTEST_SKIP() << "the call trace is the emulator's (CudaEmu) only";
  } else {
    using Api = detail::DeviceApi<B>;
    using cuda_emu::TraceOp;
    const index_t tokens = 20;
    NormCase<T> c(false, 24, 10, 3);
    const auto rms = c.template make_rms<B>();
    auto lnl = NormCase<T>(true, 24, 10, 3).template make_ln<B>();
    typename Api::template Buffer<T> xb(tokens * 24), yb(tokens * 10), nb(tokens * 24);
    const std::vector<T> xh = test::random_vector<T>(tokens * 24, 5);
    xb.upload(xh.data(), xh.size());
    typename Api::template Buffer<unsigned char> ws(rms.workspace_size(tokens) +
                                                    lnl.workspace_size(tokens));
    const MatrixView<const T> x(xb.data(), tokens, 24);
    const MatrixView<T> y(yb.data(), tokens, 10);
    const Workspace w{ws.data(), ws.size()};
    const void* side = nullptr;
    for (int created = 0; created < 2; ++created) {
      for (bool side_output : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "created stream=" << created << " side output=" << side_output);
        const typename Api::Stream caller =
            created ? Api::Stream::create() : typename Api::Stream();
        const void* s = caller.handle();
        cuda_emu::ScopedTrace trace;
        rms.forward(x, y, w, side_output ? MatrixView<T>(nb.data(), tokens, 24) : MatrixView<T>(),
                    caller);
        const auto& e = trace.entries();
        ASSERT_EQ(e.size(), side_output ? 8u : 7u);
        const void* xs = e[1].stream;  // the secondary stream
        EXPECT_NE(xs, s);
        EXPECT_NE(xs, nullptr);
        if (side) {
          EXPECT_EQ(xs, side) << "the layer reuses its secondary stream";
        }
        side = xs;
        const void* fork = e[0].event;
        const std::size_t j = side_output ? 4 : 3;  // the join record
        const void* join = e[j].event;
        EXPECT_NE(fork, nullptr);
        EXPECT_NE(join, nullptr);
        EXPECT_NE(fork, join);
        EXPECT_TRUE(e[0].op == TraceOp::kEventRecord && e[0].stream == s) << "fork record";
        EXPECT_TRUE(e[1].op == TraceOp::kWaitEvent && e[1].event == fork) << "fork wait";
        for (std::size_t i = 2; i < j; ++i)
          EXPECT_TRUE(e[i].op == TraceOp::kLaunch && e[i].stream == xs) << "statistics " << i;
        EXPECT_TRUE(e[j].op == TraceOp::kEventRecord && e[j].stream == xs) << "join record";
        EXPECT_TRUE(e[j + 1].op == TraceOp::kGemm && e[j + 1].stream == s) << "GEMM";
        EXPECT_TRUE(e[j + 2].op == TraceOp::kWaitEvent && e[j + 2].stream == s &&
                    e[j + 2].event == join)
            << "join wait";
        EXPECT_TRUE(e[j + 3].op == TraceOp::kLaunch && e[j + 3].stream == s) << "epilogue";
      }
    }
    // A single-stream schedule: LayerNorm's default (finite) center threshold reads the statistics
    // back first, and set_concurrent_stats(false); both stay on the caller's stream.
    for (bool threshold : {true, false}) {
      lnl.set_center_threshold(threshold ? 4.0 : kInf);
      lnl.set_concurrent_stats(threshold);  // on but unusable with a finite threshold; else off
      cuda_emu::ScopedTrace trace;
      lnl.forward(x, y, w);
      for (const auto& en : trace.entries()) {
        EXPECT_EQ(en.stream, nullptr) << cuda_emu::to_string(en.op);
        EXPECT_NE(en.op, TraceOp::kWaitEvent);
      }
      EXPECT_EQ(trace.entries().size(), threshold ? 4u : 3u);  // stats, [readback], GEMM, epilogue
    }
    // A copy forks its own secondary stream.
    const auto copy = rms;
    cuda_emu::ScopedTrace trace;
    copy.forward(x, y, w);
    ASSERT_GE(trace.entries().size(), 2u);
    EXPECT_NE(trace.entries()[1].stream, side);
    EXPECT_NE(trace.entries()[1].stream, nullptr);
  }
}

// RowStats and NormDecode share one block reduction (BlockRowStats in cuda/kernels/norm.cuh). Its
// result is pinned bit for bit to a host replay of the reduction order: 256 threads each summing a
// strided slice of x − K (K = x[0] for LayerNorm), a 5-step xor-butterfly per warp, the 8 warp
// partials in order, then var = mean(d²) − mean(d)². Emulator only: nvcc contracts d * d into FMAs.
template <class T>
void replay_stats(const std::vector<T>& x, index_t tokens, index_t n, bool ln, float eps,
                  std::vector<float>* out) {
  constexpr int kThreads = 256;  // kNormThreads
  out->assign(static_cast<std::size_t>(2 * tokens), 0.0f);
  for (index_t r = 0; r < tokens; ++r) {
    const T* xr = x.data() + r * n;
    auto tof = [](T v) { return static_cast<float>(test::Scalar<T>::to_double(v)); };
    const float k = ln ? tof(xr[0]) : 0.0f;
    float p1[kThreads / 32], p2[kThreads / 32];
    for (int w = 0; w < kThreads / 32; ++w) {
      float v1[32], v2[32];
      for (int l = 0; l < 32; ++l) {
        float s1 = 0.0f, s2 = 0.0f;
        for (index_t c = w * 32 + l; c < n; c += kThreads) {
          const float d = tof(xr[c]) - k;
          s1 += d;
          s2 += d * d;
        }
        v1[l] = s1;
        v2[l] = s2;
      }
      for (int off = 16; off > 0; off /= 2) {
        float n1[32], n2[32];
        for (int l = 0; l < 32; ++l) {
          n1[l] = v1[l] + v1[l ^ off];
          n2[l] = v2[l] + v2[l ^ off];
        }
        std::copy(n1, n1 + 32, v1);
        std::copy(n2, n2 + 32, v2);
      }
      p1[w] = v1[0];
      p2[w] = v2[0];
    }
    float t1 = 0.0f, t2 = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) {
      t1 += p1[w];
      t2 += p2[w];
    }
    const float inv_n = 1.0f / static_cast<float>(n);
    const float m1 = ln ? t1 * inv_n : 0.0f;
    float var = t2 * inv_n - m1 * m1;
    if (!(var > 0.0f)) var = 0.0f;
    (*out)[2 * r] = k + m1;
    (*out)[2 * r + 1] = 1.0f / std::sqrt(var + eps);
  }
}

TYPED_TEST(NormDeviceTest, RowStatsAndDecodeStatisticsAreBitExact) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  if constexpr (!std::is_same<B, CudaEmu>::value) {
    GTEST_SKIP() << "the bit pattern is the emulator's (nvcc contracts d * d into FMAs)";
  } else {
    using Api = detail::DeviceApi<B>;
    const typename Api::Stream stream;
    for (index_t n : {1, 33, 300, 1000}) {
      for (bool ln : {false, true}) {
        const index_t tokens = 5;
        SCOPED_TRACE(testing::Message() << "in=" << n << " layer_norm=" << ln);
        std::vector<double> xd(static_cast<std::size_t>(tokens * n));
        fill_normal(xd.data(), tokens * n, 11 + n, 3.0, 2.0);  // a mean offset: shifts matter
        const std::vector<T> xh = from_double<T>(xd);
        std::vector<float> want;
        replay_stats(xh, tokens, n, ln, 1e-5f, &want);
        typename Api::template Buffer<T> xb(xh.data(), xh.size()), wb(n * 3), yb(tokens * 3);
        const std::vector<T> wh = test::random_vector<T>(n * 3, 2);
        wb.upload(wh.data(), wh.size());
        typename Api::template Buffer<float> st(2 * tokens), sd(2 * tokens);
        ASSERT_EQ(Status::kSuccess,
                  (cuda::RowStats<T, B>(xb.data(), tokens, n, n, ln, 1e-5f, st.data(), stream)));
        ASSERT_EQ(Status::kSuccess,
                  (cuda::NormDecode<T, B>(xb.data(), n, wb.data(), yb.data(), 3, tokens, n, 3, ln,
                                          1e-5f, nullptr, sd.data(), stream)));
        const std::vector<float> got = st.to_host(), dec = sd.to_host();
        for (std::size_t i = 0; i < want.size(); ++i) {
          EXPECT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
              << "RowStats stats[" << i << "] = " << got[i] << ", replay " << want[i];
          EXPECT_EQ(std::memcmp(&dec[i], &want[i], sizeof(float)), 0)
              << "NormDecode stats[" << i << "] = " << dec[i] << ", replay " << want[i];
        }
      }
    }
  }
}

#endif  // FFNKIT_WITH_CUDA_EMU

}  // namespace
}  // namespace ffnkit
