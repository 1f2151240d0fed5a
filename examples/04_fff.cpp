// Example 04: a fast feedforward (FFF) layer from PyTorch-layout weights (docs/math.md §6).
//
// UltraFastBERT-1x11: one tree of depth 11 over d = 768, so 4095 neurons of which each token uses
// 12. The layer takes the weights exactly as PyTorch's FFF module stores them (linear_in:
// [nodes x N] with bias, linear_out: [M x nodes] without), so trained weights load as they are.
// The example then:
//   1. runs the layer on a batch, recording each token's leaf (its path is the leaf's ancestors);
//   2. checks the output and every path against the float64 oracle;
//   3. reports how many leaves the batch reached and how few neurons each token touched;
//   4. runs backward on the recorded paths and checks one gradient entry against a finite
//      difference with the path held fixed.
// It exits non-zero on any mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/fff.hpp>
#include <ffnkit/reference/compare.hpp>
#include <ffnkit/reference/fff.hpp>
#include <set>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t d = 768, depth = 11, nodes = 4095, tokens = 64;

  // 1. Weights as PyTorch would export them (here: nn.Linear's default uniform init), the layer.
  std::vector<float> w_in(nodes * d), b_in(nodes), w_out(d * nodes);
  const double a_in = 1.0 / std::sqrt(double(d)), a_out = 1.0 / std::sqrt(double(nodes));
  fill_uniform(w_in.data(), nodes * d, 1, -a_in, a_in);
  fill_uniform(b_in.data(), nodes, 2, -a_in, a_in);
  fill_uniform(w_out.data(), d * nodes, 3, -a_out, a_out);
  const FastFeedForward<float> fff(d, d, /*trees=*/1, depth, w_in.data(), b_in.data(),
                                   w_out.data());
  std::vector<float> x(tokens * d), y(tokens * d);
  fill_normal(x.data(), tokens * d, 4, 0.0, 1.0);
  std::vector<std::int32_t> leaves(tokens);
  fff.forward(make_view<const float>(x.data(), tokens, d), make_view(y.data(), tokens, d),
              leaves.data());

  // 2. The float64 oracle routes on its own; paths must agree except where |λ| is within
  //    float rounding of the tie (none expected here), outputs within float tolerance.
  reference::FffWeights w;
  w.in = w.out = d;
  w.trees = 1;
  w.depth = depth;
  w.w_in.assign(w_in.begin(), w_in.end());
  w.b_in.assign(b_in.begin(), b_in.end());
  w.w_out.assign(w_out.begin(), w_out.end());
  const std::vector<double> x64(x.begin(), x.end());
  reference::FffRouting routing;
  const auto ref = reference::fff(w, x64.data(), tokens, &routing);
  int path_mismatches = 0;
  for (index_t t = 0; t < tokens; ++t)
    if (leaves[t] != routing.leaves[t] && routing.min_margin[t] > 1e-5) ++path_mismatches;
  const auto err = reference::compare(y.data(), tokens, d, d, ref);

  // 3. Sparsity.
  const std::size_t distinct = std::set<std::int32_t>(leaves.begin(), leaves.end()).size();

  // 4. Backward with loss = y[0, 3]; finite difference on w_in of the root, col 5, in double
  //    through the oracle with the recorded path held fixed.
  std::vector<float> dy(tokens * d, 0.f), dx(tokens * d);
  dy[3] = 1.f;
  auto grads = fff.make_grads();  // linear_in.weight, linear_in.bias, w_out: zero-filled
  std::vector<unsigned char> scratch(fff.backward_workspace_size(tokens));
  fff.backward(make_view<const float>(x.data(), tokens, d), leaves.data(),
               make_view<const float>(dy.data(), tokens, d), make_view(dx.data(), tokens, d), grads,
               {scratch.data(), scratch.size()});
  const double h = 1e-4;
  auto loss = [&](double delta) {
    auto wp = w;
    wp.w_in[5] += delta;
    return reference::fff(wp, x64.data(), 1, nullptr, leaves.data())[3];
  };
  const double fd = (loss(h) - loss(-h)) / (2 * h);
  const double g = grads[0][5];
  const bool grad_ok = std::abs(g - fd) <= 1e-3 * (1 + std::abs(fd));

  std::printf("FFF 1x%lld, d = %lld: %lld neurons, %lld per token (%.0fx fewer)\n",
              static_cast<long long>(depth), static_cast<long long>(d),
              static_cast<long long>(fff.neurons_total()),
              static_cast<long long>(fff.neurons_per_token()),
              double(fff.neurons_total()) / double(fff.neurons_per_token()));
  std::printf("%lld tokens reached %zu distinct leaves of 2048\n", static_cast<long long>(tokens),
              distinct);
  std::printf("vs float64 oracle: nmse %.2e, max rel %.2e, path mismatches %d\n", err.nmse,
              err.max_rel, path_mismatches);
  std::printf("d loss / d w_in[root, 5]: backward %.6e, finite difference %.6e\n", g, fd);
  const bool ok = err.non_finite == 0 && err.nmse < 1e-10 && err.max_rel < 1e-4 &&
                  path_mismatches == 0 && distinct > 32 && grad_ok;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
