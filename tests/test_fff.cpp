// FastFeedForward (docs/math.md §6) on every (scalar, backend) combination: Cpu float and double,
// CudaEmu and Cuda in fp32, fp16 and bf16 (Cuda skips visibly without a device). Forward with
// every kernel against the naive float64 oracle, every token's path included, the kernels against
// each other bit for bit and against the Cpu layer's paths; the branch rule at exact ties, K > 1
// trees, depth 0, 1 token and odd token counts, the grouped kernels' blocked and bucketed levels,
// adversarial inputs (every token on one path) and inputs spread over every leaf, NaN confined to
// its own token; backward on the recorded paths against the oracle's gradients and central
// differences, deterministic to the bit and, on the device, stream-ordered given its workspace;
// counts, the seeded init and the layouts; and every bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/fff.hpp"
#include "ffnkit/reference/compare.hpp"
#include "ffnkit/reference/fff.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

using test::GuardedMatrix;

template <class P>
class FffTest : public ::testing::Test {
 protected:
  using T = typename P::Scalar;
  using B = typename P::Backend;
};
using Combos = ::testing::Types<FFNKIT_ALL_COMBOS>;
TYPED_TEST_SUITE(FffTest, Combos, test::ComboName);

template <class T, class B>
reference::FffWeights weights64(const FastFeedForward<T, B>& f) {
  return reference::weights_of(f, &test::Scalar<T>::to_double);
}

// A float rounding of λ can flip a branch only where the oracle's |λ| is within a few rounding
// errors of 0 (relative to |x| |w_in|): such tokens are excluded from the path comparison, and
// there must be few of them. λ is fp32 on the device whatever T is.
template <class T>
double ambiguous_margin() {
  return std::is_same<T, double>::value ? 1e-12 : 1e-5;
}

// The output against the oracle on the layer's own paths. fp32 and fp64: the harness's tolerance.
// 16-bit T: λ, GELU and the sums are fp32 from T values the oracle also sees (weights and inputs
// rounded to T first), and the result is rounded once at the end: its error is that one rounding,
// at most u relative per element, plus the fp32 sums' error, far below 5e-5 here. A 16-bit
// accumulator rounded at every level would add one such error per level and break the bound.
// Gradients are accumulated the same way (fp32, rounded once) and held to the same bound.
template <class T>
test::Tolerance output_tolerance() {
  if (sizeof(T) >= 4) return test::tolerance<T>();
  const double u = test::unit_roundoff<T>();
  return {u * u + 1e-10, u + 5e-5};
}

// Central differences (in double, on the layer's own rounded weights) against backward:
// |g − fd| <= tol (1 + |fd|); a 16-bit gradient adds its one final rounding.
template <class T>
double fd_tolerance() {
  if (std::is_same<T, double>::value) return 1e-7;
  return (sizeof(T) < 4 ? test::unit_roundoff<T>() : 0.0) + 1e-5;
}

struct Case {
  index_t in, out, trees, depth, tokens;
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The [rows x cols] window of a guarded matrix, packed.
template <class T>
std::vector<T> packed(const GuardedMatrix<T>& m) {
  std::vector<T> v;
  for (index_t r = 0; r < m.rows(); ++r)
    v.insert(v.end(), m.data() + r * m.stride(), m.data() + r * m.stride() + m.cols());
  return v;
}

// `bytes` of backend B's memory filled with 0xFF (NaN floats, -1 ints), as a Workspace: what a
// kernel reads without writing it first shows up.
template <class B>
class DirtyWorkspace {
 public:
  explicit DirtyWorkspace(std::size_t bytes) : buf_(bytes), bytes_(bytes) {
    if (bytes) buf_.upload(std::vector<unsigned char>(bytes, 0xFF));
  }
  Workspace ws() { return Workspace{bytes_ ? buf_.data() : nullptr, bytes_}; }

 private:
  test::BackendBuffer<B, unsigned char> buf_;
  std::size_t bytes_;
};

const char* kernel_name(FffKernel k) {
  if (k == FffKernel::kAuto) return "kernel chosen by kAuto";
  return k == FffKernel::kGrouped ? "grouped kernel" : "per-token kernel";
}

// Runs every kernel on `f` over x (row padding, guards checked, a dirty workspace of exactly
// workspace_size(tokens) bytes; on the emulator under two schedules), and checks: the kernels give
// the same leaves and the same output bits; every path the oracle's, except where |λ| is within
// rounding of 0 (but the tokens `certain` names, whose near-zero λ are exact ties or exact
// values, must agree too); on the device, the paths of the Cpu float layer on the same rounded
// weights and inputs likewise; the output against the oracle on the layer's own paths. Returns the
// leaves.
template <class T, class B>
std::vector<std::int32_t> check_forward(const FastFeedForward<T, B>& f, const std::vector<T>& xs,
                                        index_t tokens,
                                        const std::function<bool(index_t)>& certain = nullptr) {
  const index_t n = f.in_features(), m = f.out_features(), k = f.trees();
  GuardedMatrix<T> x(tokens, n, 3);
  x.set(xs);
  test::BackendMatrix<B, T> xd(x);
  std::vector<std::int32_t> leaves[3];
  std::vector<T> ys[3];
  const FffKernel kernels[3] = {FffKernel::kPerToken, FffKernel::kGrouped, FffKernel::kAuto};
  test::for_each_schedule<B>([&] {
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(kernel_name(kernels[i]));
      GuardedMatrix<T> y(tokens, m, 5);
      test::BackendMatrix<B, T> yd(y);
      test::BackendBuffer<B, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
      DirtyWorkspace<B> ws(f.workspace_size(tokens));
      f.forward(xd.cview(), yd.view(), ld.data(), kernels[i], ws.ws());
      yd.sync_to_host();
      EXPECT_TRUE(y.guards_intact());
      leaves[i] = ld.download();
      ys[i] = packed(y);
    }
    for (int i = 1; i < 3; ++i) {
      EXPECT_EQ(leaves[i], leaves[0]) << kernel_name(kernels[i]);
      EXPECT_TRUE(same_bits(ys[i], ys[0]))
          << kernel_name(kernels[i]) << ": outputs differ from the per-token kernel's";
    }
  });
  const auto w = weights64(f);
  const auto x64 = x.to_double();
  reference::FffRouting routing;
  reference::fff(w, x64.data(), tokens, &routing);
  std::vector<std::int32_t> cpu_leaves;
  if (!std::is_same<B, Cpu>::value) {  // the Cpu float layer's paths: λ summed in another order
    const FastFeedForward<float, Cpu> cpu(f);
    const std::vector<float> xf(x64.begin(), x64.end());
    std::vector<float> yf(static_cast<std::size_t>(tokens * m));
    cpu_leaves.resize(static_cast<std::size_t>(tokens * k));
    cpu.forward(make_view(xf.data(), tokens, n), make_view(yf.data(), tokens, m),
                cpu_leaves.data());
  }
  index_t ambiguous = 0, uncertain = 0;
  for (index_t i = 0; i < tokens * k; ++i) {
    const bool sure = certain && certain(i / k);
    uncertain += sure ? 0 : 1;
    if (!sure && routing.min_margin[i] <= ambiguous_margin<T>()) {
      ++ambiguous;
      continue;
    }
    EXPECT_EQ(leaves[0][i], routing.leaves[i]) << "token " << i / k << ", tree " << i % k;
    if (!cpu_leaves.empty()) {
      EXPECT_EQ(leaves[0][i], cpu_leaves[i]) << "Cpu layer, token " << i / k << ", tree " << i % k;
    }
  }
  EXPECT_LE(ambiguous, std::max<index_t>(1, uncertain / 100));
  const auto ref = reference::fff(w, x64.data(), tokens, nullptr, leaves[0].data());
  EXPECT_TRUE(test::within_tolerance<T>(test::compare(ys[0].data(), tokens, m, m, ref),
                                        output_tolerance<T>()));
  return leaves[0];
}

TYPED_TEST(FffTest, ForwardMatchesOracleWithPaths) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const Case cases[] = {
      {33, 17, 1, 3, 7},      // odd widths and tokens
      {64, 48, 3, 4, 255},    // K > 1
      {20, 9, 2, 0, 1},       // depth 0: one neuron per tree, 1 token
      {40, 24, 1, 6, 1000},   // many tokens: the Cpu grouped kernel's buckets, every device
                              // level grouped
      {768, 768, 1, 11, 33},  // UltraFastBERT-1x11: the device grouped kernel groups levels 0..3,
                              // then walks
      {50, 30, 2, 5, 1},      // 1 token, K > 1
      {96, 80, 1, 9, 9},      // 10 levels summed in fp32
      // Wide rows and many tokens: blocks of 85 (768 wide) or 256 (256 wide) tokens, so the Cpu
      // grouped kernel routes the top levels in blocks (S = 3, S = 2) before bucketing; K = 2
      // takes the separate output pass, K = 1 the one fused into the buckets' loop.
      {768, 64, 1, 8, 700},
      {256, 32, 2, 7, 1200},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth,
                              " tokens=", c.tokens));
    const auto f = FastFeedForward<T, B>::random(c.in, c.out, c.trees, c.depth, 11 + c.depth);
    check_forward(f, test::random_vector<T>(c.tokens * c.in, 3), c.tokens);
  }
}

// kAuto picks a kernel by token count; whichever it picks gives the same bits for a token.
TYPED_TEST(FffTest, AutoKernelAgreesAcrossTokenCounts) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const auto f = FastFeedForward<T, B>::random(24, 16, 2, 5, 3);
  const index_t tokens = FastFeedForward<T, B>::kGroupedMinTokens + 9;
  EXPECT_TRUE(f.uses_grouped(tokens));
  EXPECT_FALSE(f.uses_grouped(tokens - 10));
  GuardedMatrix<T> x(tokens, 24), all(tokens, 16), one(1, 16);
  x.set(test::random_vector<T>(tokens * 24, 8));
  test::BackendMatrix<B, T> xd(x), alld(all);
  f.forward(xd.cview(), alld.view());  // no workspace: the call allocates its own
  alld.sync_to_host();
  const auto ys = packed(all);
  for (index_t t : {index_t(0), tokens - 1}) {
    test::BackendMatrix<B, T> oned(one);
    f.forward(xd.cview().rows_slice(t, 1), oned.view());
    oned.sync_to_host();
    const auto y1 = packed(one);
    EXPECT_TRUE(same_bits(y1, std::vector<T>(ys.begin() + t * 16, ys.begin() + (t + 1) * 16)))
        << "token " << t;
  }
}

// docs/math.md §6's rule: λ > 0 goes right, λ == 0 (either sign of zero) goes left.
TYPED_TEST(FffTest, TiesGoLeft) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  using S = test::Scalar<T>;
  const index_t n = 32, m = 8, depth = 3, rows = 15;
  // Every w_in row pairs +1 with -1 and x pairs equal integers: λ = b exactly, whatever the
  // summation order.
  std::vector<T> wi(static_cast<std::size_t>(rows * n)), bi(rows, S::from_double(0)), wo(m * rows);
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < n; ++j) wi[r * n + j] = S::from_double((j % 2) ? -1 : 1);
  for (index_t i = 0; i < m * rows; ++i) wo[i] = S::from_double(0.01 * static_cast<double>(i % 7));
  bi[0] = S::from_double(0);  // root: a tie, left to node 1
  // node 1: the smallest λ > 0 of the type in which λ is computed (fp32 on the device), right to 4
  bi[1] = std::is_same<T, double>::value ? S::from_double(std::numeric_limits<double>::denorm_min())
          : sizeof(T) == 4               ? S::from_double(std::numeric_limits<float>::denorm_min())
                                         : S::from_double(std::ldexp(1.0, -24));
  bi[4] = S::from_double(-0.0);  // node 4: -0 is a tie too, left to node 9
  bi[9] = S::from_double(1.5);   // the leaf: routes nothing, and gives y a scale to judge
  const FastFeedForward<T, B> f(n, m, 1, depth, wi.data(), bi.data(), wo.data());
  std::vector<T> xs(static_cast<std::size_t>(3 * n));
  for (index_t t = 0; t < 3; ++t)
    for (index_t j = 0; j < n; ++j) xs[t * n + j] = S::from_double((j / 2) * (t + 1) - 5);
  const auto leaves = check_forward(f, xs, 3, [](index_t) { return true; });
  for (std::int32_t l : leaves) EXPECT_EQ(l, 9);
}

// Adversarial: every token takes the same path (here the rightmost), as with UltraFastBERT's
// uninitialised-weight benchmark; the grouped kernels then have one group per level.
TYPED_TEST(FffTest, AllTokensOnOnePath) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t n = 48, m = 40, depth = 6, rows = 127, tokens = 999;
  const auto f0 = FastFeedForward<T, B>::random(n, m, 1, depth, 5);
  const std::vector<T> bi(rows, test::Scalar<T>::from_double(1000));
  const FastFeedForward<T, B> f(n, m, 1, depth, f0.linear_in_weight_host().data(), bi.data(),
                                f0.linear_out_weight_host().data());
  const auto leaves = check_forward(f, test::random_vector<T>(tokens * n, 4), tokens);
  for (std::int32_t l : leaves) EXPECT_EQ(l, rows - 1);
}

// Every leaf reached: level d's nodes all read coordinate d, and token t's coordinates are the
// bits of t mod 2^(D+1), so the tokens cover every leaf equally.
TYPED_TEST(FffTest, TokensSpreadOverAllLeaves) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  using S = test::Scalar<T>;
  const index_t n = 9, m = 6, depth = 4, rows = 31, tokens = 3 * 16 + 1;
  std::vector<T> wi(static_cast<std::size_t>(rows * n), S::from_double(0)),
      bi(rows, S::from_double(0));
  for (index_t r = 0; r < rows; ++r) {
    index_t d = 0;
    for (index_t q = r + 1; q > 1; q /= 2) ++d;  // the level of heap node r
    wi[r * n + d] = S::from_double(1);
  }
  const auto wo = test::random_vector<T>(m * rows, 6);
  const FastFeedForward<T, B> f(n, m, 1, depth, wi.data(), bi.data(), wo.data());
  std::vector<T> xs(static_cast<std::size_t>(tokens * n));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j) xs[t * n + j] = S::from_double(((t >> j) & 1) ? 0.75 : -0.5);
  const auto leaves = check_forward(f, xs, tokens);
  EXPECT_EQ(std::set<std::int32_t>(leaves.begin(), leaves.end()).size(), 16u);
  // Random weights and inputs spread too (what the benchmarks rely on).
  const auto fr = FastFeedForward<T, B>::random(64, 32, 1, 5, 9);
  const auto lr = check_forward(fr, test::random_vector<T>(2000 * 64, 10), 2000);
  EXPECT_EQ(std::set<std::int32_t>(lr.begin(), lr.end()).size(), 32u);
}

// Exact ties over many tokens, through the grouped kernels' routing: w_in rows antisymmetric in
// pairs (w[2i+1] = −w[2i]) and b_in = 0 at every even node, so a token whose x pairs are equal
// has λ = 0 exactly there in any summation order (the two halves of each pair land in lanes whose
// partial sums are exact negatives), while the other tokens spread over the tree. 520 tokens at
// depth 8: on the device (kAuto grouped from 512 tokens) levels 0..7 grouped and level 8 walked,
// the hand-over included; on the Cpu the top level routed in blocks, then the buckets.
TYPED_TEST(FffTest, GroupedKernelsKeepExactTies) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t n = 32, m = 16, k = 2, depth = 8, tokens = 520;
  const auto f0 = FastFeedForward<T, B>::random(n, m, k, depth, 51);
  const index_t rows = f0.neurons_total();
  auto wi = f0.linear_in_weight_host(), bi = f0.linear_in_bias_host();
  for (index_t r = 0; r < rows; ++r) {
    for (index_t j = 1; j < n; j += 2)
      wi[r * n + j] = test::Scalar<T>::from_double(-test::Scalar<T>::to_double(wi[r * n + j - 1]));
    if ((r % f0.nodes_per_tree()) % 2 == 0) bi[r] = test::Scalar<T>::from_double(0);
  }
  const FastFeedForward<T, B> f(n, m, k, depth, wi.data(), bi.data(),
                                f0.linear_out_weight_host().data());
  EXPECT_TRUE(f.uses_grouped(tokens));  // kAuto's choice at this count
  auto xs = test::random_vector<T>(tokens * n, 52);
  for (index_t t = 0; t < tokens; t += 4)
    for (index_t j = 1; j < n; j += 2) xs[t * n + j] = xs[t * n + j - 1];  // tie tokens
  // The tie tokens must agree with the oracle exactly, the others wherever they are certain.
  const auto leaves = check_forward(f, xs, tokens, [](index_t t) { return t % 4 == 0; });
  const auto w = weights64(f);
  std::vector<double> x64(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) x64[i] = test::Scalar<T>::to_double(xs[i]);
  reference::FffRouting routing;
  reference::fff(w, x64.data(), tokens, &routing);
  for (index_t t = 0; t < tokens; t += 4)
    for (index_t kk = 0; kk < k; ++kk)
      EXPECT_EQ(routing.min_margin[t * k + kk], 0.0) << "token " << t << " met no tie";
  EXPECT_GE(std::set<std::int32_t>(leaves.begin(), leaves.end()).size(), 200u);  // of 256 leaves
}

// A NaN feature reaches its own token's output row only; that token's λ is NaN, which goes left.
TYPED_TEST(FffTest, NanStaysInItsOwnToken) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t n = 40, m = 24, k = 2, depth = 5, tokens = 37, bad = 5;
  const auto f = FastFeedForward<T, B>::random(n, m, k, depth, 13);
  const auto clean = test::random_vector<T>(tokens * n, 14);
  auto dirty = clean;
  dirty[bad * n + 3] = test::Scalar<T>::from_double(std::nan(""));
  for (FffKernel kernel : {FffKernel::kPerToken, FffKernel::kGrouped, FffKernel::kAuto}) {
    SCOPED_TRACE(kernel_name(kernel));
    std::vector<T> ys[2];
    std::vector<std::int32_t> ls[2];
    for (int i = 0; i < 2; ++i) {
      GuardedMatrix<T> x(tokens, n), y(tokens, m, 1);
      x.set(i == 0 ? clean : dirty);
      test::BackendMatrix<B, T> xd(x), yd(y);
      test::BackendBuffer<B, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
      f.forward(xd.cview(), yd.view(), ld.data(), kernel);
      yd.sync_to_host();
      EXPECT_TRUE(y.guards_intact());
      ys[i] = packed(y);
      ls[i] = ld.download();
    }
    for (index_t t = 0; t < tokens; ++t) {
      const std::vector<T> a(ys[0].begin() + t * m, ys[0].begin() + (t + 1) * m),
          b(ys[1].begin() + t * m, ys[1].begin() + (t + 1) * m);
      if (t != bad) {
        EXPECT_TRUE(same_bits(a, b)) << "token " << t << " changed";
        continue;
      }
      for (const T& v : b) EXPECT_TRUE(std::isnan(test::Scalar<T>::to_double(v)));
      for (index_t kk = 0; kk < k; ++kk)
        EXPECT_EQ(ls[1][t * k + kk], (1 << depth) - 1) << "the NaN token's leaf, tree " << kk;
    }
  }
}

// Counts, params() shapes, the PyTorch layout round trip, and the seeded init: drawn in double and
// rounded once, so every backend and type holds the Cpu double layer's weights rounded to T.
TYPED_TEST(FffTest, CountsLayoutAndSeededInit) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  auto f = FastFeedForward<T, B>::random(768, 512, 2, 11, 1);
  EXPECT_EQ(f.nodes_per_tree(), 4095);
  EXPECT_EQ(f.neurons_total(), 8190);
  EXPECT_EQ(f.neurons_per_token(), 24);
  EXPECT_EQ(f.parameter_count(), 8190 * (768 + 512 + 1));
  EXPECT_DOUBLE_EQ(f.flops_per_token(), 2.0 * 24 * (768 + 512));
  const auto p = f.params();
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].name, "linear_in.weight");
  EXPECT_EQ(p[0].shape, (std::vector<index_t>{8190, 768}));
  EXPECT_EQ(p[1].shape, (std::vector<index_t>{8190}));
  EXPECT_EQ(p[2].name, "w_out");
  EXPECT_EQ(p[2].shape, (std::vector<index_t>{8190, 512}));
  EXPECT_EQ(p[0].data, f.linear_in_weight());  // the backend's memory
  const auto grads = f.make_grads();
  ASSERT_EQ(grads.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto g = test::grad_host(grads[i]);
    ASSERT_EQ(static_cast<index_t>(g.size()), p[i].size);
    EXPECT_TRUE(
        std::all_of(g.begin(), g.end(), [](T v) { return test::Scalar<T>::to_double(v) == 0.0; }));
  }
  // The same seed: the Cpu double layer's weights, rounded to T.
  const auto d = FastFeedForward<double, Cpu>::random(96, 64, 2, 5, 7);
  const auto s = FastFeedForward<T, B>::random(96, 64, 2, 5, 7);
  const auto round = [](const std::vector<double>& v) {
    std::vector<T> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = test::Scalar<T>::from_double(v[i]);
    return out;
  };
  EXPECT_TRUE(same_bits(s.linear_in_weight_host(), round(d.linear_in_weight_host())));
  EXPECT_TRUE(same_bits(s.linear_in_bias_host(), round(d.linear_in_bias_host())));
  EXPECT_TRUE(same_bits(s.w_out_host(), round(d.w_out_host())));
  // Converting a layer rounds once; widening back to double is exact.
  EXPECT_TRUE(same_bits(FastFeedForward<T, B>(d).w_out_host(), s.w_out_host()));
  EXPECT_TRUE(
      same_bits(FastFeedForward<double, Cpu>(s).w_out_host(), test::to_double(s.w_out_host())));
  // PyTorch layout: linear_out.weight's column k·nodes + n is node n's w_out row; it round-trips.
  const auto wo = s.linear_out_weight_host();
  const index_t rows = s.neurons_total();
  EXPECT_TRUE(
      same_bits(std::vector<T>{wo[3 * rows + 5]}, std::vector<T>{s.w_out_host()[5 * 64 + 3]}));
  const FastFeedForward<T, B> h(96, 64, 2, 5, s.linear_in_weight_host().data(),
                                s.linear_in_bias_host().data(), wo.data());
  EXPECT_TRUE(same_bits(h.linear_out_weight_host(), wo));
  EXPECT_TRUE(same_bits(h.w_out_host(), s.w_out_host()));
}

// A copy is deep; a moved-from layer is empty and says so.
TYPED_TEST(FffTest, CopiesAreDeepAndMovedFromIsEmpty) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  auto a = FastFeedForward<T, B>::random(16, 8, 1, 3, 2);
  const auto b = a;
  EXPECT_NE(b.linear_in_weight(), a.linear_in_weight());
  const auto c = std::move(a);
  EXPECT_TRUE(same_bits(b.w_out_host(), c.w_out_host()));
  GuardedMatrix<T> x(3, 16), y(3, 8);
  x.set(test::random_vector<T>(3 * 16, 1));
  test::BackendMatrix<B, T> xd(x), yd(y);
  EXPECT_TRUE(test::throws_error([&] { a.forward(xd.cview(), yd.view()); },
                                 {"FastFeedForward::forward", "empty"}));
  c.forward(xd.cview(), yd.view());
}

// ---- backward --------------------------------------------------------------------------------

// The rows some token's path crosses.
std::set<index_t> visited_rows(const std::vector<std::int32_t>& leaves, index_t tokens,
                               index_t trees, index_t nodes) {
  std::set<index_t> v;
  for (index_t t = 0; t < tokens; ++t)
    for (index_t k = 0; k < trees; ++k)
      for (index_t n = leaves[t * trees + k];; n = (n - 1) / 2) {
        v.insert(k * nodes + n);
        if (n == 0) break;
      }
  return v;
}

// Overwrites every gradient buffer with NaN: backward must write every element.
template <class T, class B>
void poison(GradList<T, B>& grads) {
  for (auto& g : grads) {
    const std::vector<T> nan(g.size(), test::Scalar<T>::from_double(std::nan("")));
    if constexpr (std::is_same<B, Cpu>::value) {
      g = nan;
    } else {
      g.upload(nan.data(), nan.size());
    }
  }
}

// Backward on the paths the layer's own forward recorded, against the oracle's gradients of the
// same (rounded) weights, inputs and paths; rows no token visited exactly zero; with a dirty
// workspace of backward_workspace_size() bytes and NaN-filled gradient buffers; twice (on the
// emulator under two schedules), with the same bits.
template <class T, class B>
void check_backward(const Case& c, std::uint64_t seed) {
  SCOPED_TRACE(
      make_message("N=", c.in, " M=", c.out, " K=", c.trees, " D=", c.depth, " tokens=", c.tokens));
  const auto f = FastFeedForward<T, B>::random(c.in, c.out, c.trees, c.depth, seed);
  GuardedMatrix<T> x(c.tokens, c.in, 2), dy(c.tokens, c.out, 1), y(c.tokens, c.out);
  x.set(test::random_vector<T>(c.tokens * c.in, seed + 1));
  dy.set(test::random_vector<T>(c.tokens * c.out, seed + 2));
  test::BackendMatrix<B, T> xd(x), dyd(dy), yd(y);
  test::BackendBuffer<B, std::int32_t> leaves_d(static_cast<std::size_t>(c.tokens * c.trees));
  f.forward(xd.cview(), yd.view(), leaves_d.data());
  const auto leaves = leaves_d.download();
  const auto x64 = x.to_double(), dy64 = dy.to_double();
  const auto ref =
      reference::fff_backward(weights64(f), x64.data(), dy64.data(), c.tokens, leaves.data());
  const std::vector<double>* ref_grads[3] = {&ref.w_in, &ref.b_in, &ref.w_out};
  const index_t rows = f.neurons_total(), widths[3] = {c.in, 1, c.out};
  const auto visited = visited_rows(leaves, c.tokens, c.trees, f.nodes_per_tree());
  if (c.tokens < (index_t(1) << c.depth)) {  // fewer tokens than leaves: some rows untouched
    EXPECT_LT(visited.size(), static_cast<std::size_t>(rows));
  }
  auto grads = f.make_grads();
  std::vector<std::vector<T>> first;
  std::vector<T> first_dx;
  const auto run = [&] {
    GuardedMatrix<T> dx(c.tokens, c.in, 3);
    test::BackendMatrix<B, T> dxd(dx);
    DirtyWorkspace<B> ws(f.backward_workspace_size(c.tokens));
    poison<T, B>(grads);
    f.backward(xd.cview(), leaves_d.data(), dyd.cview(), dxd.view(), grads, ws.ws());
    dxd.sync_to_host();
    EXPECT_TRUE(dx.guards_intact());
    EXPECT_TRUE(test::within_tolerance<T>(
        test::compare(dx.data(), c.tokens, c.in, dx.stride(), ref.dx), output_tolerance<T>()));
    std::vector<std::vector<T>> got;
    for (std::size_t i = 0; i < 3; ++i) {
      SCOPED_TRACE(make_message("grads[", i, "]"));
      const auto g = test::grad_host(grads[i]);
      EXPECT_TRUE(
          test::within_tolerance<T>(test::compare(g.data(), 1, static_cast<index_t>(g.size()),
                                                  static_cast<index_t>(g.size()), *ref_grads[i]),
                                    output_tolerance<T>()));
      for (index_t r = 0; r < rows; ++r) {
        if (visited.count(r)) continue;
        for (index_t j = 0; j < widths[i]; ++j)
          EXPECT_EQ(test::Scalar<T>::to_double(g[r * widths[i] + j]), 0.0) << "unvisited row " << r;
      }
      got.push_back(g);
    }
    if (first.empty()) {
      first = got;
      first_dx = packed(dx);
      return;
    }
    // Deterministic: the second run (another schedule on the emulator) gives the same bits.
    for (std::size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(got[i], first[i])) << "grads " << i;
    EXPECT_TRUE(same_bits(packed(dx), first_dx)) << "dx";
  };
  test::for_each_schedule<B>(run);
  if (std::is_same<B, Cpu>::value || std::is_same<B, Cuda>::value) run();
  // dx is optional.
  f.backward(xd.cview(), leaves_d.data(), dyd.cview(), MatrixView<T>(), grads);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(test::grad_host(grads[i]), first[i]));
}

TYPED_TEST(FffTest, BackwardMatchesOracleOnFixedPaths) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  check_backward<T, B>({33, 17, 2, 4, 29}, 61);
  check_backward<T, B>({20, 9, 1, 0, 1}, 62);     // depth 0, 1 token
  check_backward<T, B>({40, 24, 1, 6, 300}, 63);  // ~5 tokens per leaf, 300 at the root
  check_backward<T, B>({96, 64, 3, 3, 41}, 64);   // K = 3
}

// Backward against central differences of the float64 oracle with the layer's paths held fixed,
// for every parameter entry and every input element; only visited rows get gradient.
TYPED_TEST(FffTest, BackwardMatchesFiniteDifferences) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  const index_t n = 7, m = 5, k = 2, depth = 2, tokens = 3, rows = k * 7;
  const auto f = FastFeedForward<T, B>::random(n, m, k, depth, 71);
  GuardedMatrix<T> x(tokens, n), dy(tokens, m), y(tokens, m), dx(tokens, n, 2);
  x.set(test::random_vector<T>(tokens * n, 72));
  dy.set(test::random_vector<T>(tokens * m, 73));
  test::BackendMatrix<B, T> xd(x), dyd(dy), yd(y), dxd(dx);
  test::BackendBuffer<B, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
  f.forward(xd.cview(), yd.view(), ld.data());
  auto grads = f.make_grads();
  f.backward(xd.cview(), ld.data(), dyd.cview(), dxd.view(), grads);
  dxd.sync_to_host();
  EXPECT_TRUE(dx.guards_intact());
  const auto leaves = ld.download();
  std::vector<std::vector<double>> g;
  for (auto& b : grads) g.push_back(test::to_double(test::grad_host(b)));
  const auto x0 = x.to_double(), dys = dy.to_double();
  const auto w0 = weights64(f);
  auto loss = [&](const reference::FffWeights& w, const std::vector<double>& xv) {
    const auto out = reference::fff(w, xv.data(), tokens, nullptr, leaves.data());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * dys[i];
    return s;
  };
  const double h = 1e-6, tol = fd_tolerance<T>();
  auto fd = [&](auto&& perturb) {
    auto wp = w0, wm = w0;
    auto xp = x0, xm = x0;
    perturb(wp, xp, h);
    perturb(wm, xm, -h);
    return (loss(wp, xp) - loss(wm, xm)) / (2 * h);
  };
  auto near = [tol](double a, double b) { return std::abs(a - b) <= tol * (1 + std::abs(b)); };
  const auto visited = visited_rows(leaves, tokens, k, 7);
  EXPECT_LT(visited.size(), static_cast<std::size_t>(rows));  // some rows are untouched
  for (index_t r = 0; r < rows; ++r) {
    const bool v = visited.count(r) > 0;
    for (index_t j = 0; j < n; ++j) {
      EXPECT_PRED2(near, g[0][r * n + j],
                   fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                     w.w_in[r * n + j] += e;
                   }))
          << "w_in row " << r << " col " << j;
      if (!v) {
        EXPECT_EQ(g[0][r * n + j], 0.0);
      }
    }
    EXPECT_PRED2(near, g[1][r], fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                   w.b_in[r] += e;
                 }))
        << "b_in row " << r;
    for (index_t j = 0; j < m; ++j) {
      // w_out is stored [rows x M]; the oracle holds PyTorch's [M x rows].
      EXPECT_PRED2(near, g[2][r * m + j],
                   fd([&](reference::FffWeights& w, std::vector<double>&, double e) {
                     w.w_out[j * rows + r] += e;
                   }))
          << "w_out row " << r << " col " << j;
      if (!v) {
        EXPECT_EQ(g[2][r * m + j], 0.0);
      }
    }
  }
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < n; ++j)
      EXPECT_PRED2(near, test::Scalar<T>::to_double(dx.at(t, j)),
                   fd([&](reference::FffWeights&, std::vector<double>& xv, double e) {
                     xv[t * n + j] += e;
                   }))
          << "dx token " << t << " col " << j;
}

// Given its workspace, the device backward is stream-ordered: on a stream of its own it issues
// kernel launches on that stream only (the emulator's trace: no copy back to the host, no fill,
// nothing on another stream) and gives the default stream's bits.
TYPED_TEST(FffTest, DeviceBackwardIsStreamOrdered) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  if constexpr (std::is_same<B, Cpu>::value) {
    GTEST_SKIP() << "the Cpu backend is synchronous (its backward's no-allocation check is in "
                    "ffnkit_no_alloc_tests)";
  } else {
    const index_t n = 48, m = 24, k = 2, depth = 5, tokens = 70;
    const auto f = FastFeedForward<T, B>::random(n, m, k, depth, 81);
    GuardedMatrix<T> x(tokens, n), dy(tokens, m), y(tokens, m), dx(tokens, n);
    x.set(test::random_vector<T>(tokens * n, 82));
    dy.set(test::random_vector<T>(tokens * m, 83));
    test::BackendMatrix<B, T> xd(x), dyd(dy), yd(y), dxd(dx);
    test::BackendBuffer<B, std::int32_t> ld(static_cast<std::size_t>(tokens * k));
    f.forward(xd.cview(), yd.view(), ld.data());
    auto g0 = f.make_grads(), g1 = f.make_grads();
    f.backward(xd.cview(), ld.data(), dyd.cview(), dxd.view(), g0);
    DirtyWorkspace<B> ws(f.backward_workspace_size(tokens));
    const auto stream = detail::Runtime<B>::Stream::create();
#if defined(FFNKIT_WITH_CUDA_EMU)
    if constexpr (std::is_same<B, CudaEmu>::value) {
      cuda_emu::ScopedTrace trace;
      f.backward(xd.cview(), ld.data(), dyd.cview(), dxd.view(), g1, ws.ws(), stream);
      ASSERT_FALSE(trace.entries().empty());
      for (const auto& e : trace.entries()) {
        EXPECT_EQ(e.op, cuda_emu::TraceOp::kLaunch) << cuda_emu::to_string(e.op);
        EXPECT_EQ(e.stream, stream.handle());
      }
    } else {
      f.backward(xd.cview(), ld.data(), dyd.cview(), dxd.view(), g1, ws.ws(), stream);
    }
#else
    f.backward(xd.cview(), ld.data(), dyd.cview(), dxd.view(), g1, ws.ws(), stream);
#endif
    stream.synchronize();
    for (std::size_t i = 0; i < 3; ++i) EXPECT_TRUE(same_bits(g1[i].to_host(), g0[i].to_host()));
  }
}

// ---- bad inputs ------------------------------------------------------------------------------

TYPED_TEST(FffTest, BadConstructionArguments) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  using test::throws_error;
  using L = FastFeedForward<T, B>;
  std::vector<T> w(64, test::Scalar<T>::from_double(0));
  EXPECT_TRUE(throws_error([] { L::random(0, 4, 1, 2, 1); },
                           {"FastFeedForward::random", "in_features = 0"}));
  EXPECT_TRUE(throws_error([] { L::random(4, 4, 0, 2, 1); }, {"trees = 0"}));
  EXPECT_TRUE(throws_error([] { L::random(4, 4, 1, -1, 1); }, {"depth = -1"}));
  EXPECT_TRUE(throws_error([] { L::random(4, 4, 1, 40, 1); }, {"depth = 40", "too large"}));
  // Depth 25 at N = M = 4096: 2^26 neurons of 8193 scalars, terabytes.
  EXPECT_TRUE(
      throws_error([] { L::random(4096, 4096, 1, 25, 1); }, {"depth = 25", "bytes", "memory"}));
  EXPECT_TRUE(throws_error([] { L::random(4, 4, 200, 23, 1); }, {"trees = 200", "int32"}));
  EXPECT_TRUE(throws_error([&] { L(2, 2, 1, 1, nullptr, w.data(), w.data()); },
                           {"linear_in_weight is a null pointer"}));
  w[5] = test::Scalar<T>::from_double(std::nan(""));
  EXPECT_TRUE(throws_error([&] { L(2, 2, 1, 1, w.data(), w.data() + 10, w.data() + 20); },
                           {"linear_in_weight[5]", "not finite"}));
  w[5] = test::Scalar<T>::from_double(0);
  w[21] = test::Scalar<T>::from_double(INFINITY);
  EXPECT_TRUE(throws_error([&] { L(2, 2, 1, 1, w.data(), w.data() + 10, w.data() + 20); },
                           {"linear_out_weight", "not finite"}));
}

TYPED_TEST(FffTest, BadForwardAndBackwardArguments) {
  using T = typename TestFixture::T;
  using B = typename TestFixture::B;
  FFNKIT_SKIP_IF_UNAVAILABLE(B);
  using test::throws_error;
  const auto f = FastFeedForward<T, B>::random(16, 8, 2, 3, 1);
  test::BackendBuffer<B, T> x(5 * 16), y(5 * 8), dy(5 * 8), dx(5 * 16);
  x.upload(test::random_vector<T>(5 * 16, 2));
  dy.upload(test::random_vector<T>(5 * 8, 3));
  test::BackendBuffer<B, std::int32_t> leaves(5 * 2);
  const MatrixView<const T> xv(x.data(), 5, 16), dyv(dy.data(), 5, 8);
  const MatrixView<T> yv(y.data(), 5, 8), dxv(dx.data(), 5, 16);
  f.forward(xv, yv, leaves.data());
  EXPECT_TRUE(throws_error([&] { f.forward(MatrixView<const T>(x.data(), 5, 15), yv); },
                           {"FastFeedForward::forward", "x.cols = 15", "in_features = 16"}));
  EXPECT_TRUE(throws_error([&] { f.forward(xv, MatrixView<T>(y.data(), 5, 7)); },
                           {"y.cols = 7", "out_features = 8"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(MatrixView<const T>(x.data(), 0, 16), MatrixView<T>(y.data(), 0, 8)); },
      {"x.rows (tokens) = 0"}));
  EXPECT_TRUE(throws_error([&] { f.forward(MatrixView<const T>(nullptr, 5, 16), yv); },
                           {"x.data is a null pointer"}));
  EXPECT_TRUE(throws_error([&] { f.forward(xv, MatrixView<T>(y.data(), 4, 8)); },
                           {"y.rows = 4", "x.rows = 5"}));
  EXPECT_TRUE(throws_error(
      [&] { f.forward(MatrixView<const T>(x.data(), 2, 16), MatrixView<T>(x.data() + 8, 2, 8)); },
      {"overlap"}));
  EXPECT_TRUE(throws_error([&] { FastFeedForward<T, B>().forward(xv, yv); }, {"empty"}));
  test::BackendBuffer<B, unsigned char> small(16);
  EXPECT_TRUE(throws_error(
      [&] {
        f.forward(xv, yv, nullptr, FffKernel::kAuto, Workspace{small.data(), 8});
      },
      {"FastFeedForward::forward", "workspace.bytes = 8",
       "need workspace_size(x.rows) = " + std::to_string(f.workspace_size(5))}));
  std::string why;
  EXPECT_FALSE(can_implement(f, &why, xv, MatrixView<T>(y.data(), 5, 7), Workspace{}));
  EXPECT_NE(why.find("y.cols = 7"), std::string::npos) << why;
  EXPECT_TRUE(can_implement(f, &why, xv, yv, Workspace{}));
  if (!std::is_same<B, Cpu>::value) {
    // The device grouped kernel keeps a node's rows in 48 KB of shared memory; kAuto then walks.
    const auto wide = FastFeedForward<T, B>::random(12288, 1, 1, 0, 1);
    test::BackendBuffer<B, T> xw(12288), yw(1);
    const MatrixView<const T> xwv(xw.data(), 1, 12288);
    const MatrixView<T> ywv(yw.data(), 1, 1);
    EXPECT_TRUE(throws_error([&] { wide.forward(xwv, ywv, nullptr, FffKernel::kGrouped); },
                             {"in_features + out_features = 12289", "12288"}));
    EXPECT_FALSE(wide.uses_grouped(100000));
    wide.forward(xwv, ywv, nullptr, FffKernel::kAuto);
  }
  // Backward.
  auto grads = f.make_grads();
  EXPECT_TRUE(throws_error([&] { f.backward(xv, nullptr, dyv, dxv, grads); },
                           {"FastFeedForward::backward", "leaves is a null pointer"}));
  EXPECT_TRUE(throws_error(
      [&] { f.backward(xv, leaves.data(), MatrixView<const T>(dy.data(), 4, 8), dxv, grads); },
      {"dy.rows = 4"}));
  EXPECT_TRUE(throws_error(
      [&] {
        f.backward(xv, leaves.data(), dyv, dxv, grads, Workspace{small.data(), 8});
      },
      {"workspace.bytes = 8", "need backward_workspace_size(x.rows)"}));
  {
    auto short_grads = f.make_grads();
    short_grads[2] = detail::Runtime<B>::template allocate<T>(short_grads[2].size() - 1);
    EXPECT_TRUE(throws_error([&] { f.backward(xv, leaves.data(), dyv, dxv, short_grads); },
                             {"grads[2] (w_out).size()"}));
    short_grads.pop_back();
    EXPECT_TRUE(throws_error([&] { f.backward(xv, leaves.data(), dyv, dxv, short_grads); },
                             {"grads.size() = 2"}));
  }
  // Leaves that are not leaves: token 1's leaf in tree 1 is an inner node (leaves 7..14). The
  // explicit check names it on every backend; the Cpu backward checks first and throws, the
  // device backward (which cannot read them without a host round trip) makes that tree's
  // gradients and that token's dx row NaN, and leaves everything else as it was.
  auto bad = leaves.download();
  bad[3] = 2;
  test::BackendBuffer<B, std::int32_t> bad_d(bad.size());
  bad_d.upload(bad);
  const std::initializer_list<std::string> names_it = {"leaves[3]", "token 1, tree 1", "= 2",
                                                       "7..14"};
  EXPECT_TRUE(throws_error([&] { f.check_leaves(bad_d.data(), 5); }, names_it));
  f.check_leaves(leaves.data(), 5);
  if (std::is_same<B, Cpu>::value) {
    EXPECT_TRUE(throws_error([&] { f.backward(xv, bad_d.data(), dyv, dxv, grads); }, names_it));
  } else {
    f.backward(xv, leaves.data(), dyv, dxv, grads);
    std::vector<std::vector<T>> good;
    for (auto& g : grads) good.push_back(test::grad_host(g));
    const auto good_dx = dx.download();
    f.backward(xv, bad_d.data(), dyv, dxv, grads);
    const index_t nodes = f.nodes_per_tree(), widths[3] = {16, 1, 8};
    for (std::size_t i = 0; i < 3; ++i) {
      const auto g = test::grad_host(grads[i]);
      for (index_t r = 0; r < 2 * nodes; ++r)
        for (index_t j = 0; j < widths[i]; ++j) {
          const double v = test::Scalar<T>::to_double(g[r * widths[i] + j]);
          if (r >= nodes) {
            EXPECT_TRUE(std::isnan(v)) << "grads[" << i << "] row " << r << " of tree 1";
          } else {
            EXPECT_TRUE(same_bits(std::vector<T>{g[r * widths[i] + j]},
                                  std::vector<T>{good[i][r * widths[i] + j]}))
                << "grads[" << i << "] row " << r << " of tree 0";
          }
        }
    }
    const auto got_dx = dx.download();
    for (index_t t = 0; t < 5; ++t)
      for (index_t j = 0; j < 16; ++j) {
        if (t == 1) {
          EXPECT_TRUE(std::isnan(test::Scalar<T>::to_double(got_dx[t * 16 + j])));
        } else {
          EXPECT_TRUE(
              same_bits(std::vector<T>{got_dx[t * 16 + j]}, std::vector<T>{good_dx[t * 16 + j]}))
              << "dx token " << t;
        }
      }
  }
  // dx is optional.
  f.backward(xv, leaves.data(), dyv, MatrixView<T>(), grads);
}

}  // namespace
}  // namespace ffnkit
