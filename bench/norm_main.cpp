// ffnkit_bench_norm: the deferred-normalization suite (bench/cases_norm.cpp, and the CUDA cases of
// bench/cases_norm_cuda.cpp when the Cuda backend is built, which skip visibly without a device),
// fused against unfused and one-pass against three-pass Softmax V, interleaved in the same
// benchmark. Takes Google Benchmark's flags, e.g. (--benchmark_filter=cuda_ for the device cases
// only)
//   OMP_NUM_THREADS=2 ffnkit_bench_norm --benchmark_repetitions=5
//   --benchmark_report_aggregates_only
#include "harness.hpp"

namespace ffnkit {
namespace bench {
void register_norm_suite();
void register_norm_cuda_suite();
}  // namespace bench
}  // namespace ffnkit

int main(int argc, char** argv) {
  ffnkit::bench::register_norm_suite();
#if defined(FFNKIT_WITH_CUDA)
  ffnkit::bench::register_norm_cuda_suite();
#endif
  return ffnkit::bench::run_benchmarks(argc, argv);
}
