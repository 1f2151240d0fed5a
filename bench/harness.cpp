#include "harness.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "ffnkit/build_info.hpp"
#include "ffnkit/cpu/parallel.hpp"

#ifdef FFNKIT_WITH_OPENBLAS
#include <cblas.h>
#endif

namespace ffnkit {
namespace bench {

std::string Shape::label() const {
  return make_message("d=", d_model, "/ff=", d_ff, "/tokens=", tokens);
}

std::vector<LayerCase>& registry() {
  static std::vector<LayerCase> cases;
  return cases;
}

RegisterCase::RegisterCase(LayerCase c) {
  auto& r = registry();
  // Baselines go first so that, in registration order, each shape's rows start with them.
  if (c.name == c.baseline) {
    auto first_non_baseline =
        std::find_if(r.begin(), r.end(), [](const LayerCase& e) { return e.name != e.baseline; });
    r.insert(first_non_baseline, std::move(c));
  } else {
    r.push_back(std::move(c));
  }
}

std::vector<index_t> sampled_tokens(index_t tokens) {
  std::vector<index_t> s;
  for (index_t t = 0; t < std::min<index_t>(tokens, 8); ++t) s.push_back(t);
  if (tokens > 8) s.push_back(tokens - 1);
  return s;
}

// ---- Interleaved timing ----------------------------------------------------------------------

namespace {
double g_min_time = 0.5;                     // Google Benchmark's default --benchmark_min_time
constexpr std::size_t kMinRounds = 3;        // a median of 3 already discards one outlier
constexpr std::size_t kMaxRounds = 1000000;  // bounds memory for a tiny case and a long min time
}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double median_ratio(const std::vector<double>& num, const std::vector<double>& den) {
  std::vector<double> r;
  for (std::size_t i = 0; i < std::min(num.size(), den.size()); ++i) r.push_back(num[i] / den[i]);
  return median(std::move(r));
}

PathTimes interleave(const std::vector<TimedPath>& paths, double min_seconds,
                     std::size_t min_rounds) {
  if (paths.empty()) fail("bench::interleave", "no path to time");
  for (const auto& p : paths) p.run();
  PathTimes t(paths.size());
  double measured = 0;
  while (t[0].size() < kMaxRounds && (t[0].size() < min_rounds || measured < min_seconds)) {
    for (std::size_t i = 0; i < paths.size(); ++i) {
      t[i].push_back(paths[i].run());
      measured += t[i].back();
    }
  }
  return t;
}

PathTimes run_interleaved(benchmark::State& state, const std::vector<TimedPath>& paths) {
  PathTimes t;
  for (auto _ : state) {
    t = interleave(paths, g_min_time, kMinRounds);
    state.SetIterationTime(median(t[0]));
  }
  state.counters["runs"] = t.empty() ? 0.0 : static_cast<double>(t[0].size());
  return t;
}

void report_path_medians(benchmark::State& state, const std::vector<TimedPath>& paths,
                         const PathTimes& times) {
  for (std::size_t i = 0; i < paths.size() && i < times.size(); ++i)
    state.counters[paths[i].name + "_ms"] = median(times[i]) * 1e3;
  if (times.size() > 1) state.counters["speedup"] = median_ratio(times[1], times[0]);
}

benchmark::internal::Benchmark* register_paired(const std::string& name,
                                                std::function<void(benchmark::State&)> body) {
  return benchmark::RegisterBenchmark(name.c_str(),
                                      [body = std::move(body)](benchmark::State& state) {
                                        // No device, a shape a layer rejects: a visible skip.
                                        try {
                                          body(state);
                                        } catch (const std::exception& e) {
                                          state.SkipWithError(e.what());
                                        }
                                      })
      ->UseManualTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond);
}

// ---- The layer cases -------------------------------------------------------------------------

namespace {

const LayerCase& find_case(const std::string& name) {
  const auto& cases = registry();
  auto it =
      std::find_if(cases.begin(), cases.end(), [&](const LayerCase& c) { return c.name == name; });
  if (it == cases.end()) fail("ffnkit_bench", "baseline case \"", name, "\" is not registered");
  return *it;
}

double timed_run(Runner& r) {
  return r.device_timed() ? r.run_device_timed() : host_seconds([&] { r.run(); });
}

}  // namespace

void run_case(benchmark::State& state, const LayerCase& layer, const Shape& shape) {
  const std::unique_ptr<Runner> runner = layer.make(shape);
  // The baseline case itself is not paired: its speedup is 1 by definition.
  std::unique_ptr<Runner> baseline;
  if (layer.name != layer.baseline) {
    try {
      baseline = find_case(layer.baseline).make(shape);
    } catch (const std::exception& e) {
      fail("baseline", layer.baseline, ": ", e.what());  // the row's skip names the culprit
    }
  }
  std::vector<TimedPath> paths = {{layer.name, [&] { return timed_run(*runner); }}};
  if (baseline) paths.push_back({layer.baseline, [&] { return timed_run(*baseline); }});
  const PathTimes t = run_interleaved(state, paths);
  const double per_run = median(t[0]);
  state.counters["tokens"] = static_cast<double>(shape.tokens);
  state.counters["GFLOP/s"] = runner->flops() / per_run * 1e-9;
  state.counters["GB/s"] = runner->bytes() / per_run * 1e-9;
  state.counters["speedup_vs_dense"] = baseline ? median_ratio(t[1], t[0]) : 1.0;
  state.counters["baseline_ms"] = median(t.back()) * 1e3;
  // No NaN counter: Google Benchmark writes it as a bare NaN, which strict JSON parsers reject.
  const double err = runner->max_rel_error();
  if (!std::isnan(err)) state.counters["max_rel_err"] = err;
  for (const auto& c : runner->extra_counters()) state.counters[c.first] = c.second;
}

// ---- Configuration and running ---------------------------------------------------------------

namespace {

// The load the run starts under, sampled once before any benchmark: the machine's, not ours.
struct StartLoad {
  bool known = false;
  double average = 0;  // over the last minute
  int threads = 1;     // OpenMP's
  int cpus = 1;
};
const StartLoad& start_load() {
  static const StartLoad load = [] {
    StartLoad l;
    l.known = getloadavg(&l.average, 1) == 1;
    l.threads = cpu::max_threads();
    l.cpus = std::max(1u, std::thread::hardware_concurrency());
    return l;
  }();
  return load;
}

// Warnings about the load, as (context key, text); `paired`: the figures are ratios of
// interleaved runs (the table, Google Benchmark's modes), not --crossover's sequential times.
std::vector<std::pair<std::string, std::string>> load_warnings(bool paired) {
  const StartLoad& l = start_load();
  std::vector<std::pair<std::string, std::string>> w;
  if (!l.known) return w;
  char avg[32];
  std::snprintf(avg, sizeof avg, "%.2f", l.average);
  if (l.average > l.threads)
    w.push_back({"ffnkit_load_warning",
                 make_message("load average ", avg, " exceeds the ", l.threads, " OpenMP threads: ",
                              paired ? "ratios are paired and survive load, absolute times do not"
                                     : "these times are not paired and do not survive load")});
  // Half a core of slack: a 1-minute average still shows a build that ended seconds ago.
  if (l.average + l.threads > l.cpus + 0.5)
    w.push_back(
        {"ffnkit_cores_warning",
         make_message("load average ", avg, " + ", l.threads, " OpenMP threads exceed the ", l.cpus,
                      " CPUs: an OpenMP barrier waits a scheduler tick for a "
                      "descheduled thread, which pairing does not cancel; set "
                      "OMP_NUM_THREADS to the free cores")});
  return w;
}

}  // namespace

const std::vector<ConfigItem>& configuration() {
  static const std::vector<ConfigItem> items = [] {
    std::vector<ConfigItem> v;
    v.push_back({"ffnkit_build", "build", build_info()});
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
    v.push_back({"ffnkit_isa_compiled", "benchmark code compiled for",
                 isa.empty() ? "SSE2 only" : isa.substr(1)});
#ifdef FFNKIT_WITH_OPENBLAS
    const int mode = openblas_get_parallel();
    v.push_back({"openblas_config", "OpenBLAS", openblas_get_config()});
    v.push_back({"openblas_threading", "OpenBLAS threading",
                 mode == 2   ? "OpenMP"
                 : mode == 1 ? "pthreads (contends with OpenMP!)"
                             : "serial"});
#endif
    const StartLoad& load = start_load();
    char avg[32];
    std::snprintf(avg, sizeof avg, "%.2f", load.average);
    v.push_back({"ffnkit_load_avg_1min", "load average (1 min, at start)",
                 load.known ? avg : "unavailable"});
    v.push_back({"ffnkit_omp_threads", "OpenMP threads", std::to_string(load.threads)});
    return v;
  }();
  return items;
}

void print_configuration(std::FILE* out, bool paired) {
  for (const auto& c : configuration())
    std::fprintf(out, "%s: %s\n", c.label.c_str(), c.value.c_str());
  for (const auto& w : load_warnings(paired)) std::fprintf(out, "WARNING: %s\n", w.second.c_str());
}

int run_benchmarks(int argc, char** argv, benchmark::BenchmarkReporter* display) {
  // Google Benchmark keeps its flag to itself, and the rounds of run_interleaved need it.
  constexpr const char* kMinTimeFlag = "--benchmark_min_time=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], kMinTimeFlag, std::strlen(kMinTimeFlag)) != 0) continue;
    const char* value = argv[i] + std::strlen(kMinTimeFlag);
    char* end = nullptr;
    const double t = std::strtod(value, &end);
    if (end != value && (*end == '\0' || std::strcmp(end, "s") == 0) && t >= 0) g_min_time = t;
  }
  for (const auto& c : configuration()) benchmark::AddCustomContext(c.key, c.value);
  for (const auto& w : load_warnings(true)) benchmark::AddCustomContext(w.first, w.second);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  benchmark::RunSpecifiedBenchmarks(display);
  benchmark::Shutdown();
  return 0;
}

}  // namespace bench
}  // namespace ffnkit
