// Tests of the emulated device runtime (docs/cuda.md). The reference GEMM is checked against Eigen
// in double on the same quantized inputs, with NaN in the padding of A and B (it must not leak into
// the result) and sentinels in the padding and batch gaps of C (they must stay bit-identical).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "emu_test_util.hpp"
#include "ffnkit/cpu/eigen.hpp"
FFNKIT_GCC_PR105593_BEGIN
#include <Eigen/Dense>
FFNKIT_GCC_PR105593_END
#include "ffnkit/cuda/emu/runtime.hpp"

namespace ffnkit::cuda_emu {
// Readable parameter names in gtest failure messages.
void PrintTo(Op op, std::ostream* os) { *os << (op == Op::kN ? "N" : "T"); }
void PrintTo(DataType t, std::ostream* os) {
  *os << (t == DataType::kF32 ? "F32" : t == DataType::kF16 ? "F16" : "BF16");
}
}  // namespace ffnkit::cuda_emu

namespace ffnkit::emu_runtime_test {
namespace {

using cuda_emu::BlasHandle;
using cuda_emu::CopyKind;
using cuda_emu::DataType;
using cuda_emu::DeviceBuffer;
using cuda_emu::Op;
using cuda_emu::Stream;
using Eigen::MatrixXd;
using test::error_of;

std::size_t element_size(DataType t) { return t == DataType::kF32 ? 4 : 2; }

// Unit roundoff of round-to-nearest into each type.
double unit_roundoff(DataType t) {
  return t == DataType::kF32   ? std::ldexp(1.0, -24)
         : t == DataType::kF16 ? std::ldexp(1.0, -11)
                               : std::ldexp(1.0, -8);
}

// Host image of a device array of one DataType, stored as raw bytes.
class HostArray {
 public:
  HostArray(DataType type, std::size_t count) : type_(type), bytes_(count * element_size(type)) {}

  std::size_t size() const { return bytes_.size() / element_size(type_); }
  unsigned char* data() { return bytes_.data(); }
  const std::vector<unsigned char>& bytes() const { return bytes_; }

  // Stores v rounded to nearest in the array's type.
  void set(std::size_t i, float v) {
    unsigned char* p = bytes_.data() + i * element_size(type_);
    if (type_ == DataType::kF32) {
      std::memcpy(p, &v, 4);
    } else if (type_ == DataType::kF16) {
      const __half h = __float2half_rn(v);
      std::memcpy(p, &h, 2);
    } else {
      const __nv_bfloat16 h = __float2bfloat16_rn(v);
      std::memcpy(p, &h, 2);
    }
  }
  double get(std::size_t i) const {
    const unsigned char* p = bytes_.data() + i * element_size(type_);
    if (type_ == DataType::kF32) {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    if (type_ == DataType::kF16) {
      __half h;
      std::memcpy(&h, p, 2);
      return __half2float(h);
    }
    __nv_bfloat16 h;
    std::memcpy(&h, p, 2);
    return __bfloat162float(h);
  }
  void fill(float v) {
    for (std::size_t i = 0; i < size(); ++i) set(i, v);
  }

 private:
  DataType type_;
  std::vector<unsigned char> bytes_;
};

DeviceBuffer<unsigned char> to_device(const HostArray& h) {
  return DeviceBuffer<unsigned char>(h.bytes().data(), h.bytes().size());
}

// One GEMM configuration. pad_* are extra rows in each leading dimension, gap the extra elements
// between consecutive matrices of a batch.
struct GemmCase {
  Op op_a, op_b;
  int m, n, k;
  DataType type_a, type_b, type_c;
  float alpha, beta;
  int pad_a = 0, pad_b = 0, pad_c = 0;
  bool batched = false;
  int batch = 1;
  int gap = 0;
  bool nan_c = false;  // C starts as NaN (with beta == 0 it must not be read)
};

void PrintTo(const GemmCase& g, std::ostream* os) {
  *os << (g.batched ? "batched" : "gemm") << " op=" << (g.op_a == Op::kN ? "N" : "T")
      << (g.op_b == Op::kN ? "N" : "T") << " m=" << g.m << " n=" << g.n << " k=" << g.k
      << " types=";
  cuda_emu::PrintTo(g.type_a, os);
  *os << "/";
  cuda_emu::PrintTo(g.type_b, os);
  *os << "/";
  cuda_emu::PrintTo(g.type_c, os);
  *os << " alpha=" << g.alpha << " beta=" << g.beta << " pads=" << g.pad_a << "," << g.pad_b << ","
      << g.pad_c << " batch=" << g.batch << " gap=" << g.gap << (g.nan_c ? " nan_c" : "");
}

// Placement of a batch of column-major matrices in one buffer.
struct Layout {
  int rows, cols, ld;
  long long stride;
  int batch;
  std::size_t count() const {
    return static_cast<std::size_t>(stride) * (batch - 1) + static_cast<std::size_t>(ld) * cols;
  }
  std::size_t index(int p, int i, int j) const {
    return static_cast<std::size_t>(p * stride + i + static_cast<long long>(j) * ld);
  }
};

Layout make_layout(int rows, int cols, int pad, int gap, int batch) {
  const int ld = std::max(1, rows + pad);
  return {rows, cols, ld, static_cast<long long>(ld) * cols + gap, batch};
}

// Fills the logical elements with quantized uniform values in [-1, 1] and everything else with
// `fill`; returns the logical matrices as exact doubles.
std::vector<MatrixXd> fill_random(HostArray& h, const Layout& lay, float fill, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  h.fill(fill);
  std::vector<MatrixXd> out;
  for (int p = 0; p < lay.batch; ++p) {
    MatrixXd x(lay.rows, lay.cols);
    for (int j = 0; j < lay.cols; ++j)
      for (int i = 0; i < lay.rows; ++i) {
        h.set(lay.index(p, i, j), dist(rng));
        x(i, j) = h.get(lay.index(p, i, j));
      }
    out.push_back(std::move(x));
  }
  return out;
}

constexpr float kCSentinel = 30000.0f;  // large: reading it through a wrong ldc shows in the result

void run_case(const GemmCase& g, unsigned seed) {
  SCOPED_TRACE(::testing::PrintToString(g));
  std::mt19937 rng(seed);
  const int batch = g.batched ? g.batch : 1;
  const bool a_n = g.op_a == Op::kN, b_n = g.op_b == Op::kN;
  const Layout la = make_layout(a_n ? g.m : g.k, a_n ? g.k : g.m, g.pad_a, g.gap, batch);
  const Layout lb = make_layout(b_n ? g.k : g.n, b_n ? g.n : g.k, g.pad_b, g.gap, batch);
  const Layout lc = make_layout(g.m, g.n, g.pad_c, g.gap, batch);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  HostArray ha(g.type_a, la.count()), hb(g.type_b, lb.count()), hc(g.type_c, lc.count());
  const std::vector<MatrixXd> a = fill_random(ha, la, nan, rng);
  const std::vector<MatrixXd> b = fill_random(hb, lb, nan, rng);
  std::vector<MatrixXd> c0 = fill_random(hc, lc, kCSentinel, rng);
  if (g.nan_c) {
    for (int p = 0; p < batch; ++p)
      for (int j = 0; j < g.n; ++j)
        for (int i = 0; i < g.m; ++i) hc.set(lc.index(p, i, j), nan);
  }
  const std::vector<unsigned char> c_before = hc.bytes();

  DeviceBuffer<unsigned char> da = to_device(ha), db = to_device(hb), dc = to_device(hc);
  BlasHandle blas;
  if (g.batched) {
    cuda_emu::gemm_strided_batched(blas, g.op_a, g.op_b, g.m, g.n, g.k, g.alpha, da.data(),
                                   g.type_a, la.ld, la.stride, db.data(), g.type_b, lb.ld,
                                   lb.stride, g.beta, dc.data(), g.type_c, lc.ld, lc.stride, batch);
  } else {
    cuda_emu::gemm(blas, g.op_a, g.op_b, g.m, g.n, g.k, g.alpha, da.data(), g.type_a, la.ld,
                   db.data(), g.type_b, lb.ld, g.beta, dc.data(), g.type_c, lc.ld);
  }
  dc.download(hc.data(), dc.size());

  // Everything outside the logical elements of C keeps its bytes.
  std::vector<bool> logical(lc.count(), false);
  for (int p = 0; p < batch; ++p)
    for (int j = 0; j < g.n; ++j)
      for (int i = 0; i < g.m; ++i) logical[lc.index(p, i, j)] = true;
  const std::size_t es = element_size(g.type_c);
  int sentinel_failures = 0;
  for (std::size_t e = 0; e < lc.count(); ++e) {
    if (logical[e]) continue;
    if (std::memcmp(hc.bytes().data() + e * es, c_before.data() + e * es, es) != 0 &&
        ++sentinel_failures <= 5)
      ADD_FAILURE() << "C element " << e << " outside the matrices was overwritten with "
                    << hc.get(e);
  }

  // fp32 accumulation over k terms plus the alpha/beta step, then rounding into C's type.
  const double u32 = std::ldexp(1.0, -24), u_out = unit_roundoff(g.type_c);
  const double abs_floor = g.type_c == DataType::kF16 ? std::ldexp(1.0, -24) : 1e-37;
  int value_failures = 0;
  for (int p = 0; p < batch; ++p) {
    const MatrixXd op_a = a_n ? a[p] : MatrixXd(a[p].transpose());
    const MatrixXd op_b = b_n ? b[p] : MatrixXd(b[p].transpose());
    MatrixXd expect = double(g.alpha) * op_a * op_b;
    MatrixXd bound = std::abs(double(g.alpha)) * op_a.cwiseAbs() * op_b.cwiseAbs();
    if (g.beta != 0.0f) {
      expect += double(g.beta) * c0[p];
      bound += std::abs(double(g.beta)) * c0[p].cwiseAbs();
    }
    for (int j = 0; j < g.n; ++j)
      for (int i = 0; i < g.m; ++i) {
        const double got = hc.get(lc.index(p, i, j));
        const double pre = 2.0 * (g.k + 3) * u32 * bound(i, j);
        const double tol = pre + u_out * (std::abs(expect(i, j)) + pre) + abs_floor;
        if (!(std::abs(got - expect(i, j)) <= tol) && ++value_failures <= 5)
          ADD_FAILURE() << "C[" << p << "](" << i << ", " << j << ") = " << got << ", expected "
                        << expect(i, j) << " (tolerance " << tol << ")";
      }
  }
  EXPECT_EQ(sentinel_failures, 0);
  EXPECT_EQ(value_failures, 0);
}

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  const Op ops[] = {Op::kN, Op::kT};
  const DataType f32 = DataType::kF32, f16 = DataType::kF16, bf16 = DataType::kBF16;
  const DataType types[][3] = {
      {f32, f32, f32}, {f16, f16, f16}, {f16, f16, f32}, {bf16, bf16, bf16}, {bf16, bf16, f32}};
  for (Op oa : ops)
    for (Op ob : ops) {
      // Every supported type combination, padded leading dimensions, general alpha and beta.
      for (const auto& t : types) {
        GemmCase g{oa, ob, 7, 5, 33, t[0], t[1], t[2], 0.75f, -1.5f};
        g.pad_a = 3, g.pad_b = 2, g.pad_c = 4;
        cases.push_back(g);
        // beta == 0 with NaN in C: C must not be read.
        GemmCase z{oa, ob, 9, 11, 20, t[0], t[1], t[2], 1.0f, 0.0f};
        z.pad_c = 1, z.nan_c = true;
        cases.push_back(z);
      }
      // Tight leading dimensions; shapes crossing the emulator's 8-column and 256-row blocks.
      cases.push_back({oa, ob, 33, 17, 65, f32, f32, f32, 1.0f, 1.0f});
      GemmCase big{oa, ob, 300, 19, 40, f32, f32, f32, -2.0f, 0.5f};
      big.pad_a = 1, big.pad_b = 5, big.pad_c = 2;
      cases.push_back(big);
      // Vectors and scalars.
      cases.push_back({oa, ob, 1, 1, 1, f32, f32, f32, 1.0f, 0.0f});
      cases.push_back({oa, ob, 1, 9, 255, bf16, bf16, f32, 1.0f, 0.0f});
      cases.push_back({oa, ob, 255, 1, 3, f16, f16, f16, 0.5f, 2.0f});
      // alpha == 0 scales C; k == 0 gives beta * C (with NaN C and beta == 0: zeros).
      cases.push_back({oa, ob, 6, 4, 5, f32, f32, f32, 0.0f, 2.0f});
      GemmCase k0{oa, ob, 6, 4, 0, f16, f16, f32, 1.0f, 0.5f};
      k0.pad_a = 1, k0.pad_b = 1;
      cases.push_back(k0);
      GemmCase k0z{oa, ob, 6, 4, 0, bf16, bf16, bf16, 1.0f, 0.0f};
      k0z.nan_c = true;
      cases.push_back(k0z);
      // Strided batched: gaps between matrices, batch 1 and 3.
      for (int batch : {1, 3}) {
        GemmCase s{oa, ob, 7, 6, 13, f32, f32, f32, 1.25f, -0.5f};
        s.pad_a = 2, s.pad_b = 1, s.pad_c = 3, s.batched = true, s.batch = batch, s.gap = 5;
        cases.push_back(s);
        GemmCase h{oa, ob, 5, 9, 31, bf16, bf16, bf16, 1.0f, 0.0f};
        h.pad_c = 2, h.batched = true, h.batch = batch, h.gap = 7, h.nan_c = true;
        cases.push_back(h);
        GemmCase hf{oa, ob, 8, 3, 17, f16, f16, f32, -1.0f, 1.0f};
        hf.pad_a = 1, hf.batched = true, hf.batch = batch, hf.gap = 1;
        cases.push_back(hf);
      }
    }
  return cases;
}

class EmuGemm : public ::testing::TestWithParam<GemmCase> {};

INSTANTIATE_TEST_SUITE_P(Cases, EmuGemm, ::testing::ValuesIn(gemm_cases()));

TEST_P(EmuGemm, MatchesEigenInDoubleWithSentinels) {
  run_case(GetParam(), 1000u + static_cast<unsigned>(GetParam().m * 31 + GetParam().k));
}

// The FFN's size: sampled entries against Eigen dot products in double, and a printed throughput.
TEST(EmuGemmLarge, FfnShapeSampledAgainstEigen) {
  const int m = 255, n = 768, k = 3072;
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // op_a = T (A stored k x m), op_b = N (B stored k x n): row-major activations times weights.
  std::vector<float> a(static_cast<std::size_t>(k) * m), b(static_cast<std::size_t>(k) * n);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  DeviceBuffer<float> da(a.data(), a.size()), db(b.data(), b.size()), dc(std::size_t(m) * n + 1);
  cuda_emu::fill_zero(dc.data(), dc.bytes(), Stream());
  BlasHandle blas;
  const auto start = std::chrono::steady_clock::now();
  cuda_emu::gemm(blas, Op::kT, Op::kN, m, n, k, 1.0f, da.data(), DataType::kF32, k, db.data(),
                 DataType::kF32, k, 0.0f, dc.data(), DataType::kF32, m);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[ emu gemm ] %dx%dx%d fp32: %.3f s, %.2f GFLOP/s\n", m, n, k, seconds,
              2.0 * m * n * k / seconds * 1e-9);
  const std::vector<float> c = dc.to_host();
  EXPECT_EQ(c.back(), 0.0f);  // the element past C stays untouched
  for (float x : c) ASSERT_TRUE(std::isfinite(x));
  const Eigen::Map<const Eigen::MatrixXf> ea(a.data(), k, m), eb(b.data(), k, n);
  std::uniform_int_distribution<int> pick_i(0, m - 1), pick_j(0, n - 1);
  for (int s = 0; s < 200; ++s) {
    const int i = s == 0 ? m - 1 : pick_i(rng), j = s == 0 ? n - 1 : pick_j(rng);
    const double expect = ea.col(i).cast<double>().dot(eb.col(j).cast<double>());
    const double bound =
        ea.col(i).cast<double>().cwiseAbs().dot(eb.col(j).cast<double>().cwiseAbs());
    EXPECT_NEAR(c[i + std::size_t(j) * m], expect, 2.0 * (k + 3) * std::ldexp(1.0, -24) * bound)
        << "(" << i << ", " << j << ")";
  }
}

// ---- Argument validation ------------------------------------------------------------------------

class EmuGemmArgs : public ::testing::Test {
 protected:
  static constexpr int m = 7, n = 5, k = 3;
  // Exactly sized: op_a = op_b = N with tight leading dimensions.
  DeviceBuffer<float> a{std::size_t(m) * k}, b{std::size_t(k) * n}, c{std::size_t(m) * n};
  BlasHandle blas;

  std::string gemm_error(Op op_a, Op op_b, int m_, int n_, int k_, int lda, int ldb, int ldc,
                         const void* pa, const void* pb, void* pc, DataType ta = DataType::kF32,
                         DataType tb = DataType::kF32, DataType tc = DataType::kF32) {
    return error_of([&] {
      cuda_emu::gemm(blas, op_a, op_b, m_, n_, k_, 1.0f, pa, ta, lda, pb, tb, ldb, 0.0f, pc, tc,
                     ldc);
    });
  }
  std::string nn_error(int m_, int n_, int k_, int lda, int ldb, int ldc) {
    return gemm_error(Op::kN, Op::kN, m_, n_, k_, lda, ldb, ldc, a.data(), b.data(), c.data());
  }
};

TEST_F(EmuGemmArgs, ValidArgumentsSucceed) {
  cuda_emu::fill_zero(a.data(), a.bytes(), Stream());
  cuda_emu::fill_zero(b.data(), b.bytes(), Stream());
  cuda_emu::gemm(blas, Op::kN, Op::kN, m, n, k, 1.0f, a.data(), DataType::kF32, m, b.data(),
                 DataType::kF32, k, 0.0f, c.data(), DataType::kF32, m);
  for (float x : c.to_host()) EXPECT_EQ(x, 0.0f);
}

TEST_F(EmuGemmArgs, NegativeDimensionsAreNamed) {
  EXPECT_EQ(nn_error(-1, n, k, m, k, m), "gemm: m = -1 is negative");
  EXPECT_EQ(nn_error(m, -2, k, m, k, m), "gemm: n = -2 is negative");
  EXPECT_EQ(nn_error(m, n, -3, m, k, m), "gemm: k = -3 is negative");
}

TEST_F(EmuGemmArgs, LeadingDimensionsFollowTheStoredShape) {
  EXPECT_EQ(nn_error(m, n, k, m - 1, k, m),
            "gemm: lda = 6 is smaller than the rows of A as stored (op_a = N, m = 7)");
  // op_a = T: A is stored k x m, so lda = k is enough and k - 1 is not.
  EXPECT_EQ(gemm_error(Op::kT, Op::kN, m, n, k, k - 1, k, m, a.data(), b.data(), c.data()),
            "gemm: lda = 2 is smaller than the rows of A as stored (op_a = T, k = 3)");
  cuda_emu::gemm(blas, Op::kT, Op::kN, m, n, k, 1.0f, a.data(), DataType::kF32, k, b.data(),
                 DataType::kF32, k, 0.0f, c.data(), DataType::kF32, m);
  EXPECT_EQ(nn_error(m, n, k, m, k - 1, m),
            "gemm: ldb = 2 is smaller than the rows of B as stored (op_b = N, k = 3)");
  EXPECT_EQ(gemm_error(Op::kN, Op::kT, m, n, k, m, n - 1, m, a.data(), b.data(), c.data()),
            "gemm: ldb = 4 is smaller than the rows of B as stored (op_b = T, n = 5)");
  EXPECT_EQ(nn_error(m, n, k, m, k, m - 1), "gemm: ldc = 6 is smaller than the rows of C (m = 7)");
  // Leading dimensions are at least 1 even for empty matrices, as in cuBLAS.
  EXPECT_EQ(nn_error(0, n, k, 0, k, 1),
            "gemm: lda = 0 is smaller than 1, the minimum (op_a = N, m = 0)");
  EXPECT_EQ(nn_error(0, n, k, 1, k, 0), "gemm: ldc = 0 is smaller than 1, the minimum (m = 0)");
}

TEST_F(EmuGemmArgs, NullPointersAreNamed) {
  EXPECT_EQ(gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, nullptr, b.data(), c.data()),
            "gemm: a is a null pointer (m = 7, k = 3)");
  EXPECT_EQ(gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, a.data(), nullptr, c.data()),
            "gemm: b is a null pointer (k = 3, n = 5)");
  EXPECT_EQ(gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, a.data(), b.data(), nullptr),
            "gemm: c is a null pointer (m = 7, n = 5)");
}

TEST_F(EmuGemmArgs, UnsupportedTypeCombinationsAreRejected) {
  const std::string mixed = gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, a.data(), b.data(),
                                       c.data(), DataType::kF16, DataType::kBF16, DataType::kF32);
  EXPECT_NE(mixed.find("gemm: type_a = F16, type_b = BF16, type_c = F32 is not a combination"),
            std::string::npos)
      << mixed;
  const std::string narrowing =
      gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, a.data(), b.data(), c.data(), DataType::kF32,
                 DataType::kF32, DataType::kF16);
  EXPECT_NE(narrowing.find("type_c = F16"), std::string::npos) << narrowing;
}

TEST_F(EmuGemmArgs, MatricesMustLieInsideTheirAllocations) {
  // lda = m + 1 passes cuBLAS's checks but makes A span 2 * 8 + 7 = 23 floats of a 21-float buffer.
  const std::string over = nn_error(m, n, k, m + 1, k, m);
  EXPECT_EQ(over.rfind("gemm: A device range [", 0), 0u) << over;
  EXPECT_NE(over.find("(92 bytes) is not inside a live device allocation"), std::string::npos)
      << over;
  EXPECT_NE(over.find("(84 bytes)"), std::string::npos) << over;  // names the allocation
  const std::string ldc = nn_error(m, n, k, m, k, m + 2);
  EXPECT_EQ(ldc.rfind("gemm: C device range", 0), 0u) << ldc;
  // A host pointer is not device memory.
  std::vector<float> host(std::size_t(k) * n);
  const std::string h =
      gemm_error(Op::kN, Op::kN, m, n, k, m, k, m, a.data(), host.data(), c.data());
  EXPECT_EQ(h.rfind("gemm: B device range", 0), 0u) << h;
}

TEST_F(EmuGemmArgs, FailedCallsLeaveCUntouched) {
  const std::vector<float> before = c.to_host();
  (void)nn_error(m, n, k, m + 1, k, m);
  (void)nn_error(m, n, k, m, k - 1, m);
  const std::vector<float> after = c.to_host();
  EXPECT_EQ(std::memcmp(before.data(), after.data(), c.bytes()), 0);
}

TEST_F(EmuGemmArgs, BatchedChecksBatchAndStrides) {
  const auto batched_error = [&](long long stride_a, long long stride_c, int batch) {
    return error_of([&] {
      cuda_emu::gemm_strided_batched(blas, Op::kN, Op::kN, m, n, k, 1.0f, a.data(), DataType::kF32,
                                     m, stride_a, b.data(), DataType::kF32, k, 0, 0.0f, c.data(),
                                     DataType::kF32, m, stride_c, batch);
    });
  };
  EXPECT_EQ(batched_error(0, 0, -1), "gemm_strided_batched: batch = -1 is negative");
  // Two matrices of C do not fit in one matrix's allocation.
  const std::string c2 = batched_error(0, std::size_t(m) * n, 2);
  EXPECT_EQ(c2.rfind("gemm_strided_batched: C device range", 0), 0u) << c2;
  const std::string a2 = batched_error(1, 0, 2);
  EXPECT_EQ(a2.rfind("gemm_strided_batched: A device range", 0), 0u) << a2;
  const std::string huge = batched_error(1LL << 62, 0, 4);
  EXPECT_NE(huge.find("overflows the address space"), std::string::npos) << huge;
}

TEST_F(EmuGemmArgs, EmptyProductsTouchNothing) {
  // m == 0, n == 0 or batch == 0: nothing is read or written, so null pointers are fine.
  cuda_emu::gemm(blas, Op::kN, Op::kN, 0, n, k, 1.0f, nullptr, DataType::kF32, 1, nullptr,
                 DataType::kF32, k, 0.0f, nullptr, DataType::kF32, 1);
  cuda_emu::gemm(blas, Op::kN, Op::kN, m, 0, k, 1.0f, nullptr, DataType::kF32, m, nullptr,
                 DataType::kF32, k, 0.0f, nullptr, DataType::kF32, m);
  cuda_emu::gemm_strided_batched(blas, Op::kN, Op::kN, m, n, k, 1.0f, nullptr, DataType::kF32, m, 0,
                                 nullptr, DataType::kF32, k, 0, 0.0f, nullptr, DataType::kF32, m, 0,
                                 0);
  // k == 0 reads neither A nor B: C = beta * C.
  std::vector<float> c_init(c.size());
  std::iota(c_init.begin(), c_init.end(), 1.0f);
  c.upload(c_init.data(), c_init.size());
  cuda_emu::gemm(blas, Op::kN, Op::kN, m, n, 0, 1.0f, nullptr, DataType::kF32, m, nullptr,
                 DataType::kF32, 1, -0.5f, c.data(), DataType::kF32, m);
  const std::vector<float> out = c.to_host();
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], -0.5f * c_init[i]) << i;
}

// ---- Device memory, streams, handles ------------------------------------------------------------

TEST(EmuRuntime, DeviceIsAlwaysAvailable) {
  std::string why = "untouched";
  EXPECT_TRUE(cuda_emu::device_available(&why));
  EXPECT_EQ(why, "untouched");
  EXPECT_TRUE(cuda_emu::device_available());
}

TEST(EmuRuntime, AllocationsAreAlignedAndPoisoned) {
  EXPECT_EQ(cuda_emu::device_alloc(0), nullptr);
  cuda_emu::device_free(nullptr);
  for (std::size_t bytes : {1u, 3u, 255u, 256u, 257u, 4096u, 100003u}) {
    void* p = cuda_emu::device_alloc(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 256, 0u) << bytes;
    std::vector<unsigned char> host(bytes);
    cuda_emu::copy(host.data(), p, bytes, CopyKind::kDeviceToHost, Stream());
    // Like cudaMalloc, memory is not zeroed; the emulation fills it with 0xFF (NaN as floats).
    EXPECT_EQ(std::count(host.begin(), host.end(), 0xFF), static_cast<long>(bytes));
    cuda_emu::device_free(p);
  }
  DeviceBuffer<float> fresh(5);
  for (float x : fresh.to_host()) EXPECT_TRUE(std::isnan(x));
}

TEST(EmuRuntime, DoubleFreeAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  void* p = cuda_emu::device_alloc(64);
  cuda_emu::device_free(p);
  EXPECT_DEATH(cuda_emu::device_free(p), "is not a live device allocation");
}

TEST(EmuRuntime, UploadDownloadRoundTrip) {
  std::vector<float> host(1000);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-5.0f, 5.0f);
  for (float& x : host) x = dist(rng);
  Stream stream = Stream::create();
  DeviceBuffer<float> buf(host.data(), host.size(), stream);
  EXPECT_EQ(buf.size(), host.size());
  EXPECT_EQ(buf.bytes(), host.size() * sizeof(float));
  EXPECT_EQ(buf.to_host(stream), host);
  // Partial download and re-upload.
  std::vector<float> part(10, 0.0f);
  buf.download(part.data(), part.size(), stream);
  EXPECT_TRUE(std::equal(part.begin(), part.end(), host.begin()));
  std::vector<float> twice(host.size());
  for (std::size_t i = 0; i < host.size(); ++i) twice[i] = 2.0f * host[i];
  buf.upload(twice.data(), twice.size(), stream);
  EXPECT_EQ(buf.to_host(), twice);
  // Device-to-device copy into a second buffer.
  DeviceBuffer<float> other(host.size());
  cuda_emu::copy(other.data(), buf.data(), buf.bytes(), CopyKind::kDeviceToDevice, stream);
  stream.synchronize();
  EXPECT_EQ(other.to_host(), twice);
  cuda_emu::fill_zero(other.data() + 500, 500 * sizeof(float), stream);
  const std::vector<float> z = other.to_host();
  for (std::size_t i = 0; i < z.size(); ++i) EXPECT_EQ(z[i], i < 500 ? twice[i] : 0.0f) << i;
  // Empty buffers.
  DeviceBuffer<float> empty(0);
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_TRUE(empty.to_host().empty());
}

TEST(EmuRuntime, CountsBeyondTheBufferAreNamed) {
  DeviceBuffer<float> buf(4);
  std::vector<float> host(5);
  EXPECT_EQ(error_of([&] { buf.upload(host.data(), 5); }),
            "DeviceBuffer::upload: count = 5 exceeds the buffer's size = 4");
  EXPECT_EQ(error_of([&] { buf.download(host.data(), 5); }),
            "DeviceBuffer::download: count = 5 exceeds the buffer's size = 4");
}

TEST(EmuRuntime, MoveTransfersOwnership) {
  const std::vector<int> host = {1, 2, 3};
  DeviceBuffer<int> a(host.data(), host.size());
  int* const p = a.data();
  DeviceBuffer<int> b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 3u);
  EXPECT_EQ(a.data(), nullptr);  // the moved-from state is part of the API
  EXPECT_EQ(a.size(), 0u);
  DeviceBuffer<int> c(7);
  c = std::move(b);  // frees c's old allocation
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(c.to_host(), host);
}

TEST(EmuRuntime, OutOfBoundsCopiesAreErrors) {
  DeviceBuffer<float> buf(8);
  std::vector<float> host(9);
  const Stream s;
  const std::string up = error_of([&] {
    cuda_emu::copy(buf.data() + 1, host.data(), buf.bytes(), CopyKind::kHostToDevice, s);
  });
  EXPECT_EQ(up.rfind("copy: dst device range [", 0), 0u) << up;
  EXPECT_NE(up.find("(32 bytes) is not inside a live device allocation"), std::string::npos) << up;
  const std::string down = error_of([&] {
    cuda_emu::copy(host.data(), buf.data(), buf.bytes() + 4, CopyKind::kDeviceToHost, s);
  });
  EXPECT_EQ(down.rfind("copy: src device range [", 0), 0u) << down;
  DeviceBuffer<float> small(4);
  const std::string d2d = error_of(
      [&] { cuda_emu::copy(small.data(), buf.data(), buf.bytes(), CopyKind::kDeviceToDevice, s); });
  EXPECT_EQ(d2d.rfind("copy: dst device range [", 0), 0u) << d2d;
  // Host memory passed as device memory, and memory that was freed.
  const std::string hostdst = error_of(
      [&] { cuda_emu::copy(host.data(), host.data() + 4, 16, CopyKind::kDeviceToDevice, s); });
  EXPECT_NE(hostdst.find("not inside a live device allocation"), std::string::npos) << hostdst;
  void* freed = cuda_emu::device_alloc(64);
  cuda_emu::device_free(freed);
  const std::string gone =
      error_of([&] { cuda_emu::copy(freed, host.data(), 16, CopyKind::kHostToDevice, s); });
  EXPECT_NE(gone.find("not inside a live device allocation"), std::string::npos) << gone;
  const std::string fill = error_of([&] { cuda_emu::fill_zero(buf.data() + 7, 8, s); });
  EXPECT_EQ(fill.rfind("fill_zero: dst device range [", 0), 0u) << fill;
  EXPECT_EQ(error_of([&] { cuda_emu::copy(nullptr, host.data(), 4, CopyKind::kHostToDevice, s); }),
            "copy: dst is a null pointer (bytes = 4)");
  // Zero bytes is a no-op, as for cudaMemcpy.
  cuda_emu::copy(nullptr, nullptr, 0, CopyKind::kHostToDevice, s);
  cuda_emu::fill_zero(nullptr, 0, s);
}

TEST(EmuRuntime, StreamsOwnTheirHandles) {
  Stream legacy;
  EXPECT_EQ(legacy.handle(), nullptr);
  legacy.synchronize();
  Stream s1 = Stream::create(), s2 = Stream::create();
  EXPECT_NE(s1.handle(), nullptr);
  EXPECT_NE(s2.handle(), nullptr);
  EXPECT_NE(s1.handle(), s2.handle());
  void* const h1 = s1.handle();
  Stream moved(std::move(s1));
  EXPECT_EQ(moved.handle(), h1);
  EXPECT_EQ(s1.handle(), nullptr);
  moved = std::move(s2);  // destroys h1's stream; ASan's leak check covers the old one
  EXPECT_NE(moved.handle(), h1);
  EXPECT_EQ(s2.handle(), nullptr);
  moved.synchronize();
  s2 = Stream::create();
  EXPECT_NE(s2.handle(), nullptr);
}

TEST(EmuRuntime, BlasHandleBindsAStream) {
  BlasHandle blas;
  EXPECT_NE(blas.handle(), nullptr);
  const Stream s = Stream::create();
  blas.set_stream(s);
  blas.set_stream(Stream());
}

TEST(EmuRuntime, EventsOrderStreamsAndTheTraceRecordsStreamOrderedCalls) {
  const Stream s1 = Stream::create(), s2 = Stream::create();
  cuda_emu::Event e = cuda_emu::Event::create();
  EXPECT_NE(e.handle(), nullptr);
  DeviceBuffer<float> buf(4);
  std::vector<float> host(4, 1.0f);
  {
    cuda_emu::ScopedTrace outer;
    e.record(s1);
    {
      cuda_emu::ScopedTrace inner;  // the innermost trace records; the outer one resumes after
      cuda_emu::wait_event(s2, e);
      ASSERT_EQ(inner.entries().size(), 1u);
      EXPECT_EQ(inner.entries()[0].op, cuda_emu::TraceOp::kWaitEvent);
      EXPECT_EQ(inner.entries()[0].stream, s2.handle());
      EXPECT_EQ(inner.entries()[0].event, e.handle());
    }
    cuda_emu::fill_zero(buf.data(), buf.bytes(), s2);
    cuda_emu::copy(host.data(), buf.data(), buf.bytes(), CopyKind::kDeviceToHost, s2);
    e.synchronize();
    const auto& t = outer.entries();
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(t[0].op, cuda_emu::TraceOp::kEventRecord);
    EXPECT_EQ(t[0].stream, s1.handle());
    EXPECT_EQ(t[0].event, e.handle());
    EXPECT_EQ(t[1].op, cuda_emu::TraceOp::kFill);
    EXPECT_EQ(t[1].stream, s2.handle());
    EXPECT_EQ(t[2].op, cuda_emu::TraceOp::kCopy);
    EXPECT_STREQ(cuda_emu::to_string(t[2].op), "copy");
  }
  EXPECT_EQ(host[0], 0.0f);
  void* const h = e.handle();
  cuda_emu::Event moved(std::move(e));
  EXPECT_EQ(moved.handle(), h);
  EXPECT_EQ(e.handle(), nullptr);
  EXPECT_EQ(error_of([&] { e.record(s1); }),
            "Event::record: the event is empty (default-constructed or moved)");
  EXPECT_EQ(error_of([&] { cuda_emu::wait_event(s1, e); }),
            "wait_event: the event is empty (default-constructed or moved)");
  moved = cuda_emu::Event::create();  // frees the old token; ASan's leak check covers it
  EXPECT_NE(moved.handle(), nullptr);
}

}  // namespace
}  // namespace ffnkit::emu_runtime_test
