// Calls the dense FFN through the installed package and checks it against the installed oracle.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ffnkit/ffnkit.hpp>
#include <ffnkit/io/layers.hpp>
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

  // ffnkit::io from the package: the up projection through a safetensors image and back.
  io::SafetensorsWriter w;
  io::save_dense_linear(w, "mlp.up.", ffn.up());
  const auto loaded =
      io::load_dense_linear(io::SafetensorsFile::from_bytes(w.to_bytes()), "mlp.up.");
  const bool same = std::equal(loaded.weight(), loaded.weight() + d * f, ffn.up().weight());
  std::printf("consumer: safetensors round trip %s\n", same ? "exact" : "DIFFERS");
  return worst < 1e-5 && same ? 0 : 1;
}
