// How a computed result is judged against the float64 oracle; shared by the tests and by the
// benchmark table's error column so both report the same number.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace reference {

// Error of a [rows x cols] result (row stride `row_stride`) against a packed float64 reference:
//   nmse    = sum (y - r)^2 / sum r^2
//   max_rel = max |y - r| / max(|r|, rms(r))   (relative per element, floored at the RMS so that
//                                               near-zero outputs are judged on the output's scale)
// NaN/Inf in the result are counted in non_finite and excluded from the other two.
struct ErrorStats {
  double nmse = 0;
  double max_rel = 0;
  double max_abs = 0;
  index_t non_finite = 0;
};

template <class T>
ErrorStats compare(const T* got, index_t rows, index_t cols, index_t row_stride,
                   const std::vector<double>& ref) {
  ErrorStats s;
  double sum_sq_ref = 0, sum_sq_err = 0;
  for (double r : ref) sum_sq_ref += r * r;
  const double rms = std::sqrt(sum_sq_ref / std::max<double>(1.0, static_cast<double>(ref.size())));
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) {
      const double y = static_cast<double>(got[i * row_stride + j]);
      const double r = ref[static_cast<std::size_t>(i * cols + j)];
      if (!std::isfinite(y)) {
        ++s.non_finite;
        continue;
      }
      const double e = std::abs(y - r);
      sum_sq_err += e * e;
      s.max_abs = std::max(s.max_abs, e);
      const double denom = std::max(std::abs(r), rms);
      if (denom > 0) s.max_rel = std::max(s.max_rel, e / denom);
    }
  }
  s.nmse = sum_sq_ref > 0 ? sum_sq_err / sum_sq_ref : sum_sq_err;
  return s;
}

}  // namespace reference
}  // namespace ffnkit
