// The dense baseline, on every backend: DenseLinear and DenseFFN (GELU, ReLU, SiLU, SwiGLU) against
// the float64 oracle, with sentinel guards, strided views, odd shapes and every bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "ffnkit/dense.hpp"
#include "ffnkit/reference.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::BackendBuffer;
using test::BackendMatrix;
using test::Combo;
using test::GuardedMatrix;

template <class P>
class DenseTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
  void SetUp() override { FFNKIT_SKIP_IF_UNAVAILABLE(B); }
};

using Combos = ::testing::Types<FFNKIT_ALL_COMBOS>;
TYPED_TEST_SUITE(DenseTest, Combos, test::ComboName);

template <class L>
std::vector<double> weight64(const L& layer) {
  return test::to_double(layer.weight_host());
}
template <class L>
std::vector<double> bias64(const L& layer) {
  return test::to_double(layer.bias_host());
}

// Odd token counts (1, 7, 33, 255) and widths that are not multiples of 8, plus a BERT-sized one.
const std::vector<std::tuple<index_t, index_t, index_t>> kLinearShapes = {
    // tokens, in, out
    {1, 1, 1},     {1, 13, 29},    {7, 33, 5},      {33, 17, 63},
    {255, 29, 31}, {7, 768, 3072}, {33, 1023, 257},
};

TYPED_TEST(DenseTest, LinearMatchesReferenceWithGuardsAndStrides) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  test::for_each_schedule<B>([&] {
    for (auto [tokens, in, out] : kLinearShapes) {
      for (bool bias : {true, false}) {
        for (index_t pad : {0, 3}) {
          SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " in=" << in << " out=" << out
                                          << " bias=" << bias << " pad=" << pad);
          const auto layer = DenseLinear<T, B>::random(in, out, 11 + in * out, bias);
          GuardedMatrix<T> x(tokens, in, pad), y(tokens, out, pad);
          x.set(test::random_vector<T>(tokens * in, 5 + tokens));
          BackendMatrix<B, T> xd(x), yd(y);
          layer.forward(xd.cview(), yd.view());
          yd.sync_to_host();
          xd.sync_to_host();
          ASSERT_TRUE(y.guards_intact());
          ASSERT_TRUE(x.guards_intact());
          const auto w = weight64(layer), b = bias64(layer);
          const auto ref = reference::linear(x.to_double().data(), tokens, in, w.data(),
                                             bias ? b.data() : nullptr, out);
          EXPECT_TRUE(
              test::within_tolerance<T>(test::compare(y.data(), tokens, out, y.stride(), ref)));
        }
      }
    }
  });
}

TYPED_TEST(DenseTest, FfnEveryActivationMatchesReference) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const std::vector<std::tuple<index_t, index_t, index_t>> shapes = {// tokens, d_model, d_ff
                                                                     {1, 9, 36},
                                                                     {7, 33, 132},
                                                                     {33, 31, 75},
                                                                     {255, 13, 52},
                                                                     {16, 768, 3072}};
  test::for_each_schedule<B>([&] {
    for (auto [tokens, d, f] : shapes) {
      for (Activation act : {Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu,
                             Activation::kSilu, Activation::kIdentity}) {
        SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " d=" << d << " d_ff=" << f
                                        << " act=" << to_string(act));
        const auto ffn = DenseFFN<T, B>::random(d, f, act, 3 + d + f);
        GuardedMatrix<T> x(tokens, d, 1), y(tokens, d, 2);
        x.set(test::random_vector<T>(tokens * d, 99 + tokens));
        BackendMatrix<B, T> xd(x), yd(y);
        ffn.forward(xd.cview(), yd.view());
        yd.sync_to_host();
        ASSERT_TRUE(y.guards_intact());
        const auto w1 = weight64(ffn.up()), b1 = bias64(ffn.up());
        const auto w2 = weight64(ffn.down()), b2 = bias64(ffn.down());
        const auto ref = reference::ffn(x.to_double().data(), tokens, d, w1.data(), b1.data(), f,
                                        act, w2.data(), b2.data(), d);
        EXPECT_TRUE(test::within_tolerance<T>(test::compare(y.data(), tokens, d, y.stride(), ref)));
      }
    }
  });
}

TYPED_TEST(DenseTest, SwiGluMatchesReferenceWithAndWithoutBias) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using L = DenseLinear<T, B>;
  const std::vector<std::tuple<index_t, index_t, index_t, index_t>> shapes = {
      {1, 8, 24, 8}, {33, 31, 85, 17}, {255, 20, 56, 20}, {7, 768, 2048, 768}};
  test::for_each_schedule<B>([&] {
    for (auto [tokens, d, f, d_out] : shapes) {
      for (bool bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << "tokens=" << tokens << " d=" << d << " d_ff=" << f
                                        << " d_out=" << d_out << " bias=" << bias);
        const L gate = L::random(d, f, 1 + f, bias), up = L::random(d, f, 2 + f, bias);
        const L down = L::random(f, d_out, 3 + f, bias);
        const auto ffn = DenseFFN<T, B>::swiglu(gate, up, down);
        EXPECT_TRUE(ffn.gated());
        EXPECT_EQ(ffn.d_ff(), f);
        GuardedMatrix<T> x(tokens, d), y(tokens, d_out, 1);
        x.set(test::random_vector<T>(tokens * d, 7 + tokens));
        BackendMatrix<B, T> xd(x), yd(y);
        ffn.forward(xd.cview(), yd.view());
        yd.sync_to_host();
        ASSERT_TRUE(y.guards_intact());
        const auto wg = weight64(gate), wu = weight64(up), w2 = weight64(down);
        const auto bg = bias64(gate), bu = bias64(up), b2 = bias64(down);
        const auto ref = reference::swiglu_ffn(
            x.to_double().data(), tokens, d, wg.data(), bias ? bg.data() : nullptr, wu.data(),
            bias ? bu.data() : nullptr, f, w2.data(), bias ? b2.data() : nullptr, d_out);
        EXPECT_TRUE(
            test::within_tolerance<T>(test::compare(y.data(), tokens, d_out, y.stride(), ref)));
      }
    }
  });
}

TYPED_TEST(DenseTest, CallerWorkspaceGivesTheSameResult) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const index_t tokens = 33, d = 40, f = 160;
  const auto ffn = DenseFFN<T, B>::random(d, f, Activation::kGeluTanh, 5);
  BackendBuffer<B, T> x(tokens * d), y1(tokens * d), y2(tokens * d);
  x.upload(test::random_vector<T>(tokens * d, 1));
  ffn.forward(make_view<const T>(x.data(), tokens, d), make_view(y1.data(), tokens, d));
  BackendBuffer<B, T> ws(ffn.workspace_size(tokens) / sizeof(T));
  ffn.forward(make_view<const T>(x.data(), tokens, d), make_view(y2.data(), tokens, d),
              Workspace{ws.data(), ffn.workspace_size(tokens)});
  const auto a = y1.download(), b = y2.download();
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(T)));
  EXPECT_TRUE(test::throws_error(
      [&] {
        ffn.forward(make_view<const T>(x.data(), tokens, d), make_view(y2.data(), tokens, d),
                    Workspace{ws.data(), ffn.workspace_size(tokens) - 1});
      },
      {"workspace.bytes", std::to_string(ffn.workspace_size(tokens))}));
}

TYPED_TEST(DenseTest, NanInputPropagatesToItsOwnTokenOnly) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const index_t tokens = 7, d = 24, f = 96;
  const auto ffn = DenseFFN<T, B>::random(d, f, Activation::kGeluTanh, 8);
  auto xh = test::random_vector<T>(tokens * d, 2);
  xh[3 * d + 5] = test::Scalar<T>::from_double(std::numeric_limits<double>::quiet_NaN());
  BackendBuffer<B, T> x(tokens * d), y(tokens * d);
  x.upload(xh);
  ffn.forward(make_view<const T>(x.data(), tokens, d), make_view(y.data(), tokens, d));
  const auto yh = y.download();
  for (index_t t = 0; t < tokens; ++t) {
    for (index_t j = 0; j < d; ++j) {
      const double v = test::Scalar<T>::to_double(yh[t * d + j]);
      if (t == 3) {
        EXPECT_TRUE(std::isnan(v)) << "token 3, feature " << j;
      } else {
        EXPECT_TRUE(std::isfinite(v)) << "token " << t << ", feature " << j;
      }
    }
  }
}

TYPED_TEST(DenseTest, BadInputsGetClearErrors) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  using L = DenseLinear<T, B>;
  const index_t d = 16, f = 48;
  const auto ffn = DenseFFN<T, B>::random(d, f, Activation::kRelu, 1);
  BackendBuffer<B, T> xb(4 * d), yb(4 * d);
  T* x = xb.data();
  T* y = yb.data();
  auto fwd = [&](MatrixView<const T> xv, MatrixView<T> yv) { ffn.forward(xv, yv); };
  // Mismatched shapes.
  EXPECT_TRUE(test::throws_error(
      [&] {
        fwd({x, 4, d - 1}, {y, 4, d});
      },
      {"x.cols = 15", "d_model = 16"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        fwd({x, 4, d}, {y, 4, d + 1});
      },
      {"y.cols = 17", "d_out = 16"}));
  EXPECT_TRUE(test::throws_error([&] { fwd({x, 4, d}, {y, 3, d}); }, {"y.rows = 3", "x.rows = 4"}));
  // Zero tokens.
  EXPECT_TRUE(test::throws_error([&] { fwd({x, 0, d}, {y, 0, d}); }, {"x.rows (tokens) = 0"}));
  // Null data.
  EXPECT_TRUE(test::throws_error([&] { fwd({nullptr, 4, d}, {y, 4, d}); }, {"x.data", "null"}));
  EXPECT_TRUE(test::throws_error([&] { fwd({x, 4, d}, {nullptr, 4, d}); }, {"y.data", "null"}));
  // Aliasing input and output.
  EXPECT_TRUE(test::throws_error([&] { fwd({x, 4, d}, {x, 4, d}); }, {"overlap"}));
  // Construction: null or non-finite weights, zero widths, mismatched FFN pieces.
  std::vector<T> w(d * f, test::Scalar<T>::from_double(0.1));
  EXPECT_TRUE(test::throws_error([&] { L(d, f, nullptr, nullptr); }, {"weight", "null"}));
  w[17] = test::Scalar<T>::from_double(std::numeric_limits<double>::infinity());
  EXPECT_TRUE(test::throws_error([&] { L(d, f, w.data(), nullptr); }, {"weight[17]", "inf"}));
  EXPECT_TRUE(test::throws_error([&] { L::random(0, f, 1); }, {"in_features = 0"}));
  EXPECT_TRUE(
      test::throws_error([&] { DenseFFN<T, B>(L::random(d, f, 1), L::random(f + 1, d, 2)); },
                         {"down.in_features = 49", "up.out_features = 48"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        DenseFFN<T, B>::swiglu(L::random(d, f, 1), L::random(d, f + 2, 2), L::random(f, d, 3));
      },
      {"up.out_features = 50", "gate.out_features = 48"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        DenseFFN<T, B>::swiglu(L::random(d, f, 1, true), L::random(d, f, 2, false),
                               L::random(f, d, 3));
      },
      {"has_bias"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        DenseFFN<T, B> empty;
        empty.forward({x, 4, d}, {y, 4, d});
      },
      {"empty"}));
}

TYPED_TEST(DenseTest, MovedFromLayerAndOverlappingWorkspaceAreErrors) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const index_t tokens = 4, d = 16, f = 48;
  auto ffn = DenseFFN<T, B>::random(d, f, Activation::kGeluTanh, 3);
  BackendBuffer<B, T> x(tokens * d), y(tokens * d);
  x.upload(test::random_vector<T>(tokens * d, 4));
  const MatrixView<const T> xv(x.data(), tokens, d);
  const MatrixView<T> yv(y.data(), tokens, d);
  // A workspace that overlaps the input or the output would be overwritten mid-GEMM.
  EXPECT_TRUE(test::throws_error(
      [&] {
        ffn.forward(xv, yv, Workspace{x.data(), ffn.workspace_size(tokens) + 64});
      },
      {"overlap"}));
  BackendBuffer<B, T> big(tokens * f + tokens * d);
  const MatrixView<T> y_inside(big.data() + tokens * f - 8, tokens, d);
  EXPECT_TRUE(test::throws_error(
      [&] {
        ffn.forward(xv, y_inside, Workspace{big.data(), ffn.workspace_size(tokens)});
      },
      {"overlap"}));
  // A moved-from layer has no weights: an error, never a null pointer handed to a GEMM.
  auto moved = std::move(ffn);
  EXPECT_NO_THROW(moved.forward(xv, yv));
  EXPECT_TRUE(test::throws_error([&] { ffn.forward(xv, yv); }, {"moved from"}));
  auto linear = DenseLinear<T, B>::random(d, d, 9);
  auto other = std::move(linear);
  EXPECT_TRUE(test::throws_error([&] { linear.forward(xv, yv); }, {"moved from"}));
}

TYPED_TEST(DenseTest, CountsParametersAndFlops) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  const auto ffn = DenseFFN<T, B>::random(768, 3072, Activation::kGeluTanh, 1);
  EXPECT_EQ(ffn.parameter_count(), 2 * 768 * 3072 + 3072 + 768);
  EXPECT_DOUBLE_EQ(ffn.flops_per_token(), 4.0 * 768 * 3072);
  const auto swiglu = DenseFFN<T, B>::random_swiglu(64, 160, 2);
  EXPECT_EQ(swiglu.parameter_count(), 3 * 64 * 160);
  EXPECT_EQ(swiglu.workspace_size(10), 10u * 320u * sizeof(T));
}

}  // namespace
}  // namespace ffnkit
