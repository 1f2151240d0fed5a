// The op table, in the spirit of ggml's test-backend-ops: one row per public layer family, every
// row run over every (scalar, backend) combination of the harness (Cpu f32/f64, CudaEmu and Cuda
// f32/f16/bf16; an absent backend skips visibly). A row says how to build its layer from a seed,
// what its float64 oracle is and which shapes to try; the table then checks, the same way for
// every row:
//   - forward against the oracle, with strided, sentinel-guarded x and y and a dirty workspace of
//     exactly workspace_size(tokens) bytes (the guards prove nothing outside y was written);
//   - the operator contract's argument checks, before any memory is touched, each error naming
//     the function and the offending argument: x of the wrong width, y of the wrong width or
//     token count, null data, zero tokens, x and y overlapping, a workspace one byte short or
//     misaligned, and a moved-from layer.
// The families' own suites (test_dense, test_structured, test_self_guided, test_fff, test_norm)
// go deeper: backward, schedules, routing ties, edge cases of each family's math. Softmax·V has
// attention's inputs (scores, values, mask) rather than x -> y, so its rows live in test_norm.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/ffnkit.hpp"
#include "ffnkit/reference/dense.hpp"
#include "ffnkit/reference/fff.hpp"
#include "ffnkit/reference/norm.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::GuardedMatrix;

struct Shape {
  index_t in, out, tokens;
};

template <class T>
std::vector<double> doubles(const std::vector<T>& v) {
  return test::to_double(v);
}

// The oracle of a layer whose dense equivalent is materialize() ([out x in]) plus its bias.
template <class L>
struct IsSelfGuided : std::false_type {};
template <class S>
struct IsSelfGuided<SelfGuided<S>> : std::true_type {};

template <class L>
std::vector<double> bias_of(const L& l) {
  if (!l.has_bias()) return {};
  if constexpr (IsSelfGuided<L>::value) {
    return doubles(l.structured().bias_host());
  } else {
    return doubles(l.bias_host());
  }
}

template <class L>
std::vector<double> dense_oracle(const L& l, const std::vector<double>& x, index_t tokens) {
  const auto w = doubles(l.materialize());
  const auto b = bias_of(l);
  return reference::linear(x.data(), tokens, l.in_features(), w.data(),
                           b.empty() ? nullptr : b.data(), l.out_features());
}

// ----- the rows -----

struct DenseRow {
  static const char* name() { return "DenseLinear"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {33, 17, 1}}; }
  template <class T, class B>
  static DenseLinear<T, B> make(const Shape& s, std::uint64_t seed) {
    return DenseLinear<T, B>::random(s.in, s.out, seed, true, 0.2);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

struct LowRankRow {
  static const char* name() { return "LowRankLinear"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {33, 17, 1}}; }
  template <class T, class B>
  static LowRankLinear<T, B> make(const Shape& s, std::uint64_t seed) {
    return LowRankLinear<T, B>::random(s.in, s.out, 8, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

struct BlockDenseRow {
  static const char* name() { return "BlockDenseLinear"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {32, 18, 1}}; }
  template <class T, class B>
  static BlockDenseLinear<T, B> make(const Shape& s, std::uint64_t seed) {
    return BlockDenseLinear<T, B>::random(s.in, s.out, 2, 6, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

struct BlockDiagonalRow {
  static const char* name() { return "BlockDiagonalLinear"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {36, 18, 1}}; }
  template <class T, class B>
  static BlockDiagonalLinear<T, B> make(const Shape& s, std::uint64_t seed) {
    return BlockDiagonalLinear<T, B>::random(s.in, s.out, 2, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

struct BlockShuffleRow {
  static const char* name() { return "BlockShuffleLinear"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {36, 20, 1}}; }
  template <class T, class B>
  static BlockShuffleLinear<T, B> make(const Shape& s, std::uint64_t seed) {
    return BlockShuffleLinear<T, B>::random(s.in, s.out, 4, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

// An FFN's oracle: its two sublayers' dense equivalents with the activation between them.
template <class L>
std::vector<double> ffn_oracle(const L& f, const std::vector<double>& x, index_t tokens) {
  const auto w1 = doubles(f.up().materialize()), w2 = doubles(f.down().materialize());
  const auto b1 = doubles(f.up().bias_host()), b2 = doubles(f.down().bias_host());
  return reference::ffn(x.data(), tokens, f.d_model(), w1.data(), b1.data(), f.d_ff(),
                        f.activation(), w2.data(), b2.data(), f.d_out());
}

struct DenseFfnRow {
  static const char* name() { return "DenseFFN"; }
  static std::vector<Shape> shapes() { return {{40, 40, 7}, {24, 24, 1}}; }
  template <class T, class B>
  static DenseFFN<T, B> make(const Shape& s, std::uint64_t seed) {
    return DenseFFN<T, B>::random(s.in, 64, Activation::kGeluTanh, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return ffn_oracle(l, x, t);
  }
};

struct StructuredFfnRow {
  static const char* name() { return "StructuredFFN<LowRankLinear>"; }
  static std::vector<Shape> shapes() { return {{40, 40, 7}, {24, 24, 1}}; }
  template <class T, class B>
  static StructuredFFN<LowRankLinear<T, B>, LowRankLinear<T, B>> make(const Shape& s,
                                                                      std::uint64_t seed) {
    return StructuredFFN<LowRankLinear<T, B>, LowRankLinear<T, B>>(
        LowRankLinear<T, B>::random(s.in, 64, 8, seed),
        LowRankLinear<T, B>::random(64, s.out, 8, seed + 1), Activation::kRelu);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return ffn_oracle(l, x, t);
  }
};

// At step 0 α = 1: forward is the guide, whose weights start as materialize(S); materialize()
// is the blended weight in every case.
struct SelfGuidedRow {
  static const char* name() { return "SelfGuided<BlockDenseLinear>"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {32, 18, 1}}; }
  template <class T, class B>
  static SelfGuided<BlockDenseLinear<T, B>> make(const Shape& s, std::uint64_t seed) {
    return SelfGuided<BlockDenseLinear<T, B>>(
        BlockDenseLinear<T, B>::random(s.in, s.out, 2, 6, seed), AlphaSchedule::cosine(100),
        /*stochastic=*/false);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return dense_oracle(l, x, t);
  }
};

// The oracle routes by itself; a token whose path a rounding could flip (|λ| within rounding of
// 0) is rare at these sizes and seeds, and test_fff checks the paths margin by margin.
struct FffRow {
  static const char* name() { return "FastFeedForward"; }
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {33, 17, 1}}; }
  template <class T, class B>
  static FastFeedForward<T, B> make(const Shape& s, std::uint64_t seed) {
    return FastFeedForward<T, B>::random(s.in, s.out, 2, 3, seed);
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    using T = typename L::Scalar;
    const auto w = reference::weights_of(l, [](T v) { return test::Scalar<T>::to_double(v); });
    return reference::fff(w, x.data(), t);
  }
};

// The norm layers keep only the folded weights, so the row keeps the module's own parameters
// (rounded to T) for the oracle.
template <bool kLayerNorm>
struct NormRowBase {
  static std::vector<Shape> shapes() { return {{48, 40, 7}, {33, 17, 1}}; }
  template <class T>
  struct Params {
    std::vector<T> gamma, beta, w, b;
    explicit Params(const Shape& s, std::uint64_t seed)
        : gamma(test::random_vector<T>(s.in, seed, 0.5)),
          beta(test::random_vector<T>(s.in, seed + 1, 0.5)),
          w(test::random_vector<T>(s.in * s.out, seed + 2, 0.2)),
          b(test::random_vector<T>(s.out, seed + 3, 0.2)) {
      for (auto& g : gamma) g = test::Scalar<T>::from_double(1.0 + test::Scalar<T>::to_double(g));
    }
  };
  template <class L>
  static std::vector<double> oracle_of(const L& l, const std::vector<double>& x, index_t t,
                                       std::uint64_t seed) {
    using T = typename L::Scalar;
    const Params<T> p(Shape{l.in_features(), l.out_features(), t}, seed);
    return reference::norm_linear(
        kLayerNorm, x, t, l.in_features(), l.out_features(), doubles(p.gamma),
        kLayerNorm ? doubles(p.beta) : std::vector<double>(), doubles(p.w), doubles(p.b), l.eps());
  }
};

constexpr std::uint64_t kNormSeed = 0x5eed;

struct RMSNormRow : NormRowBase<false> {
  static const char* name() { return "RMSNormLinear"; }
  template <class T, class B>
  static RMSNormLinear<T, B> make(const Shape& s, std::uint64_t) {
    const Params<T> p(s, kNormSeed);
    return RMSNormLinear<T, B>(s.in, s.out, p.gamma.data(), p.w.data(), p.b.data());
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return oracle_of(l, x, t, kNormSeed);
  }
};

struct LayerNormRow : NormRowBase<true> {
  static const char* name() { return "LayerNormLinear"; }
  template <class T, class B>
  static LayerNormLinear<T, B> make(const Shape& s, std::uint64_t) {
    const Params<T> p(s, kNormSeed);
    return LayerNormLinear<T, B>(s.in, s.out, p.gamma.data(), p.beta.data(), p.w.data(),
                                 p.b.data());
  }
  template <class L>
  static std::vector<double> oracle(const L& l, const std::vector<double>& x, index_t t) {
    return oracle_of(l, x, t, kNormSeed);
  }
};

using Rows =
    std::tuple<DenseRow, LowRankRow, BlockDenseRow, BlockDiagonalRow, BlockShuffleRow, DenseFfnRow,
               StructuredFfnRow, SelfGuidedRow, FffRow, RMSNormRow, LayerNormRow>;

// ----- what the table checks -----

// Scratch of exactly `bytes` in backend B's memory, filled with 0xFF (a layer that reads scratch
// before writing it sees NaNs).
template <class B>
class DirtyScratch {
 public:
  explicit DirtyScratch(std::size_t bytes) : buf_(bytes + 64), bytes_(bytes) {
    buf_.upload(std::vector<unsigned char>(bytes + 64, 0xFF));
  }
  Workspace ws() const { return Workspace{bytes_ ? buf_.data() : nullptr, bytes_}; }
  // The same memory one byte short, or shifted off its alignment.
  Workspace short_by_one() const { return Workspace{buf_.data(), bytes_ - 1}; }
  Workspace misaligned() const { return Workspace{buf_.data() + 1, bytes_}; }

 private:
  mutable test::BackendBuffer<B, unsigned char> buf_;
  std::size_t bytes_;
};

template <class Fn>
::testing::AssertionResult throws_naming(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto& n : needles)
      if (what.find(n) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << what << "\" does not name " << n;
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no ffnkit::Error thrown";
}

template <class Row, class T, class B>
void check_row_forward(std::uint64_t seed) {
  for (const Shape& s : Row::shapes()) {
    SCOPED_TRACE(make_message(Row::name(), " in=", s.in, " out=", s.out, " tokens=", s.tokens));
    auto layer = Row::template make<T, B>(s, seed);
    GuardedMatrix<T> x(s.tokens, s.in, 3), y(s.tokens, s.out, 5);
    x.set(test::random_vector<T>(s.tokens * s.in, seed + 7));
    test::BackendMatrix<B, T> xd(x), yd(y);
    const DirtyScratch<B> ws(layer.workspace_size(s.tokens));
    for (int run = 0; run < 2; ++run) {  // the second run proves the workspace's old bits harmless
      layer.forward(xd.cview(), yd.view(), ws.ws());
      yd.sync_to_host();
      EXPECT_TRUE(y.guards_intact());
      EXPECT_TRUE(test::within_tolerance<T>(test::compare(
          y.data(), s.tokens, s.out, y.stride(), Row::oracle(layer, x.to_double(), s.tokens))));
    }
  }
}

template <class Row, class T, class B>
void check_row_bad_inputs(std::uint64_t seed) {
  const Shape s = Row::shapes().front();
  auto layer = Row::template make<T, B>(s, seed);
  const std::string fwd = "::forward";
  // x has one spare column and y one spare row, so the wrong shapes below point at real memory.
  test::BackendBuffer<B, T> xb(static_cast<std::size_t>(s.tokens * (s.in + 1)));
  test::BackendBuffer<B, T> yb(static_cast<std::size_t>((s.tokens + 1) * (s.out + 1)));
  xb.upload(test::random_vector<T>(s.tokens * (s.in + 1), seed));
  const MatrixView<const T> x(xb.data(), s.tokens, s.in, s.in + 1);
  const MatrixView<T> y(yb.data(), s.tokens, s.out, s.out + 1);
  const std::size_t need = layer.workspace_size(s.tokens);
  const DirtyScratch<B> scratch(need);
  const Workspace ws = scratch.ws();
  // The good call works, so every failure below is the one argument changed.
  layer.forward(x, y, ws);
  const auto n = [](index_t v) { return make_message(v); };
  EXPECT_TRUE(throws_naming(
      [&] { layer.forward(MatrixView<const T>(xb.data(), s.tokens, s.in + 1), y, ws); },
      {fwd, "x.cols = " + n(s.in + 1)}));
  EXPECT_TRUE(
      throws_naming([&] { layer.forward(x, MatrixView<T>(yb.data(), s.tokens, s.out + 1), ws); },
                    {fwd, "y.cols = " + n(s.out + 1)}));
  EXPECT_TRUE(throws_naming(
      [&] { layer.forward(x, MatrixView<T>(yb.data(), s.tokens + 1, s.out, s.out + 1), ws); },
      {fwd, "y.rows"}));
  EXPECT_TRUE(
      throws_naming([&] { layer.forward(MatrixView<const T>(nullptr, s.tokens, s.in), y, ws); },
                    {fwd, "x.data is a null pointer"}));
  EXPECT_TRUE(throws_naming([&] { layer.forward(x, MatrixView<T>(nullptr, s.tokens, s.out), ws); },
                            {fwd, "y.data is a null pointer"}));
  EXPECT_TRUE(throws_naming(
      [&] {
        layer.forward(MatrixView<const T>(xb.data(), 0, s.in), MatrixView<T>(yb.data(), 0, s.out),
                      ws);
      },
      {fwd, "x.rows (tokens) = 0"}));
  // y written over x: the output view starts inside the input.
  EXPECT_TRUE(throws_naming(
      [&] {
        layer.forward(x, MatrixView<T>(const_cast<T*>(x.data) + 1, s.tokens, s.out, s.out), ws);
      },
      {fwd, "input x and output y overlap"}));
  if (need > 0) {
    EXPECT_TRUE(throws_naming([&] { layer.forward(x, y, scratch.short_by_one()); },
                              {fwd, "workspace.bytes = " + make_message(need - 1)}));
    EXPECT_TRUE(throws_naming([&] { layer.forward(x, y, scratch.misaligned()); },
                              {fwd, "workspace.data is not aligned"}));
  }
  auto moved = std::move(layer);
  (void)moved;
  EXPECT_TRUE(throws_naming([&] { layer.forward(x, y, ws); }, {fwd}));
}

template <class P>
class OpTable : public ::testing::Test {
 public:
  using T = typename P::Scalar;
  using B = typename P::Backend;
};

using AllCombos = ::testing::Types<FFNKIT_ALL_COMBOS>;
TYPED_TEST_SUITE(OpTable, AllCombos, test::ComboName);

template <class T, class B, class Fn>
void for_each_row(Fn&& fn) {
  std::apply([&](auto... row) { (fn(row), ...); }, Rows{});
}

TYPED_TEST(OpTable, EveryRowForwardMatchesItsOracleWithGuardsAndADirtyWorkspace) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  std::uint64_t seed = 100;
  for_each_row<T, B>([&](auto row) { check_row_forward<decltype(row), T, B>(seed += 10); });
}

TYPED_TEST(OpTable, EveryRowRejectsBadArgumentsNamingThem) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  std::uint64_t seed = 200;
  for_each_row<T, B>([&](auto row) {
    SCOPED_TRACE(decltype(row)::name());
    check_row_bad_inputs<decltype(row), T, B>(seed += 10);
  });
}

}  // namespace
}  // namespace ffnkit
