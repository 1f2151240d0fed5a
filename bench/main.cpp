// ffnkit_bench: every registered layer case against the dense FFN.
//   ffnkit_bench                  the full suite (Google Benchmark output, all flags work)
//   ffnkit_bench --table          the main job: the default shape (BERT-base, d=768, d_ff=3072)
//                                 at a few token counts, printed as one table
//   ffnkit_bench --table --all    the table with every case (training steps, pre-merge too)
//   ffnkit_bench --crossover      pre-merge's calibration: structured vs merged dense per token
//                                 count, for each projection at the paper's settings
//   ffnkit_bench --d=1024 --tokens=1,128 ...   restrict the shapes of any mode (--crossover
//                                 calibrates up to the largest token count)
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "ffnkit/build_info.hpp"
#include "harness.hpp"

#ifdef FFNKIT_WITH_OPENBLAS
#include <cblas.h>
#endif

namespace {

using ffnkit::index_t;
using ffnkit::bench::Shape;

std::vector<index_t> parse_list(const std::string& s) {
  std::vector<index_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v <= 0) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      ffnkit::fail("ffnkit_bench", "\"", item, "\" in \"", s, "\" is not a positive integer");
    }
  }
  return out;
}

// What a figure depends on: library configuration, the benchmark's own SIMD flags, the BLAS.
void print_configuration() {
  std::printf("%s\n", ffnkit::build_info().c_str());
  // Eigen's SimdInstructionSetsInUse() never names AVX2 or FMA; the compiler's macros do.
  std::string isa;
#ifdef __AVX512F__
  isa += " AVX-512F";
#endif
#ifdef __AVX2__
  isa += " AVX2";
#endif
#ifdef __FMA__
  isa += " FMA";
#endif
#ifdef __AVX__
  isa += " AVX";
#endif
  std::printf("benchmark code compiled for:%s\n", isa.empty() ? " SSE2 only" : isa.c_str());
#ifdef FFNKIT_WITH_OPENBLAS
  const int mode = openblas_get_parallel();
  std::printf("OpenBLAS: %s, threading: %s\n", openblas_get_config(),
              mode == 2   ? "OpenMP"
              : mode == 1 ? "pthreads (contends with OpenMP!)"
                          : "serial");
#endif
}

// Prints the main job's table: one row per case and token count, from the median of repetitions
// when there are any.
class TableReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context& context) override {
    print_configuration();
    std::printf("%d CPUs at %.0f MHz; times are medians where repetitions ran\n\n",
                context.cpu_info.num_cpus, context.cpu_info.cycles_per_second * 1e-6);
    return true;
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      const std::string name = r.run_name.function_name;
      Row row;
      row.error = r.error_occurred ? r.error_message : "";
      auto get = [&](const char* k) {
        auto it = r.counters.find(k);
        return it == r.counters.end() ? std::nan("") : static_cast<double>(it->second);
      };
      row.ms = r.GetAdjustedRealTime();
      row.gflops = get("GFLOP/s");
      row.speedup = get("speedup_vs_dense");
      row.err = get("max_rel_err");
      rows_[name] = row;  // a median aggregate overwrites the single runs before it
      if (std::find(order_.begin(), order_.end(), name) == order_.end()) order_.push_back(name);
    }
  }
  void Finalize() override {
    std::printf("%-48s %10s %9s %9s %12s\n", "case/shape", "time ms", "GFLOP/s", "vs dense",
                "max rel err");
    for (const auto& name : order_) {
      const Row& r = rows_[name];
      if (!r.error.empty()) {
        std::printf("%-48s  skipped: %s\n", name.c_str(), r.error.c_str());
        continue;
      }
      char err[32];
      if (std::isnan(r.err)) {
        std::snprintf(err, sizeof err, "%12s", "n/a");
      } else {
        std::snprintf(err, sizeof err, "%12.2e", r.err);
      }
      std::printf("%-48s %10.3f %9.1f %8.2fx %s\n", name.c_str(), r.ms, r.gflops, r.speedup, err);
    }
    std::printf(
        "\nvs dense = dense FFN time / case time, same shape, same backend, same run (> 1 is "
        "faster).\n"
        "max rel err = max |y - y64| / max(|y64|, rms(y64)) against the float64 reference,\n"
        "on the first 8 tokens and the last.\n");
  }

 private:
  struct Row {
    double ms = 0, gflops = 0, speedup = 0, err = 0;
    std::string error;
  };
  std::map<std::string, Row> rows_;
  std::vector<std::string> order_;
};

}  // namespace

int main(int argc, char** argv) {
  bool table = false;
  bool all_cases = false;  // --all: the table also shows training and pre-merge cases
  bool crossover = false;
  std::vector<index_t> dims = {768, 1024, 2048};
  std::vector<index_t> tokens = {1, 16, 128, 512, 2048, 8192};
  bool dims_set = false, tokens_set = false, min_time_set = false;
  std::vector<char*> rest;
  try {
    for (int i = 0; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--table") {
        table = true;
      } else if (a == "--all") {
        all_cases = true;
      } else if (a == "--crossover") {
        crossover = true;
      } else if (a.rfind("--d=", 0) == 0) {
        dims = parse_list(a.substr(4));
        dims_set = true;
      } else if (a.rfind("--tokens=", 0) == 0) {
        tokens = parse_list(a.substr(9));
        tokens_set = true;
      } else {
        if (a.rfind("--benchmark_min_time", 0) == 0) min_time_set = true;
        rest.push_back(argv[i]);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  if (table) {
    if (!dims_set) dims = {768};
    if (!tokens_set) tokens = {1, 16, 128, 2048};
  }
  if (crossover) {
    try {
      print_configuration();
      ffnkit::bench::print_premerge_crossover(
          dims, tokens_set ? *std::max_element(tokens.begin(), tokens.end()) : 8192, 5);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 1;
    }
    return 0;
  }
  static char min_time[] = "--benchmark_min_time=0.2";
  if (table && !min_time_set) rest.push_back(min_time);

  // Shape-major order: for each shape the dense baseline runs first, then every other case.
  for (index_t d : dims) {
    for (index_t t : tokens) {
      const Shape shape{d, 4 * d, t};
      for (const auto& c : ffnkit::bench::registry()) {
        if (table && !all_cases && !c.in_table) continue;
        const std::string name = c.name + "/" + shape.label();
        benchmark::RegisterBenchmark(
            name.c_str(),
            [&c, shape](benchmark::State& st) { ffnkit::bench::run_case(st, c, shape); })
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
      }
    }
  }

  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  if (benchmark::ReportUnrecognizedArguments(rest_argc, rest.data())) return 2;
  if (table) {
    TableReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
  } else {
    print_configuration();
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
