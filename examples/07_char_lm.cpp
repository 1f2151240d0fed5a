// Example 07: self-guided training (docs/math.md §5) demonstrated on real text, with a
// character-level language model (examples/char_lm/char_lm.hpp) trained on the Debian `fortunes`
// package.
//
//   example_07_char_lm            the self-check (a ctest test, seconds in Release): a tiny model,
//                                 a few hundred steps, LowRank and BlockDense under self-guided
//                                 training; checks that the loss falls, that α follows the cosine
//                                 schedule, and that dropping the guides changes no output and
//                                 frees exactly the guides' memory; and the model's gradients
//                                 against finite differences. Prints OK.
//   example_07_char_lm --full [--out DIR] [--steps N]
//                                 the experiment (docs/self_guided.md): dense FFN; LowRank and
//                                 BlockDense at 32% of the dense FFN's parameters, each trained
//                                 plainly and self-guided, the latter FLOP-matched to the former.
//                                 Writes DIR/self_guided_curves.csv and, if gnuplot is installed,
//                                 DIR/self_guided.png, and prints the results table.
//   example_07_char_lm --variants [--out DIR] [--steps N]
//                                 the other self-guided settings tried (docs/self_guided.md):
//                                 the guide over the first quarter, and equal steps instead of
//                                 equal FLOPs. Writes DIR/self_guided_variants_curves.csv.
//   --only RUN,...                only the named runs; --lr X: another peak learning rate.
//
// FLOP matching (the paper's FLOP-matched mode): the self-guided run spends extra FLOPs on the
// dense branch while α > 0, so it gets fewer optimizer steps, on the same batch size, the same
// batch sequence and the same peak learning rate. Its step count is the largest whose expected
// training FLOPs (the stochastic branch runs with probability α) fit the plain run's; the FLOPs
// the run actually executed (counted from each forward's decision) are reported next to it.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "char_lm/char_lm.hpp"

namespace {

using namespace char_lm;
using ffnkit::AlphaSchedule;
using ffnkit::BlockDenseLinear;
using ffnkit::LowRankLinear;
using ffnkit::SelfGuided;
using LR = LowRankLinear<float>;
using BD = BlockDenseLinear<float>;

// The paper's 32% settings (docs/math.md §3.8): both projections structured with the same
// rank/blocks.
//   LowRank R = d/4: 2 R (d + 4d) / (2 · 4d²) = 5/16.
//   BlockDense B = 2, R = d/3: R (4d + d/2) + R (d + 2d) = 7.5 R d = 5/16 of 8d² (the d = 768
//   setting, B = 2, R = 256, scaled to d).
index_t lowrank_rank(const Config& c) { return c.d / 4; }
index_t blockdense_blocks() { return 2; }
index_t blockdense_rank(const Config& c) { return c.d / 3 / 2 * 2; }  // a multiple of the blocks

const double kInitStd = 0.02;

std::uint64_t guide_seed(std::uint64_t layer_seed) {
  return ffnkit::splitmix64(layer_seed ^ 0x5e1f);
}

Model<Linear>::LayerFactory dense_layers() {
  return
      [](index_t in, index_t out, std::uint64_t s) { return random_linear(in, out, s, kInitStd); };
}
Model<LR>::LayerFactory lowrank_layers(const Config& c) {
  const index_t r = lowrank_rank(c);
  return [r](index_t in, index_t out, std::uint64_t s) {
    return LR::random(in, out, r, s, true, kInitStd);
  };
}
Model<BD>::LayerFactory blockdense_layers(const Config& c) {
  const index_t r = blockdense_rank(c);
  return [r](index_t in, index_t out, std::uint64_t s) {
    return BD::random(in, out, blockdense_blocks(), r, s, true, kInitStd);
  };
}
// The same structured layer (same seed, so the same init) under a dense guide that decays over
// the first `ratio` of `steps` optimizer steps, with the stochastic FLOP reduction on.
template <class S>
typename Model<SelfGuided<S>>::LayerFactory guided(
    std::function<S(index_t, index_t, std::uint64_t)> make, index_t steps, double ratio = 0.5) {
  return [make, steps, ratio](index_t in, index_t out, std::uint64_t s) {
    return SelfGuided<S>(make(in, out, s), AlphaSchedule::cosine(steps, ratio), true,
                         guide_seed(s));
  };
}

// Expected training FLOPs of one step (3x the forward's matmul FLOPs) of a model whose FFN
// projections are structured with `s_flops` each (per token) and dense-guided at weight α.
struct StepCost {
  double other = 0;  // input projection and head, per token
  std::vector<double> s_flops, dense_flops;
  double operator()(double alpha, index_t batch) const {
    double f = other;
    for (std::size_t i = 0; i < s_flops.size(); ++i)
      f += alpha == 0.0 ? s_flops[i]
                        : (alpha == 1.0 ? dense_flops[i] : s_flops[i] + alpha * dense_flops[i]);
    return 3.0 * static_cast<double>(batch) * f;
  }
};

template <class S>
StepCost step_cost(const Config& c, const std::function<S(index_t, index_t, std::uint64_t)>& make) {
  StepCost k;
  k.other = 2.0 * static_cast<double>(c.window * c.embed * c.d + c.d * kVocab);
  for (index_t l = 0; l < c.blocks; ++l) {
    k.s_flops.push_back(make(c.d, c.d_ff, 1).flops_per_token());
    k.s_flops.push_back(make(c.d_ff, c.d, 1).flops_per_token());
    k.dense_flops.push_back(2.0 * static_cast<double>(c.d * c.d_ff));
    k.dense_flops.push_back(2.0 * static_cast<double>(c.d * c.d_ff));
  }
  return k;
}

// The largest step count whose expected self-guided FLOPs fit `plain_steps` plain steps.
index_t flop_matched_steps(const StepCost& cost, index_t plain_steps, index_t batch, double ratio) {
  const double budget = static_cast<double>(plain_steps) * cost(0.0, batch);
  for (index_t n = plain_steps; n > 0; --n) {
    const AlphaSchedule sched = AlphaSchedule::cosine(n, ratio);
    double total = 0;
    for (index_t t = 0; t < n; ++t) total += cost(sched.alpha(t), batch);
    if (total <= budget) return n;
  }
  return 1;
}

// ------------------------------------------------------------------------------------------------
// The experiment.
// ------------------------------------------------------------------------------------------------
// `only`: a comma-separated list of run names to run (all when empty); `lr`: the peak learning
// rate of every run (0: TrainOptions' default).
int full(const std::string& out_dir, index_t steps, bool variants, const std::string& only,
         double lr) {
  const Corpus corpus = load_fortunes();
  std::printf("corpus: %zu files, %zu fortunes, %zu train / %zu validation characters\n",
              corpus.files, corpus.fortunes, corpus.train.size(), corpus.val.size());
  const Config cfg;  // d = 192, d_ff = 768, 3 blocks, window 32, embeddings 16
  TrainOptions o;
  o.steps = steps;
  if (lr > 0) o.lr = lr;
  std::vector<RunResult> results;
  auto want = [&](const std::string& name) {
    return only.empty() || ("," + only + ",").find("," + name + ",") != std::string::npos;
  };
  const std::uint64_t seed = 42;  // every run: the same init for the same layer type, same batches

  auto lr_make = std::function<LR(index_t, index_t, std::uint64_t)>(lowrank_layers(cfg));
  auto bd_make = std::function<BD(index_t, index_t, std::uint64_t)>(blockdense_layers(cfg));
  // A self-guided run whose guides decay over the first `ratio` of its steps; FLOP-matched to
  // `steps` plain steps unless `equal_steps`.
  auto run_guided = [&](const std::string& name, auto make, double ratio, bool equal_steps) {
    if (!want(name)) return;
    using S = typename decltype(make)::result_type;
    TrainOptions og = o;
    og.steps =
        equal_steps ? steps : flop_matched_steps(step_cost(cfg, make), steps, o.batch, ratio);
    std::printf("%s: %lld steps, guide over the first %.0f%%\n", name.c_str(),
                static_cast<long long>(og.steps), 100 * ratio);
    Model<SelfGuided<S>> m(cfg, guided<S>(make, og.steps, ratio), seed);
    results.push_back(train(name, m, corpus, og));
  };

  if (!variants) {
    if (want("dense")) {
      Model<Linear> m(cfg, dense_layers(), seed);
      results.push_back(train("dense", m, corpus, o));
    }
    if (want("lowrank")) {
      Model<LR> m(cfg, lr_make, seed);
      results.push_back(train("lowrank", m, corpus, o));
    }
    run_guided("lowrank-guided", lr_make, 0.5, false);
    if (want("blockdense")) {
      Model<BD> m(cfg, bd_make, seed);
      results.push_back(train("blockdense", m, corpus, o));
    }
    run_guided("blockdense-guided", bd_make, 0.5, false);
  } else {
    // What else was tried: a guide over the first quarter only (cheaper, so more steps at the
    // same FLOPs), and the paper's half-length guide without FLOP matching (more FLOPs).
    run_guided("lowrank-guided-q", lr_make, 0.25, false);
    run_guided("lowrank-guided-eqsteps", lr_make, 0.5, true);
    run_guided("blockdense-guided-q", bd_make, 0.25, false);
    run_guided("blockdense-guided-eqsteps", bd_make, 0.5, true);
  }
  const std::string prefix = out_dir + (variants ? "/self_guided_variants" : "/self_guided");

  const std::string csv = prefix + "_curves.csv";
  if (FILE* f = std::fopen(csv.c_str(), "w")) {
    std::fprintf(f, "run,step,train_flops,train_loss,val_loss,alpha,seconds,cpu_seconds\n");
    for (const auto& r : results)
      for (const auto& p : r.curve)
        std::fprintf(f, "%s,%lld,%.6e,%.5f,%.5f,%.4f,%.2f,%.2f\n", r.name.c_str(),
                     static_cast<long long>(p.step), p.train_flops, p.train_loss, p.val_loss,
                     p.alpha, p.seconds, p.cpu_seconds);
    std::fclose(f);
    std::printf("wrote %s\n", csv.c_str());
  }

  // The plot: validation loss against training FLOPs (the comparison the experiment is about)
  // and against optimizer steps, and the training loss (where loss spikes would show).
  const std::string png = prefix + ".png";
  const std::string gp = prefix + ".gnuplot";
  if (FILE* f = std::fopen(gp.c_str(), "w")) {
    std::fprintf(f,
                 "set terminal pngcairo size 1500,500 font ',10'\nset output '%s'\n"
                 "set datafile separator ','\nset key top right\nset grid\n"
                 "set multiplot layout 1,3\nset yrange [1.9:3.0]\n",
                 png.c_str());
    struct Panel {
      const char *title, *xlabel, *x;
      int y;
    };
    const Panel panels[] = {
        {"validation loss (nats/char)", "training FLOPs (1e12)", "($3/1e12)", 5},
        {"validation loss (nats/char)", "optimizer step", "2", 5},
        {"training loss, mean since the previous point", "training FLOPs (1e12)", "($3/1e12)", 4}};
    for (const Panel& pn : panels) {
      std::fprintf(f, "set title '%s'\nset xlabel '%s'\nplot ", pn.title, pn.xlabel);
      for (std::size_t i = 0; i < results.size(); ++i)
        std::fprintf(f,
                     "%s'%s' using %s:(strcol(1) eq '%s' ? $%d : 1/0) with lines lw 2 title '%s'",
                     i ? ", " : "", csv.c_str(), pn.x, results[i].name.c_str(), pn.y,
                     results[i].name.c_str());
      std::fprintf(f, "\n");
    }
    std::fprintf(f, "unset multiplot\n");
    std::fclose(f);
    const std::string cmd = "gnuplot '" + gp + "' 2>&1";
    if (std::system("command -v gnuplot >/dev/null 2>&1") == 0 && std::system(cmd.c_str()) == 0)
      std::printf("wrote %s\n", png.c_str());
    else
      std::printf("gnuplot not found or failed: no plot (apt-get install -y gnuplot-nox)\n");
  }

  std::printf(
      "\n| run | parameters (end) | steps | training FLOPs | val loss (nats/char) | perplexity | "
      "wall time (s) | CPU time (s) |\n|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : results) {
    std::printf("| %s | %lld | %lld | %.3e | %.4f | %.3f | %.0f | %.0f |\n", r.name.c_str(),
                static_cast<long long>(r.parameters_final), static_cast<long long>(r.steps),
                r.train_flops, r.val_loss, std::exp(r.val_loss), r.seconds, r.cpu_seconds);
  }
  return 0;
}

// ------------------------------------------------------------------------------------------------
// The self-check (ctest).
// ------------------------------------------------------------------------------------------------
template <class S>
bool check_guided(const char* name, const Corpus& corpus,
                  const std::function<S(index_t, index_t, std::uint64_t)>& make) {
  Config cfg;
  cfg.window = 16;
  cfg.embed = 8;
  cfg.d = 48;
  cfg.d_ff = 192;
  cfg.blocks = 2;
  TrainOptions o;
  o.steps = 300;
  o.batch = 64;
  o.warmup = 30;
  o.lr = 3e-3;
  o.eval_every = 100;
  o.eval_tokens = 2048;
  o.final_eval_tokens = 4096;
  o.verbose = false;
  Model<SelfGuided<S>> m(cfg, guided<S>(make, o.steps, 0.5), 7);

  const index_t t_end = AlphaSchedule::cosine(o.steps, 0.5).decay_steps();  // 150
  bool alpha_ok = true, drop_checked = false, outputs_same = false, memory_ok = false;
  const auto probe = eval_positions(corpus.val, cfg.window, 512);
  const index_t guide_count = 2 * cfg.blocks;
  const std::size_t guide_bytes = static_cast<std::size_t>(cfg.d * cfg.d_ff) * sizeof(float);
  auto after_step = [&](index_t step, AdamW& opt) {
    // α after `step` optimizer steps: ½ (1 + cos(π step / T)) up to T, 0 from T on, every layer.
    const double pi = 3.14159265358979323846;
    const double expect = step < t_end ? 0.5 * (1 + std::cos(pi * step / t_end)) : 0.0;
    for (auto& f : m.ffns())
      alpha_ok &=
          std::abs(f.up.alpha() - expect) < 1e-12 && std::abs(f.down.alpha() - expect) < 1e-12;
    if (step != t_end) return;
    // α has just reached 0: the guides are still held. Dropping them must not change any output,
    // and must free exactly the guides' weights (and their AdamW moments).
    alpha_ok &= m.has_guides();
    m.forward(corpus.val, probe, false);
    const Buf before(
        m.probabilities().begin(),
        m.probabilities().begin() + static_cast<std::ptrdiff_t>(probe.size() * kVocab));
    const std::size_t bytes_before = m.parameter_bytes(), opt_before = opt.state_bytes();
    const std::size_t freed = m.drop_finished_guides(opt);
    m.forward(corpus.val, probe, false);
    const Buf after(m.probabilities().begin(),
                    m.probabilities().begin() + static_cast<std::ptrdiff_t>(probe.size() * kVocab));
    outputs_same = before == after;  // bitwise: with α = 0 the blend is S itself
    memory_ok = !m.has_guides() && freed == guide_count * guide_bytes &&
                bytes_before - m.parameter_bytes() == guide_count * guide_bytes &&
                opt_before - opt.state_bytes() == 2 * guide_count * guide_bytes;
    std::printf(
        "  %s: step %lld, alpha 0: guides dropped, %zu -> %zu parameter bytes (%zu freed, "
        "%lld guides x %zu), optimizer state %zu -> %zu bytes, outputs %s\n",
        name, static_cast<long long>(step), bytes_before, m.parameter_bytes(),
        bytes_before - m.parameter_bytes(), static_cast<long long>(guide_count), guide_bytes,
        opt_before, opt.state_bytes(), outputs_same ? "unchanged" : "CHANGED");
    drop_checked = true;
  };
  const RunResult r = train(name, m, corpus, o, after_step);
  const double first = r.curve.front().val_loss, last = r.val_loss;
  const bool loss_ok = last < 0.8 * first && std::isfinite(last);
  std::printf("  %s: validation loss %.3f -> %.3f over %lld steps (%.1f s): %s; alpha %s\n", name,
              first, last, static_cast<long long>(o.steps), r.seconds,
              loss_ok ? "falls" : "DOES NOT FALL", alpha_ok ? "follows the schedule" : "WRONG");
  return loss_ok && alpha_ok && drop_checked && outputs_same && memory_ok;
}

// The model's hand-written backward (embeddings, RMSNorm, residuals, softmax cross-entropy) and the
// layers' against central differences of the loss, at the largest-gradient entry of every
// parameter tensor. Plain layers only: a SelfGuided forward draws, so its loss is not a function.
template <class Layer>
bool check_gradients(const char* name, const Corpus& corpus,
                     const typename Model<Layer>::LayerFactory& make, const Config& cfg) {
  Model<Layer> m(cfg, make, 3);
  const auto pos = eval_positions(corpus.train, cfg.window, 64);
  m.forward(corpus.train, pos, true);
  m.backward();
  double worst = 0;
  std::size_t checked = 0;
  for (const ParamSlot& s : m.slots()) {
    const Buf& g = *s.grad;
    index_t k = 0;
    for (index_t i = 1; i < s.p.size; ++i)
      if (std::abs(g[i]) > std::abs(g[k])) k = i;
    float* w = s.p.data + k;
    const float w0 = *w, h = 3e-3f;
    *w = w0 + h;
    const double up = m.forward(corpus.train, pos, false);
    const float wp = *w;
    *w = w0 - h;
    const double down = m.forward(corpus.train, pos, false);
    const float wm = *w;
    *w = w0;
    const double fd = (up - down) / (static_cast<double>(wp) - wm);
    // Relative error, with an absolute floor for float32 rounding of the loss.
    worst = std::max(worst, std::abs(fd - g[k]) / (std::abs(g[k]) + 2e-3));
    ++checked;
  }
  const bool ok = worst < 0.05;
  std::printf(
      "  %s: gradients of %zu parameter tensors against finite differences: worst relative "
      "error %.2e %s\n",
      name, checked, worst, ok ? "ok" : "TOO LARGE");
  return ok;
}

int self_check() {
  Corpus corpus;
  try {
    corpus = load_fortunes();
  } catch (const std::exception& e) {
    std::printf("%s\nMISMATCH\n", e.what());
    return 1;
  }
  std::printf("corpus: %zu files, %zu train / %zu validation characters\n", corpus.files,
              corpus.train.size(), corpus.val.size());
  Config cfg;
  cfg.d = 48;
  cfg.d_ff = 192;
  bool ok = check_gradients<Linear>("dense", corpus, dense_layers(), cfg);
  ok &= check_gradients<LR>("lowrank", corpus, lowrank_layers(cfg), cfg);
  ok &= check_gradients<BD>("blockdense", corpus, blockdense_layers(cfg), cfg);
  ok &= check_guided<LR>("lowrank-guided", corpus, lowrank_layers(cfg));
  ok &= check_guided<BD>("blockdense-guided", corpus, blockdense_layers(cfg));
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  bool run_full = false, variants = false;
  std::string only;
  double lr = 0;
  std::string out_dir = ".";
  index_t steps = 3000;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--full")) {
      run_full = true;
    } else if (!std::strcmp(argv[i], "--variants")) {
      run_full = variants = true;
    } else if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_dir = argv[++i];
    } else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
      only = argv[++i];
    } else if (!std::strcmp(argv[i], "--lr") && i + 1 < argc) {
      lr = std::atof(argv[++i]);
    } else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = std::atoll(argv[++i]);
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--full|--variants [--out DIR] [--steps N] [--only RUN,...] [--lr X]]\n",
          argv[0]);
      return 2;
    }
  }
  return run_full ? full(out_dir, steps, variants, only, lr) : self_check();
}
