// Tests of the CUDA emulation (docs/cuda.md): every kernel result is checked against an independent
// host computation, and every kernel test runs under the forward, reverse and shuffle schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// Kernels last: the emulation header defines CUDA keywords as macros.
#include "emu_test_util.hpp"
#include "test_kernels.cuh"

namespace ffnkit::emu {
// Readable parameter names in gtest failure messages.
void PrintTo(ScheduleOrder order, std::ostream* os) { *os << to_string(order); }
}  // namespace ffnkit::emu

namespace ffnkit::emu_test {
namespace {

using emu::EmuSettings;
using emu::launch_kernel;
using emu::ScheduleOrder;
using emu::ScopedSchedule;
using test::error_of;

constexpr std::uint64_t kSeed = 12345;

std::vector<float> random_floats(std::size_t n, float lo, float hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<int> random_ints(std::size_t n, int lo, int hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int> v(n);
  for (int& x : v) x = dist(rng);
  return v;
}

// ---- Kernel tests, each under every schedule order
// -----------------------------------------------

class EmuKernels : public ::testing::TestWithParam<ScheduleOrder> {
 protected:
  void SetUp() override { schedule_.emplace(GetParam(), kSeed); }
  std::optional<ScopedSchedule> schedule_;
};

INSTANTIATE_TEST_SUITE_P(Orders, EmuKernels,
                         ::testing::Values(ScheduleOrder::kForward, ScheduleOrder::kReverse,
                                           ScheduleOrder::kShuffle),
                         [](const ::testing::TestParamInfo<ScheduleOrder>& info) {
                           return std::string(emu::to_string(info.param));
                         });

void check_block_sums(int n, unsigned threads) {
  const std::vector<float> in = random_floats(static_cast<std::size_t>(n), -1.0f, 1.0f, 7);
  const unsigned blocks = (static_cast<unsigned>(n) + threads - 1) / threads;
  std::vector<float> sums(blocks, std::nanf(""));
  launch_kernel(BlockSumKernel, dim3(blocks), dim3(threads), 0, in.data(), n, sums.data());
  for (unsigned b = 0; b < blocks; ++b) {
    double expect = 0.0;
    for (unsigned i = b * threads; i < std::min<unsigned>((b + 1) * threads, n); ++i)
      expect += in[i];
    EXPECT_NEAR(sums[b], expect, 1e-4) << "block " << b;
  }
}

TEST_P(EmuKernels, BlockSumWithShuffleAndStaticSharedMemory) {
  check_block_sums(100003, 256);  // 391 blocks, ragged tail
  check_block_sums(5000, 1024);   // 32 warps per block
  check_block_sums(77, 32);       // one warp per block
}

TEST_P(EmuKernels, DynamicSharedMemoryReverse) {
  const unsigned threads = 200, blocks = 7;  // 200: no warp ops, so partial warps are fine
  std::vector<double> in(threads * blocks), out(threads * blocks, -1.0);
  std::iota(in.begin(), in.end(), 0.5);
  launch_kernel(ReverseKernel<double>, dim3(blocks), dim3(threads), threads * sizeof(double),
                in.data(), out.data());
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      ASSERT_EQ(out[b * threads + t], in[b * threads + (threads - 1 - t)]) << b << "," << t;
    }
  }
}

TEST_P(EmuKernels, DynamicSharedMemoryIsAlignedAndPoisoned) {
  std::vector<std::uintptr_t> addr(64);
  std::vector<unsigned> first(64);
  const std::function<void()> body = [&] {
    FFNKIT_DYNAMIC_SHARED(unsigned, buf);
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    first[i] = buf[threadIdx.x];  // before this block writes it
    __syncthreads();
    buf[threadIdx.x] = i;  // a value the next block on this worker must not see
    addr[i] = reinterpret_cast<std::uintptr_t>(buf);
  };
  emu::run_grid(dim3(16), dim3(4), 24, body);
  for (std::uintptr_t a : addr) EXPECT_EQ(a % 16, 0u);
  for (unsigned v : first) EXPECT_EQ(v, 0xffffffffu);
}

template <class T>
T from_int(int v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

template <class T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return static_cast<double>(v);
  }
}

template <class T>
void check_shuffles(unsigned delta, int lane_mask) {
  const unsigned threads = 64, blocks = 3, n = threads * blocks;
  std::vector<T> in(n), idx(n), up(n), down(n), xr(n);
  for (unsigned i = 0; i < n; ++i) in[i] = from_int<T>(static_cast<int>(i * 3 + 1));
  // Source lanes include >= 32 and negative ones, which wrap modulo the width.
  const std::vector<int> src =
      random_ints(n, -40, 70, delta * 31 + static_cast<unsigned>(lane_mask));
  launch_kernel(ShuffleKernel<T>, dim3(blocks), dim3(threads), 0, in.data(), src.data(), delta,
                lane_mask, idx.data(), up.data(), down.data(), xr.data());
  for (unsigned i = 0; i < n; ++i) {
    const long lane = static_cast<long>(i % 32), base = static_cast<long>(i) - lane;
    const long wrapped = ((src[i] % 32) + 32) % 32;
    EXPECT_EQ(to_double(idx[i]), to_double(in[base + wrapped])) << "shfl i=" << i;
    const long up_src = lane - static_cast<long>(delta);
    EXPECT_EQ(to_double(up[i]), to_double(in[up_src >= 0 ? base + up_src : i])) << "up i=" << i;
    const long down_src = lane + static_cast<long>(delta);
    EXPECT_EQ(to_double(down[i]), to_double(in[down_src < 32 ? base + down_src : i]))
        << "down i=" << i;
    const long xor_src = lane ^ lane_mask;
    EXPECT_EQ(to_double(xr[i]), to_double(in[xor_src >= 0 && xor_src < 32 ? base + xor_src : i]))
        << "xor i=" << i;
  }
}

TEST_P(EmuKernels, ShufflesMatchHostSemantics) {
  // delta 0/32 and xor masks 0/32 cover the "own value" edge cases.
  const unsigned deltas[] = {0, 1, 5, 16, 31, 32};
  const int masks[] = {0, 1, 6, 16, 31, 32};
  for (int k = 0; k < 6; ++k) {
    check_shuffles<float>(deltas[k], masks[k]);
    check_shuffles<int>(deltas[k], masks[k]);
  }
  check_shuffles<double>(3, 9);
  check_shuffles<long long>(7, 17);
  check_shuffles<unsigned>(2, 3);
  check_shuffles<__half>(4, 5);
}

TEST_P(EmuKernels, VotesMatchHost) {
  const unsigned threads = 96, blocks = 2, n = threads * blocks;  // 6 warps, one pattern each
  std::vector<int> pred(n, 0);
  const std::vector<int> noise = random_ints(n, 0, 1, 3);
  for (unsigned i = 0; i < n; ++i) {
    const unsigned warp = i / 32, lane = i % 32;
    switch (warp) {
      case 0:
        pred[i] = 0;
        break;
      case 1:
        pred[i] = 7;
        break;  // any non-zero counts as true
      case 2:
        pred[i] = lane == 13 ? -1 : 0;
        break;
      case 3:
        pred[i] = lane == 31 ? 0 : 1;
        break;
      default:
        pred[i] = noise[i];
        break;
    }
  }
  std::vector<unsigned> ballot(n);
  std::vector<int> any(n, -1), all(n, -1);
  launch_kernel(VoteKernel, dim3(blocks), dim3(threads), 0, pred.data(), ballot.data(), any.data(),
                all.data());
  for (unsigned i = 0; i < n; ++i) {
    const unsigned base = i - i % 32;
    unsigned expect = 0;
    for (unsigned l = 0; l < 32; ++l) expect |= (pred[base + l] != 0 ? 1u : 0u) << l;
    EXPECT_EQ(ballot[i], expect) << i;
    EXPECT_EQ(any[i] != 0, expect != 0) << i;
    EXPECT_EQ(all[i] != 0, expect == 0xffffffffu) << i;
  }
}

TEST_P(EmuKernels, SyncthreadsCountAndOr) {
  const unsigned threads = 128, blocks = 3, n = threads * blocks;
  std::vector<int> pred = random_ints(n, 0, 1, 11);
  std::fill(pred.begin() + threads, pred.begin() + 2 * threads, 1);  // block 1: all true
  std::vector<int> count(n), all(n), any(n);
  launch_kernel(BarrierVoteKernel, dim3(blocks), dim3(threads), 0, pred.data(), count.data(),
                all.data(), any.data());
  for (unsigned b = 0; b < blocks; ++b) {
    const int expect =
        std::accumulate(pred.begin() + b * threads, pred.begin() + (b + 1) * threads, 0);
    for (unsigned t = 0; t < threads; ++t) {
      EXPECT_EQ(count[b * threads + t], expect);
      EXPECT_EQ(all[b * threads + t] != 0, expect == static_cast<int>(threads));
      EXPECT_EQ(any[b * threads + t] != 0, expect > 0);
    }
  }
}

TEST_P(EmuKernels, AtomicsFromParallelBlocks) {
  EmuSettings s = emu::settings();
  s.num_workers = 4;  // more OS threads than cores: blocks interleave preemptively
  ScopedSchedule workers(s);
  const int n = 50000;
  const std::vector<float> xf = random_floats(n, 0.0f, 1.0f, 5);
  const std::vector<int> xi = random_ints(n, -1000, 1000, 6);
  float sum_f = 0.0f;
  double sum_d = 0.0;
  int sum_i = 0, max_i = std::numeric_limits<int>::min(), min_i = std::numeric_limits<int>::max();
  unsigned long long sum_u64 = 0;
  unsigned cas_count = 0;
  launch_kernel(AtomicKernel, dim3(64), dim3(128), 0, xf.data(), xi.data(), n, &sum_f, &sum_d,
                &sum_i, &sum_u64, &max_i, &min_i, &cas_count);
  const double host_f = std::accumulate(xf.begin(), xf.end(), 0.0);
  EXPECT_NEAR(sum_f, host_f, host_f * 1e-4);
  EXPECT_NEAR(sum_d, host_f, host_f * 1e-12);
  EXPECT_EQ(sum_i, std::accumulate(xi.begin(), xi.end(), 0));
  unsigned long long host_u64 = 0;
  for (int v : xi) host_u64 += static_cast<unsigned long long>(v & 0xff);
  EXPECT_EQ(sum_u64, host_u64);
  EXPECT_EQ(max_i, *std::max_element(xi.begin(), xi.end()));
  EXPECT_EQ(min_i, *std::min_element(xi.begin(), xi.end()));
  EXPECT_EQ(cas_count, static_cast<unsigned>(n));
}

TEST_P(EmuKernels, AtomicExchangeIsAPermutation) {
  const int threads = 64, blocks = 32, n = threads * blocks;
  int cell = -1;
  std::vector<int> got(n, -2);
  launch_kernel(ExchangeKernel, dim3(blocks), dim3(threads), 0, &cell, got.data());
  // Every value ever stored is returned exactly once, except the last one which stays in the cell.
  got.push_back(cell);
  std::sort(got.begin(), got.end());
  std::vector<int> expect(n + 1);
  std::iota(expect.begin(), expect.end(), -1);
  EXPECT_EQ(got, expect);
}

void check_indices(dim3 grid, dim3 block) {
  const std::size_t threads = std::size_t{block.x} * block.y * block.z;
  const std::size_t total = threads * grid.x * grid.y * grid.z;
  std::vector<int> out(12 * total, -1);
  launch_kernel(IndexKernel, grid, block, 0, out.data());
  for (std::size_t idx = 0; idx < total; ++idx) {
    const std::size_t b = idx / threads, t = idx % threads;
    const int expect[12] = {static_cast<int>(t % block.x),
                            static_cast<int>(t / block.x % block.y),
                            static_cast<int>(t / (std::size_t{block.x} * block.y)),
                            static_cast<int>(b % grid.x),
                            static_cast<int>(b / grid.x % grid.y),
                            static_cast<int>(b / (std::size_t{grid.x} * grid.y)),
                            static_cast<int>(block.x),
                            static_cast<int>(block.y),
                            static_cast<int>(block.z),
                            static_cast<int>(grid.x),
                            static_cast<int>(grid.y),
                            static_cast<int>(grid.z)};
    for (int k = 0; k < 12; ++k)
      ASSERT_EQ(out[12 * idx + k], expect[k]) << "slot " << idx << "." << k;
  }
}

TEST_P(EmuKernels, MultiDimensionalIndices) {
  check_indices(dim3(2, 3), dim3(16, 8));
  check_indices(dim3(3, 2, 2), dim3(8, 4, 2));
  check_indices(dim3(1, 1, 5), dim3(1, 3, 7));
}

TEST_P(EmuKernels, ScanAcrossManyBarrierPhases) {
  for (unsigned threads : {1024u, 96u}) {
    const unsigned blocks = 4;
    const std::vector<int> in = random_ints(threads * blocks, -50, 50, threads);
    std::vector<int> out(in.size());
    launch_kernel(InclusiveScanKernel, dim3(blocks), dim3(threads), 0, in.data(), out.data());
    for (unsigned b = 0; b < blocks; ++b) {
      int run = 0;
      for (unsigned t = 0; t < threads; ++t) {
        run += in[b * threads + t];
        ASSERT_EQ(out[b * threads + t], run) << "block " << b << " thread " << t;
      }
    }
  }
}

TEST_P(EmuKernels, MathIntrinsics) {
  const int n = 257;
  const std::vector<float> x = random_floats(n, -3.0f, 3.0f, 9);
  std::vector<float> out(kMathOutputs * n);
  launch_kernel(MathKernel, dim3(3), dim3(96), 0, x.data(), out.data(), n);
  for (int i = 0; i < n; ++i) {
    const double v = x[i];
    const float* o = &out[kMathOutputs * i];
    EXPECT_NEAR(o[0], std::exp(v), 1e-6 * std::exp(v));
    EXPECT_NEAR(o[1], std::log(std::fabs(v) + 1), 1e-6);
    EXPECT_NEAR(o[2], v / 3, 1e-6);
    EXPECT_NEAR(o[3], 1 / std::sqrt(std::fabs(v) + 0.5), 1e-6);
    EXPECT_NEAR(o[4], 1 / std::sqrt(std::fabs(v) + 0.5), 1e-6);
    EXPECT_NEAR(o[5], 2 * v + 1, 1e-6);
    EXPECT_EQ(o[6], std::clamp(x[i], 0.0f, 1.0f));
    EXPECT_EQ(o[7], -x[i]);
    EXPECT_EQ(o[8], x[i]);
    EXPECT_EQ(o[9], std::min(x[i], 0.5f) + static_cast<float>(std::max(i, 3)));
    EXPECT_NEAR(o[10], v, std::fabs(v) * std::ldexp(1.0, -11) + 1e-7);  // half: 11-bit significand
    EXPECT_NEAR(o[11], v, std::fabs(v) * std::ldexp(1.0, -8));          // bf16: 8-bit significand
    EXPECT_NEAR(o[12], std::tanh(v), 1e-6);
    EXPECT_NEAR(o[13], v * v - 1, 1e-5);
  }
  EXPECT_EQ(__saturatef(std::nanf("")), 0.0f);
}

TEST_P(EmuKernels, DivergentSyncthreadsThrows) {
  std::vector<int> out(64);
  const std::string msg = error_of(
      [&] { launch_kernel(DivergentBarrierKernel, dim3(1), dim3(64), 0, out.data(), 40); });
  EXPECT_NE(msg.find("__syncthreads reached by 40 of 64 threads of block (0,0,0)"),
            std::string::npos)
      << msg;
}

TEST_P(EmuKernels, WarpOpAgainstBarrierIsADeadlockError) {
  std::vector<float> out(64);
  const std::string msg =
      error_of([&] { launch_kernel(WarpBarrierDeadlockKernel, dim3(2), dim3(64), 0, out.data()); });
  EXPECT_NE(msg.find("deadlock"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 of 32 lanes waiting in __shfl_xor_sync"), std::string::npos) << msg;
}

TEST_P(EmuKernels, WarpSubsetMaskIsRejected) {
  std::vector<float> out(32);
  const std::string msg =
      error_of([&] { launch_kernel(SubsetMaskKernel, dim3(1), dim3(32), 0, out.data()); });
  EXPECT_NE(msg.find("__shfl_sync: mask = 0x0000ffff"), std::string::npos) << msg;
}

TEST_P(EmuKernels, PartialWarpShuffleIsRejected) {
  std::vector<float> in(48, 1.0f), sums(1);
  const std::string msg = error_of(
      [&] { launch_kernel(BlockSumKernel, dim3(1), dim3(48), 0, in.data(), 48, sums.data()); });
  EXPECT_NE(msg.find("partial warp 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("48 threads"), std::string::npos) << msg;
}

// ---- Emulator-only kernels (host code inside kernel bodies)
// --------------------------------------

void ThrowingKernel(int bad_block, int bad_thread) {
  __syncthreads();
  if (static_cast<int>(blockIdx.x) == bad_block && static_cast<int>(threadIdx.x) == bad_thread)
    throw std::runtime_error("boom from the kernel");
  __syncthreads();
}

TEST_P(EmuKernels, KernelExceptionPropagatesAndEmulatorRecovers) {
  const std::string msg =
      error_of([] { launch_kernel(ThrowingKernel, dim3(4), dim3(64), 0, 2, 37); });
  EXPECT_NE(msg.find("boom from the kernel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("block (2,0,0) thread (37,0,0)"), std::string::npos) << msg;
  // The aborted block's fibers were unwound; the next launch works normally.
  check_block_sums(4096, 256);
}

TEST_P(EmuKernels, TrapAndMisuseAreErrors) {
  const std::function<void()> trap = [] {
    if (threadIdx.x == 3) __trap();
  };
  EXPECT_NE(error_of([&] { emu::run_grid(dim3(1), dim3(8), 0, trap); }).find("__trap"),
            std::string::npos);
  const std::function<void()> nested = [] { emu::run_grid(dim3(1), dim3(1), 0, [] {}); };
  EXPECT_NE(
      error_of([&] { emu::run_grid(dim3(1), dim3(2), 0, nested); }).find("dynamic parallelism"),
      std::string::npos);
  EXPECT_NE(error_of([] { __syncthreads(); }).find("outside a kernel"), std::string::npos);
}

// ---- Schedule perturbation
// ------------------------------------------------------------------------

// Counts wrong outputs of NeighborSumKernel under one schedule.
int neighbor_sum_mismatches(ScheduleOrder order, std::uint64_t seed, bool sync) {
  ScopedSchedule schedule(order, seed);
  const unsigned threads = 256, blocks = 8, n = threads * blocks;
  std::vector<float> in(n), out(n, std::nanf(""));
  for (unsigned i = 0; i < n; ++i) in[i] = 1.0f + static_cast<float>(i);  // distinct, non-zero
  if (sync) {
    launch_kernel(NeighborSumKernel<true>, dim3(blocks), dim3(threads), 0, in.data(), out.data());
  } else {
    launch_kernel(NeighborSumKernel<false>, dim3(blocks), dim3(threads), 0, in.data(), out.data());
  }
  int wrong = 0;
  for (unsigned i = 0; i < n; ++i) {
    const float expect = in[i] + (i % threads > 0 ? in[i - 1] : 0.0f);
    if (out[i] != expect) ++wrong;
  }
  return wrong;
}

TEST(EmuRace, PerturbedOrdersExposeAMissingSyncthreads) {
  // Forward order runs thread t-1 to completion before thread t, so the race goes unnoticed...
  EXPECT_EQ(neighbor_sum_mismatches(ScheduleOrder::kForward, 1, false), 0);
  // ...while reverse and shuffled orders read neighbours' slots before they are written.
  EXPECT_GT(neighbor_sum_mismatches(ScheduleOrder::kReverse, 1, false), 0);
  for (std::uint64_t seed : {1u, 2u, 99u}) {
    EXPECT_GT(neighbor_sum_mismatches(ScheduleOrder::kShuffle, seed, false), 0) << "seed " << seed;
  }
  // With the barrier every order is correct.
  EXPECT_EQ(neighbor_sum_mismatches(ScheduleOrder::kForward, 1, true), 0);
  EXPECT_EQ(neighbor_sum_mismatches(ScheduleOrder::kReverse, 1, true), 0);
  for (std::uint64_t seed : {1u, 2u, 99u}) {
    EXPECT_EQ(neighbor_sum_mismatches(ScheduleOrder::kShuffle, seed, true), 0) << "seed " << seed;
  }
}

std::vector<int> record_order(ScheduleOrder order, std::uint64_t seed, int threads, int phases) {
  ScopedSchedule schedule(order, seed);
  std::vector<int> seq(static_cast<std::size_t>(threads * phases), -1), counters(phases, 0);
  launch_kernel(RecordOrderKernel, dim3(1), dim3(threads), 0, seq.data(), counters.data(), phases);
  return seq;
}

TEST(EmuSchedule, OrdersAreAppliedBetweenBarriers) {
  const int threads = 64, phases = 4;
  std::vector<int> forward(threads), reverse(threads);
  std::iota(forward.begin(), forward.end(), 0);
  std::iota(reverse.rbegin(), reverse.rend(), 0);
  const std::vector<int> f = record_order(ScheduleOrder::kForward, 1, threads, phases);
  const std::vector<int> r = record_order(ScheduleOrder::kReverse, 1, threads, phases);
  const std::vector<int> s = record_order(ScheduleOrder::kShuffle, 7, threads, phases);
  auto phase = [&](const std::vector<int>& v, int p) {
    return std::vector<int>(v.begin() + p * threads, v.begin() + (p + 1) * threads);
  };
  for (int p = 0; p < phases; ++p) {
    EXPECT_EQ(phase(f, p), forward);
    EXPECT_EQ(phase(r, p), reverse);
    std::vector<int> sorted = phase(s, p);
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, forward) << "phase " << p << " is not a permutation";
    EXPECT_NE(phase(s, p), forward);
    EXPECT_NE(phase(s, p), reverse);
    if (p > 0) {
      EXPECT_NE(phase(s, p), phase(s, p - 1)) << "same permutation in two phases";
    }
  }
  EXPECT_EQ(record_order(ScheduleOrder::kShuffle, 7, threads, phases), s) << "not reproducible";
  EXPECT_NE(record_order(ScheduleOrder::kShuffle, 8, threads, phases), s) << "seed ignored";
}

// ---- Parallel execution, settings, launch validation, speed
// ---------------------------------------

std::atomic<int> g_blocks_started{0};

void WaitForPeerBlockKernel(int* saw_peer, int* worker) {
  g_blocks_started.fetch_add(1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (g_blocks_started.load() < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  saw_peer[blockIdx.x] = g_blocks_started.load() >= 2 ? 1 : 0;
  worker[blockIdx.x] = emu::detail::worker_index();
}

TEST(EmuParallel, BlocksRunConcurrentlyOnWorkerThreads) {
  EmuSettings s = emu::settings();
  s.num_workers = 2;
  ScopedSchedule schedule(s);
  g_blocks_started = 0;
  std::vector<int> saw_peer(2, 0), worker(2, -1);
  // One thread per block: each block can only finish once the other one has started.
  launch_kernel(WaitForPeerBlockKernel, dim3(2), dim3(1), 0, saw_peer.data(), worker.data());
  EXPECT_EQ(saw_peer, std::vector<int>({1, 1}));
  EXPECT_NE(worker[0], worker[1]);
}

TEST(EmuParallel, ConcurrentLaunchesFromHostThreads) {
  // Each launching thread is its own worker 0, with its own shared memory and fiber stacks.
  std::vector<std::thread> launchers;
  for (int k = 0; k < 3; ++k) launchers.emplace_back([] { check_block_sums(20000 + 999, 128); });
  for (std::thread& t : launchers) t.join();
}

TEST(EmuSettingsTest, ParseOrder) {
  ScheduleOrder order = ScheduleOrder::kForward;
  std::uint64_t seed = 0;
  emu::parse_order("shuffle:42", &order, &seed);
  EXPECT_EQ(order, ScheduleOrder::kShuffle);
  EXPECT_EQ(seed, 42u);
  emu::parse_order("reverse", &order, &seed);
  EXPECT_EQ(order, ScheduleOrder::kReverse);
  EXPECT_EQ(seed, 42u);
  for (const char* bad : {"backward", "shuffle:", "shuffle:x1", "shuffle:-3", "forward:1", ""}) {
    EXPECT_NE(error_of([&] { emu::parse_order(bad, &order, &seed); }).find(std::string("\"") + bad),
              std::string::npos)
        << bad;
  }
}

TEST(EmuSettingsTest, EnvironmentDefaultAndScopedRestore) {
  const EmuSettings before = emu::settings();
  EXPECT_GE(before.num_workers, 1u);
  if (const char* env = std::getenv("FFNKIT_EMU_ORDER")) {
    ScheduleOrder order = ScheduleOrder::kForward;
    std::uint64_t seed = before.seed;
    emu::parse_order(env, &order, &seed);
    EXPECT_EQ(before.order, order);
    EXPECT_EQ(before.seed, seed);
  } else {
    EXPECT_EQ(before.order, ScheduleOrder::kForward);
  }
  {
    ScopedSchedule s(ScheduleOrder::kShuffle, 77);
    EXPECT_EQ(emu::settings().order, ScheduleOrder::kShuffle);
    EXPECT_EQ(emu::settings().seed, 77u);
  }
  EXPECT_EQ(emu::settings().order, before.order);
  EXPECT_EQ(emu::settings().seed, before.seed);
  EmuSettings bad = before;
  bad.num_workers = 0;
  EXPECT_NE(error_of([&] { emu::set_settings(bad); }).find("num_workers = 0"), std::string::npos);
}

TEST(EmuSettingsTest, KernelsRunUnderTheProcessDefaultOrder) {
  check_block_sums(30000, 128);  // whatever FFNKIT_EMU_ORDER selected
}

TEST(EmuLaunch, ValidationNamesTheDimension) {
  const std::function<void()> body = [] {};
  auto msg = [&](dim3 grid, dim3 block, std::size_t smem) {
    return error_of([&] { emu::run_grid(grid, block, smem, body); });
  };
  EXPECT_NE(msg(dim3(1), dim3(1025), 0).find("blockDim.x = 1025"), std::string::npos);
  EXPECT_NE(msg(dim3(1), dim3(64, 32), 0).find("= 2048 threads per block, must be <= 1024"),
            std::string::npos);
  EXPECT_NE(msg(dim3(1), dim3(1, 1, 65), 0).find("blockDim.z = 65"), std::string::npos);
  EXPECT_NE(msg(dim3(1), dim3(0), 0).find("blockDim.x = 0"), std::string::npos);
  EXPECT_NE(msg(dim3(1), dim3(4, 0), 0).find("blockDim.y = 0"), std::string::npos);
  EXPECT_NE(msg(dim3(0), dim3(32), 0).find("gridDim.x = 0"), std::string::npos);
  EXPECT_NE(msg(dim3(1, 1, 0), dim3(32), 0).find("gridDim.z = 0"), std::string::npos);
  EXPECT_NE(msg(dim3(1, 65536), dim3(32), 0).find("gridDim.y = 65536"), std::string::npos);
  EXPECT_NE(msg(dim3(1), dim3(32), 300000).find("dynamic_smem_bytes = 300000"), std::string::npos);
  // The limits themselves are accepted.
  emu::run_grid(dim3(1), dim3(1024), emu::kMaxDynamicSmemBytes, body);
  emu::run_grid(dim3(1), dim3(1, 1, 64), 0, body);
  emu::run_grid(dim3(1, 65535, 1), dim3(1), 0, body);
  emu::run_grid(dim3(1, 1, 65535), dim3(1), 0, body);
}

TEST(EmuPerf, ManyBlocksWithBarriersAreFast) {
  const unsigned threads = 256, blocks = 256;
  const std::vector<int> in = random_ints(threads * blocks, -9, 9, 1);
  std::vector<int> out(in.size());
  for (ScheduleOrder order : {ScheduleOrder::kForward, ScheduleOrder::kShuffle}) {
    ScopedSchedule schedule(order, kSeed);
    const auto start = std::chrono::steady_clock::now();
    launch_kernel(InclusiveScanKernel, dim3(blocks), dim3(threads), 0, in.data(), out.data());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("[ emu perf ] %u blocks x %u threads, 9 barrier phases, %s: %.3f s\n", blocks,
                threads, emu::to_string(order), seconds);
    int run = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
      run = (i % threads == 0 ? 0 : run) + in[i];
      ASSERT_EQ(out[i], run) << i;
    }
#if !defined(__SANITIZE_ADDRESS__)
    EXPECT_LT(seconds, 2.0);  // generous: typically far below (see the printed time)
#endif
  }
}

}  // namespace
}  // namespace ffnkit::emu_test
