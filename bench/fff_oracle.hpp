// The FFF runners' error column (cases_fff.cpp, cases_fff_cuda.cpp): the float64 oracle on the
// sampled tokens, on any backend's layer.
#pragma once

#include <cstdint>
#include <vector>

#include "ffnkit/fff.hpp"
#include "ffnkit/reference/compare.hpp"
#include "ffnkit/reference/fff.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {

// Max relative error of `f`'s output y against the oracle for the sampled tokens of x, on the
// weights as the layer stores them and the paths it took (`leaves`, [tokens x K]): a rounding can
// flip a branch whose λ is within rounding of 0, and tests/test_fff.cpp checks the paths
// themselves. x, y: packed host copies, [tokens x N] and [tokens x M].
template <class T, class B>
double sampled_fff_error(const FastFeedForward<T, B>& f, const std::vector<T>& x,
                         const std::vector<T>& y, const std::vector<std::int32_t>& leaves) {
  const auto widen = [](T v) { return detail::HostScalar<T>::to_double(v); };
  const reference::FffWeights w = reference::weights_of(f, widen);
  const index_t n = f.in_features(), m = f.out_features(), k = f.trees();
  const auto rows = sampled_tokens(static_cast<index_t>(x.size()) / n);
  std::vector<double> xs, ys;
  std::vector<std::int32_t> ls;
  for (index_t t : rows) {
    for (index_t j = 0; j < n; ++j) xs.push_back(widen(x[t * n + j]));
    for (index_t j = 0; j < m; ++j) ys.push_back(widen(y[t * m + j]));
    ls.insert(ls.end(), leaves.begin() + t * k, leaves.begin() + (t + 1) * k);
  }
  const index_t count = static_cast<index_t>(rows.size());
  const auto ref = reference::fff(w, xs.data(), count, nullptr, ls.data());
  return reference::compare(ys.data(), count, m, m, ref).max_rel;
}

}  // namespace bench
}  // namespace ffnkit
