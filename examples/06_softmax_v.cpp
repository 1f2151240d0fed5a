// Example 06: attention's Softmax·V with the one-pass online softmax (docs/math.md §7).
//
// One head of causal self-attention: scores S = Q Kᵀ / sqrt(d_head) with a causal mask (−inf
// above the diagonal), then y = softmax(S) V. SoftmaxLinear::forward sweeps the keys once in tiles,
// keeping a running max per query and rescaling its partial numerator and denominator by
// e^{m_old − m_new} when the max moves, so no exponent ever exceeds 0 and the probabilities are
// never written out. The example:
//   1. builds Q, K, V and the scores (with a large logit scale, as a sharp attention head has);
//   2. runs the one-pass forward and the three-pass baseline reference::UnfusedSoftmaxLinear
//      (max, exp-sum, normalize, GEMM);
//   3. checks both against float64, and that a fully masked query row gives zeros, not NaN.
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <ffnkit/reference/unfused_norm.hpp>
#include <limits>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t seq = 1000, dh = 64;
  std::vector<float> q(seq * dh), k(seq * dh), v(seq * dh);
  fill_normal(q.data(), seq * dh, 1, 0.0, 4.0);  // sharp logits: |s| reaches the hundreds
  fill_normal(k.data(), seq * dh, 2, 0.0, 4.0);
  fill_normal(v.data(), seq * dh, 3, 0.0, 1.0);
  std::vector<float> s(seq * seq), mask(seq * seq, 0.f);
  const float scale = 1.f / std::sqrt(static_cast<float>(dh));
  for (index_t i = 0; i < seq; ++i)
    for (index_t j = 0; j < seq; ++j) {
      float dot = 0;
      for (index_t c = 0; c < dh; ++c) dot += q[i * dh + c] * k[j * dh + c];
      s[i * seq + j] = dot * scale;
      // Causal; and query 0 is padding: every key masked.
      if (j > i || i == 0) mask[i * seq + j] = -std::numeric_limits<float>::infinity();
    }

  const SoftmaxLinear<float> attn;
  const reference::UnfusedSoftmaxLinear<float> three_pass;
  std::vector<float> y(seq * dh), yu(seq * dh);
  std::vector<unsigned char> ws(attn.workspace_size(seq, seq, dh));
  const auto sv = make_view<const float>(s.data(), seq, seq);
  const auto vv = make_view<const float>(v.data(), seq, dh);
  const auto mv = make_view<const float>(mask.data(), seq, seq);
  attn.forward(sv, vv, make_view(y.data(), seq, dh), mv, Workspace{ws.data(), ws.size()});
  three_pass.forward(sv, vv, make_view(yu.data(), seq, dh), mv);

  auto to64 = [](const std::vector<float>& a) { return std::vector<double>(a.begin(), a.end()); };
  const auto ref = reference::softmax_v(to64(s), to64(mask), seq, seq, to64(v), dh);
  const auto e = reference::compare(y.data(), seq, dh, dh, ref);
  const auto eu = reference::compare(yu.data(), seq, dh, dh, ref);
  bool padding_zero = true;
  for (index_t c = 0; c < dh; ++c) padding_zero = padding_zero && y[c] == 0.f && yu[c] == 0.f;
  std::printf("causal Softmax V, %lld queries x %lld keys, head dim %lld\n", (long long)seq,
              (long long)seq, (long long)dh);
  std::printf("  one-pass   vs float64: nmse %.2e, max rel err %.2e, non-finite %lld\n", e.nmse,
              e.max_rel, (long long)e.non_finite);
  std::printf("  three-pass vs float64: nmse %.2e, max rel err %.2e\n", eu.nmse, eu.max_rel);
  std::printf("  fully masked row is zero: %s\n", padding_zero ? "yes" : "no");
  const bool ok = e.non_finite == 0 && eu.non_finite == 0 && e.max_rel < 1e-4 &&
                  eu.max_rel < 1e-4 && padding_zero;
  std::printf(ok ? "OK\n" : "MISMATCH\n");
  return ok ? 0 : 1;
}
