// Deferred normalization (docs/math.md §7) on the device backends (CudaEmu always, Cuda when
// built): RMSNormLinear, LayerNormLinear and SoftmaxLinear for float, __half and __nv_bfloat16, the
// fused path against the unfused path against the float64 oracle, through sentinel-guarded device
// mirrors with strided views, under two emulator schedule orders; mean offsets |μ|/σ up to 1000
// against the stated bound, scores that overflow a naive exp, masked and fully masked rows, ε edge
// cases, odd widths, 1 token and bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>

#include "ffnkit/norm.hpp"
#include "ffnkit/reference.hpp"
#include "support/harness.hpp"

#if defined(FFNKIT_WITH_CUDA_EMU)

namespace ffnkit {
namespace {

using test::BackendMatrix;
using test::Combo;
using test::GuardedMatrix;

template <class P>
class NormDeviceTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
  void SetUp() override { FFNKIT_SKIP_IF_UNAVAILABLE(B); }
};

using NormDeviceCombos = ::testing::Types<Combo<float, CudaEmu>, Combo<__half, CudaEmu>,
                                          Combo<__nv_bfloat16, CudaEmu> FFNKIT_CUDA_COMBOS>;
TYPED_TEST_SUITE(NormDeviceTest, NormDeviceCombos, test::ComboName);

constexpr double kInf = std::numeric_limits<double>::infinity();

// The unit roundoff of the storage type.
template <class T>
double unit_roundoff() {
  if (std::is_same<T, __half>::value) return std::ldexp(1.0, -11);
  if (std::is_same<T, __nv_bfloat16>::value) return std::ldexp(1.0, -8);
  return std::ldexp(1.0, -24);
}

template <class T>
std::vector<T> from_double(const std::vector<double>& d) {
  std::vector<T> v(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) v[i] = test::Scalar<T>::from_double(d[i]);
  return v;
}

// One layer's host parameters, drawn in T and kept for the oracle.
template <class T>
struct DevNormCase {
  index_t in, out;
  bool layer_norm;
  std::vector<T> gamma, beta, weight, bias;
  double eps = 1e-5;

  DevNormCase(bool ln, index_t n, index_t m, std::uint64_t seed, bool affine = true,
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
  std::vector<double> reference(const GuardedMatrix<T>& x,
                                std::vector<double>* normalized = nullptr) const {
    return reference::norm_linear(layer_norm, x.to_double(), x.rows(), in, out,
                                  test::to_double(gamma), test::to_double(beta),
                                  test::to_double(weight), test::to_double(bias), eps, normalized);
  }
};

// Runs one path of `layer` on device mirrors of x into guarded y (and `xn`, if given).
template <class B, class T, class Layer>
void run_path(const Layer& layer, bool fused, GuardedMatrix<T>& x, GuardedMatrix<T>& y,
              GuardedMatrix<T>* xn = nullptr, Workspace ws = {}) {
  BackendMatrix<B, T> dx(x), dy(y);
  if (xn) {
    BackendMatrix<B, T> dn(*xn);
    fused ? layer.forward(dx.cview(), dy.view(), ws, dn.view())
          : layer.forward_unfused(dx.cview(), dy.view(), ws, dn.view());
    dn.sync_to_host();
  } else {
    fused ? layer.forward(dx.cview(), dy.view(), ws)
          : layer.forward_unfused(dx.cview(), dy.view(), ws);
  }
  dy.sync_to_host();
}

template <class B, class T, class Layer>
void check_both_paths(const Layer& layer, const DevNormCase<T>& c, GuardedMatrix<T>& x,
                      index_t pad) {
  const auto ref = c.reference(x);
  const index_t tokens = x.rows();
  for (bool fused : {true, false}) {
    GuardedMatrix<T> y(tokens, c.out, pad);
    run_path<B>(layer, fused, x, y);
    ASSERT_TRUE(y.guards_intact()) << (fused ? "fused" : "unfused");
    EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, c.out, y.stride(), ref)))
        << (fused ? "fused" : "unfused");
  }
}

// Odd widths, 1 token, 16/17 tokens, a BERT-width product.
const std::vector<std::tuple<index_t, index_t, index_t>> kDevNormShapes = {
    // tokens, in, out
    {1, 1, 1}, {1, 13, 29}, {7, 33, 5}, {16, 257, 129}, {17, 64, 64}, {33, 255, 63}, {3, 768, 515},
};

TYPED_TEST(NormDeviceTest, FusedAndUnfusedMatchReferenceWithGuardsAndStrides) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  test::for_each_schedule<B>([&] {
    for (auto [tokens, in, out] : kDevNormShapes) {
      for (bool ln : {false, true}) {
        for (bool affine : {true, false}) {
          for (index_t pad : {0, 3}) {
            const bool bias = pad == 0;
            SCOPED_TRACE(testing::Message()
                         << "tokens=" << tokens << " in=" << in << " out=" << out
                         << " layer_norm=" << ln << " affine=" << affine << " pad=" << pad);
            DevNormCase<T> c(ln, in, out, 100 + in + out, affine, bias);
            GuardedMatrix<T> x(tokens, in, pad);
            x.set(test::random_vector<T>(tokens * in, 7 + tokens, 2.0));
            if (ln)
              check_both_paths<B>(c.template make_ln<B>(), c, x, pad);
            else
              check_both_paths<B>(c.template make_rms<B>(), c, x, pad);
          }
        }
      }
    }
  });
}

TYPED_TEST(NormDeviceTest, ReturnsNormalizedActivationsAndUsesTheWorkspace) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  for (index_t tokens : {1, 5, 40}) {
    for (bool ln : {false, true}) {
      SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " layer_norm=" << ln);
      DevNormCase<T> c(ln, 37, 70, 9);
      GuardedMatrix<T> x(tokens, 37, 2);
      x.set(test::random_vector<T>(tokens * 37, 3, 3.0));
      std::vector<double> nref;
      const auto ref = c.reference(x, &nref);
      const auto lnl = c.template make_ln<B>();
      const auto rms = c.template make_rms<B>();
      const std::size_t bytes = ln ? lnl.workspace_size(tokens) : rms.workspace_size(tokens);
      typename detail::DeviceApi<B>::template Buffer<unsigned char> ws(bytes);
      for (bool fused : {true, false}) {
        GuardedMatrix<T> y(tokens, 70), xn(tokens, 37, 1);
        if (ln)
          run_path<B>(lnl, fused, x, y, &xn, Workspace{ws.data(), bytes});
        else
          run_path<B>(rms, fused, x, y, &xn, Workspace{ws.data(), bytes});
        ASSERT_TRUE(xn.guards_intact());
        ASSERT_TRUE(y.guards_intact());
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(xn.data(), tokens, 37, xn.stride(), nref)))
            << (fused ? "fused" : "unfused") << " normalized";
        EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, 70, 70, ref)))
            << (fused ? "fused" : "unfused");
      }
    }
  }
}

// The bound of test_norm.cpp with the storage type's unit roundoff u: with ρ = |μ|/σ,
//   default forward and unfused: max_rel <= 64 u (1 + ρ) sqrt(N / 256);
//   forced deferred (center_threshold = inf): max_rel <= 256 u (1 + ρ) sqrt(N / 256).
// For the half types the deferred correction runs on fp32 accumulators, so only the output
// rounding is at u; for float the checks are the Cpu backend's.
double ln_bound(double unit, double rho, index_t n, double factor) {
  return factor * unit * (1.0 + rho) * std::sqrt(std::max(1.0, static_cast<double>(n) / 256.0));
}

TYPED_TEST(NormDeviceTest, LayerNormMeanOffsetsStayWithinTheStatedBound) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const double u = unit_roundoff<T>();
  for (index_t n : {255, 1024}) {
    for (index_t tokens : {3, 20}) {
      for (double rho : {0.0, 10.0, 100.0, 1000.0}) {
        SCOPED_TRACE(testing::Message()
                     << "in=" << n << " tokens=" << tokens << " |mu|/sigma=" << rho);
        DevNormCase<T> c(true, n, 96, 41 + n);
        GuardedMatrix<T> x(tokens, n);
        std::vector<double> xd(static_cast<std::size_t>(tokens * n));
        fill_normal(xd.data(), tokens * n, 5 + tokens, 0.0, 0.5);
        for (index_t t = 0; t < tokens; ++t)
          for (index_t j = 0; j < n; ++j) xd[t * n + j] += (t % 2 ? -1 : 1) * rho * 0.5;
        x.set(from_double<T>(xd));
        const auto ref = c.reference(x);
        auto layer = c.template make_ln<B>();
        GuardedMatrix<T> y(tokens, 96), yu(tokens, 96), yd(tokens, 96);
        run_path<B>(layer, true, x, y);
        run_path<B>(layer, false, x, yu);
        layer.set_center_threshold(kInf);
        run_path<B>(layer, true, x, yd);
        const auto e = test::compare(y.data(), tokens, 96, 96, ref);
        const auto eu = test::compare(yu.data(), tokens, 96, 96, ref);
        const auto ed = test::compare(yd.data(), tokens, 96, 96, ref);
        EXPECT_EQ(e.non_finite + eu.non_finite + ed.non_finite, 0);
        EXPECT_LE(e.max_rel, ln_bound(u, rho, n, 64)) << "default forward";
        EXPECT_LE(eu.max_rel, ln_bound(u, rho, n, 64)) << "unfused";
        EXPECT_LE(ed.max_rel, ln_bound(u, rho, n, 256)) << "forced deferred";
        if (rho <= 100) {
          EXPECT_LE(e.max_rel, 10 * std::max(eu.max_rel, 8 * u));
        }
        if (!std::is_same<T, float>::value) {
          // Half types: the centered and unfused paths stay at the output's rounding whatever ρ
          // (measured ~2.5 u); the deferred one adds the fp32 accumulators' ρ-sized error.
          EXPECT_LE(e.max_rel, 8 * u) << "default forward, flat in rho";
          EXPECT_LE(eu.max_rel, 8 * u) << "unfused, flat in rho";
          EXPECT_LE(ed.max_rel, 8 * u + ln_bound(unit_roundoff<float>(), rho, n, 256))
              << "forced deferred, fp32 accumulators";
        }
        if (std::getenv("FFNKIT_PRINT_ERRORS"))
          std::printf("LN %s N=%ld T=%ld rho=%g default=%.3g unfused=%.3g deferred=%.3g\n",
                      test::Scalar<T>::name(), static_cast<long>(n), static_cast<long>(tokens), rho,
                      e.max_rel, eu.max_rel, ed.max_rel);
      }
    }
  }
}

TYPED_TEST(NormDeviceTest, EpsilonEdgeCases) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  for (double eps : {1e-30, 1e-12, 1e-5, 1e3}) {
    for (bool ln : {false, true}) {
      for (int kind = 0; kind < 3; ++kind) {  // random, all-zero tokens, constant tokens
        for (index_t tokens : {1, 20}) {
          SCOPED_TRACE(testing::Message() << "eps=" << eps << " layer_norm=" << ln
                                          << " kind=" << kind << " tokens=" << tokens);
          DevNormCase<T> c(ln, 65, 33, 5);
          c.eps = eps;
          GuardedMatrix<T> x(tokens, 65);
          std::vector<T> v = test::random_vector<T>(tokens * 65, 8);
          if (kind == 1) std::fill(v.begin(), v.end(), test::Scalar<T>::from_double(0));
          if (kind == 2) std::fill(v.begin(), v.end(), test::Scalar<T>::from_double(3.25));
          x.set(v);
          if (ln)
            check_both_paths<B>(c.template make_ln<B>(), c, x, 0);
          else
            check_both_paths<B>(c.template make_rms<B>(), c, x, 0);
        }
      }
    }
  }
}

TYPED_TEST(NormDeviceTest, NormBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using test::throws_error;
  DevNormCase<T> c(true, 8, 4, 1);
  const T* w = c.weight.data();
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(0, 4, nullptr, w, nullptr); },
                           {"RMSNormLinear", "in_features = 0"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, B>(8, -1, nullptr, nullptr, w, nullptr); },
                           {"LayerNormLinear", "out_features = -1"}));
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(8, 4, nullptr, nullptr, nullptr); },
                           {"weight is a null pointer"}));
  for (double eps : {0.0, -1e-5, std::nan(""), kInf, 1e-50}) {
    EXPECT_TRUE(throws_error(
        [&] { LayerNormLinear<T, B>(8, 4, nullptr, nullptr, w, nullptr, eps); }, {"eps = "}));
  }
  std::vector<T> g(8, test::Scalar<T>::from_double(1));
  g[5] = test::Scalar<T>::from_double(std::nan(""));
  EXPECT_TRUE(throws_error([&] { RMSNormLinear<T, B>(8, 4, g.data(), w, nullptr); },
                           {"gamma[5]", "not finite"}));
  EXPECT_TRUE(throws_error([&] { LayerNormLinear<T, B>(8, 4, nullptr, g.data(), w, nullptr); },
                           {"beta[5]", "not finite"}));

  auto layer = c.template make_ln<B>();
  typename detail::DeviceApi<B>::template Buffer<T> xs(3 * 9), ys(3 * 5), ns(3 * 8);
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
  EXPECT_TRUE(throws_error(
      [&] {
        layer.forward(MatrixView<const T>(xs.data(), 3, 8), MatrixView<T>(xs.data() + 1, 3, 4));
      },
      {"overlap"}));
  typename detail::DeviceApi<B>::template Buffer<unsigned char> small(8);
  EXPECT_TRUE(throws_error(
      [&] {
        layer.forward_unfused(x, y, Workspace{small.data(), 8});
      },
      {"workspace.bytes = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.forward(x, y, {}, MatrixView<T>(ns.data(), 3, 7)); },
                           {"normalized.cols = 7", "in_features = 8"}));
  EXPECT_TRUE(throws_error([&] { layer.set_center_threshold(-1); }, {"mu_over_sigma = -1"}));
  LayerNormLinear<T, B> empty;
  EXPECT_TRUE(throws_error([&] { empty.forward(x, y); }, {"empty"}));
  // A copy is deep: it still works after the original is gone.
  LayerNormLinear<T, B> copy;
  {
    const auto tmp = c.template make_ln<B>();
    copy = tmp;
  }
  GuardedMatrix<T> hx(3, 8), hy(3, 4);
  hx.set(test::random_vector<T>(24, 2));
  run_path<B>(copy, true, hx, hy);
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(hy.data(), 3, 4, 4, c.reference(hx))));
}

// --- The two-stream schedule and the shared statistics reduction ---------------------------------

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
        DevNormCase<T> c(ln, 45, 38, 21);
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
    DevNormCase<T> c(false, 24, 10, 3);
    const auto rms = c.template make_rms<B>();
    auto lnl = DevNormCase<T>(true, 24, 10, 3).template make_ln<B>();
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

// --- SoftmaxLinear ------------------------------------------------------------------------------

template <class B, class T>
void check_softmax(index_t q, index_t keys, index_t dim, double scale, double offset, bool masked,
                   index_t pad, std::uint64_t seed) {
  const SoftmaxLinear<T, B> op;
  GuardedMatrix<T> s(q, keys, pad), v(keys, dim, pad), mask(q, keys, pad);
  std::vector<double> sd(static_cast<std::size_t>(q * keys));
  fill_normal(sd.data(), q * keys, seed, offset, scale);
  s.set(from_double<T>(sd));
  v.set(test::random_vector<T>(keys * dim, seed + 1));
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<double> md(static_cast<std::size_t>(q * keys), 0.0);
  if (masked) {
    // Scattered −inf, a finite penalty, fully masked rows 0 and q−1 (when q > 2), and a masked
    // prefix longer than a tile.
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
    op.forward(ds.cview(), dv.cview(), dy.view(), mv);
    op.forward_unfused(ds.cview(), dv.cview(), dyu.view(), mv);
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

TYPED_TEST(NormDeviceTest, SoftmaxMatchesReferenceMaskedAndUnmasked) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  struct Shape {
    index_t queries, keys, dim;
  };
  // Ragged last key tiles (tile = 128 keys), dims below, at and above one 128-column chunk.
  const std::vector<Shape> shapes = {{1, 1, 1},     {1, 7, 33},    {5, 255, 64},
                                     {6, 129, 130}, {40, 257, 17}, {1, 1000, 64}};
  test::for_each_schedule<B>([&] {
    for (const auto& sh : shapes) {
      for (bool masked : {false, true}) {
        for (index_t pad : {0, 2}) {
          SCOPED_TRACE(testing::Message()
                       << "queries=" << sh.queries << " keys=" << sh.keys << " dim=" << sh.dim
                       << " masked=" << masked << " pad=" << pad);
          check_softmax<B, T>(sh.queries, sh.keys, sh.dim, 3.0, 0.0, masked, pad, 17 + sh.keys);
        }
      }
    }
  });
}

TYPED_TEST(NormDeviceTest, SoftmaxLargeMagnitudeScoresDoNotOverflow) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  // Half types cannot hold 3e4 + noise meaningfully, but fp32 exp(s) would overflow at s > 88:
  // offsets of 1e3 (and 3e4 for float and bf16) make a naive exp overflow in the kernel's fp32.
  for (double offset : {1e3, -1e3, 3e4}) {
    if (std::is_same<T, __half>::value && std::abs(offset) > 6e4 / 2) continue;
    for (double scale : {1.0, 30.0}) {
      SCOPED_TRACE(testing::Message() << "offset=" << offset << " scale=" << scale);
      check_softmax<B, T>(9, 300, 32, scale, offset, false, 0, 3);
      check_softmax<B, T>(9, 300, 32, scale, offset, true, 1, 4);
    }
  }
}

TYPED_TEST(NormDeviceTest, SoftmaxBadInputsThrowNamingTheValue) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using test::throws_error;
  const SoftmaxLinear<T, B> op;
  typename detail::DeviceApi<B>::template Buffer<T> sb(4 * 10), vb(10 * 6), yb(4 * 6), mb(4 * 10);
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
  EXPECT_TRUE(throws_error([&] { op.forward(MatrixView<const T>(nullptr, 4, 10), v, y); },
                           {"s.data is a null pointer"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, y, MatrixView<const T>(mb.data(), 3, 10)); },
                           {"mask.rows = 3"}));
  EXPECT_TRUE(throws_error([&] { op.forward(s, v, MatrixView<T>(sb.data(), 4, 6)); }, {"overlap"}));
  typename detail::DeviceApi<B>::template Buffer<unsigned char> small(4);
  EXPECT_TRUE(throws_error(
      [&] {
        op.forward_unfused(s, v, y, m, Workspace{small.data(), 4});
      },
      {"workspace.bytes = 4"}));
}

}  // namespace
}  // namespace ffnkit

#endif  // FFNKIT_WITH_CUDA_EMU
