// The shared test harness: the (scalar, backend) combinations every typed suite runs over, error
// metrics against the float64 oracle with per-dtype tolerances, and sentinel-guarded buffers.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/reference/compare.hpp"

namespace ffnkit {
namespace test {

// One typed-suite parameter: a scalar type on a backend.
template <class T, class B>
struct Combo {
  using Scalar = T;
  using Backend = B;
};

// Whether a backend can run here; `why` explains a skip. Specialized as backends are added.
template <class B>
struct BackendAvailability;
template <>
struct BackendAvailability<Cpu> {
  static bool available(std::string*) { return true; }
};

// A backend that is absent skips visibly, never passes silently; FFNKIT_REQUIRE_CUDA=1 turns the
// skip of the Cuda backend into a failure (SPEC §3).
#define FFNKIT_SKIP_IF_UNAVAILABLE(Backend)                                                 \
  do {                                                                                      \
    std::string ffnkit_why_;                                                                \
    if (!::ffnkit::test::BackendAvailability<Backend>::available(&ffnkit_why_)) {           \
      const char* ffnkit_req_ = std::getenv("FFNKIT_REQUIRE_CUDA");                         \
      if (ffnkit_req_ && std::string(ffnkit_req_) == "1" &&                                 \
          std::string(Backend::name()) == "Cuda") {                                         \
        FAIL() << "FFNKIT_REQUIRE_CUDA=1 but backend Cuda is unavailable: " << ffnkit_why_; \
      }                                                                                     \
      GTEST_SKIP() << "backend " << Backend::name() << " unavailable: " << ffnkit_why_;     \
    }                                                                                       \
  } while (0)

using reference::compare;
using reference::ErrorStats;

struct Tolerance {
  double nmse;
  double max_rel;
};

// Per-dtype tolerances. float: rounding of K-term dot products (worst case ~sqrt(K) eps relative
// to the output RMS at K = 4096 is 4e-6) plus a few ulp of the vectorized activations, with
// margin; a wrong index, bias or activation produces O(1) errors. double: the same for eps 1.1e-16.
template <class T>
Tolerance tolerance();
template <>
inline Tolerance tolerance<float>() {
  return {1e-10, 1e-4};
}
template <>
inline Tolerance tolerance<double>() {
  return {1e-24, 1e-11};
}

template <class T>
::testing::AssertionResult within_tolerance(const ErrorStats& s,
                                            const Tolerance& tol = tolerance<T>()) {
  if (s.non_finite == 0 && s.nmse <= tol.nmse && s.max_rel <= tol.max_rel)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "nmse = " << s.nmse << " (tolerance " << tol.nmse << "), max_rel = " << s.max_rel
         << " (tolerance " << tol.max_rel << "), max_abs = " << s.max_abs
         << ", non-finite values = " << s.non_finite;
}

// A row-major [rows x cols] buffer with row padding and guard zones before and after, all filled
// with a sentinel. After the layer writes its output, `guards_intact()` proves that nothing
// outside the [rows x cols] window (padding included) was touched.
template <class T>
class GuardedMatrix {
 public:
  static constexpr index_t kGuard = 64;
  static T sentinel() { return static_cast<T>(-1.2345678e29); }

  GuardedMatrix(index_t rows, index_t cols, index_t padding = 0)
      : rows_(rows), cols_(cols), stride_(cols + padding) {
    storage_.assign(static_cast<std::size_t>(2 * kGuard + std::max<index_t>(rows, 1) * stride_),
                    sentinel());
  }

  T* data() { return storage_.data() + kGuard; }
  const T* data() const { return storage_.data() + kGuard; }
  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  index_t stride() const { return stride_; }
  MatrixView<T> view() { return MatrixView<T>(data(), rows_, cols_, stride_); }
  MatrixView<const T> cview() const { return MatrixView<const T>(data(), rows_, cols_, stride_); }
  T& at(index_t r, index_t c) { return data()[r * stride_ + c]; }

  // Fills the window from a [rows x cols] packed vector.
  void set(const std::vector<T>& packed) {
    for (index_t r = 0; r < rows_; ++r)
      std::copy_n(packed.begin() + r * cols_, cols_, data() + r * stride_);
  }
  // The window as a packed float64 vector (the oracle's input type).
  std::vector<double> to_double() const {
    std::vector<double> out(static_cast<std::size_t>(rows_ * cols_));
    for (index_t r = 0; r < rows_; ++r)
      for (index_t c = 0; c < cols_; ++c) out[r * cols_ + c] = data()[r * stride_ + c];
    return out;
  }

  ::testing::AssertionResult guards_intact() const {
    const T s = sentinel();
    for (index_t i = 0; i < static_cast<index_t>(storage_.size()); ++i) {
      const index_t off = i - kGuard;
      const bool inside = off >= 0 && off < rows_ * stride_ && off % stride_ < cols_;
      if (!inside && std::memcmp(&storage_[i], &s, sizeof(T)) != 0) {
        return ::testing::AssertionFailure()
               << "sentinel overwritten at element offset " << off << " (row " << off / stride_
               << ", col " << off % stride_ << ") of a [" << rows_ << " x " << cols_
               << "] window with row stride " << stride_;
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  index_t rows_, cols_, stride_;
  std::vector<T> storage_;
};

template <class T>
std::vector<T> random_vector(index_t n, std::uint64_t seed, double stddev = 1.0) {
  std::vector<T> v(static_cast<std::size_t>(n));
  fill_normal(v.data(), n, seed, 0.0, stddev);
  return v;
}

template <class T>
std::vector<double> to_double(const T* p, index_t n) {
  return std::vector<double>(p, p + n);
}

// Asserts that `fn` throws ffnkit::Error whose message contains every one of `parts` (the
// offending argument's name and its value).
inline ::testing::AssertionResult throws_error(const std::function<void()>& fn,
                                               std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) {
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure()
               << "ffnkit::Error message \"" << msg << "\" does not mention \"" << p << "\"";
    }
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-ffnkit exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace test
}  // namespace ffnkit
