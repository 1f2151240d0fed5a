// Example 05: RMSNorm deferred into the following linear layer (docs/math.md §7).
//
// A pre-norm block's first projection, at Llama-7B-like width: RMSNorm(γ) then Linear(W, b), both
// given in PyTorch layout (γ: [d], W: [d_out x d]). RMSNormLinear folds γ into W once at load time
// (W' = W diag γ), so each forward is one product on the raw x with the per-token scale
// r = 1/sqrt(mean(x²) + ε) applied in its epilogue: y = r (W' x) + b. The example:
//   1. runs the fused forward at decode (1 token) and at prefill (64 tokens) sizes;
//   2. runs the unfused baseline (reference::UnfusedNormLinear: normalize into a buffer, then the
//      product on the unfolded W) on the same input;
//   3. checks both against the float64 RMSNorm-then-Linear and against each other;
//   4. also asks the fused path for the normalized activations (for a residual or a cache).
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <ffnkit/reference/unfused_norm.hpp>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t d = 1024, d_out = 3072;
  const double eps = 1e-6;
  std::vector<float> gamma(d), weight(d * d_out), bias(d_out);
  fill_normal(gamma.data(), d, 1, 1.0, 0.1);
  fill_normal(weight.data(), d * d_out, 2, 0.0, 1.0 / std::sqrt(static_cast<double>(d)));
  fill_normal(bias.data(), d_out, 3, 0.0, 0.1);
  const RMSNormLinear<float> layer(d, d_out, gamma.data(), weight.data(), bias.data(), eps);
  const auto unfused = reference::UnfusedNormLinear<float>::rms_norm(
      d, d_out, gamma.data(), weight.data(), bias.data(), eps);

  auto to64 = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
  bool ok = true;
  for (index_t tokens : {1, 64}) {
    std::vector<float> x(tokens * d), y(tokens * d_out), yu(tokens * d_out), xn(tokens * d);
    fill_normal(x.data(), tokens * d, 4 + tokens, 0.5, 2.0);  // an activation with some mean
    std::vector<unsigned char> ws(layer.workspace_size(tokens));
    const auto xv = make_view<const float>(x.data(), tokens, d);
    layer.forward(xv, make_view(y.data(), tokens, d_out), Workspace{ws.data(), ws.size()},
                  make_view(xn.data(), tokens, d));
    unfused.forward(xv, make_view(yu.data(), tokens, d_out));

    std::vector<double> xn_ref;
    const auto ref = reference::norm_linear(false, to64(x), tokens, d, d_out, to64(gamma), {},
                                            to64(weight), to64(bias), eps, &xn_ref);
    const auto e = reference::compare(y.data(), tokens, d_out, d_out, ref);
    const auto eu = reference::compare(yu.data(), tokens, d_out, d_out, ref);
    const auto en = reference::compare(xn.data(), tokens, d, d, xn_ref);
    std::printf("RMSNorm -> Linear %lld -> %lld, %lld token(s)\n", (long long)d, (long long)d_out,
                (long long)tokens);
    std::printf("  fused   vs float64: nmse %.2e, max rel err %.2e\n", e.nmse, e.max_rel);
    std::printf("  unfused vs float64: nmse %.2e, max rel err %.2e\n", eu.nmse, eu.max_rel);
    std::printf("  normalized activations: max rel err %.2e\n", en.max_rel);
    // float32 products over K = 1024: ~sqrt(K) u of the output's scale, with margin.
    ok = ok && e.max_rel < 1e-4 && eu.max_rel < 1e-4 && en.max_rel < 1e-5 && e.non_finite == 0;
  }
  std::printf(ok ? "OK\n" : "MISMATCH\n");
  return ok ? 0 : 1;
}
