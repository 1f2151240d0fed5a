// LowRank, BlockDiagonal, BlockDense and BlockShuffle on the device backends (Cuda, CudaEmu),
// docs/math.md §3. Every product is one cuBLAS call on strided views of the caller's buffers: a
// block-diagonal stage is one cublasGemmStridedBatchedEx with batch = blocks (block b's input is
// columns [b p, (b+1) p) of x, so the batch stride of x is p elements and nothing is gathered).
// BlockShuffle's permutation is one tiled-transpose kernel per stage; on the output side it also
// adds the bias and applies the activation. Views and workspaces point to device memory; the
// constructors take host weights, as the Cpu backend's do, and materialize() returns host memory.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/structured.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/structured_checks.hpp"

namespace ffnkit {
namespace detail {

// The gradient buffers of a device layer: one device buffer per parameter, in params() order.
template <class T, class B>
using DeviceGradList = std::vector<typename DeviceApi<B>::template Buffer<T>>;

template <class B, class T>
DeviceGradList<T, B> make_device_grads(const std::vector<ParamView<T>>& params) {
  DeviceGradList<T, B> g;
  const typename DeviceApi<B>::Stream stream;
  for (const auto& p : params) {
    g.emplace_back(static_cast<std::size_t>(p.size));
    DeviceApi<B>::fill_zero(g.back().data(), g.back().bytes(), stream);
  }
  stream.synchronize();
  return g;
}

// Host copies of `n` elements of T as float (exact for every device storage type): the Cpu twin
// that materialize() and the seeded initialisers go through.
template <class T>
std::vector<float> to_float_host(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = static_cast<float>(HostScalar<T>::to_double(v[i]));
  return out;
}
template <class T, class U>
std::vector<T> convert_host(const U* p, index_t n) {
  std::vector<T> out(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) out[i] = HostScalar<T>::from_double(static_cast<double>(p[i]));
  return out;
}

// What every structured layer on a device backend shares: widths, the bias, checks, the cuBLAS
// products on row-major views, and scratch.
template <class T, class B>
class DeviceStructuredBase {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");

 public:
  using Scalar = T;
  using Backend = B;
  using Api = DeviceApi<B>;
  using Stream = typename Api::Stream;
  using Buffer = typename Api::template Buffer<T>;
  using Grads = DeviceGradList<T, B>;

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  bool has_bias() const { return bias_.size() != 0; }
  const T* bias() const { return has_bias() ? bias_.data() : nullptr; }  // device memory
  std::vector<T> bias_host() const { return bias_.to_host(); }

 protected:
  DeviceStructuredBase() = default;
  DeviceStructuredBase(const DeviceStructuredBase& o)
      : in_(o.in_), out_(o.out_), bias_(clone_buffer<B>(o.bias_)) {}
  DeviceStructuredBase& operator=(const DeviceStructuredBase& o) {
    if (this != &o) {
      in_ = o.in_;
      out_ = o.out_;
      bias_ = clone_buffer<B>(o.bias_);
    }
    return *this;
  }
  DeviceStructuredBase(DeviceStructuredBase&& o) noexcept
      : in_(o.in_), out_(o.out_), bias_(std::move(o.bias_)) {
    o.in_ = o.out_ = 0;  // a moved-from layer is empty, and says so when called
  }
  DeviceStructuredBase& operator=(DeviceStructuredBase&& o) noexcept {
    if (this != &o) {
      in_ = o.in_;
      out_ = o.out_;
      bias_ = std::move(o.bias_);
      o.in_ = o.out_ = 0;
    }
    return *this;
  }

  void init_base(const char* where, index_t in, index_t out, const T* bias) {
    in_ = in;
    out_ = out;
    if (bias) {
      check_host_finite(where, "bias", bias, out);
      bias_ = Buffer(bias, static_cast<std::size_t>(out));
    }
  }

  static Buffer upload_factor(const char* where, const char* name, const T* p, index_t count) {
    check_not_null(where, name, p);
    check_host_finite(where, name, p, count);
    return Buffer(p, static_cast<std::size_t>(count));
  }

  void check_ready(const char* where) const {
    if (in_ == 0) fail(where, "the layer is empty (default-constructed or moved from)");
  }
  void check_forward(const char* where, const MatrixView<const T>& x,
                     const MatrixView<T>& y) const {
    check_ready(where);
    check_structured_forward(where, in_, out_, x, y);
  }
  void check_backward(const char* where, const MatrixView<const T>& x,
                      const MatrixView<const T>& dy, const MatrixView<T>& dx) const {
    check_ready(where);
    check_structured_backward(where, in_, out_, x, dy, dx);
  }

  // Scratch of `elements` T in device memory: the caller's workspace when given (checked), else
  // `owned`, which the caller keeps alive until the stream has consumed it.
  static T* scratch(const char* where, Workspace ws, std::size_t elements, Buffer& owned) {
    if (elements == 0) return nullptr;
    if (ws.data == nullptr) {
      owned = Buffer(elements);
      return owned.data();
    }
    if (ws.bytes < elements * sizeof(T))
      fail(where, "workspace.bytes = ", ws.bytes, ", need ", elements * sizeof(T));
    // 16 bytes: the epilogue kernels' vector loads assume it of every buffer they are given.
    if (reinterpret_cast<std::uintptr_t>(ws.data) % 16 != 0)
      fail(where, "workspace.data is not aligned to 16 bytes");
    return static_cast<T*>(ws.data);
  }

  // ---- the products, each one cuBLAS call (row-major y [t x m] is column-major yᵀ) ----

  // y = x Wᵀ (+ beta y), W: [n_out x k] row-major. yᵀ = op_T(W as stored, k x n_out) xᵀ.
  static void gemm_xwt(const char* where, const MatrixView<const T>& x, const T* w, index_t n_out,
                       const MatrixView<T>& y, float beta, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const int k = to_blas_int(where, "k", x.cols);
    Api::gemm(Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "n_out", n_out),
              to_blas_int(where, "tokens", x.rows), k, 1.0f, w, dt, k, x.data, dt,
              to_blas_int(where, "x.row_stride", x.row_stride), beta, y.data, dt,
              to_blas_int(where, "y.row_stride", y.row_stride));
  }

  // dW = dyᵀ x into dw ([n_out x k]); dx = dy W (+ beta_dx dx) unless dx.data is null.
  static void gemm_xwt_backward(const char* where, const MatrixView<const T>& x,
                                const MatrixView<const T>& dy, const T* w, T* dw,
                                const MatrixView<T>& dx, float beta_dx, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const int k = to_blas_int(where, "k", x.cols), n_out = to_blas_int(where, "n_out", dy.cols);
    const int t = to_blas_int(where, "tokens", x.rows);
    const int xs = to_blas_int(where, "x.row_stride", x.row_stride);
    const int dys = to_blas_int(where, "dy.row_stride", dy.row_stride);
    // dWᵀ (k x n_out, ld k) = xᵀ (k x t) · dy (t x n_out, dy stored as dyᵀ: op T).
    Api::gemm(Api::blas(stream), Op::kN, Op::kT, k, n_out, t, 1.0f, x.data, dt, xs, dy.data, dt,
              dys, 0.0f, dw, dt, k);
    // dxᵀ (k x t) = W as stored (k x n_out, ld k) · dyᵀ (n_out x t).
    if (dx.data)
      Api::gemm(Api::blas(stream), Op::kN, Op::kN, k, t, n_out, 1.0f, w, dt, k, dy.data, dt, dys,
                beta_dx, dx.data, dt, to_blas_int(where, "dx.row_stride", dx.row_stride));
  }

  // y_b = x_b W_bᵀ for b < blocks: W: [blocks, s, p] (p = x.cols / blocks, s = y.cols / blocks).
  // One strided-batched call: block b's x, W and y start p, s p and s elements further on.
  static void block_xwt(const char* where, const MatrixView<const T>& x, const T* w, index_t blocks,
                        const MatrixView<T>& y, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const index_t p = x.cols / blocks, s = y.cols / blocks;
    const int pi = to_blas_int(where, "in_features / blocks", p);
    Api::gemm_strided_batched(
        Api::blas(stream), Op::kT, Op::kN, to_blas_int(where, "s", s),
        to_blas_int(where, "tokens", x.rows), pi, 1.0f, w, dt, pi, static_cast<long long>(s * p),
        x.data, dt, to_blas_int(where, "x.row_stride", x.row_stride), static_cast<long long>(p),
        0.0f, y.data, dt, to_blas_int(where, "y.row_stride", y.row_stride),
        static_cast<long long>(s), to_blas_int(where, "blocks", blocks));
  }

  // dW_b = dy_bᵀ x_b into dw ([blocks, s, p]); dx_b = dy_b W_b unless dx.data is null.
  static void block_xwt_backward(const char* where, const MatrixView<const T>& x,
                                 const MatrixView<const T>& dy, const T* w, index_t blocks, T* dw,
                                 const MatrixView<T>& dx, const Stream& stream) {
    using Op = typename Api::Op;
    const auto dt = data_type_of<B, T>();
    const index_t p = x.cols / blocks, s = dy.cols / blocks;
    const int pi = to_blas_int(where, "p", p), si = to_blas_int(where, "s", s);
    const int t = to_blas_int(where, "tokens", x.rows), nb = to_blas_int(where, "blocks", blocks);
    const int xs = to_blas_int(where, "x.row_stride", x.row_stride);
    const int dys = to_blas_int(where, "dy.row_stride", dy.row_stride);
    Api::gemm_strided_batched(Api::blas(stream), Op::kN, Op::kT, pi, si, t, 1.0f, x.data, dt, xs,
                              static_cast<long long>(p), dy.data, dt, dys,
                              static_cast<long long>(s), 0.0f, dw, dt, pi,
                              static_cast<long long>(s * p), nb);
    if (dx.data)
      Api::gemm_strided_batched(
          Api::blas(stream), Op::kN, Op::kN, pi, t, si, 1.0f, w, dt, pi,
          static_cast<long long>(s * p), dy.data, dt, dys, static_cast<long long>(s), 0.0f, dx.data,
          dt, to_blas_int(where, "dx.row_stride", dx.row_stride), static_cast<long long>(p), nb);
  }

  // y = act(y + b) in one pass, skipped when there is nothing to do.
  void bias_activation(const char* where, const MatrixView<T>& y, Activation act,
                       const Stream& stream) const {
    if (!has_bias() && act == Activation::kIdentity) return;
    throw_if_error(
        cuda::BiasActivation<T, B>(y.data, bias(), y.rows, y.cols, y.row_stride, act, stream),
        where);
  }

  // The bias gradient, Σ_t dy[t, :], into the last gradient buffer.
  void bias_backward(const char* where, const MatrixView<const T>& dy, Grads& grads,
                     const Stream& stream) const {
    if (has_bias())
      throw_if_error(cuda::ColumnSum<T, B>(dy.data, dy.rows, dy.cols, dy.row_stride,
                                           grads.back().data(), stream),
                     where);
  }

  void append_bias_param(std::vector<ParamView<T>>& p) {
    if (has_bias()) p.push_back({"bias", {out_}, bias_.data(), out_});
  }

  // A float copy of the bias on the host (for the Cpu twin), or empty.
  std::vector<float> bias_float() const { return to_float_host(bias_host()); }
  const float* bias_float_ptr(const std::vector<float>& b) const {
    return b.empty() ? nullptr : b.data();
  }

  // Converts a Cpu float twin's materialized weight to T.
  static std::vector<T> from_float(const std::vector<float>& w) {
    return convert_host<T>(w.data(), static_cast<index_t>(w.size()));
  }

  index_t in_ = 0;
  index_t out_ = 0;
  Buffer bias_;
};

// The Cpu double layer's parameters, rounded to T: the device initialisers draw exactly what the
// Cpu backend draws for the same arguments.
template <class T, class CpuLayer>
std::vector<std::vector<T>> rounded_params(CpuLayer& cpu) {
  std::vector<std::vector<T>> out;
  for (const auto& p : cpu.params()) out.push_back(convert_host<T>(p.data, p.size));
  return out;
}

}  // namespace detail

#define FFNKIT_DEVICE_STRUCTURED_COMMON(Layer)                                              \
  using Base = detail::DeviceStructuredBase<T, B>;                                          \
                                                                                            \
 public:                                                                                    \
  using typename Base::Api;                                                                 \
  using typename Base::Buffer;                                                              \
  using typename Base::Grads;                                                               \
  using typename Base::Stream;                                                              \
  Layer() = default;                                                                        \
  /* The gradient buffers backward() expects: zero-filled device memory, params() order. */ \
  Grads make_grads() { return detail::make_device_grads<B>(params()); }                     \
                                                                                            \
 private:

namespace detail {

// ---------------------------------------------------------------------------------------------
// LowRank (docs/math.md §3.2): y = U (V x) + b; V x and U h are one GEMM each.
// ---------------------------------------------------------------------------------------------
template <class T, class B>
class DeviceLowRankLinear : public detail::DeviceStructuredBase<T, B> {
  FFNKIT_DEVICE_STRUCTURED_COMMON(DeviceLowRankLinear)

 public:
  DeviceLowRankLinear(index_t in_features, index_t out_features, index_t rank, const T* lr1,
                      const T* lr2, const T* bias) {
    constexpr const char* where = "LowRankLinear";
    detail::check_lowrank_args(where, in_features, out_features, rank);
    this->init_base(where, in_features, out_features, bias);
    rank_ = rank;
    v_ = Base::upload_factor(where, "lr1", lr1, rank * in_features);
    u_ = Base::upload_factor(where, "lr2", lr2, out_features * rank);
  }
  DeviceLowRankLinear(const DeviceLowRankLinear& o)
      : Base(o),
        rank_(o.rank_),
        v_(detail::clone_buffer<B>(o.v_)),
        u_(detail::clone_buffer<B>(o.u_)) {}
  DeviceLowRankLinear(DeviceLowRankLinear&&) noexcept = default;
  DeviceLowRankLinear& operator=(DeviceLowRankLinear&&) noexcept = default;

  // The Cpu backend's spectral init in double, rounded to T.
  static LowRankLinear<T, B> random(index_t in_features, index_t out_features, index_t rank,
                                    std::uint64_t seed, bool with_bias = true,
                                    double stddev = 0.02) {
    auto cpu = LowRankLinear<double, Cpu>::random(in_features, out_features, rank, seed, with_bias,
                                                  stddev);
    const auto p = detail::rounded_params<T>(cpu);
    return LowRankLinear<T, B>(in_features, out_features, rank, p[0].data(), p[1].data(),
                               with_bias ? p[2].data() : nullptr);
  }

  index_t rank() const { return rank_; }
  const T* lr1() const { return v_.data(); }
  const T* lr2() const { return u_.data(); }
  index_t parameter_count() const {
    return rank_ * (this->in_ + this->out_) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * rank_ * (this->in_ + this->out_); }
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * rank_) * sizeof(T);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity, const Stream& stream = Stream()) const {
    constexpr const char* where = "LowRankLinear::forward";
    this->check_forward(where, x, y);
    Buffer owned;
    const MatrixView<T> h(Base::scratch(where, ws, x.rows * rank_, owned), x.rows, rank_);
    Base::gemm_xwt(where, x, v_.data(), rank_, h, 0.0f, stream);
    Base::gemm_xwt(where, MatrixView<const T>(h), u_.data(), this->out_, y, 0.0f, stream);
    this->bias_activation(where, y, act, stream);
    if (owned.data()) stream.synchronize();  // the owned scratch is freed on return
  }

  // Gradients in params() order (lr1, lr2, bias) into device buffers; dx skipped when dx.data is
  // null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) const {
    constexpr const char* where = "LowRankLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<DeviceLowRankLinear*>(this)->params(), grads);
    Buffer h(static_cast<std::size_t>(x.rows * rank_)), dh(h.size());
    const MatrixView<T> hv(h.data(), x.rows, rank_), dhv(dh.data(), x.rows, rank_);
    Base::gemm_xwt(where, x, v_.data(), rank_, hv, 0.0f, stream);  // recompute h = V x
    Base::gemm_xwt_backward(where, MatrixView<const T>(hv), dy, u_.data(), grads[1].data(), dhv,
                            0.0f, stream);
    Base::gemm_xwt_backward(where, x, MatrixView<const T>(dhv), v_.data(), grads[0].data(), dx,
                            0.0f, stream);
    this->bias_backward(where, dy, grads, stream);
    stream.synchronize();  // h and dh are freed on return
  }

  std::vector<ParamView<T>> params() {
    std::vector<ParamView<T>> p = {{"lr1", {rank_, this->in_}, v_.data(), rank_ * this->in_},
                                   {"lr2", {this->out_, rank_}, u_.data(), this->out_ * rank_}};
    this->append_bias_param(p);
    return p;
  }

  // The Cpu float twin with the same weights (exact for every storage type).
  LowRankLinear<float, Cpu> to_cpu() const {
    const auto b = this->bias_float();
    return LowRankLinear<float, Cpu>(
        this->in_, this->out_, rank_, detail::to_float_host(v_.to_host()).data(),
        detail::to_float_host(u_.to_host()).data(), this->bias_float_ptr(b));
  }
  std::vector<T> materialize() const { return Base::from_float(to_cpu().materialize()); }

 private:
  index_t rank_ = 0;
  Buffer v_, u_;
};

// ---------------------------------------------------------------------------------------------
// BlockDiagonal (docs/math.md §3.3): one strided-batched GEMM, then the bias + activation pass.
// ---------------------------------------------------------------------------------------------
template <class T, class B>
class DeviceBlockDiagonalLinear : public detail::DeviceStructuredBase<T, B> {
  FFNKIT_DEVICE_STRUCTURED_COMMON(DeviceBlockDiagonalLinear)

 public:
  DeviceBlockDiagonalLinear(index_t in_features, index_t out_features, index_t blocks,
                            const T* weight, const T* bias) {
    constexpr const char* where = "BlockDiagonalLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    w_ = Base::upload_factor(where, "weight", weight, out_features * in_features / blocks);
  }
  DeviceBlockDiagonalLinear(const DeviceBlockDiagonalLinear& o)
      : Base(o), blocks_(o.blocks_), w_(detail::clone_buffer<B>(o.w_)) {}
  DeviceBlockDiagonalLinear(DeviceBlockDiagonalLinear&&) noexcept = default;
  DeviceBlockDiagonalLinear& operator=(DeviceBlockDiagonalLinear&&) noexcept = default;

  static BlockDiagonalLinear<T, B> random(index_t in_features, index_t out_features, index_t blocks,
                                          std::uint64_t seed, bool with_bias = true,
                                          double bias_stddev = 0.02) {
    auto cpu = BlockDiagonalLinear<double, Cpu>::random(in_features, out_features, blocks, seed,
                                                        with_bias, bias_stddev);
    const auto p = detail::rounded_params<T>(cpu);
    return BlockDiagonalLinear<T, B>(in_features, out_features, blocks, p[0].data(),
                                     with_bias ? p[1].data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  const T* weight() const { return w_.data(); }
  index_t parameter_count() const {
    return static_cast<index_t>(w_.size()) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(w_.size()); }
  std::size_t workspace_size(index_t) const { return 0; }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace = {},
               Activation act = Activation::kIdentity, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDiagonalLinear::forward";
    this->check_forward(where, x, y);
    Base::block_xwt(where, x, w_.data(), blocks_, y, stream);
    this->bias_activation(where, y, act, stream);
  }

  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDiagonalLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<DeviceBlockDiagonalLinear*>(this)->params(), grads);
    Base::block_xwt_backward(where, x, dy, w_.data(), blocks_, grads[0].data(), dx, stream);
    this->bias_backward(where, dy, grads, stream);
  }

  std::vector<ParamView<T>> params() {
    const index_t s = this->out_ / blocks_, p = this->in_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"weight", {blocks_, s, p}, w_.data(), static_cast<index_t>(w_.size())}};
    this->append_bias_param(v);
    return v;
  }

  BlockDiagonalLinear<float, Cpu> to_cpu() const {
    const auto b = this->bias_float();
    return BlockDiagonalLinear<float, Cpu>(this->in_, this->out_, blocks_,
                                           detail::to_float_host(w_.to_host()).data(),
                                           this->bias_float_ptr(b));
  }
  std::vector<T> materialize() const { return Base::from_float(to_cpu().materialize()); }

 private:
  index_t blocks_ = 0;
  Buffer w_;
};

// ---------------------------------------------------------------------------------------------
// BlockDense (docs/math.md §3.4): a strided-batched GEMM into the rank-R hidden, then one GEMM.
// ---------------------------------------------------------------------------------------------
template <class T, class B>
class DeviceBlockDenseLinear : public detail::DeviceStructuredBase<T, B> {
  FFNKIT_DEVICE_STRUCTURED_COMMON(DeviceBlockDenseLinear)

 public:
  DeviceBlockDenseLinear(index_t in_features, index_t out_features, index_t blocks, index_t rank,
                         const T* blkdiag, const T* lr, const T* bias) {
    constexpr const char* where = "BlockDenseLinear";
    detail::check_block_dense_args(where, in_features, out_features, blocks, rank);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    rank_ = rank;
    v_ = Base::upload_factor(where, "blkdiag", blkdiag, rank * in_features / blocks);
    u_ = Base::upload_factor(where, "lr", lr, out_features * rank);
  }
  DeviceBlockDenseLinear(const DeviceBlockDenseLinear& o)
      : Base(o),
        blocks_(o.blocks_),
        rank_(o.rank_),
        v_(detail::clone_buffer<B>(o.v_)),
        u_(detail::clone_buffer<B>(o.u_)) {}
  DeviceBlockDenseLinear(DeviceBlockDenseLinear&&) noexcept = default;
  DeviceBlockDenseLinear& operator=(DeviceBlockDenseLinear&&) noexcept = default;

  static BlockDenseLinear<T, B> random(index_t in_features, index_t out_features, index_t blocks,
                                       index_t rank, std::uint64_t seed, bool with_bias = true,
                                       double bias_stddev = 0.02) {
    auto cpu = BlockDenseLinear<double, Cpu>::random(in_features, out_features, blocks, rank, seed,
                                                     with_bias, bias_stddev);
    const auto p = detail::rounded_params<T>(cpu);
    return BlockDenseLinear<T, B>(in_features, out_features, blocks, rank, p[0].data(), p[1].data(),
                                  with_bias ? p[2].data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  index_t rank() const { return rank_; }
  const T* blkdiag() const { return v_.data(); }
  const T* lr() const { return u_.data(); }
  index_t parameter_count() const {
    return rank_ * (this->out_ + this->in_ / blocks_) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * rank_ * (this->out_ + this->in_ / blocks_); }
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * rank_) * sizeof(T);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDenseLinear::forward";
    this->check_forward(where, x, y);
    Buffer owned;
    const MatrixView<T> h(Base::scratch(where, ws, x.rows * rank_, owned), x.rows, rank_);
    Base::block_xwt(where, x, v_.data(), blocks_, h, stream);
    Base::gemm_xwt(where, MatrixView<const T>(h), u_.data(), this->out_, y, 0.0f, stream);
    this->bias_activation(where, y, act, stream);
    if (owned.data()) stream.synchronize();
  }

  // Gradients in params() order: blkdiag, lr, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockDenseLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<DeviceBlockDenseLinear*>(this)->params(), grads);
    Buffer h(static_cast<std::size_t>(x.rows * rank_)), dh(h.size());
    const MatrixView<T> hv(h.data(), x.rows, rank_), dhv(dh.data(), x.rows, rank_);
    Base::block_xwt(where, x, v_.data(), blocks_, hv, stream);
    Base::gemm_xwt_backward(where, MatrixView<const T>(hv), dy, u_.data(), grads[1].data(), dhv,
                            0.0f, stream);
    Base::block_xwt_backward(where, x, MatrixView<const T>(dhv), v_.data(), blocks_,
                             grads[0].data(), dx, stream);
    this->bias_backward(where, dy, grads, stream);
    stream.synchronize();
  }

  std::vector<ParamView<T>> params() {
    const index_t r = rank_ / blocks_, p = this->in_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"blkdiag", {blocks_, r, p}, v_.data(), static_cast<index_t>(v_.size())},
        {"lr", {this->out_, rank_}, u_.data(), static_cast<index_t>(u_.size())}};
    this->append_bias_param(v);
    return v;
  }

  BlockDenseLinear<float, Cpu> to_cpu() const {
    const auto b = this->bias_float();
    return BlockDenseLinear<float, Cpu>(
        this->in_, this->out_, blocks_, rank_, detail::to_float_host(v_.to_host()).data(),
        detail::to_float_host(u_.to_host()).data(), this->bias_float_ptr(b));
  }
  std::vector<T> materialize() const { return Base::from_float(to_cpu().materialize()); }

 private:
  index_t blocks_ = 0;
  index_t rank_ = 0;
  Buffer v_, u_;
};

// ---------------------------------------------------------------------------------------------
// BlockShuffle / Monarch (docs/math.md §3.5): stage 1 (strided-batched GEMM), one transpose kernel
// so stage-2 block b's inputs (stage-1 outputs b, b + B, ...) are contiguous, stage 2, and one
// transpose kernel that puts element s of block b at output s B + b, adding the bias on the way.
// ---------------------------------------------------------------------------------------------
template <class T, class B>
class DeviceBlockShuffleLinear : public detail::DeviceStructuredBase<T, B> {
  FFNKIT_DEVICE_STRUCTURED_COMMON(DeviceBlockShuffleLinear)

 public:
  DeviceBlockShuffleLinear(index_t in_features, index_t out_features, index_t blocks,
                           const T* blkdiag1, const T* blkdiag2, const T* bias) {
    constexpr const char* where = "BlockShuffleLinear";
    detail::check_block_diagonal_args(where, in_features, out_features, blocks);
    this->init_base(where, in_features, out_features, bias);
    blocks_ = blocks;
    q_ = std::min(in_features, out_features) / blocks;
    w1_ = Base::upload_factor(where, "blkdiag1", blkdiag1, blocks * q_ * (in_features / blocks));
    w2_ = Base::upload_factor(where, "blkdiag2", blkdiag2, blocks * (out_features / blocks) * q_);
  }
  DeviceBlockShuffleLinear(const DeviceBlockShuffleLinear& o)
      : Base(o),
        blocks_(o.blocks_),
        q_(o.q_),
        w1_(detail::clone_buffer<B>(o.w1_)),
        w2_(detail::clone_buffer<B>(o.w2_)) {}
  DeviceBlockShuffleLinear(DeviceBlockShuffleLinear&&) noexcept = default;
  DeviceBlockShuffleLinear& operator=(DeviceBlockShuffleLinear&&) noexcept = default;

  static BlockShuffleLinear<T, B> random(index_t in_features, index_t out_features, index_t blocks,
                                         std::uint64_t seed, bool with_bias = true,
                                         double bias_stddev = 0.02) {
    auto cpu = BlockShuffleLinear<double, Cpu>::random(in_features, out_features, blocks, seed,
                                                       with_bias, bias_stddev);
    const auto p = detail::rounded_params<T>(cpu);
    return BlockShuffleLinear<T, B>(in_features, out_features, blocks, p[0].data(), p[1].data(),
                                    with_bias ? p[2].data() : nullptr);
  }

  index_t blocks() const { return blocks_; }
  const T* blkdiag1() const { return w1_.data(); }
  const T* blkdiag2() const { return w2_.data(); }
  index_t parameter_count() const {
    return static_cast<index_t>(w1_.size() + w2_.size()) + (this->has_bias() ? this->out_ : 0);
  }
  double flops_per_token() const { return 2.0 * static_cast<double>(w1_.size() + w2_.size()); }
  // Stage-1 output, its permutation, and the stage-2 output before the output permutation.
  std::size_t workspace_size(index_t tokens) const {
    return static_cast<std::size_t>(tokens * (2 * blocks_ * q_ + this->out_)) * sizeof(T);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               Activation act = Activation::kIdentity, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockShuffleLinear::forward";
    this->check_forward(where, x, y);
    const index_t bq = blocks_ * q_, t = x.rows;
    Buffer owned;
    T* buf = Base::scratch(where, ws, t * (2 * bq + this->out_), owned);
    const MatrixView<T> z(buf, t, bq), zp(buf + t * bq, t, bq), v(buf + 2 * t * bq, t, this->out_);
    stage1(where, x, z, zp, stream);
    if (blocks_ == 1) {  // both permutations are the identity
      Base::block_xwt(where, MatrixView<const T>(zp), w2_.data(), blocks_, y, stream);
      this->bias_activation(where, y, act, stream);
    } else {
      Base::block_xwt(where, MatrixView<const T>(zp), w2_.data(), blocks_, v, stream);
      // y[t, i B + b] = act(v[t, b s + i] + bias): each v row is a [B x s] matrix, transposed.
      throw_if_error(
          cuda::TransposeBlocks<T, B>(v.data, v.row_stride, y.data, y.row_stride, t, blocks_,
                                      this->out_ / blocks_, this->bias(), act, stream),
          where);
    }
    if (owned.data()) stream.synchronize();
  }

  // Gradients in params() order: blkdiag1, blkdiag2, bias.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, const Stream& stream = Stream()) const {
    constexpr const char* where = "BlockShuffleLinear::backward";
    this->check_backward(where, x, dy, dx);
    check_grads(where, const_cast<DeviceBlockShuffleLinear*>(this)->params(), grads);
    const index_t bq = blocks_ * q_, t = x.rows, s = this->out_ / blocks_;
    Buffer buf(static_cast<std::size_t>(t * (3 * bq + this->out_)));
    const MatrixView<T> z(buf.data(), t, bq), zp(buf.data() + t * bq, t, bq),
        dz(buf.data() + 2 * t * bq, t, bq), dv(buf.data() + 3 * t * bq, t, this->out_);
    stage1(where, x, z, zp, stream);  // recompute the permuted stage-1 output
    MatrixView<const T> dvc = dy;
    if (blocks_ > 1) {
      // dv[t, b s + i] = dy[t, i B + b]: each dy row is an [s x B] matrix, transposed.
      throw_if_error(
          cuda::TransposeBlocks<T, B>(dy.data, dy.row_stride, dv.data, dv.row_stride, t, s, blocks_,
                                      nullptr, Activation::kIdentity, stream),
          where);
      dvc = MatrixView<const T>(dv);
    }
    // dzp into z's buffer (z itself is no longer needed), then back to stage-1 order in dz.
    Base::block_xwt_backward(where, MatrixView<const T>(zp), dvc, w2_.data(), blocks_,
                             grads[1].data(), z, stream);
    MatrixView<const T> dzc(z);
    if (blocks_ > 1) {
      throw_if_error(
          cuda::TransposeBlocks<T, B>(z.data, z.row_stride, dz.data, dz.row_stride, t, blocks_, q_,
                                      nullptr, Activation::kIdentity, stream),
          where);
      dzc = MatrixView<const T>(dz);
    }
    Base::block_xwt_backward(where, x, dzc, w1_.data(), blocks_, grads[0].data(), dx, stream);
    this->bias_backward(where, dy, grads, stream);
    stream.synchronize();
  }

  std::vector<ParamView<T>> params() {
    const index_t p = this->in_ / blocks_, s = this->out_ / blocks_;
    std::vector<ParamView<T>> v = {
        {"blkdiag1", {blocks_, q_, p}, w1_.data(), static_cast<index_t>(w1_.size())},
        {"blkdiag2", {blocks_, s, q_}, w2_.data(), static_cast<index_t>(w2_.size())}};
    this->append_bias_param(v);
    return v;
  }

  BlockShuffleLinear<float, Cpu> to_cpu() const {
    const auto b = this->bias_float();
    return BlockShuffleLinear<float, Cpu>(
        this->in_, this->out_, blocks_, detail::to_float_host(w1_.to_host()).data(),
        detail::to_float_host(w2_.to_host()).data(), this->bias_float_ptr(b));
  }
  std::vector<T> materialize() const { return Base::from_float(to_cpu().materialize()); }

 private:
  // Stage 1 into z, then zp[t, b q + r] = z[t, r B + b] (each z row a [q x B] matrix, transposed)
  // so stage-2 block b reads contiguous columns. With one block zp is z.
  void stage1(const char* where, const MatrixView<const T>& x, const MatrixView<T>& z,
              const MatrixView<T>& zp, const Stream& stream) const {
    if (blocks_ == 1) {
      Base::block_xwt(where, x, w1_.data(), blocks_, zp, stream);
      return;
    }
    Base::block_xwt(where, x, w1_.data(), blocks_, z, stream);
    throw_if_error(cuda::TransposeBlocks<T, B>(z.data, z.row_stride, zp.data, zp.row_stride, x.rows,
                                               q_, blocks_, nullptr, Activation::kIdentity, stream),
                   where);
  }

  index_t blocks_ = 0;
  index_t q_ = 0;
  Buffer w1_, w2_;
};

#undef FFNKIT_DEVICE_STRUCTURED_COMMON

}  // namespace detail

#define FFNKIT_DEVICE_STRUCTURED_SPECIALIZATIONS(Backend)                                        \
  template <class T>                                                                             \
  class LowRankLinear<T, Backend> : public detail::DeviceLowRankLinear<T, Backend> {             \
   public:                                                                                       \
    using detail::DeviceLowRankLinear<T, Backend>::DeviceLowRankLinear;                          \
    LowRankLinear() = default;                                                                   \
  };                                                                                             \
  template <class T>                                                                             \
  class BlockDiagonalLinear<T, Backend> : public detail::DeviceBlockDiagonalLinear<T, Backend> { \
   public:                                                                                       \
    using detail::DeviceBlockDiagonalLinear<T, Backend>::DeviceBlockDiagonalLinear;              \
    BlockDiagonalLinear() = default;                                                             \
  };                                                                                             \
  template <class T>                                                                             \
  class BlockDenseLinear<T, Backend> : public detail::DeviceBlockDenseLinear<T, Backend> {       \
   public:                                                                                       \
    using detail::DeviceBlockDenseLinear<T, Backend>::DeviceBlockDenseLinear;                    \
    BlockDenseLinear() = default;                                                                \
  };                                                                                             \
  template <class T>                                                                             \
  class BlockShuffleLinear<T, Backend> : public detail::DeviceBlockShuffleLinear<T, Backend> {   \
   public:                                                                                       \
    using detail::DeviceBlockShuffleLinear<T, Backend>::DeviceBlockShuffleLinear;                \
    BlockShuffleLinear() = default;                                                              \
  };

#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEVICE_STRUCTURED_SPECIALIZATIONS(Cuda)
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEVICE_STRUCTURED_SPECIALIZATIONS(CudaEmu)
#endif
#undef FFNKIT_DEVICE_STRUCTURED_SPECIALIZATIONS

}  // namespace ffnkit
