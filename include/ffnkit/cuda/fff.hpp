// FastFeedForward on the device backends (Cuda, CudaEmu), docs/math.md §6, for T = float, __half
// and
// __nv_bfloat16 (ffnkit/cuda/kernels/fff.cuh). λ, GELU and the sums are fp32 for every T; a 16-bit
// output row is accumulated in a fp32 scratch and rounded once. The constructors take host weights
// in PyTorch layout, as the Cpu layer's do (and go through the Cpu float layer, so both store w_out
// the same way); views, leaves and gradients point to device memory.
//
// forward picks the warp-per-token kernel or, from kGroupedMinTokens tokens, the grouped one
// (tokens grouped by node per level, a node's rows read once per tile from shared memory); both
// give the same paths bit for bit. backward (UltraFastBERT-style training, the recorded paths held
// fixed): a warp per token for dx, then a block per visited node over the tokens that visited it,
// bucketed on the host from the leaves (counting sort in token order, as the Cpu backward), so each
// gradient row has one writer: deterministic, no atomics.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/fff.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
class DeviceFastFeedForward {
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
  using Grads = std::vector<Buffer<T>>;  // params() order, device memory

  // Token count from which kAuto takes the grouped kernel. Not measured (no GPU here): the
  // grouped kernel pays four launches per level, which only a batch with groups of many tokens at
  // the upper levels repays.
  static constexpr index_t kGroupedMinTokens = 512;

  DeviceFastFeedForward() = default;
  // PyTorch layout in T: linear_in.weight [K·nodes x N], linear_in.bias [K·nodes],
  // linear_out.weight [M x K·nodes].
  DeviceFastFeedForward(index_t in_features, index_t out_features, index_t trees, index_t depth,
                        const T* linear_in_weight, const T* linear_in_bias,
                        const T* linear_out_weight)
      : DeviceFastFeedForward(host_layer(in_features, out_features, trees, depth, linear_in_weight,
                                         linear_in_bias, linear_out_weight)) {}
  // The Cpu float layer's weights rounded to T (exactly them for T = float).
  explicit DeviceFastFeedForward(const FastFeedForward<float, Cpu>& host)
      : in_(host.in_features()),
        out_(host.out_features()),
        trees_(host.trees()),
        depth_(host.depth()),
        w_in_(upload(host.linear_in_weight(), host.neurons_total() * in_)),
        b_in_(upload(host.linear_in_bias(), host.neurons_total())),
        w_out_(upload(host.w_out(), host.neurons_total() * out_)) {}
  DeviceFastFeedForward(DeviceFastFeedForward&& o) noexcept { *this = std::move(o); }
  DeviceFastFeedForward& operator=(DeviceFastFeedForward&& o) noexcept {
    if (this != &o) {
      in_ = o.in_;
      out_ = o.out_;
      trees_ = o.trees_;
      depth_ = o.depth_;
      w_in_ = std::move(o.w_in_);
      b_in_ = std::move(o.b_in_);
      w_out_ = std::move(o.w_out_);
      o.in_ = 0;  // a moved-from layer is empty, and says so when called
    }
    return *this;
  }

  index_t in_features() const { return in_; }
  index_t out_features() const { return out_; }
  index_t trees() const { return trees_; }
  index_t depth() const { return depth_; }
  index_t nodes_per_tree() const { return (index_t(2) << depth_) - 1; }
  index_t neurons_total() const { return trees_ * nodes_per_tree(); }
  index_t neurons_per_token() const { return trees_ * (depth_ + 1); }
  index_t parameter_count() const { return neurons_total() * (in_ + out_ + 1); }
  double flops_per_token() const {
    return 2.0 * static_cast<double>(neurons_per_token()) * static_cast<double>(in_ + out_);
  }

  // The weights as a Cpu float layer (exact: every T widens to float without rounding).
  FastFeedForward<float, Cpu> to_cpu() const {
    check_ready("FastFeedForward::to_cpu");
    const index_t rows = neurons_total();
    const auto wi = to_float(w_in_), bi = to_float(b_in_), wo = to_float(w_out_);
    std::vector<float> lo(wo.size());  // back to PyTorch's [M x K·nodes]
    for (index_t r = 0; r < rows; ++r)
      for (index_t m = 0; m < out_; ++m) lo[m * rows + r] = wo[r * out_ + m];
    return FastFeedForward<float, Cpu>(in_, out_, trees_, depth_, wi.data(), bi.data(), lo.data());
  }

  // Which kernel forward runs for `tokens` tokens.
  bool uses_grouped(index_t tokens, FffKernel kernel = FffKernel::kAuto) const {
    const bool fits = in_ + out_ <= kFffGroupedMaxWidth;
    if (kernel == FffKernel::kGrouped) return true;
    return kernel == FffKernel::kAuto && fits && tokens >= kGroupedMinTokens;
  }

  // Device bytes of scratch forward needs for `tokens` tokens and that kernel choice: the fp32
  // output accumulators (16-bit T only) and the grouped kernel's int32 bookkeeping. An empty
  // Workspace allocates per call.
  std::size_t workspace_size(index_t tokens, FffKernel kernel = FffKernel::kAuto) const {
    const std::size_t t = static_cast<std::size_t>(tokens);
    const std::size_t acc = std::is_same<T, float>::value ? 0 : t * out_ * sizeof(float);
    const std::size_t ints =
        uses_grouped(tokens, kernel)
            ? static_cast<std::size_t>(fff_grouped_scratch_ints(tokens, depth_)) * 4
            : 0;
    return align16(acc) + ints;
  }

  // y = Σ over each token's path of GELU(λ) w_out (docs/math.md §6); `leaves` ([tokens x K], device
  // memory) receives each token's leaf per tree when given (what backward takes back).
  // Asynchronous on `stream` when a workspace is given.
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, std::int32_t* leaves = nullptr,
               FffKernel kernel = FffKernel::kAuto, Workspace workspace = {},
               const Stream& stream = Stream()) const {
    constexpr const char* where = "FastFeedForward::forward";
    check_ready(where);
    check_fff_forward(where, in_, out_, x, y);
    const bool grouped = uses_grouped(x.rows, kernel);
    if (grouped && in_ + out_ > kFffGroupedMaxWidth)
      fail(where,
           "the grouped kernel keeps a node's rows in 48 KB of shared memory: in_features + ",
           "out_features = ", in_ + out_, " exceeds ", kFffGroupedMaxWidth);
    const std::size_t need = workspace_size(x.rows, kernel);
    Buffer<unsigned char> owned;
    unsigned char* base = nullptr;
    if (need > 0) {
      if (workspace.data == nullptr) {
        owned = Buffer<unsigned char>(need);
        base = owned.data();
      } else {
        if (workspace.bytes < need)
          fail(where, "workspace.bytes = ", workspace.bytes, ", need ", need);
        base = static_cast<unsigned char*>(workspace.data);
      }
    }
    float* acc = std::is_same<T, float>::value ? nullptr : reinterpret_cast<float*>(base);
    const std::size_t acc_bytes =
        std::is_same<T, float>::value ? 0 : align16(static_cast<std::size_t>(x.rows) * out_ * 4);
    if (grouped) {
      throw_if_error(cuda::FffGroupedForward<T, B>(
                         x.data, x.row_stride, w_in_.data(), b_in_.data(), w_out_.data(), y.data,
                         y.row_stride, acc, out_, x.rows, in_, out_, trees_, depth_, leaves,
                         reinterpret_cast<std::int32_t*>(base + acc_bytes),
                         fff_grouped_scratch_ints(x.rows, depth_), stream),
                     where);
    } else {
      throw_if_error(cuda::FffForward<T, B>(x.data, x.row_stride, w_in_.data(), b_in_.data(),
                                            w_out_.data(), y.data, y.row_stride, acc, out_, x.rows,
                                            in_, out_, trees_, depth_, leaves, stream),
                     where);
    }
    if (owned.data()) stream.synchronize();  // the owned scratch is freed on return
  }

  // Gradients in params() order (linear_in.weight, linear_in.bias, w_out), overwritten: rows no
  // token visited are zero. `leaves` (device memory, [tokens x K]) are the paths forward recorded;
  // the routing is not differentiated. dx skipped when dx.data is null. Synchronous: the leaves
  // are read back to bucket the (token, level) pairs by node on the host.
  void backward(const MatrixView<const T>& x, const std::int32_t* leaves,
                const MatrixView<const T>& dy, const MatrixView<T>& dx, Grads& grads,
                const Stream& stream = Stream()) const {
    constexpr const char* where = "FastFeedForward::backward";
    check_ready(where);
    check_fff_backward(where, in_, out_, x, leaves, dy, dx);
    check_grads(where, const_cast<DeviceFastFeedForward*>(this)->params(), grads);
    const index_t tokens = x.rows, levels = depth_ + 1, per = trees_ * levels;
    const index_t pairs = tokens * per, nodes = nodes_per_tree(), rows = neurons_total();
    if (pairs > std::numeric_limits<std::int32_t>::max())
      fail(where, "x.rows (tokens) = ", tokens, " times K (D+1) = ", per,
           " overflows the int32 pair indices");
    std::vector<std::int32_t> lh(static_cast<std::size_t>(tokens * trees_));
    Api::copy(lh.data(), leaves, lh.size() * sizeof(std::int32_t), Api::CopyKind::kDeviceToHost,
              stream);
    check_fff_leaves(where, lh.data(), tokens, trees_, depth_);
    // The (token, tree, level) pairs bucketed by gradient row, stable in pair (token) order.
    std::vector<std::int32_t> row_of(static_cast<std::size_t>(pairs));
    for (index_t t = 0; t < tokens; ++t)
      for (index_t k = 0; k < trees_; ++k) {
        index_t n = lh[t * trees_ + k];
        for (index_t d = depth_; d >= 0; --d, n = (n - 1) / 2)
          row_of[(t * trees_ + k) * levels + d] = static_cast<std::int32_t>(k * nodes + n);
      }
    std::vector<std::int32_t> count(static_cast<std::size_t>(rows), 0);
    for (std::int32_t r : row_of) ++count[r];
    std::vector<std::int32_t> vrows, start(1, 0), fillp(static_cast<std::size_t>(rows), -1);
    for (index_t r = 0; r < rows; ++r)
      if (count[r] > 0) {
        fillp[r] = start.back();
        vrows.push_back(static_cast<std::int32_t>(r));
        start.push_back(start.back() + count[r]);
      }
    std::vector<std::int32_t> order(static_cast<std::size_t>(pairs));
    for (index_t i = 0; i < pairs; ++i) order[fillp[row_of[i]]++] = static_cast<std::int32_t>(i);
    const Buffer<std::int32_t> vrows_d(vrows.data(), vrows.size(), stream),
        start_d(start.data(), start.size(), stream), order_d(order.data(), order.size(), stream);
    Buffer<float> g(static_cast<std::size_t>(pairs)), dl(g.size());
    Buffer<float> dx_acc(
        std::is_same<T, float>::value || !dx.data ? 0 : static_cast<std::size_t>(tokens * in_));
    for (auto& b : grads) Api::fill_zero(b.data(), b.bytes(), stream);
    throw_if_error(cuda::FffBackwardTokens<T, B>(
                       x.data, x.row_stride, dy.data, dy.row_stride, w_in_.data(), b_in_.data(),
                       w_out_.data(), leaves, dx.data, dx.row_stride, dx_acc.data(), in_, g.data(),
                       dl.data(), tokens, in_, out_, trees_, depth_, stream),
                   where);
    throw_if_error(
        cuda::FffBackwardNodes<T, B>(x.data, x.row_stride, dy.data, dy.row_stride, g.data(),
                                     dl.data(), vrows_d.data(), start_d.data(), order_d.data(),
                                     static_cast<index_t>(vrows.size()), in_, out_, per,
                                     grads[0].data(), grads[1].data(), grads[2].data(), stream),
        where);
    stream.synchronize();  // the scratch buffers are freed on return
  }

  // Named as the Cpu layer's; device memory. w_out is linear_out.weight transposed.
  std::vector<ParamView<T>> params() {
    const index_t rows = neurons_total();
    return {{"linear_in.weight", {rows, in_}, w_in_.data(), rows * in_},
            {"linear_in.bias", {rows}, b_in_.data(), rows},
            {"w_out", {rows, out_}, w_out_.data(), rows * out_}};
  }
  // The gradient buffers backward() expects: zero-filled device memory, params() order.
  Grads make_grads() {
    Grads g;
    const Stream stream;
    for (const auto& p : params()) {
      g.emplace_back(static_cast<std::size_t>(p.size));
      Api::fill_zero(g.back().data(), g.back().bytes(), stream);
    }
    stream.synchronize();
    return g;
  }

 private:
  static std::size_t align16(std::size_t b) { return (b + 15) / 16 * 16; }
  void check_ready(const char* where) const {
    if (in_ == 0) fail(where, "the layer is empty (default-constructed or moved from)");
  }
  static Buffer<T> upload(const float* p, index_t n) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) v[i] = HostScalar<T>::from_double(p[i]);
    return Buffer<T>(v.data(), v.size());
  }
  static std::vector<float> to_float(const Buffer<T>& b) {
    const std::vector<T> h = b.to_host();
    std::vector<float> out(h.size());
    for (std::size_t i = 0; i < h.size(); ++i)
      out[i] = static_cast<float>(HostScalar<T>::to_double(h[i]));
    return out;
  }
  static FastFeedForward<float, Cpu> host_layer(index_t in, index_t out, index_t trees,
                                                index_t depth, const T* wi, const T* bi,
                                                const T* wo) {
    constexpr const char* where = "FastFeedForward";
    check_fff_args(where, in, out, trees, depth, sizeof(T));
    check_not_null(where, "linear_in_weight", wi);
    check_not_null(where, "linear_in_bias", bi);
    check_not_null(where, "linear_out_weight", wo);
    const index_t rows = trees * ((index_t(2) << depth) - 1);
    auto widen = [](const T* p, index_t n) {
      std::vector<float> v(static_cast<std::size_t>(n));
      for (index_t i = 0; i < n; ++i) v[i] = static_cast<float>(HostScalar<T>::to_double(p[i]));
      return v;
    };
    const auto wif = widen(wi, rows * in), bif = widen(bi, rows), wof = widen(wo, out * rows);
    return FastFeedForward<float, Cpu>(in, out, trees, depth, wif.data(), bif.data(), wof.data());
  }

  index_t in_ = 0, out_ = 0, trees_ = 0, depth_ = 0;
  Buffer<T> w_in_, b_in_, w_out_;
};

}  // namespace detail

#define FFNKIT_DEVICE_FFF(Backend)                                                              \
  template <class T>                                                                            \
  class FastFeedForward<T, Backend> : public detail::DeviceFastFeedForward<T, Backend> {        \
   public:                                                                                      \
    using detail::DeviceFastFeedForward<T, Backend>::DeviceFastFeedForward;                     \
    /* The Cpu float layer's seeded init, rounded to T. */                                      \
    static FastFeedForward random(index_t in, index_t out, index_t trees, index_t depth,        \
                                  std::uint64_t seed) {                                         \
      return FastFeedForward(FastFeedForward<float, Cpu>::random(in, out, trees, depth, seed)); \
    }                                                                                           \
  };
#if defined(FFNKIT_WITH_CUDA_EMU)
FFNKIT_DEVICE_FFF(CudaEmu)
#endif
#if defined(FFNKIT_WITH_CUDA)
FFNKIT_DEVICE_FFF(Cuda)
#endif
#undef FFNKIT_DEVICE_FFF

}  // namespace ffnkit
