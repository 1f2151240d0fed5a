// Thread-block executor of the CUDA emulation (docs/cuda.md): every block of a grid runs on one OS
// worker thread, every CUDA thread of the block is a fiber, and a scheduler resumes the block's
// fibers in a configurable order between barriers so that shared-memory races change the result.
#pragma once

#include <vector_types.h>  // dim3; usable by the host compiler without the CUDA runtime

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ffnkit/core/error.hpp"
#include "ffnkit/cuda/limits.hpp"

namespace ffnkit::emu {

// Order in which a block's runnable fibers are resumed in every scheduling round (a round ends when
// each runnable fiber has run until its next __syncthreads, warp collective or exit). Blocks are
// also dispatched to the workers in this order.
enum class ScheduleOrder { kForward, kReverse, kShuffle };

const char* to_string(ScheduleOrder order);

struct EmuSettings {
  ScheduleOrder order = ScheduleOrder::kForward;
  std::uint64_t seed = 1;    // kShuffle: a different permutation per block and round, reproducible
  unsigned num_workers = 1;  // OS threads running blocks; settings() starts at hardware_concurrency
  std::size_t stack_size = 64 * 1024;  // per fiber; stacks are pooled and reused across blocks
};

// Process-wide settings. The initial value comes from FFNKIT_EMU_ORDER
// (forward | reverse | shuffle | shuffle:<seed>) when set, else forward order.
EmuSettings settings();
// Throws ffnkit::Error for num_workers == 0 or stack_size < 16 KiB.
void set_settings(const EmuSettings& s);

// Parses the FFNKIT_EMU_ORDER syntax; throws ffnkit::Error naming the text otherwise.
void parse_order(const std::string& text, ScheduleOrder* order, std::uint64_t* seed);

// Sets the schedule (or all settings) for a scope, e.g. one test, and restores the previous ones.
class ScopedSchedule {
 public:
  explicit ScopedSchedule(ScheduleOrder order, std::uint64_t seed = 1);
  explicit ScopedSchedule(const EmuSettings& s);
  ~ScopedSchedule();
  ScopedSchedule(const ScopedSchedule&) = delete;
  ScopedSchedule& operator=(const ScopedSchedule&) = delete;

 private:
  EmuSettings saved_;
};

// Launch limits checked by run_grid: the hardware's (ffnkit/cuda/limits.hpp).
using cuda::kMaxBlockDimXY;
using cuda::kMaxBlockDimZ;
using cuda::kMaxDynamicSmemBytes;
using cuda::kMaxGridDimX;
using cuda::kMaxGridDimYZ;
using cuda::kMaxThreadsPerBlock;

// Validates the launch like the CUDA runtime (throws ffnkit::Error naming the bad dimension and its
// value), then runs `thread_body` once per CUDA thread of every block. Returns when all blocks have
// finished. A kernel exception, a __syncthreads not reached by all threads of a block, or a warp
// collective that can never complete is rethrown here as ffnkit::Error naming block and thread.
// Not reentrant from inside a kernel (no dynamic parallelism).
void run_grid(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes,
              const std::function<void()>& thread_body);

namespace detail {
template <class To, class From>
To convert_kernel_arg(From&& from) {
  return std::forward<From>(from);  // implicit conversion only, as in a <<<>>> launch
}
}  // namespace detail

// The emulation side of a kernel launch: converts `args` to the kernel's parameter types once (the
// parameter buffer), then every CUDA thread calls the kernel with its own copy of the parameters.
template <class... KArgs, class... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem,
                   Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel argument count mismatch");
  if (kernel == nullptr) fail("launch_kernel", "kernel is a null function pointer");
  std::tuple<std::decay_t<KArgs>...> params(
      detail::convert_kernel_arg<std::decay_t<KArgs>>(std::forward<Args>(args))...);
  run_grid(grid, block, smem, [&params, kernel] { std::apply(kernel, params); });
}

}  // namespace ffnkit::emu
