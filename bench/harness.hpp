// The benchmark harness: a registry of layer cases, each of which can be prepared at an FFN shape
// and run, and the one timing mechanism of the benchmark binary: the paths a figure compares
// (a case and its baseline; fused and unfused) run interleaved in one benchmark body, each run
// timed on its own, so a load change on the machine hits all of them. Every case reports
// speedup_vs_dense, the median over those rounds of baseline time / case time, and its max error
// against the float64 reference.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"

namespace ffnkit {
namespace bench {

// Name of the CPU baseline every host speedup is against.
constexpr const char* kDenseCaseName = "dense_ffn";

// How a device case's skip reason starts when the machine has no usable device; the table folds
// those skips into one line.
constexpr const char* kNoDevice = "no CUDA device: ";

struct Shape {
  index_t d_model = 768;
  index_t d_ff = 3072;
  index_t tokens = 1;
  std::string label() const;  // "d=768/ff=3072/tokens=1"
};

// One prepared layer plus its input and output at one shape.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual void run() = 0;            // one forward pass: the timed work
  virtual double flops() const = 0;  // useful floating-point operations of one run
  virtual double bytes() const = 0;  // compulsory memory traffic of one run (see docs)
  // Max relative error (reference::compare's max_rel) of run()'s output against the float64
  // oracle, on a sample of tokens; NaN when the case has no FFN semantics (a bare GEMM).
  virtual double max_rel_error() = 0;
  // Device cases time themselves (cudaEvents around run()) and return seconds; host cases are
  // timed by the harness's clock.
  virtual bool device_timed() const { return false; }
  virtual double run_device_timed() { return 0.0; }
  // Case-specific counters reported next to the common ones (e.g. FFF's distinct leaves hit).
  virtual std::vector<std::pair<std::string, double>> extra_counters() const { return {}; }
};

struct LayerCase {
  std::string name;
  std::string description;
  std::function<std::unique_ptr<Runner>(const Shape&)> make;
  // The case speedup_vs_dense is measured against: the dense FFN of the same backend and dtype.
  std::string baseline = kDenseCaseName;
  bool device_timed = false;  // a CUDA case: without a device the table folds its skip
  bool in_table = true;       // part of the main job's --table (training, pre-merge: full suite)
};

// Pre-merge's crossover (docs/math.md §4): for each width d, each pre-mergeable FFN projection at
// the paper's settings is calibrated up to max_tokens on this machine, and the measured times of
// both paths and the chosen one are printed per token count (ffnkit_bench --crossover).
void print_premerge_crossover(const std::vector<index_t>& dims, index_t max_tokens, int repeats);

// Cases register themselves at static-initialization time; baselines come first for each shape.
std::vector<LayerCase>& registry();
struct RegisterCase {
  explicit RegisterCase(LayerCase c);
};

// The body of every registered layer case: the case interleaved with its baseline.
void run_case(benchmark::State& state, const LayerCase& layer, const Shape& shape);

// Tokens sampled for the error column: the first few and the last (the oracle is O(d d_ff) per
// token in double, too slow for 2048 tokens in a table).
std::vector<index_t> sampled_tokens(index_t tokens);

// ---- Interleaved timing ----------------------------------------------------------------------

// One way of computing a figure's work: run() does it once and returns the seconds it took.
struct TimedPath {
  std::string name;
  std::function<double()> run;
};

// Seconds of every run, [path][round]; round r ran path 0, 1, ... in turn.
using PathTimes = std::vector<std::vector<double>>;

// Seconds of one call of fn on the host's steady clock.
template <class Fn>
double host_seconds(Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs every path once, its time dropped (warm-up: first touch, library heuristics), then rounds
// of all paths in turn until the rounds' measured time reaches min_seconds and min_rounds ran.
PathTimes interleave(const std::vector<TimedPath>& paths, double min_seconds,
                     std::size_t min_rounds);

// The timing of a benchmark registered with register_paired: interleave() for
// --benchmark_min_time (the time of all paths together) and at least 3 rounds, inside the single
// Google Benchmark iteration, whose manual time is path 0's median run. Counter `runs`: rounds.
PathTimes run_interleaved(benchmark::State& state, const std::vector<TimedPath>& paths);

// Counters <path>_ms (median of each path) and speedup = median over rounds of path 1 / path 0.
void report_path_medians(benchmark::State& state, const std::vector<TimedPath>& paths,
                         const PathTimes& times);

double median(std::vector<double> v);
// Median over rounds of num[r] / den[r]: the ratio of two paths measured side by side.
double median_ratio(const std::vector<double>& num, const std::vector<double>& den);

// Registers a body that times with run_interleaved: manual time in ms, one iteration (the rounds
// are its own loop, so --benchmark_min_time covers the baseline's runs too, and a case 100x faster
// than its baseline does not run 100x min_time of baseline), any exception a visible skip.
benchmark::internal::Benchmark* register_paired(const std::string& name,
                                                std::function<void(benchmark::State&)> body);

// The deferred-normalization suite (ffnkit_bench --suite=norm): fused against unfused, one-pass
// against three-pass Softmax V, at shapes of its own, with register_paired (bench/cases_norm.cpp;
// the device half, bench/cases_norm_cuda.cpp, with the Cuda backend only). Registered on request
// only, so that the main table and its smoke test stay small.
void register_norm_suite();
#ifdef FFNKIT_WITH_CUDA
void register_norm_cuda_suite();
#endif

// ---- Configuration and running ---------------------------------------------------------------

// What a figure depends on: the build, the ISA the benchmark code was compiled for, the BLAS, the
// load average and OpenMP threads at start-up. `key` names it in Google Benchmark's context, which
// also gets the warnings of print_configuration (ffnkit_load_warning, ffnkit_cores_warning).
struct ConfigItem {
  std::string key, label, value;
};
const std::vector<ConfigItem>& configuration();
// The configuration as "label: value" lines, for the human-readable modes (--table, --crossover),
// and warning lines when the load average exceeds the OpenMP threads, or leaves fewer free cores
// than threads; `paired`: the figures printed after it are ratios of interleaved runs (the
// table), not --crossover's sequential times.
void print_configuration(std::FILE* out, bool paired);

// Every Google Benchmark run of ffnkit_bench: the configuration goes into the benchmark context
// (the console header on stderr, the JSON "context"), never onto stdout, so --benchmark_format=json
// prints JSON only. Returns main's exit code.
int run_benchmarks(int argc, char** argv, benchmark::BenchmarkReporter* display = nullptr);

}  // namespace bench
}  // namespace ffnkit
