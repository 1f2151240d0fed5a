// Deferred normalization (docs/math.md §7): fused against unfused in the same run, the unfused
// path being the baselines of reference/unfused_norm.hpp (docs/math.md §7.6).
//  - Main-table cases (ffnkit_bench --table): rmsnorm_linear and layernorm_linear at d -> 4d, each
//    against its own unfused baseline (the `vs dense` column of those rows is vs unfused).
//  - The full suite (ffnkit_bench --suite=norm, see register_norm_suite): d in {768, 2048, 4096}
//    into d_out in {d, 4d}, tokens in {1, 16, 128, 2048}; Softmax V at sequence lengths
//    {128, 1024, 4096, 16384}, head dim 64 and 128, one-pass against three-pass. Each benchmark
//    interleaves the two paths (bench/harness.hpp: run_interleaved), so drift on a shared machine
//    hits both, and reports the median of their per-round ratios as the `speedup` counter.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ffnkit/norm.hpp"
#include "ffnkit/reference.hpp"
#include "ffnkit/reference/unfused_norm.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {

namespace {

// Parameters of a norm -> linear layer of the given shape (seeded, variance 1 / fan-in).
struct NormParams {
  std::vector<float> gamma, beta, weight, bias;
  NormParams(index_t n, index_t m) : gamma(n), beta(n), weight(n * m), bias(m) {
    fill_normal(gamma.data(), n, 1, 1.0, 0.1);
    fill_normal(beta.data(), n, 2, 0.0, 0.1);
    fill_normal(weight.data(), n * m, 3, 0.0, 1.0 / std::sqrt(static_cast<double>(n)));
    fill_normal(bias.data(), m, 4, 0.0, 0.1);
  }
};

// The layers' default ε.
template <bool kLayerNorm>
constexpr double kEps = kLayerNorm ? 1e-5 : 1e-6;

template <bool kLayerNorm>
using NormLayer = std::conditional_t<kLayerNorm, LayerNormLinear<float>, RMSNormLinear<float>>;
using UnfusedLayer = reference::UnfusedNormLinear<float>;

template <bool kLayerNorm>
NormLayer<kLayerNorm> make_layer(index_t n, index_t m, const NormParams& p) {
  if constexpr (kLayerNorm)
    return LayerNormLinear<float>(n, m, p.gamma.data(), p.beta.data(), p.weight.data(),
                                  p.bias.data(), kEps<true>);
  else
    return RMSNormLinear<float>(n, m, p.gamma.data(), p.weight.data(), p.bias.data(), kEps<false>);
}

template <bool kLayerNorm>
UnfusedLayer make_unfused(index_t n, index_t m, const NormParams& p) {
  return UnfusedLayer(kLayerNorm, n, m, p.gamma.data(), kLayerNorm ? p.beta.data() : nullptr,
                      p.weight.data(), p.bias.data(), kEps<kLayerNorm>);
}

// One layer (fused, or the unfused baseline), its input and output at one shape: the main table's
// runner.
template <bool kLayerNorm, bool kFused>
class NormRunner : public Runner {
 public:
  NormRunner(index_t n, index_t m, index_t tokens)
      : n_(n),
        m_(m),
        t_(tokens),
        p_(n, m),
        layer_(make()),
        x_(tokens * n),
        y_(tokens * m),
        ws_(layer_.workspace_size(tokens)) {
    fill_normal(x_.data(), tokens * n, 7, 0.0, 1.0);
  }
  void run() override {
    const MatrixView<const float> x(x_.data(), t_, n_);
    const MatrixView<float> y(y_.data(), t_, m_);
    layer_.forward(x, y, Workspace{ws_.data(), ws_.size()});
    benchmark::DoNotOptimize(y_.data());
  }
  double flops() const override { return 2.0 * n_ * m_ * t_; }
  double bytes() const override { return 4.0 * (n_ * m_ + t_ * (n_ + m_)); }
  double max_rel_error() override {
    const auto rows = sampled_tokens(t_);
    std::vector<double> xs, ys;
    for (index_t t : rows) {
      xs.insert(xs.end(), x_.begin() + t * n_, x_.begin() + (t + 1) * n_);
      ys.insert(ys.end(), y_.begin() + t * m_, y_.begin() + (t + 1) * m_);
    }
    const auto d = [](const std::vector<float>& v) {
      return std::vector<double>(v.begin(), v.end());
    };
    const auto ref =
        reference::norm_linear(kLayerNorm, xs, static_cast<index_t>(rows.size()), n_, m_,
                               d(p_.gamma), kLayerNorm ? d(p_.beta) : std::vector<double>(),
                               d(p_.weight), d(p_.bias), kEps<kLayerNorm>);
    return reference::compare(ys.data(), static_cast<index_t>(rows.size()), m_, m_, ref).max_rel;
  }

 private:
  using Layer = std::conditional_t<kFused, NormLayer<kLayerNorm>, UnfusedLayer>;
  Layer make() const {
    if constexpr (kFused)
      return make_layer<kLayerNorm>(n_, m_, p_);
    else
      return make_unfused<kLayerNorm>(n_, m_, p_);
  }

  index_t n_, m_, t_;
  NormParams p_;
  Layer layer_;
  std::vector<float> x_, y_;
  std::vector<unsigned char> ws_;
};

LayerCase norm_case(const char* name, const char* description, const char* baseline,
                    std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{name, description, std::move(make)};
  c.baseline = baseline;
  return c;
}

// The table's norm rows: d_model -> d_ff (= 4d), the up-projection a pre-norm block feeds.
const RegisterCase table_cases[] = {
    RegisterCase(norm_case(
        "rmsnorm_linear_unfused", "RMSNorm then Linear d -> 4d (unfused)", "rmsnorm_linear_unfused",
        [](const Shape& s) {
          return std::make_unique<NormRunner<false, false>>(s.d_model, s.d_ff, s.tokens);
        })),
    RegisterCase(norm_case("rmsnorm_linear", "RMSNorm deferred into Linear d -> 4d (vs unfused)",
                           "rmsnorm_linear_unfused",
                           [](const Shape& s) {
                             return std::make_unique<NormRunner<false, true>>(s.d_model, s.d_ff,
                                                                              s.tokens);
                           })),
    RegisterCase(norm_case("layernorm_linear_unfused", "LayerNorm then Linear d -> 4d (unfused)",
                           "layernorm_linear_unfused",
                           [](const Shape& s) {
                             return std::make_unique<NormRunner<true, false>>(s.d_model, s.d_ff,
                                                                              s.tokens);
                           })),
    RegisterCase(
        norm_case("layernorm_linear", "LayerNorm deferred into Linear d -> 4d (vs unfused)",
                  "layernorm_linear_unfused",
                  [](const Shape& s) {
                    return std::make_unique<NormRunner<true, true>>(s.d_model, s.d_ff, s.tokens);
                  })),
};

// Times `a` and `b` interleaved; the benchmark's time is a's. Counters: both medians in ms and
// speedup = median over rounds of b / a.
template <class A, class B>
void paired(benchmark::State& state, A&& a, B&& b, const char* a_name, const char* b_name) {
  const std::vector<TimedPath> paths = {{a_name, [&] { return host_seconds(a); }},
                                        {b_name, [&] { return host_seconds(b); }}};
  report_path_medians(state, paths, run_interleaved(state, paths));
}

template <bool kLayerNorm>
void bm_norm(benchmark::State& state, index_t n, index_t m, index_t tokens) {
  const NormParams p(n, m);
  const auto layer = make_layer<kLayerNorm>(n, m, p);
  const auto unfused = make_unfused<kLayerNorm>(n, m, p);
  std::vector<float> x(tokens * n), y(tokens * m), xn(tokens * n);
  fill_normal(x.data(), tokens * n, 7, 0.0, 1.0);
  std::vector<unsigned char> ws(
      std::max(layer.workspace_size(tokens), unfused.workspace_size(tokens)));
  const MatrixView<const float> xv(x.data(), tokens, n);
  const MatrixView<float> yv(y.data(), tokens, m);
  const Workspace w{ws.data(), ws.size()};
  paired(
      state, [&] { layer.forward(xv, yv, w); }, [&] { unfused.forward(xv, yv, w); }, "fused",
      "unfused");
  // The share of the unfused time its normalization pass takes: unfused minus its product (the
  // same product driver and bias epilogue) run alone on an already-normalized input.
  auto product = [&] {
    detail::NormOps<float, Cpu>::linear("bench", MatrixView<const float>(xn.data(), tokens, n),
                                        p.weight.data(), m, p.bias.data(), yv, cpu::Stream());
  };
  const PathTimes t =
      interleave({{"product", [&] { return host_seconds(product); }},
                  {"unfused", [&] { return host_seconds([&] { unfused.forward(xv, yv, w); }); }}},
                 0.0, 5);
  state.counters["norm_pass_share"] = std::max(0.0, 1.0 - median_ratio(t[0], t[1]));
  state.counters["tokens"] = static_cast<double>(tokens);
}

void bm_softmax(benchmark::State& state, index_t seq, index_t dim) {
  // A block of up to 512 queries against `seq` keys (a chunk of a long prefill).
  const index_t q = std::min<index_t>(seq, 512);
  std::vector<float> s(q * seq), v(seq * dim), y(q * dim);
  fill_normal(s.data(), q * seq, 1, 0.0, 3.0);
  fill_normal(v.data(), seq * dim, 2, 0.0, 1.0);
  const SoftmaxLinear<float> op;
  const reference::UnfusedSoftmaxLinear<float> three_pass;
  std::vector<unsigned char> ws(
      std::max(op.workspace_size(q, seq, dim), three_pass.workspace_size(q, seq)));
  const Workspace w{ws.data(), ws.size()};
  const MatrixView<const float> sv(s.data(), q, seq), vv(v.data(), seq, dim);
  const MatrixView<float> yv(y.data(), q, dim);
  paired(
      state, [&] { op.forward(sv, vv, yv, {}, w); }, [&] { three_pass.forward(sv, vv, yv, {}, w); },
      "one_pass", "three_pass");
  state.counters["queries"] = static_cast<double>(q);
}

}  // namespace

// Registers the full suite; called by ffnkit_bench's main for --suite=norm only, so the main table
// and its smoke test stay small.
void register_norm_suite() {
  for (index_t d : {768, 2048, 4096}) {
    for (index_t mult : {1, 4}) {
      for (index_t t : {1, 16, 128, 2048}) {
        const std::string shape = "/d=" + std::to_string(d) + "/out=" + std::to_string(mult * d) +
                                  "/tokens=" + std::to_string(t);
        register_paired("rmsnorm_linear" + shape,
                        [=](benchmark::State& st) { bm_norm<false>(st, d, mult * d, t); });
        register_paired("layernorm_linear" + shape,
                        [=](benchmark::State& st) { bm_norm<true>(st, d, mult * d, t); });
      }
    }
  }
  for (index_t seq : {128, 1024, 4096, 16384}) {
    for (index_t dim : {64, 128}) {
      register_paired("softmax_v/seq=" + std::to_string(seq) + "/dim=" + std::to_string(dim),
                      [=](benchmark::State& st) { bm_softmax(st, seq, dim); });
    }
  }
}

}  // namespace bench
}  // namespace ffnkit
