// Example 02: a structured FFN from PyTorch-layout factors, checked against its dense equivalent.
//
// The paper's "32%" setting at BERT-base width (docs/math.md §3.7): both projections LowRank with
// R = d/4, GELU (tanh), bias on. The layers take their factors exactly as PyTorch stores them
// (lr1: [R x N], lr2: [M x R]), so weights exported from a trained model load without any
// transposing. The example then:
//   1. runs the FFN on a batch of tokens;
//   2. checks the result against the float64 FFN built from each layer's materialize() (the
//      dense matrix the structured layer is equivalent to);
//   3. checks the parameter count is 5/16 of the dense FFN's;
//   4. runs backward and checks one gradient entry against a finite difference.
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <vector>

int main() {
  using namespace ffnkit;
  using LR = LowRankLinear<float>;
  const index_t d = 768, d_ff = 3072, rank = d / 4, tokens = 16;

  // 1. Factors as PyTorch would export them (here: random), then the FFN.
  auto factor = [](index_t count, index_t fan_in, std::uint64_t seed) {
    std::vector<float> v(static_cast<std::size_t>(count));
    fill_normal(v.data(), count, seed, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
    return v;
  };
  const auto up_lr1 = factor(rank * d, d, 1), up_lr2 = factor(d_ff * rank, rank, 2);
  const auto down_lr1 = factor(rank * d_ff, d_ff, 3), down_lr2 = factor(d * rank, rank, 4);
  const auto up_bias = factor(d_ff, 100, 5), down_bias = factor(d, 100, 6);
  StructuredFFN<LR, LR> ffn(LR(d, d_ff, rank, up_lr1.data(), up_lr2.data(), up_bias.data()),
                            LR(d_ff, d, rank, down_lr1.data(), down_lr2.data(), down_bias.data()),
                            Activation::kGeluTanh);

  std::vector<float> x(tokens * d), y(tokens * d);
  fill_normal(x.data(), tokens * d, 7, 0.0, 1.0);
  std::vector<unsigned char> scratch(ffn.workspace_size(tokens));
  ffn.forward(make_view<const float>(x.data(), tokens, d), make_view(y.data(), tokens, d),
              Workspace{scratch.data(), scratch.size()});

  // 2. The float64 dense FFN of the materialized projections.
  auto to64 = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  const auto w1 = to64(ffn.up().materialize()), w2 = to64(ffn.down().materialize());
  const auto b1 = to64(up_bias), b2 = to64(down_bias), x64 = to64(x);
  const auto ref = reference::ffn(x64.data(), tokens, d, w1.data(), b1.data(), d_ff,
                                  Activation::kGeluTanh, w2.data(), b2.data(), d);
  const auto err = reference::compare(y.data(), tokens, d, d, ref);

  // 3. Parameters: R (N + M) per projection, against 2 d d_ff dense weights.
  const double weights = static_cast<double>(ffn.parameter_count() - d_ff - d);
  const double ratio = weights / (2.0 * d * d_ff);

  // 4. Backward, and one finite difference on the first entry of up.lr1 (in float, so loose).
  std::vector<float> dy(tokens * d, 0.f), dx(tokens * d);
  dy[5] = 1.f;  // loss = y[0, 5]
  auto grads = ffn.make_grads();
  ffn.backward(make_view<const float>(x.data(), tokens, d),
               make_view<const float>(dy.data(), tokens, d), make_view(dx.data(), tokens, d),
               grads);
  auto params = ffn.params();
  float* w = params[0].data;  // up.lr1[0]
  const float keep = *w, h = 1e-2f;
  auto y05 = [&] {
    ffn.forward(make_view<const float>(x.data(), tokens, d), make_view(y.data(), tokens, d));
    return static_cast<double>(y[5]);
  };
  *w = keep + h;
  const double plus = y05();
  *w = keep - h;
  const double minus = y05();
  *w = keep;
  const double fd = (plus - minus) / (2 * h), analytic = grads[0][0];

  std::printf("LowRank FFN %lld -> %lld -> %lld, R = %lld, %lld tokens\n", (long long)d,
              (long long)d_ff, (long long)d, (long long)rank, (long long)tokens);
  std::printf("  vs float64 dense FFN of materialize(): nmse %.2e, max rel err %.2e\n", err.nmse,
              err.max_rel);
  std::printf("  weights: %.4f of the dense FFN (5/16 = %.4f)\n", ratio, 5.0 / 16);
  std::printf("  d y[0,5] / d up.lr1[0]: backward %.6f, finite difference %.6f\n", analytic, fd);
  const bool ok = err.non_finite == 0 && err.nmse < 1e-10 && err.max_rel < 1e-4 &&
                  std::abs(ratio - 5.0 / 16) < 1e-12 &&
                  std::abs(analytic - fd) <= 1e-2 * std::max(1.0, std::abs(fd));
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
