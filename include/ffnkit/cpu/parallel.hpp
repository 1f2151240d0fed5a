// OpenMP helpers: a parallel loop that degrades to a serial one without OpenMP or for small work.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ffnkit {
namespace cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Runs body(i) for i in [0, count). Splits across OpenMP threads only when there is enough work
// (`cost_per_item * count` above a fork-join's worth, ~tens of microseconds) to repay the fork.
template <class Body>
void parallel_for(std::int64_t count, std::int64_t cost_per_item, Body&& body) {
#ifdef _OPENMP
  constexpr std::int64_t kMinParallelWork = 1 << 15;
  if (count > 1 && cost_per_item * count >= kMinParallelWork && max_threads() > 1 &&
      !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) body(i);
    return;
  }
#endif
  (void)cost_per_item;
  for (std::int64_t i = 0; i < count; ++i) body(i);
}

// parallel_for_slots for items of uneven cost: threads take the next item as they finish one.
template <class Body>
void parallel_for_dynamic(std::int64_t count, std::int64_t cost_per_item, Body&& body) {
#ifdef _OPENMP
  constexpr std::int64_t kMinParallelWork = 1 << 15;
  const int threads = max_threads();
  if (count > 1 && cost_per_item * count >= kMinParallelWork && threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (std::int64_t i = 0; i < count; ++i) body(i, omp_get_thread_num());
    return;
  }
#endif
  (void)cost_per_item;
  for (std::int64_t i = 0; i < count; ++i) body(i, 0);
}

// parallel_for whose body also gets the slot of the thread running it, in [0, max_threads()):
// body(i, slot). A caller's per-thread scratch is indexed by slot; run serially (little work, or
// already inside a parallel region), every item gets slot 0.
template <class Body>
void parallel_for_slots(std::int64_t count, std::int64_t cost_per_item, Body&& body) {
#ifdef _OPENMP
  constexpr std::int64_t kMinParallelWork = 1 << 15;
  const int threads = max_threads();
  if (count > 1 && cost_per_item * count >= kMinParallelWork && threads > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t i = 0; i < count; ++i) body(i, omp_get_thread_num());
    return;
  }
#endif
  (void)cost_per_item;
  for (std::int64_t i = 0; i < count; ++i) body(i, 0);
}

}  // namespace cpu
}  // namespace ffnkit
