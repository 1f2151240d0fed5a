// Shared pieces of the FFN runners: inputs, the sampled float64 oracle and traffic accounting.
#pragma once

#include <vector>

#include "ffnkit/dense.hpp"
#include "ffnkit/reference.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {

// Float64 output of `ffn` for the sampled tokens of x (packed [tokens x d_model]), packed
// [sampled x d_out], and the matching rows of y.
template <class T>
double sampled_ffn_error(const DenseFFN<T, Cpu>& ffn, const std::vector<T>& x,
                         const std::vector<T>& y) {
  const index_t d = ffn.d_model(), f = ffn.d_ff(), d_out = ffn.d_out();
  const index_t tokens = static_cast<index_t>(x.size()) / d;
  const auto rows = sampled_tokens(tokens);
  std::vector<double> xs, ys;
  for (index_t t : rows) {
    xs.insert(xs.end(), x.begin() + t * d, x.begin() + (t + 1) * d);
    ys.insert(ys.end(), y.begin() + t * d_out, y.begin() + (t + 1) * d_out);
  }
  const std::vector<double> w1(ffn.up().weight(), ffn.up().weight() + d * f);
  const std::vector<double> b1(ffn.up().bias(), ffn.up().bias() + f);
  const std::vector<double> w2(ffn.down().weight(), ffn.down().weight() + f * d_out);
  const std::vector<double> b2(ffn.down().bias(), ffn.down().bias() + d_out);
  const auto ref = reference::ffn(xs.data(), static_cast<index_t>(rows.size()), d, w1.data(),
                                  b1.data(), f, ffn.activation(), w2.data(), b2.data(), d_out);
  return reference::compare(ys.data(), static_cast<index_t>(rows.size()), d_out, d_out, ref)
      .max_rel;
}

// Compulsory traffic of one FFN forward: weights and biases once, x read, y written, and the
// hidden activations written and read once each.
// The paper's BlockDense settings (docs/math.md §3.8): B = 2 with R = 512, 256 at d = 768 (2d/3,
// d/3); B = 4 with R = 3d/4, 3d/8 at d = 1024 and 2048. `large` is the 63% setting, else 32%.
struct BlockDenseSetting {
  index_t blocks, rank;
};
inline BlockDenseSetting blockdense_setting(index_t d, bool large) {
  if (d == 768) return {2, large ? 512 : 256};
  return {4, large ? 3 * d / 4 : 3 * d / 8};
}

inline double ffn_bytes(const Shape& s, std::size_t scalar_bytes, double parameters) {
  const double elems =
      parameters + static_cast<double>(s.tokens) * (2.0 * s.d_model + 2.0 * s.d_ff);
  return elems * static_cast<double>(scalar_bytes);
}

}  // namespace bench
}  // namespace ffnkit
