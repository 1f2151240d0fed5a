// Example 01: run a dense BERT-base FFN on your own buffers and verify it.
//
// The pattern every ffnkit layer follows:
//   1. build the layer from PyTorch-layout weights ([out x in] row-major) or a seeded init;
//   2. wrap your activation buffers in views (pointer, tokens, features, row stride): no copies;
//   3. optionally hand it scratch memory of workspace_size(tokens) bytes, so forward never
//      allocates;
//   4. call forward.
// This example then checks the result against ffnkit's float64 reference and exits non-zero on a
// mismatch, so it doubles as a test.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t tokens = 16, d_model = 768, d_ff = 3072;

  // 1. Weights as PyTorch would export them: fc1.weight [d_ff x d_model], fc1.bias [d_ff], ...
  std::vector<float> w1(d_ff * d_model), b1(d_ff), w2(d_model * d_ff), b2(d_model);
  fill_normal(w1.data(), d_ff * d_model, 1, 0.0, 0.02);
  fill_normal(b1.data(), d_ff, 2, 0.0, 0.02);
  fill_normal(w2.data(), d_model * d_ff, 3, 0.0, 0.02);
  fill_normal(b2.data(), d_model, 4, 0.0, 0.02);
  const DenseFFN<float> ffn(DenseLinear<float>(d_model, d_ff, w1.data(), b1.data()),
                            DenseLinear<float>(d_ff, d_model, w2.data(), b2.data()),
                            Activation::kGeluTanh);

  // 2. The engine's buffers: here the input sits inside a wider row (row stride 1024), as a slice
  //    of a larger activation tensor would.
  const index_t x_stride = 1024;
  std::vector<float> x_buffer(tokens * x_stride), y(tokens * d_model);
  fill_normal(x_buffer.data(), tokens * x_stride, 5, 0.0, 1.0);
  const MatrixView<const float> x(x_buffer.data(), tokens, d_model, x_stride);

  // 3. Scratch memory owned by the caller.
  std::vector<unsigned char> scratch(ffn.workspace_size(tokens));

  // 4. Forward.
  ffn.forward(x, make_view(y.data(), tokens, d_model), Workspace{scratch.data(), scratch.size()});

  // Verify against the float64 oracle.
  std::vector<double> xd(tokens * d_model);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < d_model; ++j) xd[t * d_model + j] = x(t, j);
  const std::vector<double> w1d(w1.begin(), w1.end()), b1d(b1.begin(), b1.end());
  const std::vector<double> w2d(w2.begin(), w2.end()), b2d(b2.begin(), b2.end());
  const auto ref = reference::ffn(xd.data(), tokens, d_model, w1d.data(), b1d.data(), d_ff,
                                  Activation::kGeluTanh, w2d.data(), b2d.data(), d_model);
  const auto err = reference::compare(y.data(), tokens, d_model, d_model, ref);
  std::printf("dense FFN %lldx%lld, %lld tokens: nmse %.2e, max rel err %.2e\n",
              static_cast<long long>(d_model), static_cast<long long>(d_ff),
              static_cast<long long>(tokens), err.nmse, err.max_rel);
  const bool ok = err.non_finite == 0 && err.nmse < 1e-10 && err.max_rel < 1e-4;
  std::printf("%s\n", ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}
