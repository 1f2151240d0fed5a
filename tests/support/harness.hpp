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
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/device_api.hpp"
#endif

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
#if defined(FFNKIT_WITH_CUDA_EMU)
template <>
struct BackendAvailability<CudaEmu> {
  static bool available(std::string* why) { return cuda_emu::device_available(why); }
};
#endif
#if defined(FFNKIT_WITH_CUDA)
template <>
struct BackendAvailability<Cuda> {
  static bool available(std::string* why) { return cuda::device_available(why); }
};
#endif

// The typed suites' backend lists: every scalar type each backend supports. A backend that was
// not compiled is reported by the visible skip in test_backends.cpp.
#if defined(FFNKIT_WITH_CUDA_EMU)
#define FFNKIT_EMU_COMBOS                               \
  , ::ffnkit::test::Combo<float, ::ffnkit::CudaEmu>,    \
      ::ffnkit::test::Combo<__half, ::ffnkit::CudaEmu>, \
      ::ffnkit::test::Combo<__nv_bfloat16, ::ffnkit::CudaEmu>
#else
#define FFNKIT_EMU_COMBOS
#endif
#if defined(FFNKIT_WITH_CUDA)
#define FFNKIT_CUDA_COMBOS                                                                       \
  , ::ffnkit::test::Combo<float, ::ffnkit::Cuda>, ::ffnkit::test::Combo<__half, ::ffnkit::Cuda>, \
      ::ffnkit::test::Combo<__nv_bfloat16, ::ffnkit::Cuda>
#else
#define FFNKIT_CUDA_COMBOS
#endif
#define FFNKIT_ALL_COMBOS                      \
  ::ffnkit::test::Combo<float, ::ffnkit::Cpu>, \
      ::ffnkit::test::Combo<double, ::ffnkit::Cpu> FFNKIT_EMU_COMBOS FFNKIT_CUDA_COMBOS

// Host conversions of a scalar type to and from double (the oracle's type).
template <class T>
struct Scalar {
  static T from_double(double v) { return static_cast<T>(v); }
  static double to_double(T v) { return static_cast<double>(v); }
  static const char* name() { return sizeof(T) == 4 ? "f32" : "f64"; }
};
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
template <>
struct Scalar<__half> : detail::HostScalar<__half> {
  static const char* name() { return "f16"; }
};
template <>
struct Scalar<__nv_bfloat16> : detail::HostScalar<__nv_bfloat16> {
  static const char* name() { return "bf16"; }
};
#endif

// Names typed-suite instances "f32_Cpu", "bf16_CudaEmu", ...
struct ComboName {
  template <class P>
  static std::string GetName(int) {
    return std::string(Scalar<typename P::Scalar>::name()) + "_" + P::Backend::name();
  }
};

// A backend that is absent skips visibly, never passes silently; FFNKIT_REQUIRE_CUDA=1 turns the
// skip of the Cuda backend into a failure (docs/cuda.md).
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

using reference::ErrorStats;

// reference::compare on any scalar type (half types go through their float conversion).
template <class T>
ErrorStats compare(const T* got, index_t rows, index_t cols, index_t row_stride,
                   const std::vector<double>& ref) {
  std::vector<double> g(static_cast<std::size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c)
      g[r * cols + c] = Scalar<T>::to_double(got[r * row_stride + c]);
  return reference::compare(g.data(), rows, cols, cols, ref);
}

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
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
// Half types: the inputs are already rounded (the oracle sees the same rounded values), so the
// error is the rounding of the stored hidden activations and outputs, unit roundoff 2^-11 (fp16)
// and 2^-8 (bf16), accumulated in fp32 over a few steps; bounds are ~5-8 roundings.
template <>
inline Tolerance tolerance<__half>() {
  return {1e-5, 4e-3};
}
template <>
inline Tolerance tolerance<__nv_bfloat16>() {
  return {5e-4, 3e-2};
}
#endif

// The unit roundoff u = 2^-p of a scalar type with a p-bit significand (docs/math.md §8.1).
template <class T>
double unit_roundoff();
template <>
inline double unit_roundoff<double>() {
  return std::ldexp(1.0, -53);
}
template <>
inline double unit_roundoff<float>() {
  return std::ldexp(1.0, -24);
}
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
template <>
inline double unit_roundoff<__half>() {
  return std::ldexp(1.0, -11);
}
template <>
inline double unit_roundoff<__nv_bfloat16>() {
  return std::ldexp(1.0, -8);
}
#endif

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
  // An unlikely value representable in every scalar type (fp16 tops out at 65504).
  static T sentinel() { return Scalar<T>::from_double(-12345.5); }

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
      for (index_t c = 0; c < cols_; ++c)
        out[r * cols_ + c] = Scalar<T>::to_double(data()[r * stride_ + c]);
    return out;
  }

  // The whole allocation, guards included, for mirroring into device memory.
  T* storage() { return storage_.data(); }
  std::size_t storage_size() const { return storage_.size(); }

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
  std::vector<double> d(static_cast<std::size_t>(n));
  fill_normal(d.data(), n, seed, 0.0, stddev);
  std::vector<T> v(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) v[i] = Scalar<T>::from_double(d[i]);
  return v;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = Scalar<T>::to_double(v[i]);
  return out;
}

// Memory of backend B: host vectors on Cpu, device buffers on the device backends.
template <class B, class T>
struct BackendBuffer {
  explicit BackendBuffer(std::size_t n) : host(n) {}
  T* data() { return host.data(); }
  void upload(const std::vector<T>& v) { host = v; }
  std::vector<T> download() const { return host; }
  std::vector<T> host;
};
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
template <class B, class T>
struct DeviceBackendBuffer {
  explicit DeviceBackendBuffer(std::size_t n) : dev(n) {}
  T* data() { return dev.data(); }
  void upload(const std::vector<T>& v) { dev.upload(v.data(), v.size()); }
  std::vector<T> download() const { return dev.to_host(); }
  typename detail::DeviceApi<B>::template Buffer<T> dev;
};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
struct BackendBuffer<CudaEmu, T> : DeviceBackendBuffer<CudaEmu, T> {
  using DeviceBackendBuffer<CudaEmu, T>::DeviceBackendBuffer;
};
#endif
#if defined(FFNKIT_WITH_CUDA)
template <class T>
struct BackendBuffer<Cuda, T> : DeviceBackendBuffer<Cuda, T> {
  using DeviceBackendBuffer<Cuda, T>::DeviceBackendBuffer;
};
#endif

// A GuardedMatrix mirrored into backend B's memory, guards included: the layer writes the mirror,
// `sync_to_host()` copies everything back, and the host's guards_intact() then checks the device
// writes too.
template <class B, class T>
class BackendMatrix {
 public:
  explicit BackendMatrix(GuardedMatrix<T>& host) : host_(host), buf_(host.storage_size()) {
    buf_.upload(std::vector<T>(host.storage(), host.storage() + host.storage_size()));
  }
  MatrixView<T> view() {
    return MatrixView<T>(buf_.data() + GuardedMatrix<T>::kGuard, host_.rows(), host_.cols(),
                         host_.stride());
  }
  MatrixView<const T> cview() { return MatrixView<const T>(view()); }
  void sync_to_host() {
    const std::vector<T> v = buf_.download();
    std::copy(v.begin(), v.end(), host_.storage());
  }

 private:
  GuardedMatrix<T>& host_;
  BackendBuffer<B, T> buf_;
};

// `n` elements at `p` in backend B's memory, copied to the host.
template <class B, class T>
std::vector<T> to_host(const T* p, index_t n) {
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
  if constexpr (!std::is_same<B, Cpu>::value) {
    std::vector<T> v(static_cast<std::size_t>(n));
    using Api = detail::DeviceApi<B>;
    Api::copy(v.data(), p, v.size() * sizeof(T), Api::CopyKind::kDeviceToHost,
              typename Api::Stream());
    return v;
  }
#endif
  return std::vector<T>(p, p + n);
}

// A layer's gradient buffers on its backend (host vectors on Cpu, device buffers otherwise), and
// one of them copied to the host.
template <class L>
auto grads_for(L& layer) {
  return layer.make_grads();
}
template <class T>
std::vector<T> grad_host(const std::vector<T>& g) {
  return g;
}
template <class G>
auto grad_host(const G& g) -> decltype(g.to_host()) {
  return g.to_host();
}

// Runs `fn` once per schedule order that matters for B: the emulator's kernels run under the
// forward order and a seeded shuffle (docs/cuda.md: every kernel test under at least two orders).
template <class B, class Fn>
void for_each_schedule(Fn&& fn) {
#if defined(FFNKIT_WITH_CUDA_EMU)
  if (std::is_same<B, CudaEmu>::value) {
    for (auto order : {emu::ScheduleOrder::kForward, emu::ScheduleOrder::kShuffle}) {
      emu::ScopedSchedule scope(order, 1234);
      SCOPED_TRACE(std::string("emulator schedule order: ") + emu::to_string(order));
      fn();
    }
    return;
  }
#endif
  fn();
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
