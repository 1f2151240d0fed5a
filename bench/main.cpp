// ffnkit_bench: every registered layer case against the dense FFN, and the deferred-normalization
// suite.
//   ffnkit_bench                  the full suite (Google Benchmark output, all flags work; the
//                                 configuration is in the context: stderr, or the JSON's "context")
//   ffnkit_bench --table          the main job: the default shape (BERT-base, d=768, d_ff=3072)
//                                 at a few token counts, printed as one table
//   ffnkit_bench --table --all    the table with every case (training steps, pre-merge too)
//   ffnkit_bench --table --list-skipped   also list, row by row, the device cases skipped for
//                                 want of a CUDA device (by default one summary line counts them)
//   ffnkit_bench --crossover      pre-merge's calibration: structured vs merged dense per token
//                                 count, for each projection at the paper's settings
//   ffnkit_bench --d=1024 --tokens=1,128 ...   restrict the shapes of any mode (--crossover
//                                 calibrates up to the largest token count)
//   ffnkit_bench --suite=norm     the deferred-normalization suite instead (bench/cases_norm.cpp):
//                                 fused against unfused, one-pass against three-pass Softmax V, at
//                                 shapes of its own; with the Cuda backend its device cases too
//                                 (they skip visibly without a device). Google Benchmark's flags
//                                 only, e.g. --benchmark_filter=cuda_ for the device cases
// Each case runs interleaved with its baseline (case, baseline, case, ...), every run timed on its
// own; --benchmark_min_time is the time of both together (bench/harness.hpp).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"

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

bool is_device_case(const std::string& case_name) {
  const auto& cases = ffnkit::bench::registry();
  return std::any_of(cases.begin(), cases.end(), [&](const ffnkit::bench::LayerCase& c) {
    return c.name == case_name && c.device_timed;
  });
}

// A right-aligned number (fixed, or in exponent form), or "n/a" for a figure the case lacks.
std::string cell(double v, int width, int precision, bool exponent = false) {
  char buf[48];
  if (std::isnan(v)) {
    std::snprintf(buf, sizeof buf, "%*s", width, "n/a");
  } else {
    std::snprintf(buf, sizeof buf, exponent ? "%*.*e" : "%*.*f", width, precision, v);
  }
  return buf;
}

// Prints the main job's table: one row per case and token count, from the median of repetitions
// when there are any. Device cases skipped for want of a device are counted in one line (every
// row with --list-skipped); any other skip keeps its own row.
class TableReporter : public benchmark::BenchmarkReporter {
 public:
  explicit TableReporter(bool list_skipped) : list_skipped_(list_skipped) {}
  bool ReportContext(const Context& context) override {
    ffnkit::bench::print_configuration(stdout, true);
    std::printf("%d CPUs at %.0f MHz\n\n", context.cpu_info.num_cpus,
                context.cpu_info.cycles_per_second * 1e-6);
    return true;
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name != "median") continue;
      const std::string name = r.run_name.function_name;
      Row row;
      row.error = r.error_occurred ? r.error_message : "";
      row.device = is_device_case(name.substr(0, name.find('/')));
      auto get = [&](const char* k) {
        auto it = r.counters.find(k);
        return it == r.counters.end() ? std::nan("") : static_cast<double>(it->second);
      };
      row.ms = r.GetAdjustedRealTime();
      row.gflops = get("GFLOP/s");
      row.speedup = get("speedup_vs_dense");
      row.base_ms = get("baseline_ms");
      row.err = get("max_rel_err");
      rows_[name] = row;  // a median aggregate overwrites the single runs before it
      if (std::find(order_.begin(), order_.end(), name) == order_.end()) order_.push_back(name);
    }
  }
  void Finalize() override {
    std::printf("%-48s %10s %9s %9s %10s %12s\n", "case/shape", "time ms", "GFLOP/s", "vs dense",
                "base ms", "max rel err");
    std::vector<std::string> reasons;  // distinct no-device reasons, in order of appearance
    std::size_t no_device = 0;
    for (const auto& name : order_) {
      const Row& r = rows_[name];
      const std::size_t at = r.device ? r.error.find(ffnkit::bench::kNoDevice) : std::string::npos;
      if (at != std::string::npos) {
        const std::string why = r.error.substr(at + std::strlen(ffnkit::bench::kNoDevice));
        if (std::find(reasons.begin(), reasons.end(), why) == reasons.end()) reasons.push_back(why);
        ++no_device;
        if (!list_skipped_) continue;
      }
      if (!r.error.empty()) {
        std::printf("%-48s  skipped: %s\n", name.c_str(), r.error.c_str());
        continue;
      }
      std::printf("%-48s %10.3f %9.1f %sx %s %s\n", name.c_str(), r.ms, r.gflops,
                  cell(r.speedup, 8, 2).c_str(), cell(r.base_ms, 10, 3).c_str(),
                  cell(r.err, 12, 2, true).c_str());
    }
    if (no_device > 0) {
      std::string why;
      for (const auto& w : reasons) why += (why.empty() ? "" : "; ") + w;
      std::printf("CUDA: no device (%s); %zu device case%s skipped (%s)\n", why.c_str(), no_device,
                  no_device == 1 ? "" : "s",
                  list_skipped_ ? "listed above" : "--list-skipped lists them");
    }
    std::printf(
        "\nvs dense = median over interleaved runs (case, baseline, case, baseline, ...) of\n"
        "baseline time / case time (> 1 is faster); the baseline is the dense FFN of the same "
        "shape\n"
        "and backend (for *norm_linear: its unfused path; for *_train: the dense training step).\n"
        "time ms, base ms = medians of the case's and the baseline's runs in those pairs.\n"
        "max rel err = max |y - y64| / max(|y64|, rms(y64)) against the float64 reference,\n"
        "on the first 8 tokens and the last. With repetitions, every figure is their median.\n");
  }

 private:
  struct Row {
    double ms = 0, gflops = 0, speedup = 0, base_ms = 0, err = 0;
    bool device = false;
    std::string error;
  };
  bool list_skipped_;
  std::map<std::string, Row> rows_;
  std::vector<std::string> order_;
};

}  // namespace

int main(int argc, char** argv) {
  bool table = false;
  bool all_cases = false;     // --all: the table also shows training and pre-merge cases
  bool list_skipped = false;  // --list-skipped: one table row per no-device skip
  bool crossover = false;
  std::string suite = "layers";  // --suite=norm: the deferred-normalization suite instead
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
      } else if (a == "--list-skipped") {
        list_skipped = true;
      } else if (a == "--crossover") {
        crossover = true;
      } else if (a.rfind("--suite=", 0) == 0) {
        suite = a.substr(8);
        if (suite != "layers" && suite != "norm")
          ffnkit::fail("ffnkit_bench", "unknown suite \"", suite, "\" (layers, norm)");
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
  if (suite == "norm") {
    if (table || all_cases || list_skipped || crossover || dims_set || tokens_set) {
      std::fprintf(stderr,
                   "ffnkit_bench: --suite=norm has shapes of its own and no table; it takes Google "
                   "Benchmark's flags only\n");
      return 2;
    }
    ffnkit::bench::register_norm_suite();
#ifdef FFNKIT_WITH_CUDA
    ffnkit::bench::register_norm_cuda_suite();
#endif
    return ffnkit::bench::run_benchmarks(static_cast<int>(rest.size()), rest.data());
  }
  if (table) {
    if (!dims_set) dims = {768};
    if (!tokens_set) tokens = {1, 16, 128, 2048};
  }
  if (crossover) {
    try {
      ffnkit::bench::print_configuration(stdout, false);
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
        ffnkit::bench::register_paired(
            c.name + "/" + shape.label(),
            [&c, shape](benchmark::State& st) { ffnkit::bench::run_case(st, c, shape); });
      }
    }
  }

  TableReporter reporter(list_skipped);
  return ffnkit::bench::run_benchmarks(static_cast<int>(rest.size()), rest.data(),
                                       table ? &reporter : nullptr);
}
