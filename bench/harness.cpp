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
  // The baseline goes first so that, in registration order, it runs before the cases it scores.
  if (c.name == kDenseCase) {
    r.insert(r.begin(), std::move(c));
  } else {
    r.push_back(std::move(c));
  }
}

namespace {
std::mutex g_mutex;
std::map<std::string, std::vector<double>>& dense_times() {
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

void record_dense_seconds(const Shape& shape, double seconds) {
  std::lock_guard<std::mutex> lock(g_mutex);
  dense_times()[shape.label()].push_back(seconds);
}

double dense_seconds(const Shape& shape) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = dense_times().find(shape.label());
    if (it != dense_times().end() && !it->second.empty()) return median(it->second);
  }
  // The dense case was filtered out of this run: time it here, median of batches over ~0.3 s.
  auto& cases = registry();
  auto dense = std::find_if(cases.begin(), cases.end(),
                            [](const LayerCase& c) { return c.name == kDenseCase; });
  if (dense == cases.end()) return std::nan("");
  auto runner = dense->make(shape);
  runner->run();
  std::vector<double> samples;
  const double t_end = now() + 0.3;
  while (samples.size() < 5 || (now() < t_end && samples.size() < 1000)) {
    const double t0 = now();
    runner->run();
    samples.push_back(now() - t0);
  }
  const double m = median(samples);
  record_dense_seconds(shape, m);
  return m;
}

std::vector<index_t> sampled_tokens(index_t tokens) {
  std::vector<index_t> s;
  for (index_t t = 0; t < std::min<index_t>(tokens, 8); ++t) s.push_back(t);
  if (tokens > 8) s.push_back(tokens - 1);
  return s;
}

void run_case(benchmark::State& state, const LayerCase& layer, const Shape& shape) {
  std::unique_ptr<Runner> runner;
  try {
    runner = layer.make(shape);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  runner->run();  // warm-up: first-touch of weights and buffers
  const double t0 = now();
  for (auto _ : state) runner->run();
  const double per_run = (now() - t0) / static_cast<double>(std::max<benchmark::IterationCount>(
                                            1, state.iterations()));
  if (layer.name == kDenseCase) record_dense_seconds(shape, per_run);
  const double dense = layer.name == kDenseCase ? per_run : dense_seconds(shape);
  state.counters["tokens"] = static_cast<double>(shape.tokens);
  state.counters["GFLOP/s"] = runner->flops() / per_run * 1e-9;
  state.counters["GB/s"] = runner->bytes() / per_run * 1e-9;
  state.counters["speedup_vs_dense"] = dense / per_run;
  state.counters["max_rel_err"] = runner->max_rel_error();
}

}  // namespace bench
}  // namespace ffnkit
