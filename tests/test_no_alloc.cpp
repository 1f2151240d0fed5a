// The zero-copy promise of docs/integration.md: every Cpu layer's forward, given views on the
// caller's buffers and a caller-provided workspace of workspace_size() bytes, does not touch the
// heap. Its own binary, because it replaces the global operator new (to count every C++ allocation,
// on every thread) and builds Eigen with EIGEN_RUNTIME_NO_MALLOC (to trap Eigen's own aligned
// mallocs); both must hold for every translation unit of the program, so no other test shares it.
//
// Each layer is called once outside the counted region first: OpenMP's thread pool and the
// BLAS's buffer pool are created on first use, which is start-up, not the hot path.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

namespace {
std::atomic<long> g_allocations{0};
std::atomic<long> g_eigen_violations{0};
std::atomic<bool> g_counting{false};

void* counted_alloc(std::size_t bytes, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(bytes);
  } else {
    bytes = (bytes + align - 1) / align * align;
    p = std::aligned_alloc(align, bytes);
  }
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

// Eigen's allocation guard is an assertion, compiled out under NDEBUG; count instead, so the
// check holds in the Release pass too. Any Eigen assertion in the hot path is a bug as well.
#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x)                        \
  do {                                         \
    if (!(x)) g_eigen_violations.fetch_add(1); \
  } while (false)

void* operator new(std::size_t n) { return counted_alloc(n, 0); }
void* operator new[](std::size_t n) { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

#include <gtest/gtest.h>

#include "ffnkit/ffnkit.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace {

struct Heap {
  long allocations;
  long eigen_violations;
};

// Runs f with the counters armed; f runs twice before, unarmed (warm-up: thread pools, and the
// second call proves the first left nothing to grow).
template <class F>
Heap heap_use(F&& f) {
  f();
  f();
  g_allocations = 0;
  g_eigen_violations = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  g_counting = true;
  f();
  g_counting = false;
  Eigen::internal::set_is_malloc_allowed(true);
  return Heap{g_allocations.load(), g_eigen_violations.load()};
}

#define EXPECT_NO_HEAP(call)                                                 \
  do {                                                                       \
    const Heap h = heap_use([&] { call; });                                  \
    EXPECT_EQ(h.allocations, 0) << "operator new calls in: " #call;          \
    EXPECT_EQ(h.eigen_violations, 0) << "Eigen heap allocations in: " #call; \
  } while (false)

// Caller-owned buffers: a row stride wider than the row, as an engine's fused activations have.
struct Buffers {
  std::vector<float> x, y;
  index_t tokens, in, out, stride_x, stride_y;
  Buffers(index_t t, index_t n, index_t m)
      : x(static_cast<std::size_t>(t * (n + 8)), 0.25f),
        y(static_cast<std::size_t>(t * (m + 4)), 0.0f),
        tokens(t),
        in(n),
        out(m),
        stride_x(n + 8),
        stride_y(m + 4) {
    for (std::size_t i = 0; i < x.size(); ++i)
      x[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1;
  }
  MatrixView<const float> xv() const { return {x.data(), tokens, in, stride_x}; }
  MatrixView<float> yv() { return {y.data(), tokens, out, stride_y}; }
};

struct Scratch {
  std::vector<std::uint64_t> words;
  explicit Scratch(std::size_t bytes) : words(bytes / 8 + 1) {}
  Workspace ws() { return Workspace{words.data(), words.size() * 8}; }
};

// Eigen's built-in GEMM (the build without a BLAS, e.g. the cpu-only preset) takes its blocking
// buffers from the heap once a product is larger than EIGEN_STACK_ALLOCATION_LIMIT; the
// guarantee for the layers built on products holds with a BLAS, ffnkit's default.
#if defined(FFNKIT_WITH_OPENBLAS)
#define SKIP_WITHOUT_BLAS() (void)0
#else
#define SKIP_WITHOUT_BLAS() \
  GTEST_SKIP() << "built without a BLAS: Eigen's own GEMM allocates its blocking buffers"
#endif

// Token counts on both sides of every kernel switch (decode paths, grouped/blocked paths).
const index_t kTokens[] = {1, 7, 64, 300};

TEST(NoHeapInForward, DenseLinearAndFfn) {
  SKIP_WITHOUT_BLAS();
  const auto lin = DenseLinear<float, Cpu>::random(96, 80, 1);
  const auto ffn = DenseFFN<float, Cpu>::random(96, 256, Activation::kGeluTanh, 2);
  const auto glu = DenseFFN<float, Cpu>::random_swiglu(96, 128, 3);
  for (index_t t : kTokens) {
    SCOPED_TRACE(t);
    Buffers b(t, 96, 80), c(t, 96, 96);
    Scratch s(std::max(ffn.workspace_size(t), glu.workspace_size(t)));
    EXPECT_NO_HEAP(lin.forward(b.xv(), b.yv()));
    EXPECT_NO_HEAP(ffn.forward(c.xv(), c.yv(), s.ws()));
    EXPECT_NO_HEAP(glu.forward(c.xv(), c.yv(), s.ws()));
  }
}

TEST(NoHeapInForward, StructuredLayersAndFfn) {
  SKIP_WITHOUT_BLAS();
  const auto lr = LowRankLinear<float, Cpu>::random(128, 96, 32, 1);
  const auto bd = BlockDiagonalLinear<float, Cpu>::random(128, 96, 4, 2);
  const auto bdl = BlockDenseLinear<float, Cpu>::random(128, 96, 4, 32, 3);
  const auto bs = BlockShuffleLinear<float, Cpu>::random(128, 96, 4, 4);
  StructuredFFN<LowRankLinear<float, Cpu>, BlockDenseLinear<float, Cpu>> ffn(
      LowRankLinear<float, Cpu>::random(128, 256, 64, 5),
      BlockDenseLinear<float, Cpu>::random(256, 128, 4, 64, 6), Activation::kGeluTanh);
  // SwiGLU with gate|up in one layer, as loaded from an official SwiGLU checkpoint.
  const auto glu = StructuredFFN<LowRankLinear<float, Cpu>, LowRankLinear<float, Cpu>>::swiglu(
      LowRankLinear<float, Cpu>::random(128, 512, 64, 7),
      LowRankLinear<float, Cpu>::random(256, 128, 64, 8));
  for (index_t t : kTokens) {
    SCOPED_TRACE(t);
    Buffers b(t, 128, 96), c(t, 128, 128);
    Scratch s(std::max({lr.workspace_size(t), bd.workspace_size(t), bdl.workspace_size(t),
                        bs.workspace_size(t), ffn.workspace_size(t), glu.workspace_size(t)}));
    EXPECT_NO_HEAP(lr.forward(b.xv(), b.yv(), s.ws()));
    EXPECT_NO_HEAP(bd.forward(b.xv(), b.yv(), s.ws()));
    EXPECT_NO_HEAP(bdl.forward(b.xv(), b.yv(), s.ws()));
    EXPECT_NO_HEAP(bs.forward(b.xv(), b.yv(), s.ws()));
    EXPECT_NO_HEAP(ffn.forward(c.xv(), c.yv(), s.ws()));
    EXPECT_NO_HEAP(glu.forward(c.xv(), c.yv(), s.ws()));
  }
}

TEST(NoHeapInForward, FastFeedForward) {
  const auto one = FastFeedForward<float, Cpu>::random(96, 64, 1, 7, 1);
  const auto two = FastFeedForward<float, Cpu>::random(96, 64, 2, 5, 2);
  for (index_t t : {index_t(1), index_t(7), index_t(64), index_t(1500)}) {
    SCOPED_TRACE(t);
    Buffers b(t, 96, 64);
    std::vector<std::int32_t> leaves(static_cast<std::size_t>(2 * t));
    Scratch s(std::max(one.workspace_size(t), two.workspace_size(t)));
    for (FffKernel k : {FffKernel::kAuto, FffKernel::kPerToken, FffKernel::kGrouped}) {
      EXPECT_NO_HEAP(one.forward(b.xv(), b.yv(), leaves.data(), k, s.ws()));
      EXPECT_NO_HEAP(two.forward(b.xv(), b.yv(), nullptr, k, s.ws()));
    }
  }
}

TEST(NoHeapInForward, NormLinearAndSoftmax) {
  SKIP_WITHOUT_BLAS();
  const index_t n = 96, m = 80;
  std::vector<float> gamma(n, 1.1f), beta(n, 0.1f), w(static_cast<std::size_t>(m * n)), bias(m);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>((i * 13) % 29) / 29 - 0.5f;
  const RMSNormLinear<float, Cpu> rms(n, m, gamma.data(), w.data(), bias.data());
  const LayerNormLinear<float, Cpu> ln(n, m, gamma.data(), beta.data(), w.data(), bias.data());
  for (index_t t : kTokens) {
    SCOPED_TRACE(t);
    Buffers b(t, n, m);
    Scratch s(std::max(rms.workspace_size(t), ln.workspace_size(t)));
    EXPECT_NO_HEAP(rms.forward(b.xv(), b.yv(), s.ws()));
    EXPECT_NO_HEAP(ln.forward(b.xv(), b.yv(), s.ws()));
  }
  const SoftmaxLinear<float, Cpu> sm;
  for (index_t q : {index_t(1), index_t(33), index_t(256)}) {
    SCOPED_TRACE(q);
    const index_t keys = 700, dim = 64;
    Buffers sv(q, keys, dim);
    std::vector<float> v(static_cast<std::size_t>(keys * dim), 0.5f);
    Scratch s(sm.workspace_size(q, keys, dim));
    EXPECT_NO_HEAP(sm.forward(sv.xv(), make_view(v.data(), keys, dim), sv.yv(),
                              MatrixView<const float>(), s.ws()));
  }
}

// The counters themselves work: a forward without a workspace allocates its scratch.
TEST(NoHeapInForward, CounterSeesAnAllocation) {
  const auto ffn = DenseFFN<float, Cpu>::random(32, 64, Activation::kRelu, 9);
  Buffers c(5, 32, 32);
  const Heap h = heap_use([&] { ffn.forward(c.xv(), c.yv()); });
  EXPECT_GT(h.allocations, 0);
  const Heap e = heap_use([] {
    Eigen::MatrixXf big(64, 64);
    big.setZero();
  });
  EXPECT_GT(e.eigen_violations, 0);
}

}  // namespace
}  // namespace ffnkit
