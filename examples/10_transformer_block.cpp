// Example 10: a pre-norm transformer block as an inference engine would run it, with ffnkit's
// layers loaded from one safetensors file. The template to copy:
//
//   h   = x + O(Attention(RMSNorm(x) Wqkv^T + bqkv))      RMSNorm deferred into the QKV product
//   out = h + FFN(RMSNorm(h))                              RMSNorm deferred into the FFN's first
//                                                          factor (LowRank, BlockDense), or an FFF
//
//   1. writes `transformer_block.safetensors` from seeded random weights, with PyTorch's names;
//   2. loads the layers from it (memory-mapped) and runs the block in float32 on the engine's own
//      buffers: Q, K and V are strided views into the one QKV activation, each head's Softmax·V
//      reads its V slice in place and writes its slice of the context, and every layer gets a
//      caller-owned workspace, so the forward makes no allocation;
//   3. checks the output against a plain unfused float64 computation of the same block (every
//      norm applied, every product dense, the same weights read back from the file).
//
// Usage: example_10_transformer_block [--ffn=lowrank|blockdense|fff] [--tokens=N]
// Exits non-zero on a mismatch (prints OK otherwise), so it doubles as a test.
//
// Why the FFN's norm can be deferred for the structured FFNs but not the FFF: RMSNorm(h) =
// r (γ ⊙ h) with one scalar r per token, and the up-projection's first factor is linear, so
// Up(RMSNorm(h)) = r · (A diag(γ)) h + b: fold γ into A at load time, run the factor on the raw h,
// and apply r with the bias afterwards (docs/math.md §7). The FFF's routing compares λ = <x, w> + b
// with 0 and the bias does not scale with r, so its input is normalized explicitly.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/io/layers.hpp>
#include <ffnkit/reference.hpp>
#include <string>
#include <vector>

namespace {

using namespace ffnkit;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;

constexpr index_t kModel = 256, kHeads = 4, kHeadDim = kModel / kHeads, kHidden = 1024;
constexpr index_t kRank = 128, kBlocks = 4, kFffDepth = 6;
constexpr double kEps = 1e-6;

enum class FfnKind { kLowRank, kBlockDense, kFff };

// 1. The checkpoint, as a PyTorch export would name it.
void write_weights(const std::string& path, FfnKind kind) {
  io::SafetensorsWriter w;
  const auto add_normal = [&](const std::string& name, std::vector<std::int64_t> shape,
                              std::uint64_t seed, double mean, double stddev) {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<float> v(static_cast<std::size_t>(n));
    fill_normal(v.data(), n, seed, mean, stddev);
    w.add(name, shape, v);
  };
  const double s_in = 1.0 / std::sqrt(static_cast<double>(kModel));
  add_normal("block.attn_norm.weight", {kModel}, 1, 1.0, 0.1);
  add_normal("block.attn.qkv.weight", {3 * kModel, kModel}, 2, 0.0, s_in);
  add_normal("block.attn.qkv.bias", {3 * kModel}, 3, 0.0, 0.02);
  add_normal("block.attn.o.weight", {kModel, kModel}, 4, 0.0, s_in);
  add_normal("block.attn.o.bias", {kModel}, 5, 0.0, 0.02);
  add_normal("block.ffn_norm.weight", {kModel}, 6, 1.0, 0.1);
  if (kind == FfnKind::kLowRank) {
    io::save_low_rank_linear(w, "block.ffn.up.",
                             LowRankLinear<float>::random(kModel, kHidden, kRank, 7));
    io::save_low_rank_linear(w, "block.ffn.down.",
                             LowRankLinear<float>::random(kHidden, kModel, kRank, 8));
  } else if (kind == FfnKind::kBlockDense) {
    io::save_block_dense_linear(
        w, "block.ffn.up.", BlockDenseLinear<float>::random(kModel, kHidden, kBlocks, kRank, 7));
    io::save_block_dense_linear(
        w, "block.ffn.down.", BlockDenseLinear<float>::random(kHidden, kModel, kBlocks, kRank, 8));
  } else {
    io::save_fast_feed_forward(w, "block.ffn.",
                               FastFeedForward<float>::random(kModel, kModel, 1, kFffDepth, 9));
  }
  w.write(path);
}

// The structured up-projection with γ folded into its first factor and no bias: Up'(h) = A'h.
template <class Layer>
Layer fold_gamma(const io::SafetensorsFile& f, const std::vector<float>& gamma);

template <>
LowRankLinear<float> fold_gamma(const io::SafetensorsFile& f, const std::vector<float>& gamma) {
  auto lr1 = f.tensor("block.ffn.up.lr1", {kRank, kModel}).to_float();  // [R x d]
  const auto lr2 = f.tensor("block.ffn.up.lr2", {kHidden, kRank}).to_float();
  for (index_t i = 0; i < kRank; ++i)
    for (index_t j = 0; j < kModel; ++j) lr1[i * kModel + j] *= gamma[j];
  return LowRankLinear<float>(kModel, kHidden, kRank, lr1.data(), lr2.data(), nullptr);
}

template <>
BlockDenseLinear<float> fold_gamma(const io::SafetensorsFile& f, const std::vector<float>& gamma) {
  const index_t p = kModel / kBlocks, r = kRank / kBlocks;
  auto blk = f.tensor("block.ffn.up.blkdiag", {kBlocks, r, p}).to_float();
  const auto lr = f.tensor("block.ffn.up.lr", {kHidden, kRank}).to_float();
  for (index_t b = 0; b < kBlocks; ++b)
    for (index_t i = 0; i < r; ++i)
      for (index_t j = 0; j < p; ++j) blk[(b * r + i) * p + j] *= gamma[b * p + j];
  return BlockDenseLinear<float>(kModel, kHidden, kBlocks, kRank, blk.data(), lr.data(), nullptr);
}

// A workspace big enough for every layer the block runs, allocated once (engine start-up).
struct Arena {
  std::vector<std::uint64_t> words;
  void reserve(std::size_t bytes) {
    if (bytes / 8 + 1 > words.size()) words.resize(bytes / 8 + 1);
  }
  Workspace get() { return Workspace{words.data(), words.size() * 8}; }
};

float rms_scale(const float* x, index_t n) {
  double ss = 0;
  for (index_t j = 0; j < n; ++j) ss += static_cast<double>(x[j]) * x[j];
  return static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + kEps));
}

// 2. The block in float32 with ffnkit's layers. Returns the block's output [tokens x d].
std::vector<float> run_block(const std::string& path, FfnKind kind, const std::vector<float>& x,
                             index_t tokens) {
  const auto f = io::SafetensorsFile::open(path);
  const auto qkv = io::load_rms_norm_linear(f, "block.attn_norm.", "block.attn.qkv.", kEps);
  const auto o = io::load_dense_linear(f, "block.attn.o.");
  const SoftmaxLinear<float> softmax_v;
  const auto gamma2 = f.tensor("block.ffn_norm.weight", {kModel}).to_float();

  std::vector<float> qkv_act(static_cast<std::size_t>(tokens * 3 * kModel));
  std::vector<float> scores(static_cast<std::size_t>(tokens * tokens));
  std::vector<float> mask(scores.size(), 0.0f), ctx(static_cast<std::size_t>(tokens * kModel));
  std::vector<float> h(ctx.size()), out(ctx.size());
  for (index_t i = 0; i < tokens; ++i)  // causal: token i sees keys 0..i
    for (index_t j = i + 1; j < tokens; ++j) mask[i * tokens + j] = -INFINITY;
  Arena arena;
  arena.reserve(qkv.workspace_size(tokens));
  arena.reserve(softmax_v.workspace_size(tokens, tokens, kHeadDim));

  // Attention. QKV in one product, the RMSNorm's scale in its epilogue.
  qkv.forward(make_view<const float>(x.data(), tokens, kModel),
              make_view(qkv_act.data(), tokens, 3 * kModel), arena.get());
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  for (index_t hd = 0; hd < kHeads; ++hd) {
    const float* q = qkv_act.data() + hd * kHeadDim;
    const float* k = q + kModel;
    const float* v = q + 2 * kModel;
    const StridedMap Q(q, tokens, kHeadDim, Eigen::OuterStride<>(3 * kModel));
    const StridedMap K(k, tokens, kHeadDim, Eigen::OuterStride<>(3 * kModel));
    Eigen::Map<RowMajor> S(scores.data(), tokens, tokens);
    S.noalias() = scale * (Q * K.transpose());
    // P·V fused with the softmax, V and the context as strided slices: nothing is copied.
    softmax_v.forward(make_view<const float>(scores.data(), tokens, tokens),
                      make_view<const float>(v, tokens, kHeadDim, 3 * kModel),
                      make_view(ctx.data() + hd * kHeadDim, tokens, kHeadDim, kModel),
                      make_view<const float>(mask.data(), tokens, tokens), arena.get());
  }
  o.forward(make_view<const float>(ctx.data(), tokens, kModel),
            make_view(h.data(), tokens, kModel));
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += x[i];

  // FFN.
  const auto hv = make_view<const float>(h.data(), tokens, kModel);
  const auto outv = make_view(out.data(), tokens, kModel);
  if (kind == FfnKind::kFff) {
    const auto fff = io::load_fast_feed_forward(f, "block.ffn.", kFffDepth);
    std::vector<float> hn(h.size());
    for (index_t t = 0; t < tokens; ++t) {
      const float r = rms_scale(h.data() + t * kModel, kModel);
      for (index_t j = 0; j < kModel; ++j) hn[t * kModel + j] = h[t * kModel + j] * r * gamma2[j];
    }
    arena.reserve(fff.workspace_size(tokens));
    fff.forward(make_view<const float>(hn.data(), tokens, kModel), outv, nullptr, FffKernel::kAuto,
                arena.get());
  } else {
    const auto b_up = f.tensor("block.ffn.up.bias", {kHidden}).to_float();
    std::vector<float> u(static_cast<std::size_t>(tokens * kHidden));
    const auto uv = make_view(u.data(), tokens, kHidden);
    const auto finish_up = [&] {  // u = GELU(r u + b): the deferred norm's scale, then the bias
      for (index_t t = 0; t < tokens; ++t) {
        const float r = rms_scale(h.data() + t * kModel, kModel);
        for (index_t j = 0; j < kHidden; ++j)
          u[t * kHidden + j] = GeluErfFn{}(r * u[t * kHidden + j] + b_up[j]);
      }
    };
    // up' (γ folded, no bias), then r and the bias with the activation, then down: the same three
    // steps for either structured family.
    const auto run_ffn = [&](const auto& up, const auto& down) {
      arena.reserve(std::max(up.workspace_size(tokens), down.workspace_size(tokens)));
      up.forward(hv, uv, arena.get());
      finish_up();
      down.forward(make_view<const float>(u.data(), tokens, kHidden), outv, arena.get());
    };
    if (kind == FfnKind::kLowRank)
      run_ffn(fold_gamma<LowRankLinear<float>>(f, gamma2),
              io::load_low_rank_linear(f, "block.ffn.down."));
    else
      run_ffn(fold_gamma<BlockDenseLinear<float>>(f, gamma2),
              io::load_block_dense_linear(f, "block.ffn.down."));
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i] += h[i];
  return out;
}

// 3. The same block, unfused, in float64, from the tensors in the file.
std::vector<double> reference_block(const std::string& path, FfnKind kind,
                                    const std::vector<float>& x32, index_t tokens) {
  const auto f = io::SafetensorsFile::open(path);
  const auto get = [&](const std::string& name) { return f.tensor(name).to_double(); };
  const auto linear = [](const std::vector<double>& in, index_t n, const std::vector<double>& w,
                         const double* b, index_t m, index_t rows) {
    std::vector<double> y(static_cast<std::size_t>(rows * m));
    for (index_t t = 0; t < rows; ++t)
      for (index_t i = 0; i < m; ++i) {
        double s = b ? b[i] : 0.0;
        for (index_t j = 0; j < n; ++j) s += w[i * n + j] * in[t * n + j];
        y[t * m + i] = s;
      }
    return y;
  };
  const auto rms_norm = [&](const std::vector<double>& in, const std::vector<double>& g) {
    std::vector<double> y(in.size());
    for (index_t t = 0; t < tokens; ++t) {
      double ss = 0;
      for (index_t j = 0; j < kModel; ++j) ss += in[t * kModel + j] * in[t * kModel + j];
      const double r = 1.0 / std::sqrt(ss / kModel + kEps);
      for (index_t j = 0; j < kModel; ++j) y[t * kModel + j] = in[t * kModel + j] * r * g[j];
    }
    return y;
  };
  const std::vector<double> x(x32.begin(), x32.end());
  const auto xn = rms_norm(x, get("block.attn_norm.weight"));
  const auto qkv = linear(xn, kModel, get("block.attn.qkv.weight"),
                          get("block.attn.qkv.bias").data(), 3 * kModel, tokens);
  std::vector<double> ctx(static_cast<std::size_t>(tokens * kModel), 0.0);
  for (index_t hd = 0; hd < kHeads; ++hd)
    for (index_t i = 0; i < tokens; ++i) {
      std::vector<double> p(static_cast<std::size_t>(i + 1));
      double mx = -INFINITY, sum = 0;
      for (index_t j = 0; j <= i; ++j) {
        double s = 0;
        for (index_t c = 0; c < kHeadDim; ++c)
          s += qkv[i * 3 * kModel + hd * kHeadDim + c] *
               qkv[j * 3 * kModel + kModel + hd * kHeadDim + c];
        p[j] = s / std::sqrt(static_cast<double>(kHeadDim));
        mx = std::max(mx, p[j]);
      }
      for (auto& e : p) sum += (e = std::exp(e - mx));
      for (index_t c = 0; c < kHeadDim; ++c) {
        double acc = 0;
        for (index_t j = 0; j <= i; ++j)
          acc += p[j] / sum * qkv[j * 3 * kModel + 2 * kModel + hd * kHeadDim + c];
        ctx[i * kModel + hd * kHeadDim + c] = acc;
      }
    }
  auto h = linear(ctx, kModel, get("block.attn.o.weight"), get("block.attn.o.bias").data(), kModel,
                  tokens);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] += x[i];
  const auto hn = rms_norm(h, get("block.ffn_norm.weight"));
  std::vector<double> y;
  if (kind == FfnKind::kFff) {
    reference::FffWeights w;
    w.in = w.out = kModel;
    w.trees = 1;
    w.depth = kFffDepth;
    w.w_in = get("block.ffn.linear_in.weight");
    w.b_in = get("block.ffn.linear_in.bias");
    w.w_out = get("block.ffn.linear_out.weight");
    y = reference::fff(w, hn.data(), tokens, nullptr);
  } else {
    // The structured factors multiplied out: a dense [out x in] matrix per projection.
    const auto dense_of = [&](const std::string& p, index_t n, index_t m) {
      std::vector<double> a, w(static_cast<std::size_t>(m * n), 0.0);
      if (kind == FfnKind::kLowRank) {
        a = get(p + "lr1");  // [R x n]
        const auto u = get(p + "lr2");
        for (index_t i = 0; i < m; ++i)
          for (index_t k = 0; k < kRank; ++k)
            for (index_t j = 0; j < n; ++j) w[i * n + j] += u[i * kRank + k] * a[k * n + j];
      } else {
        const auto blk = get(p + "blkdiag");  // [B x R/B x n/B]
        const auto u = get(p + "lr");
        const index_t pb = n / kBlocks, rb = kRank / kBlocks;
        for (index_t i = 0; i < m; ++i)
          for (index_t b = 0; b < kBlocks; ++b)
            for (index_t k = 0; k < rb; ++k)
              for (index_t j = 0; j < pb; ++j)
                w[i * n + b * pb + j] += u[i * kRank + b * rb + k] * blk[(b * rb + k) * pb + j];
      }
      return w;
    };
    auto u = linear(hn, kModel, dense_of("block.ffn.up.", kModel, kHidden),
                    get("block.ffn.up.bias").data(), kHidden, tokens);
    for (auto& e : u) e = 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
    y = linear(u, kHidden, dense_of("block.ffn.down.", kHidden, kModel),
               get("block.ffn.down.bias").data(), kModel, tokens);
  }
  for (std::size_t i = 0; i < y.size(); ++i) y[i] += h[i];
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  FfnKind kind = FfnKind::kLowRank;
  std::string name = "lowrank";
  index_t tokens = 48;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--ffn=", 0) == 0) {
      name = a.substr(6);
      if (name == "lowrank") {
        kind = FfnKind::kLowRank;
      } else if (name == "blockdense") {
        kind = FfnKind::kBlockDense;
      } else if (name == "fff") {
        kind = FfnKind::kFff;
      } else {
        std::fprintf(stderr, "--ffn=%s: expected lowrank, blockdense or fff\n", name.c_str());
        return 2;
      }
    } else if (a.rfind("--tokens=", 0) == 0) {
      tokens = std::atol(a.c_str() + 9);
      if (tokens <= 0) {
        std::fprintf(stderr, "--tokens must be > 0\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--ffn=lowrank|blockdense|fff] [--tokens=N]\n", argv[0]);
      return 2;
    }
  }
  const std::string path = "transformer_block_" + name + ".safetensors";
  try {
    write_weights(path, kind);
    std::vector<float> x(static_cast<std::size_t>(tokens * kModel));
    fill_normal(x.data(), tokens * kModel, 42, 0.0, 1.0);
    const auto y = run_block(path, kind, x, tokens);
    const auto ref = reference_block(path, kind, x, tokens);
    const auto err = reference::compare(y.data(), tokens, kModel, kModel, ref);
    // float32 products of widths <= 1024 and one softmax: measured ~1e-6, a few ulp of the scale.
    const bool ok = err.max_rel < 1e-5;
    std::printf(
        "transformer block, d = %ld, %ld heads, FFN %s, %ld tokens: max_rel = %.2e "
        "(nmse %.2e) against the unfused float64 block\n",
        static_cast<long>(kModel), static_cast<long>(kHeads), name.c_str(),
        static_cast<long>(tokens), err.max_rel, err.nmse);
    std::remove(path.c_str());
    std::printf("%s\n", ok ? "OK" : "MISMATCH");
    return ok ? 0 : 1;
  } catch (const ffnkit::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
