// Fast feedforward (docs/math.md §6) at UltraFastBERT's shape: K = 1 tree of depth D = 11 (4095
// neurons, 12 per token), N = M = d_model, random seeded weights and inputs so the tokens really
// spread over the tree. Scored against the dense FFN d→4d→d it replaces (the main table's
// baseline) and, off the table, against a dense FFN of equal neuron count d→4095→d.
//   fff_1x11                 kAuto (the table row)
//   fff_1x11_pertoken        the per-token walk forced at every token count
//   fff_1x11_grouped         the grouped kernel forced at every token count
//   fff_1x11_vs_dense4095    kAuto, scored against dense_ffn_4095
// Counter distinct_leaves: how many of the 2048 leaves the run's tokens reach.
#include <memory>
#include <set>

#include "fff_oracle.hpp"
#include "ffn_runner.hpp"
#include "ffnkit/fff.hpp"

namespace ffnkit {
namespace bench {
namespace {

constexpr index_t kDepth = 11;
constexpr std::uint64_t kSeed = 20245;

class FffRunner : public Runner {
 public:
  FffRunner(const Shape& s, FffKernel kernel)
      : s_(s),
        kernel_(kernel),
        fff_(FastFeedForward<float>::random(s.d_model, s.d_model, 1, kDepth, kSeed)),
        x_(s.tokens * s.d_model),
        y_(s.tokens * s.d_model),
        leaves_(static_cast<std::size_t>(s.tokens)),
        ws_(fff_.workspace_size(s.tokens) / sizeof(std::uint64_t) + 1) {
    fill_normal(x_.data(), static_cast<index_t>(x_.size()), 7, 0.0, 1.0);
    fff_.forward(xv(), make_view(y_.data(), s_.tokens, s_.d_model), leaves_.data(), kernel_);
    distinct_ = static_cast<double>(std::set<std::int32_t>(leaves_.begin(), leaves_.end()).size());
  }
  void run() override {
    fff_.forward(xv(), make_view(y_.data(), s_.tokens, s_.d_model), nullptr, kernel_,
                 Workspace{ws_.data(), ws_.size() * sizeof(std::uint64_t)});
    benchmark::DoNotOptimize(y_.data());
  }
  double flops() const override { return fff_.flops_per_token() * s_.tokens; }
  // x read and y written once, plus the rows the tokens touch (at most all of them).
  double bytes() const override {
    const double rows = std::min<double>(static_cast<double>(fff_.neurons_total()),
                                         static_cast<double>(s_.tokens * fff_.neurons_per_token()));
    return (rows * (2.0 * s_.d_model + 1) + 2.0 * s_.tokens * s_.d_model) * sizeof(float);
  }
  double max_rel_error() override { return sampled_fff_error(fff_, x_, y_, leaves_); }
  std::vector<std::pair<std::string, double>> extra_counters() const override {
    return {{"distinct_leaves", distinct_}};
  }

 private:
  MatrixView<const float> xv() const {
    return MatrixView<const float>(x_.data(), s_.tokens, s_.d_model);
  }
  Shape s_;
  FffKernel kernel_;
  FastFeedForward<float> fff_;
  std::vector<float> x_, y_;
  std::vector<std::int32_t> leaves_;
  std::vector<std::uint64_t> ws_;  // forward's scratch, as the dense baselines get theirs
  double distinct_ = 0;
};

// The dense FFN with as many neurons as the tree (d→4095→d, GELU erf as the FFF), the
// equal-neuron-count baseline.
class Dense4095Runner : public Runner {
 public:
  explicit Dense4095Runner(const Shape& s)
      : s_(s),
        ffn_(DenseFFN<float>::random(s.d_model, (index_t(2) << kDepth) - 1, Activation::kGeluErf,
                                     kSeed)),
        x_(s.tokens * s.d_model),
        y_(s.tokens * s.d_model),
        ws_(ffn_.workspace_size(s.tokens) / sizeof(float)) {
    fill_normal(x_.data(), static_cast<index_t>(x_.size()), 7, 0.0, 1.0);
  }
  void run() override {
    ffn_.forward(make_view<const float>(x_.data(), s_.tokens, s_.d_model),
                 make_view(y_.data(), s_.tokens, s_.d_model),
                 Workspace{ws_.data(), ws_.size() * sizeof(float)});
    benchmark::DoNotOptimize(y_.data());
  }
  double flops() const override { return ffn_.flops_per_token() * s_.tokens; }
  double bytes() const override {
    Shape s = s_;
    s.d_ff = ffn_.d_ff();
    return ffn_bytes(s, sizeof(float), ffn_.parameter_count());
  }
  double max_rel_error() override { return sampled_ffn_error(ffn_, x_, y_); }

 private:
  Shape s_;
  DenseFFN<float> ffn_;
  std::vector<float> x_, y_, ws_;
};

LayerCase off_table(LayerCase c) {
  c.in_table = false;
  return c;
}

const RegisterCase fff_cases[] = {
    RegisterCase(off_table({"dense_ffn_4095", "dense FFN d -> 4095 -> d (equal neuron count)",
                            [](const Shape& s) { return std::make_unique<Dense4095Runner>(s); },
                            "dense_ffn_4095"})),
    RegisterCase({"fff_1x11", "FFF K=1 D=11 (UltraFastBERT-1x11), kernel chosen by token count",
                  [](const Shape& s) { return std::make_unique<FffRunner>(s, FffKernel::kAuto); }}),
    RegisterCase(off_table(
        {"fff_1x11_pertoken", "FFF 1x11, per-token walk at every token count",
         [](const Shape& s) { return std::make_unique<FffRunner>(s, FffKernel::kPerToken); }})),
    RegisterCase(off_table(
        {"fff_1x11_grouped", "FFF 1x11, grouped kernel at every token count",
         [](const Shape& s) { return std::make_unique<FffRunner>(s, FffKernel::kGrouped); }})),
    RegisterCase(
        off_table({"fff_1x11_vs_dense4095", "FFF 1x11 against dense_ffn_4095",
                   [](const Shape& s) { return std::make_unique<FffRunner>(s, FffKernel::kAuto); },
                   "dense_ffn_4095"})),
};

}  // namespace
}  // namespace bench
}  // namespace ffnkit
