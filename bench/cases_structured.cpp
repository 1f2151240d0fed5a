// Structured FFNs at the paper's settings (docs/math.md §3.8): both projections structured, GELU
// (tanh), bias on, at 63% (5/8) and 32% (5/16) of the dense FFN's parameters; forward, and a
// training step (forward + backward) against a dense training step.
#include <cstdio>
#include <memory>

#include "ffn_runner.hpp"
#include "ffnkit/structured.hpp"

namespace ffnkit {
namespace bench {
namespace {

constexpr Activation kAct = Activation::kGeluTanh;

// Gaussian factors with variance 1 / fan-in: speed does not depend on the values, and the seeded
// spectral / orthonormal inits cost seconds at d = 2048.
std::vector<float> gaussian(index_t count, index_t fan_in, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(count));
  fill_normal(v.data(), count, seed, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
  return v;
}

LowRankLinear<float> lowrank(index_t n, index_t m, index_t r, std::uint64_t seed) {
  return LowRankLinear<float>(n, m, r, gaussian(r * n, n, seed).data(),
                              gaussian(m * r, r, seed + 1).data(),
                              gaussian(m, 50, seed + 2).data());
}
BlockDenseLinear<float> blockdense(index_t n, index_t m, index_t b, index_t r, std::uint64_t seed) {
  return BlockDenseLinear<float>(n, m, b, r, gaussian(r * n / b, n / b, seed).data(),
                                 gaussian(m * r, r, seed + 1).data(),
                                 gaussian(m, 50, seed + 2).data());
}
BlockShuffleLinear<float> shuffle(index_t n, index_t m, index_t b, std::uint64_t seed) {
  const index_t q = std::min(n, m) / b;
  return BlockShuffleLinear<float>(n, m, b, gaussian(b * q * (n / b), n / b, seed).data(),
                                   gaussian(b * (m / b) * q, q, seed + 1).data(),
                                   gaussian(m, 50, seed + 2).data());
}
BlockDiagonalLinear<float> dense_as_blockdiag(index_t n, index_t m, std::uint64_t seed) {
  return BlockDiagonalLinear<float>(n, m, 1, gaussian(m * n, n, seed).data(),
                                    gaussian(m, 50, seed + 2).data());
}

template <class Ffn>
class StructuredRunner : public Runner {
 public:
  StructuredRunner(const Shape& s, Ffn ffn, bool train)
      : s_(s),
        train_(train),
        ffn_(std::move(ffn)),
        x_(s.tokens * s.d_model),
        y_(s.tokens * s.d_model),
        dy_(s.tokens * s.d_model),
        dx_(s.tokens * s.d_model),
        ws_(ffn_.workspace_size(s.tokens)) {
    fill_normal(x_.data(), static_cast<index_t>(x_.size()), 7, 0.0, 1.0);
    fill_normal(dy_.data(), static_cast<index_t>(dy_.size()), 8, 0.0, 1.0);
    if (train_) grads_ = ffn_.make_grads();
  }
  void run() override {
    const MatrixView<const float> x(x_.data(), s_.tokens, s_.d_model);
    ffn_.forward(x, make_view(y_.data(), s_.tokens, s_.d_model), Workspace{ws_.data(), ws_.size()});
    if (train_)
      ffn_.backward(x, make_view<const float>(dy_.data(), s_.tokens, s_.d_model),
                    make_view(dx_.data(), s_.tokens, s_.d_model), grads_);
    benchmark::DoNotOptimize(y_.data());
  }
  // A training step counts 3x the forward FLOPs (backward is two products per forward product);
  // the hidden activations backward recomputes are extra work, not counted.
  double flops() const override {
    return ffn_.flops_per_token() * s_.tokens * (train_ ? 3.0 : 1.0);
  }
  double bytes() const override { return ffn_bytes(s_, sizeof(float), ffn_.parameter_count()); }
  double max_rel_error() override {
    if (train_) return std::nan("");  // gradients are tested in tests/; the table shows forward
    const auto rows = sampled_tokens(s_.tokens);
    std::vector<double> xs, ys;
    for (index_t t : rows) {
      xs.insert(xs.end(), x_.begin() + t * s_.d_model, x_.begin() + (t + 1) * s_.d_model);
      ys.insert(ys.end(), y_.begin() + t * s_.d_model, y_.begin() + (t + 1) * s_.d_model);
    }
    const auto w1f = ffn_.up().materialize(), w2f = ffn_.down().materialize();
    const std::vector<double> w1(w1f.begin(), w1f.end()), w2(w2f.begin(), w2f.end());
    const auto b1f = ffn_.up().bias_host(), b2f = ffn_.down().bias_host();
    const std::vector<double> b1(b1f.begin(), b1f.end()), b2(b2f.begin(), b2f.end());
    const auto ref =
        reference::ffn(xs.data(), static_cast<index_t>(rows.size()), s_.d_model, w1.data(),
                       b1.data(), s_.d_ff, ffn_.activation(), w2.data(), b2.data(), s_.d_model);
    return reference::compare(ys.data(), static_cast<index_t>(rows.size()), s_.d_model, s_.d_model,
                              ref)
        .max_rel;
  }

 private:
  Shape s_;
  bool train_;
  Ffn ffn_;
  std::vector<float> x_, y_, dy_, dx_;
  std::vector<unsigned char> ws_;
  GradList<float> grads_;
};

template <class Ffn>
std::unique_ptr<Runner> runner(const Shape& s, Ffn ffn, bool train = false) {
  return std::make_unique<StructuredRunner<Ffn>>(s, std::move(ffn), train);
}

// docs/math.md §3.8's settings. LowRank: R = d/2 (63%), d/4 (32%). BlockShuffle: B = 2, 4.
// BlockDense: blockdense_setting() in ffn_runner.hpp.

template <class L>
StructuredFFN<L, L> pair(L up, L down) {
  return StructuredFFN<L, L>(std::move(up), std::move(down), kAct);
}

LayerCase train_case(const char* name, const char* description,
                     std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{name, description, std::move(make)};
  c.baseline = "dense_ffn_train";
  c.in_table = false;
  return c;
}

// Pre-merge (docs/math.md §4): each projection keeps its merged dense weight and uses whichever
// path its calibration, run here on this machine up to the case's token count, found faster.
template <class L>
StructuredFFN<PreMerged<L>, PreMerged<L>> premerged(L up, L down, index_t tokens) {
  PreMerged<L> pu(std::move(up)), pd(std::move(down));
  pu.calibrate(tokens, 3);
  pd.calibrate(tokens, 3);
  return StructuredFFN<PreMerged<L>, PreMerged<L>>(std::move(pu), std::move(pd), kAct);
}

LayerCase premerge_case(const char* name, const char* description,
                        std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{name, description, std::move(make)};
  c.in_table = false;
  return c;
}

const RegisterCase cases[] = {
    RegisterCase({"lowrank_63", "LowRank FFN, R = d/2 (63% of dense parameters)",
                  [](const Shape& s) {
                    return runner(s, pair(lowrank(s.d_model, s.d_ff, s.d_model / 2, 1),
                                          lowrank(s.d_ff, s.d_model, s.d_model / 2, 2)));
                  }}),
    RegisterCase({"lowrank_32", "LowRank FFN, R = d/4 (32%)",
                  [](const Shape& s) {
                    return runner(s, pair(lowrank(s.d_model, s.d_ff, s.d_model / 4, 1),
                                          lowrank(s.d_ff, s.d_model, s.d_model / 4, 2)));
                  }}),
    RegisterCase({"blockdense_63", "BlockDense FFN at the paper's larger setting",
                  [](const Shape& s) {
                    const auto c = blockdense_setting(s.d_model, true);
                    return runner(s, pair(blockdense(s.d_model, s.d_ff, c.blocks, c.rank, 1),
                                          blockdense(s.d_ff, s.d_model, c.blocks, c.rank, 2)));
                  }}),
    RegisterCase({"blockdense_32", "BlockDense FFN at the paper's smaller setting",
                  [](const Shape& s) {
                    const auto c = blockdense_setting(s.d_model, false);
                    return runner(s, pair(blockdense(s.d_model, s.d_ff, c.blocks, c.rank, 1),
                                          blockdense(s.d_ff, s.d_model, c.blocks, c.rank, 2)));
                  }}),
    RegisterCase({"blockshuffle_63", "BlockShuffle (Monarch) FFN, B = 2 (63%)",
                  [](const Shape& s) {
                    return runner(s, pair(shuffle(s.d_model, s.d_ff, 2, 1),
                                          shuffle(s.d_ff, s.d_model, 2, 2)));
                  }}),
    RegisterCase({"blockshuffle_32", "BlockShuffle (Monarch) FFN, B = 4 (32%)",
                  [](const Shape& s) {
                    return runner(s, pair(shuffle(s.d_model, s.d_ff, 4, 1),
                                          shuffle(s.d_ff, s.d_model, 4, 2)));
                  }}),
};

const RegisterCase premerge_cases[] = {
    RegisterCase(premerge_case(
        "lowrank_63_premerged", "LowRank 63% with pre-merge",
        [](const Shape& s) {
          return runner(s, premerged(lowrank(s.d_model, s.d_ff, s.d_model / 2, 1),
                                     lowrank(s.d_ff, s.d_model, s.d_model / 2, 2), s.tokens));
        })),
    RegisterCase(premerge_case(
        "lowrank_32_premerged", "LowRank 32% with pre-merge",
        [](const Shape& s) {
          return runner(s, premerged(lowrank(s.d_model, s.d_ff, s.d_model / 4, 1),
                                     lowrank(s.d_ff, s.d_model, s.d_model / 4, 2), s.tokens));
        })),
    RegisterCase(premerge_case(
        "blockdense_63_premerged", "BlockDense 63% with pre-merge",
        [](const Shape& s) {
          const auto c = blockdense_setting(s.d_model, true);
          return runner(s, premerged(blockdense(s.d_model, s.d_ff, c.blocks, c.rank, 1),
                                     blockdense(s.d_ff, s.d_model, c.blocks, c.rank, 2), s.tokens));
        })),
    RegisterCase(premerge_case("blockshuffle_63_premerged", "BlockShuffle 63% with pre-merge",
                               [](const Shape& s) {
                                 return runner(
                                     s, premerged(shuffle(s.d_model, s.d_ff, 2, 1),
                                                  shuffle(s.d_ff, s.d_model, 2, 2), s.tokens));
                               })),
};

// Training steps (forward + backward). The dense baseline is a one-block BlockDiagonal FFN:
// exactly a dense FFN, through the same GEMMs and the same backward code.
const RegisterCase train_cases[] = {
    RegisterCase(train_case("dense_ffn_train", "dense FFN training step (forward + backward)",
                            [](const Shape& s) {
                              return runner(s,
                                            pair(dense_as_blockdiag(s.d_model, s.d_ff, 1),
                                                 dense_as_blockdiag(s.d_ff, s.d_model, 2)),
                                            true);
                            })),
    RegisterCase(train_case("lowrank_32_train", "LowRank 32% training step",
                            [](const Shape& s) {
                              return runner(s,
                                            pair(lowrank(s.d_model, s.d_ff, s.d_model / 4, 1),
                                                 lowrank(s.d_ff, s.d_model, s.d_model / 4, 2)),
                                            true);
                            })),
    RegisterCase(train_case("blockdense_32_train", "BlockDense 32% training step",
                            [](const Shape& s) {
                              const auto c = blockdense_setting(s.d_model, false);
                              return runner(
                                  s,
                                  pair(blockdense(s.d_model, s.d_ff, c.blocks, c.rank, 1),
                                       blockdense(s.d_ff, s.d_model, c.blocks, c.rank, 2)),
                                  true);
                            })),
    RegisterCase(train_case(
        "blockshuffle_32_train", "BlockShuffle 32% training step",
        [](const Shape& s) {
          return runner(s, pair(shuffle(s.d_model, s.d_ff, 4, 1), shuffle(s.d_ff, s.d_model, 4, 2)),
                        true);
        })),
};

}  // namespace

void print_premerge_crossover(const std::vector<index_t>& dims, index_t max_tokens, int repeats) {
  std::printf("pre-merge calibration (docs/math.md §4): median of %d runs per path, float32\n",
              repeats);
  for (index_t d : dims) {
    const index_t f = 4 * d;
    auto show = [&](const char* name, auto layer) {
      PreMerged<decltype(layer)> p(std::move(layer));
      const auto rows = p.calibrate(max_tokens, repeats);
      std::printf("\n%s, %lld -> %lld\n%8s %14s %14s %8s  %s\n", name,
                  static_cast<long long>(p.in_features()), static_cast<long long>(p.out_features()),
                  "tokens", "structured ms", "dense ms", "ratio", "path taken");
      for (const auto& r : rows)
        std::printf(
            "%8lld %14.4f %14.4f %7.2fx  %s\n", static_cast<long long>(r.tokens),
            r.structured_seconds * 1e3, r.dense_seconds * 1e3,
            r.dense_seconds / r.structured_seconds,
            p.path(r.tokens) == PreMerged<decltype(layer)>::Path::kDense ? "dense" : "structured");
    };
    const auto bd63 = blockdense_setting(d, true), bd32 = blockdense_setting(d, false);
    show("lowrank_63 up", lowrank(d, f, d / 2, 1));
    show("lowrank_63 down", lowrank(f, d, d / 2, 2));
    show("lowrank_32 up", lowrank(d, f, d / 4, 1));
    show("lowrank_32 down", lowrank(f, d, d / 4, 2));
    show("blockdense_63 up", blockdense(d, f, bd63.blocks, bd63.rank, 1));
    show("blockdense_63 down", blockdense(f, d, bd63.blocks, bd63.rank, 2));
    show("blockdense_32 up", blockdense(d, f, bd32.blocks, bd32.rank, 1));
    show("blockdense_32 down", blockdense(f, d, bd32.blocks, bd32.rank, 2));
    show("blockshuffle_63 up", shuffle(d, f, 2, 1));
    show("blockshuffle_63 down", shuffle(f, d, 2, 2));
  }
}

}  // namespace bench
}  // namespace ffnkit
