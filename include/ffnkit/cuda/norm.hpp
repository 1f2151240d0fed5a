// RMSNormLinear, LayerNormLinear and SoftmaxLinear on the device backends (Cuda, CudaEmu),
// docs/math.md §7. Host parameters in the constructors (folded in double on the host, as on the Cpu
// backend, then uploaded); device views, an optional device workspace and a stream in forward.
//
// forward (deferred): RowStats (one block per token, fp32 shifted sums) + one cuBLAS GEMM on the
// folded W' with the raw x + one NormEpilogue kernel, y = r (acc − μ c) + b'. For __half and
// __nv_bfloat16 the GEMM writes fp32 accumulators into the workspace (cuBLAS's mixed F16/BF16 ->
// F32 GemmEx), so the mean correction cancels at fp32 precision, not after rounding to 16 bits.
// forward_unfused: RowStats + NormalizeRows (γ, β applied) into a buffer + GEMM on W + bias.
//
// Above kDecodeTokens the statistics run concurrently with the GEMM (docs/math.md §7: only the
// epilogue needs them): the layer forks a secondary stream it owns (created on first use) off the
// caller's stream with an event, runs RowStats (and the optional normalized side output) there
// while the GEMM runs on the caller's stream, and joins it with a second event before NormEpilogue.
// LayerNorm with a finite center threshold cannot overlap (the GEMM's input depends on the
// statistics) and runs everything on the caller's stream; set_concurrent_stats(false) does that for
// any layer.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B, bool kLayerNorm>
class DeviceNormLinear {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");

 public:
  using Scalar = T;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  template <class U>
  using Buffer = typename Api::template Buffer<U>;

  // At or below this many tokens forward runs the fused decode kernel (NormDecode).
  static constexpr index_t kDecodeTokens = 16;

  DeviceNormLinear() = default;
  // A copy gets its own secondary stream (created on its first concurrent forward).
  DeviceNormLinear(const DeviceNormLinear& o)
      : in_(o.in_),
        out_(o.out_),
        eps_(o.eps_),
        center_threshold_(o.center_threshold_),
        has_bias_(o.has_bias_),
        concurrent_stats_(o.concurrent_stats_),
        side_(std::make_unique<SideStream>()),
        w_(clone_buffer<B>(o.w_)),
        g_(clone_buffer<B>(o.g_)),
        be_(clone_buffer<B>(o.be_)),
        b_(clone_buffer<B>(o.b_)),
        wf_(clone_buffer<B>(o.wf_)),
        c_(clone_buffer<B>(o.c_)),
        bf_(clone_buffer<B>(o.bf_)) {}
  DeviceNormLinear& operator=(const DeviceNormLinear& o) {
    if (this != &o) *this = DeviceNormLinear(o);
    return *this;
  }
  DeviceNormLinear(DeviceNormLinear&&) noexcept = default;
  DeviceNormLinear& operator=(DeviceNormLinear&&) noexcept = default;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  double eps() const { return eps_; }
  // Device memory: W' [out x in] in T, c = W' 1 and b' = W β + b in fp32.
  const T* folded_weight() const { return wf_.data(); }
  const float* row_sums() const { return c_.data(); }
  const float* folded_bias() const { return bf_.data(); }
  index_t parameter_count() const { return in_ * out_ + out_ + in_ * (kLayerNorm ? 2 : 1); }
  // Whether forward runs the statistics on the layer's secondary stream, concurrently with the
  // GEMM, above kDecodeTokens tokens (default true; LayerNorm also needs an infinite center
  // threshold). Off: everything on the caller's stream, in the order stats, GEMM, epilogue.
  void set_concurrent_stats(bool enabled) { concurrent_stats_ = enabled; }
  bool concurrent_stats() const { return concurrent_stats_; }
  double flops_per_token() const { return 2.0 * static_cast<double>(in_) * out_; }

  // Device bytes of scratch for `tokens` tokens, enough for forward and forward_unfused: the
  // statistics (2 fp32 per token), the fp32 accumulators (half types only) and a [tokens x in]
  // copy of x (normalized, or centered). An empty Workspace allocates per call.
  std::size_t workspace_size(index_t tokens) const {
    const std::size_t t = static_cast<std::size_t>(tokens);
    return align16(2 * t * sizeof(float)) +
           align16(std::is_same<T, float>::value ? 0 : t * static_cast<std::size_t>(out_) * 4) +
           t * static_cast<std::size_t>(in_) * sizeof(T);
  }

  // y = r (W' x − μ c) + b' on device views ([tokens x in] -> [tokens x out]). `normalized`
  // ([tokens x in], device), if given, receives γ ⊙ norm(x) + β as well.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace workspace = {},
               const MatrixView<T>& normalized = MatrixView<T>(),
               const Stream& stream = Stream()) const {
    const char* where = kLayerNorm ? "LayerNormLinear::forward" : "RMSNormLinear::forward";
    check_io(where, x, y, normalized);
    const index_t tokens = x.rows;
    Scratch s = scratch(where, workspace, tokens);
    if (tokens <= kDecodeTokens) {
      // Decode: statistics and GEMV in one kernel, μ subtracted in registers (no μ c term, so
      // no centering pass and no readback whatever the threshold).
      throw_if_error(cuda::NormDecode<T, B>(x.data, x.row_stride, wf_.data(), y.data, y.row_stride,
                                            tokens, in_, out_, kLayerNorm, static_cast<float>(eps_),
                                            has_bias_ ? bf_.data() : nullptr, s.stats, stream),
                     where);
      if (normalized.data)
        throw_if_error(
            cuda::NormalizeRows<T, B>(x.data, x.row_stride, normalized.data, normalized.row_stride,
                                      tokens, in_, s.stats, g_.data(),
                                      kLayerNorm ? be_.data() : nullptr, true, stream),
            where);
      if (s.owned.data()) stream.synchronize();
      return;
    }
    // The statistics (and the side output, which needs only them) on `on`: the caller's stream,
    // or the secondary one while the GEMM runs.
    auto stats_work = [&](const Stream& on) {
      throw_if_error(cuda::RowStats<T, B>(x.data, tokens, in_, x.row_stride, kLayerNorm,
                                          static_cast<float>(eps_), s.stats, on),
                     where);
      if (normalized.data)
        throw_if_error(cuda::NormalizeRows<T, B>(
                           x.data, x.row_stride, normalized.data, normalized.row_stride, tokens,
                           in_, s.stats, g_.data(), kLayerNorm ? be_.data() : nullptr, true, on),
                       where);
    };
    constexpr bool kFloatAcc = !std::is_same<T, float>::value;
    void* acc = kFloatAcc ? static_cast<void*>(s.acc) : static_cast<void*>(y.data);
    const index_t acc_ld = kFloatAcc ? out_ : y.row_stride;
    if (concurrent_stats_ && !(kLayerNorm && std::isfinite(center_threshold_))) {
      SideStream& side = *side_;
      // One caller at a time issues the fork/join, so each join waits for its own statistics.
      std::lock_guard<std::mutex> lock(side.mutex);
      if (!side.ready) {
        side.stream = Stream::create();
        side.fork = Event::create();
        side.join = Event::create();
        side.ready = true;
      }
      // Fork: the statistics read x, which earlier work on the caller's stream may still write.
      side.fork.record(stream);
      Api::wait_event(side.stream, side.fork);
      stats_work(side.stream);
      side.join.record(side.stream);
      gemm(where, x, wf_.data(), acc, kFloatAcc, acc_ld, stream);
      // Join: the epilogue (and everything the caller queues after it) waits for the statistics.
      Api::wait_event(stream, side.join);
      throw_if_error(cuda::NormEpilogue<T, B>(acc, kFloatAcc, acc_ld, y.data, y.row_stride, tokens,
                                              out_, s.stats, kLayerNorm ? c_.data() : nullptr,
                                              has_bias_ ? bf_.data() : nullptr, stream),
                     where);
      if (s.owned.data()) stream.synchronize();  // the owned scratch is freed on return
      return;
    }
    stats_work(stream);
    MatrixView<const T> input = x;
    bool centered = false;
    if (kLayerNorm && std::isfinite(center_threshold_)) {
      // The threshold needs the call's worst |μ|/σ on the host: a 8-bytes-per-token readback and
      // a synchronization of `stream` (set the threshold to infinity to avoid it).
      std::vector<float> st(static_cast<std::size_t>(2 * tokens));
      Api::copy(st.data(), s.stats, st.size() * sizeof(float), Api::CopyKind::kDeviceToHost,
                stream);
      float worst = 0;
      for (index_t t = 0; t < tokens; ++t)
        worst = std::max(worst, std::abs(st[2 * t]) * st[2 * t + 1]);
      if (static_cast<double>(worst) > center_threshold_) {
        throw_if_error(cuda::NormalizeRows<T, B>(x.data, x.row_stride, s.copy, in_, tokens, in_,
                                                 s.stats, nullptr, nullptr, false, stream),
                       where);
        input = MatrixView<const T>(s.copy, tokens, in_);
        centered = true;
      }
    }
    gemm(where, input, wf_.data(), acc, kFloatAcc, acc_ld, stream);
    throw_if_error(
        cuda::NormEpilogue<T, B>(acc, kFloatAcc, acc_ld, y.data, y.row_stride, tokens, out_,
                                 s.stats, kLayerNorm && !centered ? c_.data() : nullptr,
                                 has_bias_ ? bf_.data() : nullptr, stream),
        where);
    if (s.owned.data()) stream.synchronize();  // the owned scratch is freed on return
  }

  // The unfused reference path: normalize x into a buffer (γ, β applied), then the GEMM on the
  // original W, then the bias. `normalized`, if given, is that buffer.
  void forward_unfused(const MatrixView<const T>& x, const MatrixView<T>& y,
                       Workspace workspace = {}, const MatrixView<T>& normalized = MatrixView<T>(),
                       const Stream& stream = Stream()) const {
    const char* where =
        kLayerNorm ? "LayerNormLinear::forward_unfused" : "RMSNormLinear::forward_unfused";
    check_io(where, x, y, normalized);
    const index_t tokens = x.rows;
    Scratch s = scratch(where, workspace, tokens);
    const MatrixView<T> xn = normalized.data ? normalized : MatrixView<T>(s.copy, tokens, in_, in_);
    throw_if_error(cuda::RowStats<T, B>(x.data, tokens, in_, x.row_stride, kLayerNorm,
                                        static_cast<float>(eps_), s.stats, stream),
                   where);
    throw_if_error(cuda::NormalizeRows<T, B>(x.data, x.row_stride, xn.data, xn.row_stride, tokens,
                                             in_, s.stats, g_.data(),
                                             kLayerNorm ? be_.data() : nullptr, true, stream),
                   where);
    gemm(where, MatrixView<const T>(xn), w_.data(), y.data, false, y.row_stride, stream);
    if (b_.data())
      throw_if_error(cuda::BiasActivation<T, B>(y.data, b_.data(), tokens, out_, y.row_stride,
                                                Activation::kIdentity, stream),
                     where);
    if (s.owned.data()) stream.synchronize();
  }

  void check_ready(const char* where) const {
    if (in_ == 0 || w_.data() == nullptr)
      fail(where, "the layer is empty (default-constructed or moved from)");
  }

 protected:
  // LayerNorm only, as on the Cpu backend: above this call-wide max |μ|/σ, forward subtracts μ
  // from x first (into the workspace) and skips the μ c correction. Finite thresholds cost a
  // device-to-host readback of the statistics per call; infinity never centers and never syncs.
  void set_center_threshold(double mu_over_sigma) {
    if (!(mu_over_sigma >= 0))
      fail("LayerNormLinear::set_center_threshold", "mu_over_sigma = ", mu_over_sigma,
           ", must be >= 0");
    center_threshold_ = mu_over_sigma;
  }
  double center_threshold() const { return center_threshold_; }

  DeviceNormLinear(const char* where, index_t in_features, index_t out_features, const T* gamma,
                   const T* beta, const T* weight, const T* bias, double eps)
      : in_(in_features),
        out_(out_features),
        eps_(eps),
        has_bias_(bias != nullptr || beta),
        side_(std::make_unique<SideStream>()) {
    check_positive(where, "in_features", in_features);
    check_positive(where, "out_features", out_features);
    check_not_null(where, "weight", weight);
    check_eps(where, eps, true);
    check_host_finite(where, "weight", weight, in_features * out_features);
    if (gamma) check_host_finite(where, "gamma", gamma, in_features);
    if (beta) check_host_finite(where, "beta", beta, in_features);
    if (bias) check_host_finite(where, "bias", bias, out_features);
    const auto n = static_cast<std::size_t>(in_), m = static_cast<std::size_t>(out_);
    using H = HostScalar<T>;
    std::vector<T> wf(n * m);
    std::vector<float> c(m), bf(m);
    for (std::size_t i = 0; i < m; ++i) {
      double csum = 0, bsum = bias ? H::to_double(bias[i]) : 0.0;
      for (std::size_t j = 0; j < n; ++j) {
        const double wij = H::to_double(weight[i * n + j]);
        wf[i * n + j] = H::from_double(wij * (gamma ? H::to_double(gamma[j]) : 1.0));
        // c sums the rounded W' the product uses, so μ c cancels what μ 1 puts into W' x.
        csum += H::to_double(wf[i * n + j]);
        if (beta) bsum += wij * H::to_double(beta[j]);
      }
      c[i] = static_cast<float>(csum);
      bf[i] = static_cast<float>(bsum);
    }
    w_ = Buffer<T>(weight, n * m);
    if (gamma) g_ = Buffer<T>(gamma, n);
    if (beta) be_ = Buffer<T>(beta, n);
    if (bias) b_ = Buffer<T>(bias, m);
    wf_ = Buffer<T>(wf.data(), wf.size());
    c_ = Buffer<float>(c.data(), c.size());
    bf_ = Buffer<float>(bf.data(), bf.size());
  }

 private:
  using Event = typename Api::Event;
  static std::size_t align16(std::size_t b) { return (b + 15) / 16 * 16; }

  // The secondary stream and its fork/join events, created on the first concurrent forward; the
  // mutex serialises callers sharing the layer (forward is const and may run on several threads).
  struct SideStream {
    std::mutex mutex;
    bool ready = false;
    Stream stream;
    Event fork, join;
  };

  struct Scratch {
    float* stats = nullptr;
    float* acc = nullptr;
    T* copy = nullptr;
    Buffer<unsigned char> owned;
  };

  Scratch scratch(const char* where, Workspace ws, index_t tokens) const {
    const std::size_t need = workspace_size(tokens);
    Scratch s;
    unsigned char* base = static_cast<unsigned char*>(ws.data);
    if (base) {
      if (ws.bytes < need)
        fail(where, "workspace.bytes = ", ws.bytes, " is smaller than the ", need,
             " bytes needed for ", tokens, " tokens");
      if (reinterpret_cast<std::uintptr_t>(base) % 16 != 0)
        fail(where, "workspace.data is not 16-byte aligned");
    } else {
      s.owned = Buffer<unsigned char>(need);
      base = s.owned.data();
    }
    const std::size_t t = static_cast<std::size_t>(tokens);
    s.stats = reinterpret_cast<float*>(base);
    base += align16(2 * t * sizeof(float));
    if (!std::is_same<T, float>::value) {
      s.acc = reinterpret_cast<float*>(base);
      base += align16(t * static_cast<std::size_t>(out_) * 4);
    }
    s.copy = reinterpret_cast<T*>(base);
    return s;
  }

  // acc = x W^T ([tokens x out], ld acc_ld), in fp32 when acc_is_float, else in T.
  void gemm(const char* where, const MatrixView<const T>& x, const T* w, void* acc,
            bool acc_is_float, index_t acc_ld, const Stream& stream) const {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const auto dc = acc_is_float ? Api::DataType::kF32 : dt;
    const int k = to_blas_int(where, "in_features", in_);
    Api::gemm(Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "out_features", out_),
              to_blas_int(where, "tokens", x.rows), k, 1.0f, w, dt, k, x.data, dt,
              to_blas_int(where, "x.row_stride", x.row_stride), 0.0f, acc, dc,
              to_blas_int(where, "y.row_stride", acc_ld));
  }

  void check_io(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y,
                const MatrixView<T>& normalized) const {
    check_ready(where);
    check_activation(where, "x", x, in_, "in_features");
    check_activation(where, "y", y, out_, "out_features");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    check_no_overlap(where, x, y);
    if (normalized.data) {
      check_activation(where, "normalized", normalized, in_, "in_features");
      check_equal(where, "normalized.rows", normalized.rows, "x.rows", x.rows);
      check_no_overlap(where, x, normalized);
      check_no_overlap(where, MatrixView<const T>(normalized), y);
    }
  }

  index_t in_ = 0;
  index_t out_ = 0;
  double eps_ = 0;
  double center_threshold_ = 4.0;
  bool has_bias_ = false;
  bool concurrent_stats_ = true;
  std::unique_ptr<SideStream> side_;  // null only in an empty or moved-from layer
  Buffer<T> w_, g_, be_, b_;          // as given, for the unfused path (γ, β, b: empty when null)
  Buffer<T> wf_;                      // W' = W diag(γ)
  Buffer<float> c_, bf_;              // c = W' 1, b' = W β + b
};

// y = softmax(s + mask) V on device views, one pass (SoftmaxV kernel); forward_unfused is the
// three-pass reference through a [queries x keys] buffer of P and one GEMM.
template <class T, class B>
class DeviceSoftmaxLinear {
 public:
  using Scalar = T;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;

  std::size_t workspace_size(index_t queries, index_t keys) const {
    return static_cast<std::size_t>(queries) * static_cast<std::size_t>(keys) * sizeof(T);
  }

  void forward(const MatrixView<const T>& s, const MatrixView<const T>& v, const MatrixView<T>& y,
               const MatrixView<const T>& mask = MatrixView<const T>(),
               const Stream& stream = Stream()) const {
    constexpr const char* where = "SoftmaxLinear::forward";
    check_io(where, s, v, y, mask);
    throw_if_error(
        cuda::SoftmaxV<T, B>(s.data, s.row_stride, mask.data, mask.row_stride, v.data, v.row_stride,
                             y.data, y.row_stride, s.rows, s.cols, v.cols, stream),
        where);
  }

  // The three-pass reference: P = softmax(s + mask) into a [queries x keys] buffer (the workspace,
  // workspace_size(queries, keys) bytes of device memory, or allocated), then y = P V.
  void forward_unfused(const MatrixView<const T>& s, const MatrixView<const T>& v,
                       const MatrixView<T>& y,
                       const MatrixView<const T>& mask = MatrixView<const T>(),
                       Workspace workspace = {}, const Stream& stream = Stream()) const {
    constexpr const char* where = "SoftmaxLinear::forward_unfused";
    check_io(where, s, v, y, mask);
    const index_t q = s.rows, keys = s.cols, dim = v.cols;
    const std::size_t need = workspace_size(q, keys);
    typename Api::template Buffer<T> owned;
    T* p = static_cast<T*>(workspace.data);
    if (p) {
      if (workspace.bytes < need)
        fail(where, "workspace.bytes = ", workspace.bytes, " is smaller than the ", need,
             " bytes needed for ", q, " x ", keys, " scores");
    } else {
      owned = typename Api::template Buffer<T>(need / sizeof(T));
      p = owned.data();
    }
    throw_if_error(cuda::SoftmaxRows<T, B>(s.data, s.row_stride, mask.data, mask.row_stride, p,
                                           keys, q, keys, stream),
                   where);
    // Row-major y = P V is column-major y^T (dim x q) = V^T (dim x keys, V's buffer as is) P^T.
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    Api::gemm(Api::blas(stream), Op::kN, Op::kN, to_blas_int(where, "dim", dim),
              to_blas_int(where, "queries", q), to_blas_int(where, "keys", keys), 1.0f, v.data, dt,
              to_blas_int(where, "v.row_stride", v.row_stride), p, dt,
              to_blas_int(where, "keys", keys), 0.0f, y.data, dt,
              to_blas_int(where, "y.row_stride", y.row_stride));
    if (owned.data()) stream.synchronize();
  }

 protected:
  void check_io(const char* where, const MatrixView<const T>& s, const MatrixView<const T>& v,
                const MatrixView<T>& y, const MatrixView<const T>& mask) const {
    if (s.rows <= 0) fail(where, "s.rows (queries) = ", s.rows, ", must be > 0");
    if (s.cols <= 0) fail(where, "s.cols (keys) = ", s.cols, ", must be > 0");
    check_activation(where, "s", s, s.cols, "s.cols");
    if (v.cols <= 0) fail(where, "v.cols (head dim) = ", v.cols, ", must be > 0");
    check_activation(where, "v", v, v.cols, "v.cols");
    check_equal(where, "v.rows", v.rows, "s.cols (keys)", s.cols);
    check_activation(where, "y", y, v.cols, "v.cols (head dim)");
    check_equal(where, "y.rows", y.rows, "s.rows (queries)", s.rows);
    check_no_overlap(where, s, y);
    check_no_overlap(where, v, y);
    if (mask.data) {
      check_activation(where, "mask", mask, s.cols, "s.cols (keys)");
      check_equal(where, "mask.rows", mask.rows, "s.rows (queries)", s.rows);
    }
  }
};

}  // namespace detail

#define FFNKIT_DEVICE_NORM_SPECIALIZATIONS(Backend)                                                \
  template <class T>                                                                               \
  class RMSNormLinear<T, Backend> : public detail::DeviceNormLinear<T, Backend, false> {           \
   public:                                                                                         \
    RMSNormLinear() = default;                                                                     \
    /* Host gamma: [in] or null, weight: [out x in] (nn.Linear), bias: [out] or null. */           \
    RMSNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* weight,      \
                  const T* bias, double eps = 1e-6)                                                \
        : detail::DeviceNormLinear<T, Backend, false>("RMSNormLinear", in_features, out_features,  \
                                                      gamma, nullptr, weight, bias, eps) {}        \
  };                                                                                               \
  template <class T>                                                                               \
  class LayerNormLinear<T, Backend> : public detail::DeviceNormLinear<T, Backend, true> {          \
   public:                                                                                         \
    using detail::DeviceNormLinear<T, Backend, true>::set_center_threshold;                        \
    using detail::DeviceNormLinear<T, Backend, true>::center_threshold;                            \
    LayerNormLinear() = default;                                                                   \
    /* Host gamma, beta: [in] or null, weight: [out x in], bias: [out] or null. */                 \
    LayerNormLinear(index_t in_features, index_t out_features, const T* gamma, const T* beta,      \
                    const T* weight, const T* bias, double eps = 1e-5)                             \
        : detail::DeviceNormLinear<T, Backend, true>("LayerNormLinear", in_features, out_features, \
                                                     gamma, beta, weight, bias, eps) {}            \
  };                                                                                               \
  template <class T>                                                                               \
  class SoftmaxLinear<T, Backend> : public detail::DeviceSoftmaxLinear<T, Backend> {};

#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEVICE_NORM_SPECIALIZATIONS(Cuda)
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEVICE_NORM_SPECIALIZATIONS(CudaEmu)
#endif
#undef FFNKIT_DEVICE_NORM_SPECIALIZATIONS

}  // namespace ffnkit
