// A character-level language model trained with ffnkit's layers, written plainly as a template.
//
//   window of the previous W characters -> embeddings (concatenated, W e values)
//   -> input projection to width d
//   -> L residual blocks  h = h + FFN(RMSNorm(h))
//   -> final RMSNorm -> linear head -> softmax over the vocabulary, cross-entropy loss.
//
// Training: AdamW (decoupled weight decay on matrices only), global gradient-norm clipping, a
// cosine learning rate with linear warm-up, seeded batches and a fixed train/validation split.
//
// The FFN is generic over its projection layer (`Ffn<Layer>`): ffnkit's LowRankLinear,
// BlockDenseLinear, their SelfGuided<> wrappers, or ffnkit's DenseLinear (`Linear` below); all run
// on the same GEMM kernels, so wall times compare like with like.
//
// Everything is float32 and single-process; the GEMMs are threaded by Eigen/OpenBLAS/OpenMP.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <ffnkit/ffnkit.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace char_lm {

using ffnkit::GradList;
using ffnkit::index_t;
using ffnkit::MatrixView;
using ffnkit::ParamView;
using Buf = std::vector<float>;

inline MatrixView<float> view(Buf& b, index_t rows, index_t cols) {
  return MatrixView<float>(b.data(), rows, cols);
}
inline MatrixView<const float> cview(const Buf& b, index_t rows, index_t cols) {
  return MatrixView<const float>(b.data(), rows, cols);
}
// Resizes only when too small: the activation buffers are reused across steps.
inline Buf& sized(Buf& b, std::size_t n) {
  if (b.size() < n) b.resize(n);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Data: the fortunes (Debian package `fortunes`), one fortune per unit, split 9:1 by fortune.
// ---------------------------------------------------------------------------------------------

// A fixed alphabet, so ids never depend on which files are installed: '\n' is 0 and the printable
// ASCII characters 32..126 are 1..95. Everything else (UTF-8 bytes, control characters) is
// dropped; a backspace also drops the character before it (the files use "_\bX" overstriking).
constexpr index_t kVocab = 96;
inline int char_id(unsigned char c) { return c == '\n' ? 0 : (c >= 32 && c <= 126 ? c - 31 : -1); }
inline char id_char(int id) { return id == 0 ? '\n' : static_cast<char>(id + 31); }

struct Corpus {
  std::vector<std::uint8_t> train, val;  // character ids
  std::size_t files = 0, fortunes = 0;
};

// Reads every text file in `dir` (sorted by name, so the split is the same on every machine),
// splits it at the "%" separator lines and sends every `val_every`-th fortune to validation:
// validation then covers every file's topics instead of only the last files'.
inline Corpus load_fortunes(const std::string& dir = "/usr/share/games/fortunes",
                            int val_every = 10) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw std::runtime_error("no fortunes under " + dir +
                             " (install the Debian package: apt-get install -y fortunes)");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    // .dat are strfile indexes, .u8 symlinks duplicate the text files; ascii-art is not prose.
    if (ext == ".dat" || ext == ".u8" || name == "ascii-art" || !fs::is_regular_file(e.path()))
      continue;
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  Corpus c;
  c.files = files.size();
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    std::string line;
    std::vector<std::uint8_t> fortune;
    auto flush = [&] {
      if (fortune.empty()) return;
      auto& dst = (c.fortunes++ % static_cast<std::size_t>(val_every)) ==
                          static_cast<std::size_t>(val_every - 1)
                      ? c.val
                      : c.train;
      dst.insert(dst.end(), fortune.begin(), fortune.end());
      dst.push_back(0);  // a blank line between fortunes
      fortune.clear();
    };
    while (std::getline(in, line)) {
      if (line == "%") {
        flush();
        continue;
      }
      for (unsigned char ch : line) {
        if (ch == '\b') {
          if (!fortune.empty()) fortune.pop_back();
          continue;
        }
        const int id = char_id(ch == '\t' ? ' ' : ch);
        if (id >= 0) fortune.push_back(static_cast<std::uint8_t>(id));
      }
      fortune.push_back(0);
    }
    flush();
  }
  if (c.train.size() < 1000 || c.val.size() < 1000)
    throw std::runtime_error("too little text under " + dir);
  return c;
}

// ---------------------------------------------------------------------------------------------
// The dense layer: ffnkit's DenseLinear, with N(0, stddev²) weights and a zero bias.
// ---------------------------------------------------------------------------------------------
using Linear = ffnkit::DenseLinear<float>;

inline Linear random_linear(index_t in, index_t out, std::uint64_t seed, double stddev) {
  Buf w(static_cast<std::size_t>(in * out)), b(static_cast<std::size_t>(out), 0.0f);
  ffnkit::fill_normal(w.data(), in * out, seed, 0.0, stddev);
  return Linear(in, out, w.data(), b.data());
}

// ---------------------------------------------------------------------------------------------
// Per-layer hooks: what differs between a plain layer and a SelfGuided one.
// ---------------------------------------------------------------------------------------------
template <class L>
struct is_self_guided : std::false_type {};
template <class S>
struct is_self_guided<ffnkit::SelfGuided<S>> : std::true_type {};

// Training forward: a SelfGuided layer draws its stochastic decision here.
template <class L>
void train_forward(L& l, const MatrixView<const float>& x, const MatrixView<float>& y) {
  l.forward(x, y);
}
// Evaluation forward: deterministic. A SelfGuided layer evaluates the full blend α W x + (1 − α)
// S(x) + b (the expectation of its stochastic forward) via recompute(), which neither draws from
// nor advances the decision RNG, so evaluating never changes the training run.
template <class L>
void eval_forward(L& l, const MatrixView<const float>& x, const MatrixView<float>& y) {
  if constexpr (is_self_guided<L>::value) {
    ffnkit::SelfGuidedDecision d;
    d.step = l.step_count();
    d.alpha = l.alpha();
    d.used_guide = l.has_guide() && d.alpha > 0.0;
    l.recompute(x, y, d);
  } else {
    l.forward(x, y);
  }
}

// FLOPs the last training forward of `l` actually executed, per token: the dense branch counts
// only when that forward's stochastic draw ran it (and S is skipped when α = 1).
template <class L>
double executed_flops_per_token(const L& l) {
  if constexpr (is_self_guided<L>::value) {
    const double s = l.structured().flops_per_token();
    const double dense = 2.0 * static_cast<double>(l.in_features() * l.out_features());
    const auto& d = l.last_decision();
    const double a = d.effective_alpha();
    return a == 0.0 ? s : (a == 1.0 ? dense : dense + s);
  } else {
    return l.flops_per_token();
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = g * x / sqrt(mean(x²) + eps), per token.
// ---------------------------------------------------------------------------------------------
struct RMSNorm {
  index_t d = 0;
  Buf g;
  float eps = 1e-5f;

  explicit RMSNorm(index_t dim = 0) : d(dim), g(static_cast<std::size_t>(dim), 1.0f) {}

  // Saves r = 1/rms per token for backward.
  void forward(const float* x, float* y, float* r, index_t tokens) const {
    for (index_t t = 0; t < tokens; ++t) {
      const float* xr = x + t * d;
      double ss = 0;
      for (index_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float rt = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
      r[t] = rt;
      for (index_t i = 0; i < d; ++i) y[t * d + i] = g[i] * xr[i] * rt;
    }
  }
  // dx += dL/dx (accumulates: x is on the residual stream); dg overwritten.
  //   y_i = g_i x_i r  =>  dx_i = r g_i dy_i − x_i r³ (Σ_j g_j dy_j x_j) / d.
  void backward(const float* x, const float* r, const float* dy, float* dx, float* dg,
                index_t tokens) const {
    std::fill(dg, dg + d, 0.0f);
    for (index_t t = 0; t < tokens; ++t) {
      const float* xr = x + t * d;
      const float* dyr = dy + t * d;
      const float rt = r[t];
      double dot = 0;
      for (index_t i = 0; i < d; ++i) dot += static_cast<double>(g[i]) * dyr[i] * xr[i];
      const float c = static_cast<float>(dot) * rt * rt * rt / static_cast<float>(d);
      for (index_t i = 0; i < d; ++i) {
        dx[t * d + i] += rt * g[i] * dyr[i] - c * xr[i];
        dg[i] += dyr[i] * xr[i] * rt;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------------
// FFN(x) = down(GELU_tanh(up(x))), the paper's FFN (docs/math.md §3.8), over any projection layer.
// ---------------------------------------------------------------------------------------------
template <class Layer>
struct Ffn {
  Layer up, down;
  GradList<float> g_up, g_down;
  Buf pre, act, dact;  // kept from forward for backward

  Ffn(Layer u, Layer d) : up(std::move(u)), down(std::move(d)) { reset_grads(); }
  // After a SelfGuided layer drops its guide its params() shrink; the gradient buffers follow.
  void reset_grads() {
    g_up = up.make_grads();
    g_down = down.make_grads();
  }
  index_t d_ff() const { return up.out_features(); }

  void forward(const MatrixView<const float>& x, const MatrixView<float>& y, bool train) {
    const index_t t = x.rows, f = d_ff();
    const auto prev = view(sized(pre, t * f), t, f), actv = view(sized(act, t * f), t, f);
    train ? train_forward(up, x, prev) : eval_forward(up, x, prev);
    std::copy_n(pre.begin(), t * f, act.begin());
    ffnkit::cpu::bias_activation_inplace(actv, static_cast<const float*>(nullptr),
                                         ffnkit::Activation::kGeluTanh);
    const MatrixView<const float> a(actv);
    train ? train_forward(down, a, y) : eval_forward(down, a, y);
  }
  // Runs after forward(train = true) on the same x. dx overwritten.
  void backward(const MatrixView<const float>& x, const MatrixView<const float>& dy,
                const MatrixView<float>& dx) {
    const index_t t = x.rows, f = d_ff();
    const auto dactv = view(sized(dact, t * f), t, f);
    down.backward(cview(act, t, f), dy, dactv, g_down);
    ffnkit::cpu::multiply_activation_grad(dactv, cview(pre, t, f), ffnkit::Activation::kGeluTanh);
    up.backward(x, MatrixView<const float>(dactv), dx, g_up);
  }
  double executed_flops_per_token() const {
    return char_lm::executed_flops_per_token(up) + char_lm::executed_flops_per_token(down);
  }
};

// ---------------------------------------------------------------------------------------------
// AdamW with global-norm clipping. State is keyed by the parameter's address, so layers may drop
// parameters (a SelfGuided guide) mid-run: forget() frees that parameter's moments too.
// ---------------------------------------------------------------------------------------------
struct ParamSlot {
  ParamView<float> p;
  const Buf* grad;
  bool decay;  // weight decay on matrices only, not on biases, norm gains or embeddings
};

struct AdamW {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, clip = 1.0;
  struct Moments {
    Buf m, v;
  };
  std::map<const float*, Moments> state;
  index_t t = 0;

  // Returns the gradient norm before clipping.
  double step(const std::vector<ParamSlot>& slots, double lr) {
    double sq = 0;
    for (const auto& s : slots)
      for (index_t i = 0; i < s.p.size; ++i) sq += static_cast<double>((*s.grad)[i]) * (*s.grad)[i];
    const double norm = std::sqrt(sq);
    const double scale = norm > clip ? clip / norm : 1.0;
    ++t;
    const double c1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    const double c2 = 1.0 - std::pow(beta2, static_cast<double>(t));
    for (const auto& s : slots) {
      Moments& st = state[s.p.data];
      if (st.m.empty()) {
        st.m.assign(static_cast<std::size_t>(s.p.size), 0.0f);
        st.v.assign(static_cast<std::size_t>(s.p.size), 0.0f);
      }
      const float b1 = static_cast<float>(beta1), b2 = static_cast<float>(beta2);
      const float step_size = static_cast<float>(lr / c1), inv_c2 = static_cast<float>(1.0 / c2);
      const float decay = s.decay ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
      const float sc = static_cast<float>(scale), e = static_cast<float>(eps);
      float* w = s.p.data;
      const float* g = s.grad->data();
      for (index_t i = 0; i < s.p.size; ++i) {
        const float gi = g[i] * sc;
        st.m[i] = b1 * st.m[i] + (1 - b1) * gi;
        st.v[i] = b2 * st.v[i] + (1 - b2) * gi * gi;
        w[i] = w[i] * decay - step_size * st.m[i] / (std::sqrt(st.v[i] * inv_c2) + e);
      }
    }
    return norm;
  }
  void forget(const float* p) { state.erase(p); }
  std::size_t state_bytes() const {
    std::size_t n = 0;
    for (const auto& kv : state) n += (kv.second.m.capacity() + kv.second.v.capacity());
    return n * sizeof(float);
  }
};

// Linear warm-up to `peak`, then cosine decay to `floor` × peak at the last step.
inline double learning_rate(index_t step, index_t total, index_t warmup, double peak,
                            double floor = 0.1) {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double p = static_cast<double>(step - warmup) / std::max<double>(1.0, total - warmup - 1);
  return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(3.14159265358979323846 * p)));
}

// ---------------------------------------------------------------------------------------------
// The model.
// ---------------------------------------------------------------------------------------------
struct Config {
  index_t window = 32, embed = 16, d = 192, d_ff = 768, blocks = 3;
};

template <class Layer>
class Model {
 public:
  // make_layer(in, out, seed) builds one FFN projection.
  using LayerFactory = std::function<Layer(index_t in, index_t out, std::uint64_t seed)>;

  Model(const Config& c, const LayerFactory& make_layer, std::uint64_t seed) : cfg_(c) {
    const index_t wide = c.window * c.embed;
    emb_.resize(static_cast<std::size_t>(kVocab * c.embed));
    ffnkit::fill_normal(emb_.data(), kVocab * c.embed, seed + 1, 0.0, 1.0);
    g_emb_.assign(emb_.size(), 0.0f);
    // Unit-scale embeddings and a 1/sqrt(fan-in) projection start the residual stream at unit
    // RMS; the FFNs' and head's 0.02 init (GPT-2's) starts every block close to the identity.
    in_proj_ = random_linear(wide, c.d, seed + 2, 1.0 / std::sqrt(static_cast<double>(wide)));
    head_ = random_linear(c.d, kVocab, seed + 3, 0.02);
    g_in_ = in_proj_.make_grads();
    g_head_ = head_.make_grads();
    for (index_t l = 0; l < c.blocks; ++l) {
      norms_.emplace_back(c.d);
      ffns_.emplace_back(make_layer(c.d, c.d_ff, seed + 100 + 2 * l),
                         make_layer(c.d_ff, c.d, seed + 101 + 2 * l));
    }
    final_norm_ = RMSNorm(c.d);
    g_norm_.assign(static_cast<std::size_t>(c.blocks + 1), Buf(static_cast<std::size_t>(c.d)));
  }

  const Config& config() const { return cfg_; }
  std::vector<Ffn<Layer>>& ffns() { return ffns_; }

  // Mean cross-entropy (nats) of predicting data[pos] from data[pos − window .. pos − 1], for each
  // pos in `positions`. train = true keeps what backward() needs and lets SelfGuided layers draw.
  double forward(const std::vector<std::uint8_t>& data, const std::vector<index_t>& positions,
                 bool train) {
    const index_t t = static_cast<index_t>(positions.size()), d = cfg_.d, e = cfg_.embed;
    const index_t wide = cfg_.window * e, L = cfg_.blocks;
    tokens_ = t;
    ctx_.resize(static_cast<std::size_t>(t * cfg_.window));
    targets_.resize(static_cast<std::size_t>(t));
    sized(x0_, t * wide);
    for (index_t i = 0; i < t; ++i) {
      const index_t p = positions[i];
      targets_[i] = data[p];
      for (index_t k = 0; k < cfg_.window; ++k) {
        const std::uint8_t c = data[p - cfg_.window + k];
        ctx_[i * cfg_.window + k] = c;
        std::copy_n(&emb_[c * e], e, &x0_[i * wide + k * e]);
      }
    }
    h_.resize(static_cast<std::size_t>(L + 1));
    n_.resize(static_cast<std::size_t>(L + 1));
    r_.resize(static_cast<std::size_t>(L + 1));
    in_proj_.forward(cview(x0_, t, wide), view(sized(h_[0], t * d), t, d));
    flops_ = in_proj_.flops_per_token();
    for (index_t l = 0; l < L; ++l) {
      norms_[l].forward(h_[l].data(), sized(n_[l], t * d).data(), sized(r_[l], t).data(), t);
      auto& out = sized(h_[l + 1], t * d);
      ffns_[l].forward(cview(n_[l], t, d), view(out, t, d), train);
      for (index_t i = 0; i < t * d; ++i) out[i] += h_[l][i];  // the residual
      flops_ += ffns_[l].executed_flops_per_token();
    }
    final_norm_.forward(h_[L].data(), sized(n_[L], t * d).data(), sized(r_[L], t).data(), t);
    auto& logits = sized(logits_, t * kVocab);
    head_.forward(cview(n_[L], t, d), view(logits, t, kVocab));
    flops_ += head_.flops_per_token();
    flops_ *= static_cast<double>(t);
    // Softmax and cross-entropy; logits_ becomes the probabilities, which backward() needs.
    double loss = 0;
    for (index_t i = 0; i < t; ++i) {
      float* z = &logits[i * kVocab];
      const float mx = *std::max_element(z, z + kVocab);
      double sum = 0;
      for (index_t v = 0; v < kVocab; ++v) sum += (z[v] = std::exp(z[v] - mx));
      for (index_t v = 0; v < kVocab; ++v) z[v] = static_cast<float>(z[v] / sum);
      loss -= std::log(std::max(z[targets_[i]], 1e-30f));
    }
    return loss / static_cast<double>(t);
  }

  // Gradients of the last training forward's mean loss, into the layers' buffers.
  void backward() {
    const index_t t = tokens_, d = cfg_.d, e = cfg_.embed, wide = cfg_.window * e, L = cfg_.blocks;
    auto& dz = sized(dlogits_, t * kVocab);
    for (index_t i = 0; i < t * kVocab; ++i) dz[i] = logits_[i] / static_cast<float>(t);
    for (index_t i = 0; i < t; ++i) dz[i * kVocab + targets_[i]] -= 1.0f / static_cast<float>(t);
    auto& dn = sized(dn_, t * d);
    head_.backward(cview(n_[L], t, d), cview(dz, t, kVocab), view(dn, t, d), g_head_);
    auto& dh = sized(dh_, t * d);  // dL/dh on the residual stream
    std::fill_n(dh.begin(), t * d, 0.0f);
    final_norm_.backward(h_[L].data(), r_[L].data(), dn.data(), dh.data(), g_norm_[L].data(), t);
    for (index_t l = L - 1; l >= 0; --l) {
      // h_{l+1} = h_l + FFN(norm(h_l)): dh flows straight through and also via the FFN.
      ffns_[l].backward(cview(n_[l], t, d), cview(dh, t, d), view(dn, t, d));
      norms_[l].backward(h_[l].data(), r_[l].data(), dn.data(), dh.data(), g_norm_[l].data(), t);
    }
    auto& dx0 = sized(dx0_, t * wide);
    in_proj_.backward(cview(x0_, t, wide), cview(dh, t, d), view(dx0, t, wide), g_in_);
    std::fill(g_emb_.begin(), g_emb_.end(), 0.0f);
    for (index_t i = 0; i < t; ++i)
      for (index_t k = 0; k < cfg_.window; ++k) {
        float* ge = &g_emb_[ctx_[i * cfg_.window + k] * e];
        const float* src = &dx0[i * wide + k * e];
        for (index_t j = 0; j < e; ++j) ge[j] += src[j];
      }
  }

  // Every parameter with its gradient buffer, for the optimizer.
  std::vector<ParamSlot> slots() {
    std::vector<ParamSlot> s;
    auto add = [&](std::vector<ParamView<float>> ps, const GradList<float>& gs) {
      for (std::size_t i = 0; i < ps.size(); ++i)
        s.push_back({ps[i], &gs[i], ps[i].shape.size() >= 2});
    };
    s.push_back({{"emb", {kVocab, cfg_.embed}, emb_.data(), kVocab * cfg_.embed}, &g_emb_, false});
    add(in_proj_.params(), g_in_);
    for (index_t l = 0; l < cfg_.blocks; ++l) {
      s.push_back({{"norm", {cfg_.d}, norms_[l].g.data(), cfg_.d}, &g_norm_[l], false});
      add(ffns_[l].up.params(), ffns_[l].g_up);
      add(ffns_[l].down.params(), ffns_[l].g_down);
    }
    s.push_back({{"norm", {cfg_.d}, final_norm_.g.data(), cfg_.d}, &g_norm_[cfg_.blocks], false});
    add(head_.params(), g_head_);
    return s;
  }

  index_t parameter_count() {
    index_t n = 0;
    for (const auto& s : slots()) n += s.p.size;
    return n;
  }
  // Bytes the parameters hold right now (a dropped guide no longer counts).
  std::size_t parameter_bytes() { return static_cast<std::size_t>(parameter_count()) * 4; }
  // Matmul FLOPs the last forward actually executed (all tokens); a training step costs about 3x
  // that (backward is two GEMMs per forward GEMM). Norms, softmax and the optimizer are ignored.
  double last_forward_flops() const { return flops_; }

  // SelfGuided only: advances every layer's α schedule by one optimizer step.
  void advance_schedule() {
    if constexpr (is_self_guided<Layer>::value)
      for (auto& f : ffns_) {
        f.up.step();
        f.down.step();
      }
  }
  // SelfGuided only: drops each guide whose α has reached 0 and frees the optimizer's moments for
  // it too. Returns the bytes of guide weights freed.
  std::size_t drop_finished_guides(AdamW& opt) {
    std::size_t freed = 0;
    if constexpr (is_self_guided<Layer>::value) {
      for (auto& f : ffns_) {
        bool dropped = false;
        for (Layer* l : {&f.up, &f.down}) {
          if (l->has_guide() && l->alpha() == 0.0) {
            opt.forget(l->guide());
            freed += l->guide_bytes();
            l->drop_guide();
            dropped = true;
          }
        }
        if (dropped) f.reset_grads();
      }
    } else {
      (void)opt;
    }
    return freed;
  }
  bool has_guides() const {
    if constexpr (is_self_guided<Layer>::value)
      for (const auto& f : ffns_)
        if (f.up.has_guide() || f.down.has_guide()) return true;
    return false;
  }
  double alpha() const {
    if constexpr (is_self_guided<Layer>::value) return ffns_.front().up.alpha();
    return 0.0;
  }
  const Buf& probabilities() const { return logits_; }

 private:
  Config cfg_;
  Buf emb_, g_emb_;
  Linear in_proj_, head_;
  GradList<float> g_in_, g_head_;
  std::vector<RMSNorm> norms_;
  std::vector<Ffn<Layer>> ffns_;
  RMSNorm final_norm_;
  std::vector<Buf> g_norm_;
  // Activations of the last forward.
  index_t tokens_ = 0;
  std::vector<std::uint8_t> ctx_, targets_;
  Buf x0_, logits_, dlogits_, dn_, dh_, dx0_;
  std::vector<Buf> h_, n_, r_;
  double flops_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The training loop.
// ---------------------------------------------------------------------------------------------
struct TrainOptions {
  index_t steps = 1000, batch = 128, warmup = 100;
  double lr = 2e-3;
  index_t eval_every = 100, eval_tokens = 8192, final_eval_tokens = 32768;
  std::uint64_t data_seed = 1234;
  bool verbose = true;
};

struct CurvePoint {
  index_t step;
  double train_flops, train_loss, val_loss, alpha, seconds, cpu_seconds;
};

struct RunResult {
  std::string name;
  index_t steps = 0, parameters_final = 0;
  // Wall time and process CPU time of the training steps (evaluations excluded). With one thread
  // on a machine shared with other jobs, CPU time is the steadier measure of the work done.
  double train_flops = 0, val_loss = 0, seconds = 0, cpu_seconds = 0;
  std::size_t guide_bytes_freed = 0;
  std::vector<CurvePoint> curve;
};

// Evenly spaced validation positions: the same fixed set for every run and every evaluation.
inline std::vector<index_t> eval_positions(const std::vector<std::uint8_t>& data, index_t window,
                                           index_t count) {
  std::vector<index_t> p;
  const index_t n = static_cast<index_t>(data.size()) - window;
  count = std::min(count, n);
  for (index_t i = 0; i < count; ++i) p.push_back(window + i * n / count);
  return p;
}

template <class Layer>
double evaluate(Model<Layer>& m, const std::vector<std::uint8_t>& data,
                const std::vector<index_t>& positions, index_t chunk = 2048) {
  double sum = 0;
  for (std::size_t i = 0; i < positions.size(); i += static_cast<std::size_t>(chunk)) {
    const std::vector<index_t> part(
        positions.begin() + static_cast<std::ptrdiff_t>(i),
        positions.begin() +
            static_cast<std::ptrdiff_t>(std::min(positions.size(), i + std::size_t(chunk))));
    sum += m.forward(data, part, false) * static_cast<double>(part.size());
  }
  return sum / static_cast<double>(positions.size());
}

// after_step(step, opt), if given, runs after each optimizer step and schedule advance, before
// finished guides are dropped (the self-check uses it to look at the model around the drop).
template <class Layer>
RunResult train(const std::string& name, Model<Layer>& m, const Corpus& c, const TrainOptions& o,
                const std::function<void(index_t, AdamW&)>& after_step = {}) {
  using Clock = std::chrono::steady_clock;
  RunResult res;
  res.name = name;
  res.steps = o.steps;
  const index_t w = m.config().window;
  const auto eval_pos = eval_positions(c.val, w, o.eval_tokens);
  AdamW opt;
  ffnkit::Rng rng(o.data_seed);  // the same batches, in the same order, for every run
  std::vector<index_t> batch(static_cast<std::size_t>(o.batch));
  double train_sum = 0, seconds = 0, cpu = 0;
  index_t train_n = 0;
  auto record = [&](index_t step) {
    const double val = evaluate(m, c.val, eval_pos);  // not timed, not counted
    res.curve.push_back(
        {step, res.train_flops, train_n ? train_sum / train_n : val, val, m.alpha(), seconds, cpu});
    if (o.verbose)
      std::printf("  %-18s step %5lld  train %.4f  val %.4f  alpha %.3f  %.1f s\n", name.c_str(),
                  static_cast<long long>(step), train_n ? train_sum / train_n : val, val, m.alpha(),
                  seconds);
    std::fflush(stdout);
    train_sum = 0;
    train_n = 0;
  };
  record(0);
  const index_t n = static_cast<index_t>(c.train.size());
  for (index_t step = 0; step < o.steps; ++step) {
    for (auto& p : batch) p = w + static_cast<index_t>(rng.next_u64() % std::uint64_t(n - w));
    const auto t0 = Clock::now();
    const std::clock_t c0 = std::clock();
    const double loss = m.forward(c.train, batch, true);
    m.backward();
    opt.step(m.slots(), learning_rate(step, o.steps, o.warmup, o.lr));
    m.advance_schedule();
    if (after_step) after_step(step + 1, opt);
    res.guide_bytes_freed += m.drop_finished_guides(opt);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    cpu += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    res.train_flops += 3.0 * m.last_forward_flops();
    train_sum += loss;
    ++train_n;
    if ((step + 1) % o.eval_every == 0 || step + 1 == o.steps) record(step + 1);
  }
  res.seconds = seconds;
  res.cpu_seconds = cpu;
  res.val_loss = evaluate(m, c.val, eval_positions(c.val, w, o.final_eval_tokens));
  res.parameters_final = m.parameter_count();
  return res;
}

}  // namespace char_lm
