// Calls the dense FFN through the installed package and checks it against the installed oracle.
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/reference.hpp>
#include <vector>

int main() {
  using namespace ffnkit;
  const index_t tokens = 5, d = 32, f = 128;
  const auto ffn = DenseFFN<float>::random(d, f, Activation::kGeluTanh, 2024);
  std::vector<float> x(tokens * d), y(tokens * d);
  fill_normal(x.data(), tokens * d, 1, 0.0, 1.0);
  ffn.forward(make_view<const float>(x.data(), tokens, d), make_view(y.data(), tokens, d));

  const std::vector<double> xd(x.begin(), x.end());
  const std::vector<double> w1(ffn.up().weight(), ffn.up().weight() + d * f);
  const std::vector<double> b1(ffn.up().bias(), ffn.up().bias() + f);
  const std::vector<double> w2(ffn.down().weight(), ffn.down().weight() + d * f);
  const std::vector<double> b2(ffn.down().bias(), ffn.down().bias() + d);
  const auto ref = reference::ffn(xd.data(), tokens, d, w1.data(), b1.data(), f,
                                  Activation::kGeluTanh, w2.data(), b2.data(), d);
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) worst = std::fmax(worst, std::fabs(ref[i] - y[i]));
  std::printf("consumer: max abs error vs float64 reference = %.3g\n", worst);
  return worst < 1e-5 ? 0 : 1;
}
