// The benchmark harness: a registry of layer cases, each of which can be prepared at an FFN shape
// and run. Every case reports speedup_vs_dense against the dense FFN of the same shape, measured in
// the same process, and its max error against the float64 reference.
#pragma once

#include <benchmark/benchmark.h>

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
  bool device_timed = false;  // registered with UseManualTime
  bool in_table = true;       // part of the main job's --table (training, pre-merge: full suite)
};

// Pre-merge's crossover (SPEC §1.8): for each width d, each pre-mergeable FFN projection at the
// paper's settings is calibrated up to max_tokens on this machine, and the measured times of both
// paths and the chosen one are printed per token count (ffnkit_bench --crossover).
void print_premerge_crossover(const std::vector<index_t>& dims, index_t max_tokens, int repeats);

// Cases register themselves at static-initialization time; baselines run first for each shape.
std::vector<LayerCase>& registry();
struct RegisterCase {
  explicit RegisterCase(LayerCase c);
};

// Median seconds per run of `baseline` at `shape`: from that case's own repetitions in this
// process when it ran, otherwise measured here on the spot.
double baseline_seconds(const std::string& baseline, const Shape& shape);
void record_seconds(const std::string& name, const Shape& shape, double seconds);

// The body of every registered benchmark.
void run_case(benchmark::State& state, const LayerCase& layer, const Shape& shape);

// Tokens sampled for the error column: the first few and the last (the oracle is O(d d_ff) per
// token in double, too slow for 2048 tokens in a table).
std::vector<index_t> sampled_tokens(index_t tokens);

}  // namespace bench
}  // namespace ffnkit
