// The emulated device runtime (ffnkit::cuda_emu): the same API as ffnkit/cuda/runtime.hpp, with
// device memory in host memory and cuBLAS replaced by a reference GEMM with cuBLAS's exact
// column-major semantics. Link ffnkit::cuda_emu.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "ffnkit/core/error.hpp"

#define FFNKIT_CUDA_NS cuda_emu
#include "ffnkit/cuda/runtime_api.inc"
#undef FFNKIT_CUDA_NS

namespace ffnkit {
namespace cuda_emu {

// The emulator runs every operation to completion when it is issued, so a multi-stream schedule's
// ordering cannot be seen in its results; a trace records the issue order instead, with the stream
// (and event) of every stream-ordered call, for tests of such schedules.
enum class TraceOp { kLaunch, kGemm, kCopy, kFill, kEventRecord, kWaitEvent };
const char* to_string(TraceOp op);

struct TraceEntry {
  TraceOp op;
  const void* stream;  // Stream::handle(): nullptr is the legacy default stream
  const void* event;   // Event::handle() for kEventRecord / kWaitEvent, else nullptr
};

// Records the calling thread's stream-ordered calls while alive (nested traces: the innermost).
class ScopedTrace {
 public:
  ScopedTrace();
  ~ScopedTrace();
  ScopedTrace(const ScopedTrace&) = delete;
  ScopedTrace& operator=(const ScopedTrace&) = delete;
  const std::vector<TraceEntry>& entries() const { return entries_; }

 private:
  std::vector<TraceEntry> entries_;
  std::vector<TraceEntry>* saved_;
};

// Appends to the calling thread's active trace, if any (called by the runtime and by launch()).
void trace(TraceOp op, const void* stream, const void* event = nullptr);

}  // namespace cuda_emu
}  // namespace ffnkit
