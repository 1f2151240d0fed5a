// Example 08: the three block families from PyTorch-layout factors, each checked on its own.
//
// One projection 1024 -> 4096 of each block family (docs/math.md §3), built from factors laid out
// exactly as their PyTorch modules store them:
//   BlockDiagonalLinear  weight   [B, M/B, N/B]
//   BlockDenseLinear     blkdiag  [B, R/B, N/B], lr [M x R]        (no shuffle between stages)
//   BlockShuffleLinear   blkdiag1 [B, q, N/B], blkdiag2 [B, M/B, q], q = min(N, M)/B (Monarch)
// For each, the example
//   1. runs forward on a batch of tokens;
//   2. checks it against the float64 reference forward of the same factors (an independent,
//      loop-by-loop implementation of the formula in docs/math.md §3);
//   3. checks it against the dense matrix materialize() returns, applied in float64;
//   4. checks parameter_count() against docs/math.md §3.6's formula.
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <string>
#include <vector>

namespace {

using ffnkit::index_t;

std::vector<float> factor(index_t count, index_t fan_in, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(count));
  ffnkit::fill_normal(v.data(), count, seed, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
  return v;
}
std::vector<double> to64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Runs forward, compares with both oracles and the parameter formula; prints one line.
template <class Layer>
bool check(const char* name, const Layer& layer, const std::vector<double>& reference_y,
           const std::vector<float>& x, index_t tokens, index_t expected_params) {
  const index_t n = layer.in_features(), m = layer.out_features();
  std::vector<float> y(static_cast<std::size_t>(tokens * m));
  layer.forward(ffnkit::make_view<const float>(x.data(), tokens, n),
                ffnkit::make_view(y.data(), tokens, m));
  const auto x64 = to64(x), w = to64(layer.materialize()), b = to64(layer.bias_host());
  const auto dense = ffnkit::reference::linear(x64.data(), tokens, n, w.data(), b.data(), m);
  const auto e_ref = ffnkit::reference::compare(y.data(), tokens, m, m, reference_y);
  const auto e_dense = ffnkit::reference::compare(y.data(), tokens, m, m, dense);
  const bool ok = e_ref.non_finite == 0 && e_ref.nmse < 1e-10 && e_ref.max_rel < 1e-4 &&
                  e_dense.non_finite == 0 && e_dense.nmse < 1e-10 && e_dense.max_rel < 1e-4 &&
                  layer.parameter_count() == expected_params;
  std::printf("%-20s max rel err vs reference %.1e, vs materialize() %.1e; %lld parameters: %s\n",
              name, e_ref.max_rel, e_dense.max_rel, (long long)layer.parameter_count(),
              ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  using namespace ffnkit;
  const index_t n = 1024, m = 4096, tokens = 8;
  std::vector<float> x(static_cast<std::size_t>(tokens * n));
  fill_normal(x.data(), tokens * n, 7, 0.0, 1.0);
  const auto x64 = to64(x);
  const auto bias = factor(m, 100, 9);
  const auto b64 = to64(bias);
  bool ok = true;

  {  // BlockDiagonal, B = 4: N M / B weights.
    const index_t blocks = 4;
    const auto w = factor(blocks * (m / blocks) * (n / blocks), n / blocks, 1);
    BlockDiagonalLinear<float> layer(n, m, blocks, w.data(), bias.data());
    const auto ref = reference::block_diagonal_forward(x64.data(), tokens, n, to64(w).data(),
                                                       blocks, b64.data(), m);
    ok &= check("BlockDiagonal B=4", layer, ref, x, tokens, n * m / blocks + m);
  }
  {  // BlockDense, B = 4, R = 3n/8 (the paper's 32% setting at d = 1024): R (M + N/B) weights.
    const index_t blocks = 4, rank = 3 * n / 8;
    const auto v = factor(rank * (n / blocks), n / blocks, 2), u = factor(m * rank, rank, 3);
    BlockDenseLinear<float> layer(n, m, blocks, rank, v.data(), u.data(), bias.data());
    const auto ref = reference::block_dense_forward(x64.data(), tokens, n, to64(v).data(), blocks,
                                                    rank, to64(u).data(), b64.data(), m);
    ok &= check("BlockDense B=4 R=384", layer, ref, x, tokens, rank * (m + n / blocks) + m);
  }
  {  // BlockShuffle (Monarch), B = 4: min(N, M)(N + M)/B weights.
    const index_t blocks = 4, q = std::min(n, m) / blocks;
    const auto w1 = factor(blocks * q * (n / blocks), n / blocks, 4);
    const auto w2 = factor(blocks * (m / blocks) * q, q, 5);
    BlockShuffleLinear<float> layer(n, m, blocks, w1.data(), w2.data(), bias.data());
    const auto ref = reference::block_shuffle_forward(x64.data(), tokens, n, to64(w1).data(),
                                                      to64(w2).data(), blocks, b64.data(), m);
    ok &= check("BlockShuffle B=4", layer, ref, x, tokens, std::min(n, m) * (n + m) / blocks + m);
  }
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
