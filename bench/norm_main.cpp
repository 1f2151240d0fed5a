// ffnkit_bench_norm: the deferred-normalization suite (bench/cases_norm.cpp, and the CUDA cases of
// bench/cases_norm_cuda.cpp when the Cuda backend is built, which skip visibly without a device),
// fused against unfused and one-pass against three-pass Softmax V in the same run. Takes Google
// Benchmark's flags, e.g. (--benchmark_filter=cuda_ for the device cases only)
//   OMP_NUM_THREADS=2 ffnkit_bench_norm --benchmark_repetitions=5
//   --benchmark_report_aggregates_only
#include <benchmark/benchmark.h>

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
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
