#include "harness.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>

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
  // Baselines go first so that, in registration order, they run before the cases they score.
  if (c.name == c.baseline) {
    auto first_non_baseline =
        std::find_if(r.begin(), r.end(), [](const LayerCase& e) { return e.name != e.baseline; });
    r.insert(first_non_baseline, std::move(c));
  } else {
    r.push_back(std::move(c));
  }
}

namespace {
std::mutex g_mutex;
std::map<std::string, std::vector<double>>& times() {
  static std::map<std::string, std::vector<double>> m;
  return m;
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void record_seconds(const std::string& name, const Shape& shape, double seconds) {
  std::lock_guard<std::mutex> lock(g_mutex);
  times()[name + "/" + shape.label()].push_back(seconds);
}

double baseline_seconds(const std::string& baseline, const Shape& shape) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = times().find(baseline + "/" + shape.label());
    if (it != times().end() && !it->second.empty()) return median(it->second);
  }
  // The baseline was filtered out of this run: time it here, median of runs over ~0.3 s.
  auto& cases = registry();
  auto base = std::find_if(cases.begin(), cases.end(),
                           [&](const LayerCase& c) { return c.name == baseline; });
  if (base == cases.end()) return std::nan("");
  auto runner = base->make(shape);
  runner->run();
  std::vector<double> samples;
  const double t_end = now() + 0.3;
  while (samples.size() < 5 || (now() < t_end && samples.size() < 1000)) {
    if (runner->device_timed()) {
      samples.push_back(runner->run_device_timed());
    } else {
      const double t0 = now();
      runner->run();
      samples.push_back(now() - t0);
    }
  }
  const double m = median(samples);
  record_seconds(baseline, shape, m);
  return m;
}

std::vector<index_t> sampled_tokens(index_t tokens) {
  std::vector<index_t> s;
  for (index_t t = 0; t < std::min<index_t>(tokens, 8); ++t) s.push_back(t);
  if (tokens > 8) s.push_back(tokens - 1);
  return s;
}

namespace {

void run_case_or_throw(benchmark::State& state, const LayerCase& layer, const Shape& shape) {
  std::unique_ptr<Runner> runner = layer.make(shape);
  runner->run();  // warm-up: first-touch of weights and buffers
  double per_run = 0;
  if (runner->device_timed()) {
    double total = 0;
    for (auto _ : state) {
      const double s = runner->run_device_timed();
      state.SetIterationTime(s);
      total += s;
    }
    per_run =
        total / static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  } else {
    const double t0 = now();
    for (auto _ : state) runner->run();
    per_run = (now() - t0) /
              static_cast<double>(std::max<benchmark::IterationCount>(1, state.iterations()));
  }
  record_seconds(layer.name, shape, per_run);
  const double dense =
      layer.name == layer.baseline ? per_run : baseline_seconds(layer.baseline, shape);
  state.counters["tokens"] = static_cast<double>(shape.tokens);
  state.counters["GFLOP/s"] = runner->flops() / per_run * 1e-9;
  state.counters["GB/s"] = runner->bytes() / per_run * 1e-9;
  state.counters["speedup_vs_dense"] = dense / per_run;
  state.counters["max_rel_err"] = runner->max_rel_error();
  for (const auto& c : runner->extra_counters()) state.counters[c.first] = c.second;
}

}  // namespace

// Any failure (no device, a layer that rejects the shape) becomes a visible skip of this case.
void run_case(benchmark::State& state, const LayerCase& layer, const Shape& shape) {
  try {
    run_case_or_throw(state, layer, shape);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

}  // namespace bench
}  // namespace ffnkit
