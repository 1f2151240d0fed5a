// DenseLinear and DenseFFN on the device backends (Cuda, CudaEmu): cuBLAS GEMMs plus the fused
// bias + activation (or SwiGLU) epilogue kernel. Views passed to forward point to device memory.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/dense_ffn_common.hpp"
#include "ffnkit/detail/ffn_checks.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
class DeviceDenseLinear {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");

 public:
  using Scalar = T;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;

  DeviceDenseLinear() = default;
  // Copies are deep (device to device), so layers behave like the Cpu backend's values.
  DeviceDenseLinear(const DeviceDenseLinear& o)
      : in_(o.in_), out_(o.out_), weight_(clone(o.weight_)), bias_(clone(o.bias_)) {}
  DeviceDenseLinear& operator=(const DeviceDenseLinear& o) {
    if (this != &o) *this = DeviceDenseLinear(o);
    return *this;
  }
  DeviceDenseLinear(DeviceDenseLinear&&) noexcept = default;
  DeviceDenseLinear& operator=(DeviceDenseLinear&&) noexcept = default;

  // Uploads host `weight` ([out x in], PyTorch layout) and `bias` ([out] or null).
  DeviceDenseLinear(index_t in_features, index_t out_features, const T* weight, const T* bias)
      : in_(in_features), out_(out_features) {
    constexpr const char* where = "DenseLinear";
    check_positive(where, "in_features", in_features);
    check_positive(where, "out_features", out_features);
    check_not_null(where, "weight", weight);
    check_host_finite(where, "weight", weight, in_features * out_features);
    weight_ = typename Api::template Buffer<T>(weight, static_cast<std::size_t>(in_ * out_));
    if (bias) {
      check_host_finite(where, "bias", bias, out_features);
      bias_ = typename Api::template Buffer<T>(bias, static_cast<std::size_t>(out_));
    }
  }

  // Seeded N(0, stddev^2) weights and bias: the same values as DenseLinear<float, Cpu>::random
  // with the same arguments, rounded to T.
  static DenseLinear<T, B> random(index_t in_features, index_t out_features, std::uint64_t seed,
                                  bool with_bias = true, double stddev = 0.02) {
    check_positive("DenseLinear::random", "in_features", in_features);
    check_positive("DenseLinear::random", "out_features", out_features);
    std::vector<double> w(static_cast<std::size_t>(in_features * out_features));
    std::vector<double> b(static_cast<std::size_t>(out_features));
    fill_normal(w.data(), static_cast<index_t>(w.size()), seed, 0.0, stddev);
    fill_normal(b.data(), out_features, splitmix64(seed ^ 0xB1A5ull), 0.0, stddev);
    const std::vector<T> wt = to_storage(w), bt = to_storage(b);
    return DenseLinear<T, B>(in_features, out_features, wt.data(), with_bias ? bt.data() : nullptr);
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return bias_.size() != 0; }
  const T* weight() const { return weight_.data(); }  // device memory
  const T* bias() const { return has_bias() ? bias_.data() : nullptr; }
  std::vector<T> weight_host() const { return weight_.to_host(); }
  std::vector<T> bias_host() const { return bias_.to_host(); }
  index_t parameter_count() const { return in_ * out_ + (has_bias() ? out_ : 0); }
  double flops_per_token() const { return 2.0 * static_cast<double>(in_) * out_; }

  // y = x W^T + b on device views.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y,
               const Stream& stream = Stream()) const {
    constexpr const char* where = "DenseLinear::forward";
    check_ready(where);
    check_activation(where, "x", x, in_, "in_features");
    check_activation(where, "y", y, out_, "out_features");
    check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
    check_no_overlap(where, x, y);
    forward_no_bias(x, y, stream);
    if (has_bias())
      throw_if_error(cuda::BiasActivation<T, B>(y.data, bias(), y.rows, y.cols, y.row_stride,
                                                Activation::kIdentity, stream),
                     where);
  }

  // y = x W^T as one cuBLAS call. Row-major y[T x M] is column-major y^T (M x T, ld = row
  // stride), so y^T = op_T(W as stored: N x M column-major) * x^T (N x T, ld = x's row stride).
  void forward_no_bias(const MatrixView<const T>& x, const MatrixView<T>& y,
                       const Stream& stream) const {
    constexpr const char* where = "DenseLinear::forward";
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    Api::gemm(Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "out_features", out_),
              to_blas_int(where, "tokens", x.rows), to_blas_int(where, "in_features", in_), 1.0f,
              weight(), dt, to_blas_int(where, "in_features", in_), x.data, dt,
              to_blas_int(where, "x.row_stride", x.row_stride), 0.0f, y.data, dt,
              to_blas_int(where, "y.row_stride", y.row_stride));
  }

  // A default-constructed or moved-from layer has no weights; calling it is an error, not a
  // null pointer handed to cuBLAS.
  void check_ready(const char* where) const {
    if (in_ == 0 || weight_.data() == nullptr)
      fail(where, "the layer is empty (default-constructed or moved from)");
  }

  static std::vector<T> to_storage(const std::vector<double>& v) {
    std::vector<T> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = HostScalar<T>::from_double(v[i]);
    return out;
  }

 private:
  static typename Api::template Buffer<T> clone(const typename Api::template Buffer<T>& b) {
    return clone_buffer<B>(b);
  }

  index_t in_ = 0;
  index_t out_ = 0;
  typename Api::template Buffer<T> weight_;
  typename Api::template Buffer<T> bias_;
};

template <class T, class B>
class DeviceDenseFFN : public DenseFFNCommon<DenseFFN<T, B>, DenseLinear<T, B>> {
  using Base = DenseFFNCommon<DenseFFN<T, B>, DenseLinear<T, B>>;
  using Base::act_;
  using Base::d_ff_;
  using Base::down_;
  using Base::gated_;
  using Base::up_;

 public:
  using Scalar = T;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  using Linear = DenseLinear<T, B>;
  using Base::d_model;
  using Base::d_out;
  using Base::workspace_size;

  DeviceDenseFFN() = default;

  DeviceDenseFFN(Linear up, Linear down, Activation act = Activation::kGeluTanh)
      : Base(std::move(up), std::move(down), act) {}

  static DenseFFN<T, B> swiglu(const Linear& gate, const Linear& up, Linear down) {
    detail::check_swiglu_pieces(gate, up, down);
    // One [2 d_ff x d] weight: a single GEMM produces gate and up halves side by side.
    std::vector<T> w = gate.weight_host(), b;
    const std::vector<T> wu = up.weight_host();
    w.insert(w.end(), wu.begin(), wu.end());
    if (gate.has_bias()) {
      b = gate.bias_host();
      const std::vector<T> bu = up.bias_host();
      b.insert(b.end(), bu.begin(), bu.end());
    }
    return Base::make_gated(Linear(gate.in_features(), 2 * gate.out_features(), w.data(),
                                   b.empty() ? nullptr : b.data()),
                            std::move(down), gate.out_features());
  }

  // y = FFN(x) on device views; `workspace` is device memory of workspace_size(tokens) bytes, or
  // empty to allocate per call.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace workspace = {},
               const Stream& stream = Stream()) const {
    constexpr const char* where = "DenseFFN::forward";
    const std::size_t need = workspace_size(x.rows);
    T* hidden = check_ffn_forward(where, up_, down_, x, y, workspace, need);
    typename Api::template Buffer<T> owned;
    if (hidden == nullptr) {
      owned = typename Api::template Buffer<T>(need / sizeof(T));
      hidden = owned.data();
    }
    const MatrixView<T> h(hidden, x.rows, up_.out_features());
    up_.forward_no_bias(x, h, stream);
    if (gated_) {
      const T* b = up_.bias();
      throw_if_error(
          cuda::SwiGlu<T, B>(hidden, b, b ? b + d_ff_ : nullptr, x.rows, d_ff_, 2 * d_ff_, stream),
          where);
      down_.forward(MatrixView<const T>(hidden, x.rows, d_ff_, 2 * d_ff_), y, stream);
    } else {
      throw_if_error(
          cuda::BiasActivation<T, B>(hidden, up_.bias(), x.rows, d_ff_, d_ff_, act_, stream),
          where);
      down_.forward(MatrixView<const T>(h), y, stream);
    }
    if (owned.data()) stream.synchronize();  // the owned scratch is freed on return
  }
};

}  // namespace detail

#define FFNKIT_DEVICE_DENSE_SPECIALIZATIONS(Backend)                             \
  template <class T>                                                             \
  class DenseLinear<T, Backend> : public detail::DeviceDenseLinear<T, Backend> { \
   public:                                                                       \
    using detail::DeviceDenseLinear<T, Backend>::DeviceDenseLinear;              \
    DenseLinear() = default;                                                     \
  };                                                                             \
  template <class T>                                                             \
  class DenseFFN<T, Backend> : public detail::DeviceDenseFFN<T, Backend> {       \
   public:                                                                       \
    using detail::DeviceDenseFFN<T, Backend>::DeviceDenseFFN;                    \
    DenseFFN() = default;                                                        \
  };

#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEVICE_DENSE_SPECIALIZATIONS(Cuda)
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEVICE_DENSE_SPECIALIZATIONS(CudaEmu)
#endif
#undef FFNKIT_DEVICE_DENSE_SPECIALIZATIONS

}  // namespace ffnkit
