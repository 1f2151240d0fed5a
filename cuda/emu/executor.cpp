// Fiber-based thread-block executor of the CUDA emulation; see ffnkit/cuda/emu/executor.hpp.
//
// One worker (OS thread) runs one block at a time. Each CUDA thread of the block is a
// boost::context::fiber; the scheduler resumes the runnable fibers round by round in the configured
// order, and a fiber runs until it reaches __syncthreads, a warp collective, or its end.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

// Boost before emu.hpp: the emulation header redefines CUDA qualifier names as macros.
#include <boost/context/fiber.hpp>

#include "ffnkit/cuda/emu/emu.hpp"
#include "ffnkit/cuda/emu/executor.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FFNKIT_EMU_ASAN 1
#endif

// The built-in variables, one copy per OS thread (a block never leaves its worker thread).
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace ffnkit::emu {

namespace ctx = boost::context;
using detail::kMaxShuffleBytes;
using detail::WarpOp;

// ---- Settings
// ------------------------------------------------------------------------------------

const char* to_string(ScheduleOrder order) {
  switch (order) {
    case ScheduleOrder::kForward:
      return "forward";
    case ScheduleOrder::kReverse:
      return "reverse";
    case ScheduleOrder::kShuffle:
      return "shuffle";
  }
  return "unknown";
}

void parse_order(const std::string& text, ScheduleOrder* order, std::uint64_t* seed) {
  const auto colon = text.find(':');
  const std::string name = text.substr(0, colon);
  ScheduleOrder parsed;
  if (name == "forward") {
    parsed = ScheduleOrder::kForward;
  } else if (name == "reverse") {
    parsed = ScheduleOrder::kReverse;
  } else if (name == "shuffle") {
    parsed = ScheduleOrder::kShuffle;
  } else {
    fail("parse_order", "\"", text, "\" is not forward, reverse, shuffle or shuffle:<seed>");
  }
  if (colon != std::string::npos) {
    const std::string digits = text.substr(colon + 1);
    if (parsed != ScheduleOrder::kShuffle)
      fail("parse_order", "\"", text, "\": only shuffle takes a seed");
    errno = 0;
    char* end = nullptr;
    const unsigned long long value = std::strtoull(digits.c_str(), &end, 10);
    if (digits.empty() || digits[0] == '-' || *end != '\0' || errno == ERANGE)
      fail("parse_order", "\"", text, "\": seed \"", digits,
           "\" is not an unsigned 64-bit integer");
    *seed = value;
  }
  *order = parsed;
}

namespace {

std::mutex& settings_mutex() {
  static std::mutex m;
  return m;
}

EmuSettings initial_settings() {
  EmuSettings s;
  s.num_workers = std::max(1u, std::thread::hardware_concurrency());
  if (const char* env = std::getenv("FFNKIT_EMU_ORDER"); env != nullptr && *env != '\0') {
    try {
      parse_order(env, &s.order, &s.seed);
    } catch (const Error& e) {
      fail("FFNKIT_EMU_ORDER", e.what());
    }
  }
  return s;
}

// If FFNKIT_EMU_ORDER is malformed the initialisation throws and is retried on every access, so
// each launch reports it instead of silently running in forward order.
EmuSettings& settings_storage() {
  static EmuSettings s = initial_settings();
  return s;
}

}  // namespace

EmuSettings settings() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  return settings_storage();
}

void set_settings(const EmuSettings& s) {
  if (s.num_workers == 0) fail("set_settings", "num_workers = 0, must be >= 1");
  if (s.stack_size < 16 * 1024)
    fail("set_settings", "stack_size = ", s.stack_size, ", must be >= 16384 bytes");
  std::lock_guard<std::mutex> lock(settings_mutex());
  settings_storage() = s;
}

ScopedSchedule::ScopedSchedule(ScheduleOrder order, std::uint64_t seed) : saved_(settings()) {
  EmuSettings s = saved_;
  s.order = order;
  s.seed = seed;
  set_settings(s);
}

ScopedSchedule::ScopedSchedule(const EmuSettings& s) : saved_(settings()) { set_settings(s); }

ScopedSchedule::~ScopedSchedule() {
  std::lock_guard<std::mutex> lock(settings_mutex());
  settings_storage() = saved_;
}

namespace {

// ---- Fiber stacks: mmap'd with a guard page, pooled across blocks and launches -----------------

struct Stack {
  char* base = nullptr;   // start of the guard page
  std::size_t total = 0;  // guard page + usable bytes
};

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

std::size_t usable_stack_bytes(std::size_t requested) {
  const std::size_t page = page_size();
  return (requested + page - 1) / page * page;
}

Stack map_stack(std::size_t usable) {
  const std::size_t total = usable + page_size();
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    fail("run_grid", "mmap of a ", total, "-byte fiber stack failed (errno ", errno, ")");
  // An overflowing kernel then faults instead of silently corrupting a neighbouring stack.
  if (mprotect(p, page_size(), PROT_NONE) != 0) {
    munmap(p, total);
    fail("run_grid", "mprotect of a fiber stack guard page failed (errno ", errno, ")");
  }
  return {static_cast<char*>(p), total};
}

void unmap_stack(const Stack& s) { munmap(s.base, s.total); }

// Stacks returned by worker threads that exit; capped so a one-off huge launch does not pin memory.
class GlobalStackPool {
 public:
  static constexpr std::size_t kMaxPooled = 4096;

  bool take(std::size_t total, Stack* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!free_.empty()) {
      const Stack s = free_.back();
      free_.pop_back();
      if (s.total == total) {
        *out = s;
        return true;
      }
      unmap_stack(s);  // left over from a different stack_size setting
    }
    return false;
  }

  void give(std::vector<Stack>* stacks) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Stack& s : *stacks) {
      if (free_.size() < kMaxPooled) {
        free_.push_back(s);
      } else {
        unmap_stack(s);
      }
    }
    stacks->clear();
  }

 private:
  std::mutex mutex_;
  std::vector<Stack> free_;
};

// Never destroyed: thread-exit caches hand their stacks back during process shutdown.
GlobalStackPool& global_stack_pool() {
  static GlobalStackPool* pool = new GlobalStackPool;
  return *pool;
}

// Per-OS-thread cache, so a block's 1024 fibers do not contend on the global lock.
class StackCache {
 public:
  StackCache() { global_stack_pool(); }  // constructed first, so it outlives this cache
  ~StackCache() { global_stack_pool().give(&free_); }

  Stack take(std::size_t usable) {
    const std::size_t total = usable + page_size();
    while (!free_.empty()) {
      const Stack s = free_.back();
      free_.pop_back();
      if (s.total == total) return s;
      unmap_stack(s);
    }
    Stack s;
    if (global_stack_pool().take(total, &s)) return s;
    return map_stack(usable);
  }

  void give(const Stack& s) { free_.push_back(s); }

 private:
  std::vector<Stack> free_;
};

thread_local StackCache t_stack_cache;

// ---- ASan fiber-switch annotations (no-ops otherwise)
// ---------------------------------------------

inline void asan_start_switch([[maybe_unused]] void** fake_stack_save,
                              [[maybe_unused]] const void* bottom,
                              [[maybe_unused]] std::size_t size) {
#if defined(FFNKIT_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#endif
}

inline void asan_finish_switch([[maybe_unused]] void* fake_stack_save,
                               [[maybe_unused]] const void** bottom_old,
                               [[maybe_unused]] std::size_t* size_old) {
#if defined(FFNKIT_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#endif
}

// ---- Block state --------------------------------------------------------------------------------

enum class FiberState : unsigned char { kRunnable, kAtBarrier, kAtWarp, kDone };

struct FiberSlot {
  ctx::fiber fiber;  // the CUDA thread while it is suspended
  ctx::fiber sink;   // the scheduler while this CUDA thread runs
  FiberState state = FiberState::kDone;
  uint3 tid{};
  const void* stack_bottom = nullptr;  // for the ASan annotations
  std::size_t stack_size = 0;
  void* fake_stack = nullptr;
};

// boost::context stack allocator drawing from the per-thread cache.
class PooledStackAllocator {
 public:
  PooledStackAllocator(std::size_t usable, FiberSlot* slot) : usable_(usable), slot_(slot) {}

  ctx::stack_context allocate() {
    const Stack s = t_stack_cache.take(usable_);
    ctx::stack_context sc;
    sc.size = usable_;
    sc.sp = s.base + s.total;  // stacks grow down from the top
    slot_->stack_bottom = s.base + page_size();
    slot_->stack_size = usable_;
    return sc;
  }

  void deallocate(ctx::stack_context& sc) noexcept {
    char* top = static_cast<char*>(sc.sp);
#if defined(FFNKIT_EMU_ASAN)
    // Frames that never returned (boost's entry trampoline) leave poisoned shadow behind.
    __asan_unpoison_memory_region(top - sc.size, sc.size);
#endif
    t_stack_cache.give({top - sc.size - page_size(), sc.size + page_size()});
  }

 private:
  std::size_t usable_;
  FiberSlot* slot_;
};

struct WarpSlot {
  int arrived = 0;
  WarpOp op = WarpOp::kSyncWarp;
  const char* api = "";
  std::size_t size = 0;
  long long param[32] = {};
  alignas(16) unsigned char value[32][kMaxShuffleBytes] = {};
  alignas(16) unsigned char result[32][kMaxShuffleBytes] = {};
};

// Thrown into the remaining fibers of a failed block to unwind their stacks. Deliberately not a
// std::exception, so a kernel's catch (const std::exception&) cannot swallow it.
struct BlockAbort {};

std::uint64_t splitmix64(std::uint64_t* state) {
  std::uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// Everything one run_grid call shares between its workers.
struct Launch {
  dim3 grid;
  dim3 block;
  std::size_t smem_bytes = 0;
  const std::function<void()>* body = nullptr;
  EmuSettings settings;
  std::uint64_t num_blocks = 0;
  int threads_per_block = 0;
  std::uint64_t affine_a = 1, affine_c = 0;  // kShuffle block order: (a * i + c) mod num_blocks

  std::atomic<std::uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;

  void record_error(std::string message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (error.empty()) error = std::move(message);
    failed.store(true);
  }

  // The i-th block to dispatch, as a linear block index.
  std::uint64_t block_at(std::uint64_t i) const {
    switch (settings.order) {
      case ScheduleOrder::kForward:
        break;
      case ScheduleOrder::kReverse:
        return num_blocks - 1 - i;
      case ScheduleOrder::kShuffle:
        return static_cast<std::uint64_t>(
            (static_cast<unsigned __int128>(affine_a) * i + affine_c) % num_blocks);
    }
    return i;
  }
};

class BlockRunner;
thread_local BlockRunner* t_runner = nullptr;
thread_local int t_current = -1;  // fiber being run by this OS thread, -1 in the scheduler

class BlockRunner {
 public:
  BlockRunner(Launch* launch, int worker)
      : launch_(*launch),
        worker_(worker),
        n_(launch->threads_per_block),
        stack_usable_(usable_stack_bytes(launch->settings.stack_size)),
        slots_(static_cast<std::size_t>(n_)),
        warps_(static_cast<std::size_t>((n_ + 31) / 32)),
        smem_storage_(launch->smem_bytes + kSmemAlign) {
    order_.reserve(static_cast<std::size_t>(n_));
    const auto addr = reinterpret_cast<std::uintptr_t>(smem_storage_.data());
    smem_ = smem_storage_.data() + (kSmemAlign - addr % kSmemAlign) % kSmemAlign;
    gridDim = launch->grid;
    blockDim = launch->block;
    t_runner = this;
  }

  ~BlockRunner() { t_runner = nullptr; }

  BlockRunner(const BlockRunner&) = delete;
  BlockRunner& operator=(const BlockRunner&) = delete;

  // Runs block `linear` to completion; failures go to launch_.record_error.
  void run(std::uint64_t linear) {
    block_linear_ = linear;
    const std::uint64_t gx = launch_.grid.x, gy = launch_.grid.y;
    blockIdx = uint3{static_cast<unsigned>(linear % gx), static_cast<unsigned>(linear / gx % gy),
                     static_cast<unsigned>(linear / (gx * gy))};
    done_ = at_barrier_ = at_warp_ = barrier_votes_ = released_votes_ = 0;
    aborting_ = failed_ = false;
    for (WarpSlot& w : warps_) w.arrived = 0;
    // Unwritten dynamic shared memory reads back as NaN / -1 rather than plausible zeros.
    std::memset(smem_, 0xFF, launch_.smem_bytes);

    const unsigned bx = launch_.block.x, by = launch_.block.y;
    try {
      for (int i = 0; i < n_; ++i) {
        FiberSlot& s = slots_[static_cast<std::size_t>(i)];
        const auto u = static_cast<unsigned>(i);
        s.tid = uint3{u % bx, u / bx % by, u / (bx * by)};
        s.fiber =
            ctx::fiber(std::allocator_arg, PooledStackAllocator(stack_usable_, &s),
                       [this, i](ctx::fiber&& sink) { return fiber_main(i, std::move(sink)); });
        s.state = FiberState::kRunnable;
      }
    } catch (const std::exception& e) {
      fail_block(make_message("run_grid: creating the fibers of ", block_name(), ": ", e.what()));
      for (FiberSlot& s : slots_) {
        if (!s.fiber) s.state = FiberState::kDone;  // never created, nothing to unwind
      }
      done_ = static_cast<int>(std::count_if(slots_.begin(), slots_.end(), [](const FiberSlot& s) {
        return s.state == FiberState::kDone;
      }));
    }

    if (!failed_) schedule();
    if (failed_) abort_block();
  }

  int syncthreads(int mode, int predicate) {
    const int i = t_current;
    if (mode != 0 && predicate != 0) ++barrier_votes_;
    slots_[static_cast<std::size_t>(i)].state = FiberState::kAtBarrier;
    ++at_barrier_;
    yield(i);
    // released_votes_ is only overwritten by the next release, which needs this thread again.
    switch (mode) {
      case 1:
        return released_votes_;
      case 2:
        return released_votes_ == n_ ? 1 : 0;
      case 3:
        return released_votes_ > 0 ? 1 : 0;
      default:
        return 0;
    }
  }

  void warp_exchange(WarpOp op, const char* api, unsigned mask, int width, const void* value,
                     std::size_t size, long long param, void* out) {
    const int i = t_current;
    if (mask != 0xffffffffu)
      fail(api, "mask = ", hex(mask), ", only the full-warp mask 0xffffffff is supported");
    if (width != 32) fail(api, "width = ", width, ", only width 32 (warpSize) is supported");
    const int w = i / 32;
    const int lane = i % 32;
    if ((w + 1) * 32 > n_)
      fail(api, "called by thread ", i, " in the partial warp ", w, ": the block has ", n_,
           " threads (blockDim = (", launch_.block.x, ",", launch_.block.y, ",", launch_.block.z,
           ")), not a multiple of 32");
    if (size > kMaxShuffleBytes) fail(api, "value of ", size, " bytes, at most 16 supported");
    WarpSlot& ws = warps_[static_cast<std::size_t>(w)];
    if (ws.arrived == 0) {
      ws.op = op;
      ws.api = api;
      ws.size = size;
    } else if (ws.op != op || ws.size != size) {
      fail(api, "lane ", lane, " of warp ", w, " called ", api, " (", size,
           "-byte value) while other lanes wait in ", ws.api, " (", ws.size,
           "-byte value): divergent warp collective");
    }
    if (size != 0) std::memcpy(ws.value[lane], value, size);
    ws.param[lane] = param;
    if (++ws.arrived < 32) {
      slots_[static_cast<std::size_t>(i)].state = FiberState::kAtWarp;
      ++at_warp_;
      yield(i);
    } else {
      complete_warp(w);
    }
    // Results stay valid until the warp's next collective completes, which needs this lane too.
    if (out != nullptr && size != 0) std::memcpy(out, ws.result[lane], size);
  }

  unsigned char* dynamic_smem() const { return smem_; }
  int worker() const { return worker_; }

 private:
  static constexpr std::size_t kSmemAlign = 128;

  ctx::fiber fiber_main(int i, ctx::fiber&& sink) {
    FiberSlot& s = slots_[static_cast<std::size_t>(i)];
    s.sink = std::move(sink);
    asan_finish_switch(nullptr, &sched_stack_bottom_, &sched_stack_size_);
    if (!aborting_) {
      // Exceptions must not cross the fiber boundary: record them and let run_grid rethrow.
      try {
        (*launch_.body)();
      } catch (const BlockAbort&) {
      } catch (const std::exception& e) {
        fail_block(make_message("run_grid: kernel exception in ", where(i), ": ", e.what()));
      } catch (...) {
        fail_block(make_message("run_grid: unknown kernel exception in ", where(i)));
      }
    }
    s.state = FiberState::kDone;
    ++done_;
    asan_start_switch(nullptr, sched_stack_bottom_, sched_stack_size_);  // this stack dies
    return std::move(s.sink);
  }

  void resume(int i) {
    FiberSlot& s = slots_[static_cast<std::size_t>(i)];
    t_current = i;
    threadIdx = s.tid;
    asan_start_switch(&sched_fake_stack_, s.stack_bottom, s.stack_size);
    s.fiber = std::move(s.fiber).resume();
    asan_finish_switch(sched_fake_stack_, nullptr, nullptr);
    t_current = -1;
  }

  // Called on fiber i's stack: hands control back to the scheduler until resumed.
  void yield(int i) {
    FiberSlot& s = slots_[static_cast<std::size_t>(i)];
    asan_start_switch(&s.fake_stack, sched_stack_bottom_, sched_stack_size_);
    s.sink = std::move(s.sink).resume();
    asan_finish_switch(s.fake_stack, &sched_stack_bottom_, &sched_stack_size_);
    if (aborting_) throw BlockAbort{};
  }

  void schedule() {
    for (std::uint64_t round = 0;; ++round) {
      order_.clear();
      for (int i = 0; i < n_; ++i) {
        if (slots_[static_cast<std::size_t>(i)].state == FiberState::kRunnable) order_.push_back(i);
      }
      if (order_.empty()) {
        if (done_ == n_) return;
        if (at_warp_ > 0) {
          fail_block(deadlock_message());
          return;
        }
        if (done_ > 0) {
          fail_block(make_message("run_grid: __syncthreads reached by ", at_barrier_, " of ", n_,
                                  " threads of ", block_name(), "; the other ", done_,
                                  " exited (divergent barrier)"));
          return;
        }
        release_barrier();
        continue;
      }
      permute(round);
      for (int i : order_) {
        if (slots_[static_cast<std::size_t>(i)].state != FiberState::kRunnable) continue;
        resume(i);
        if (failed_) return;
      }
    }
  }

  // Resumes every unfinished fiber with aborting_ set, so each unwinds via BlockAbort (or, if it
  // never started, returns at once). Kernels that swallow BlockAbort are resumed until they end.
  void abort_block() {
    aborting_ = true;
    while (done_ < n_) {
      for (int i = 0; i < n_; ++i) {
        if (slots_[static_cast<std::size_t>(i)].state != FiberState::kDone) resume(i);
      }
    }
  }

  void release_barrier() {
    for (FiberSlot& s : slots_) {
      if (s.state == FiberState::kAtBarrier) s.state = FiberState::kRunnable;
    }
    at_barrier_ = 0;
    released_votes_ = barrier_votes_;
    barrier_votes_ = 0;
  }

  // Runs on the last lane to arrive: computes all 32 results, then wakes the other lanes.
  void complete_warp(int w) {
    WarpSlot& ws = warps_[static_cast<std::size_t>(w)];
    if (ws.op == WarpOp::kBallot || ws.op == WarpOp::kAny || ws.op == WarpOp::kAll) {
      unsigned ballot = 0;
      for (int lane = 0; lane < 32; ++lane) {
        if (ws.param[lane] != 0) ballot |= 1u << lane;
      }
      unsigned result = ballot;
      if (ws.op == WarpOp::kAny) result = ballot != 0 ? 1u : 0u;
      if (ws.op == WarpOp::kAll) result = ballot == 0xffffffffu ? 1u : 0u;
      for (auto& r : ws.result) std::memcpy(r, &result, sizeof(result));
    } else if (ws.op != WarpOp::kSyncWarp) {
      for (int lane = 0; lane < 32; ++lane) {
        const long long p = ws.param[lane];
        long long src = lane;  // out-of-range sources return the lane's own value
        switch (ws.op) {
          case WarpOp::kShfl:
            src = p & 31;  // srcLane modulo width (the hardware uses its low 5 bits)
            break;
          case WarpOp::kShflUp:
            if (p <= lane) src = lane - p;
            break;
          case WarpOp::kShflDown:
            if (lane + p < 32) src = lane + p;
            break;
          case WarpOp::kShflXor: {
            const unsigned target = static_cast<unsigned>(lane) ^ static_cast<unsigned>(p);
            if (target < 32) src = target;
            break;
          }
          default:
            break;
        }
        std::memcpy(ws.result[lane], ws.value[src], ws.size);
      }
    }
    ws.arrived = 0;
    for (int lane = 0; lane < 32; ++lane) {
      FiberSlot& s = slots_[static_cast<std::size_t>(w * 32 + lane)];
      if (s.state == FiberState::kAtWarp) {
        s.state = FiberState::kRunnable;
        --at_warp_;
      }
    }
  }

  void permute(std::uint64_t round) {
    switch (launch_.settings.order) {
      case ScheduleOrder::kForward:
        return;
      case ScheduleOrder::kReverse:
        std::reverse(order_.begin(), order_.end());
        return;
      case ScheduleOrder::kShuffle: {
        // Depends on (seed, block, round) only, so a failure reproduces whatever worker ran it.
        std::uint64_t state = launch_.settings.seed * 0x9e3779b97f4a7c15ull ^
                              (block_linear_ + 1) * 0xc2b2ae3d27d4eb4full ^
                              (round + 1) * 0x165667b19e3779f9ull;
        for (std::size_t k = order_.size(); k > 1; --k) {
          const std::size_t j = static_cast<std::size_t>(splitmix64(&state) % k);
          std::swap(order_[k - 1], order_[j]);
        }
        return;
      }
    }
  }

  void fail_block(std::string message) {
    failed_ = true;
    launch_.record_error(std::move(message));
  }

  std::string block_name() const {
    return make_message("block (", blockIdx.x, ",", blockIdx.y, ",", blockIdx.z, ")");
  }

  std::string where(int i) const {
    const uint3 t = slots_[static_cast<std::size_t>(i)].tid;
    return make_message(block_name(), " thread (", t.x, ",", t.y, ",", t.z, ")");
  }

  std::string deadlock_message() const {
    std::string waiting;
    for (std::size_t w = 0; w < warps_.size(); ++w) {
      if (warps_[w].arrived == 0) continue;
      waiting += make_message(waiting.empty() ? "" : "; ", "warp ", w, " has ", warps_[w].arrived,
                              " of 32 lanes waiting in ", warps_[w].api);
    }
    return make_message("run_grid: deadlock in ", block_name(), ": ", waiting, "; ", at_barrier_,
                        " threads wait at __syncthreads and ", done_,
                        " have exited, so the warp collective can never complete");
  }

  Launch& launch_;
  const int worker_;
  const int n_;
  const std::size_t stack_usable_;
  std::vector<FiberSlot> slots_;
  std::vector<WarpSlot> warps_;
  std::vector<int> order_;
  std::vector<unsigned char> smem_storage_;
  unsigned char* smem_ = nullptr;
  std::uint64_t block_linear_ = 0;
  int done_ = 0;
  int at_barrier_ = 0;
  int at_warp_ = 0;
  int barrier_votes_ = 0;
  int released_votes_ = 0;
  bool aborting_ = false;
  bool failed_ = false;
  const void* sched_stack_bottom_ = nullptr;
  std::size_t sched_stack_size_ = 0;
  void* sched_fake_stack_ = nullptr;
};

BlockRunner& current_runner(const char* api) {
  if (t_runner == nullptr || t_current < 0)
    fail(api, "called outside a kernel launched by ffnkit::emu::run_grid");
  return *t_runner;
}

void run_worker(Launch* launch, int worker) {
  try {
    BlockRunner runner(launch, worker);
    while (!launch->failed.load()) {
      const std::uint64_t i = launch->next.fetch_add(1);
      if (i >= launch->num_blocks) break;
      runner.run(launch->block_at(i));
    }
  } catch (const std::exception& e) {
    launch->record_error(make_message("run_grid: worker ", worker, ": ", e.what()));
  }
}

void check_dim(const char* name, unsigned value, unsigned limit) {
  if (value == 0) fail("run_grid", name, " = 0, must be > 0");
  if (value > limit) fail("run_grid", name, " = ", value, ", must be <= ", limit);
}

}  // namespace

void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes,
              const std::function<void()>& thread_body) {
  if (t_runner != nullptr)
    fail("run_grid", "called from inside a kernel (dynamic parallelism is not emulated)");
  if (!thread_body) fail("run_grid", "thread_body is empty");
  check_dim("blockDim.x", block.x, kMaxBlockDimXY);
  check_dim("blockDim.y", block.y, kMaxBlockDimXY);
  check_dim("blockDim.z", block.z, kMaxBlockDimZ);
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  if (threads > kMaxThreadsPerBlock)
    fail("run_grid", "blockDim.x * blockDim.y * blockDim.z = ", block.x, " * ", block.y, " * ",
         block.z, " = ", threads, " threads per block, must be <= ", kMaxThreadsPerBlock);
  check_dim("gridDim.x", grid.x, kMaxGridDimX);
  check_dim("gridDim.y", grid.y, kMaxGridDimYZ);
  check_dim("gridDim.z", grid.z, kMaxGridDimYZ);
  if (dynamic_smem_bytes > kMaxDynamicSmemBytes)
    fail("run_grid", "dynamic_smem_bytes = ", dynamic_smem_bytes,
         ", must be <= ", kMaxDynamicSmemBytes);

  Launch launch;
  launch.grid = grid;
  launch.block = block;
  launch.smem_bytes = dynamic_smem_bytes;
  launch.body = &thread_body;
  launch.settings = settings();
  launch.num_blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  launch.threads_per_block = static_cast<int>(threads);
  if (launch.settings.order == ScheduleOrder::kShuffle && launch.num_blocks > 1) {
    std::uint64_t state = launch.settings.seed;
    const std::uint64_t n = launch.num_blocks;
    std::uint64_t a = splitmix64(&state) % n;
    if (a == 0) a = 1;
    while (std::gcd(a, n) != 1) a = a + 1 < n ? a + 1 : 1;  // coprime, so i -> a*i+c is a bijection
    launch.affine_a = a;
    launch.affine_c = splitmix64(&state) % n;
  }

  const auto workers = static_cast<unsigned>(
      std::min<std::uint64_t>(std::max(1u, launch.settings.num_workers), launch.num_blocks));
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  try {
    for (unsigned w = 1; w < workers; ++w)
      pool.emplace_back(run_worker, &launch, static_cast<int>(w));
  } catch (const std::system_error& e) {
    launch.record_error(
        make_message("run_grid: starting worker thread ", pool.size() + 1, " failed: ", e.what()));
  }
  run_worker(&launch, 0);  // the calling thread is worker 0
  for (std::thread& t : pool) t.join();
  if (launch.failed.load()) throw Error(launch.error);
}

namespace detail {

int syncthreads(int predicate_mode, int predicate) {
  return current_runner("__syncthreads").syncthreads(predicate_mode, predicate);
}

void warp_exchange(WarpOp op, const char* api, unsigned mask, int width, const void* value,
                   std::size_t size, long long param, void* out) {
  current_runner(api).warp_exchange(op, api, mask, width, value, size, param, out);
}

unsigned char* dynamic_smem() { return current_runner("FFNKIT_DYNAMIC_SHARED").dynamic_smem(); }

int worker_index() { return current_runner("worker_index").worker(); }

}  // namespace detail

}  // namespace ffnkit::emu
