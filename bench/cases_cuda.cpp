// The dense and structured FFNs on the real CUDA backend, timed with cudaEvents. Without a device
// every case is skipped with the reason (SkipWithError), never reported as a time. The emulator is
// never benchmarked: its timings would say nothing about a GPU. Each structured case's
// speedup_vs_dense is against the CUDA dense FFN of the same dtype, in the same run.
#include <memory>

#include "device_timer.hpp"
#include "ffn_runner.hpp"
#include "ffnkit/dense.hpp"
#include "ffnkit/reference.hpp"
#include "ffnkit/structured.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {
namespace {

constexpr Activation kAct = Activation::kGeluTanh;

// A layer's dense [out x in] weight on the host: the dense layer's own, a structured layer's
// materialize().
template <class T>
std::vector<T> weight_of(const DenseLinear<T, Cuda>& l) {
  return l.weight_host();
}
template <class L>
std::vector<typename L::Scalar> weight_of(const L& l) {
  return l.materialize();
}

// Times forward of any FFN on the Cuda backend: DenseFFN or StructuredFFN. `make` builds the FFN
// after the device check, so that nothing is allocated or initialised without a device.
template <class Ffn>
class CudaFfnRunner : public Runner {
 public:
  using T = typename Ffn::Scalar;
  template <class Make>
  CudaFfnRunner(const Shape& s, Make&& make) : s_(s) {
    ffn_ = make();
    std::vector<double> xd(static_cast<std::size_t>(s.tokens * s.d_model));
    fill_normal(xd.data(), static_cast<index_t>(xd.size()), 7, 0.0, 1.0);
    x_host_.resize(xd.size());
    for (std::size_t i = 0; i < xd.size(); ++i)
      x_host_[i] = detail::HostScalar<T>::from_double(xd[i]);
    x_ = cuda::DeviceBuffer<T>(x_host_.data(), x_host_.size());
    y_ = cuda::DeviceBuffer<T>(x_host_.size());
    ws_ = cuda::DeviceBuffer<unsigned char>(ffn_.workspace_size(s.tokens));
    stream_ = cuda::Stream::create();
  }
  void run() override {
    ffn_.forward(make_view<const T>(x_.data(), s_.tokens, s_.d_model),
                 make_view(y_.data(), s_.tokens, s_.d_model), Workspace{ws_.data(), ws_.bytes()},
                 stream_);
  }
  bool device_timed() const override { return true; }
  double run_device_timed() override {
    return timer_.seconds(stream_, [&] { run(); });
  }
  double flops() const override { return ffn_.flops_per_token() * s_.tokens; }
  double bytes() const override {
    return (static_cast<double>(ffn_.parameter_count()) +
            static_cast<double>(s_.tokens) * (2.0 * s_.d_model + 2.0 * s_.d_ff)) *
           sizeof(T);
  }
  double max_rel_error() override {
    stream_.synchronize();
    const std::vector<T> y = y_.to_host();
    const index_t d = s_.d_model, f = s_.d_ff;
    const auto rows = sampled_tokens(s_.tokens);
    std::vector<double> xs, ys;
    for (index_t t : rows)
      for (index_t j = 0; j < d; ++j) {
        xs.push_back(detail::HostScalar<T>::to_double(x_host_[t * d + j]));
        ys.push_back(detail::HostScalar<T>::to_double(y[t * d + j]));
      }
    auto to64 = [](const std::vector<T>& v) {
      std::vector<double> o(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) o[i] = detail::HostScalar<T>::to_double(v[i]);
      return o;
    };
    const auto w1 = to64(weight_of(ffn_.up())), b1 = to64(ffn_.up().bias_host());
    const auto w2 = to64(weight_of(ffn_.down())), b2 = to64(ffn_.down().bias_host());
    const auto ref = reference::ffn(xs.data(), static_cast<index_t>(rows.size()), d, w1.data(),
                                    b1.data(), f, ffn_.activation(), w2.data(), b2.data(), d);
    return reference::compare(ys.data(), static_cast<index_t>(rows.size()), d, d, ref).max_rel;
  }

 private:
  // First: checks for a device before anything else is set up.
  DeviceTimer timer_{"cuda ffn case"};
  Shape s_;
  Ffn ffn_;
  std::vector<T> x_host_;
  cuda::DeviceBuffer<T> x_, y_;
  cuda::DeviceBuffer<unsigned char> ws_;
  cuda::Stream stream_;
};

// Gaussian host weights of variance 1 / fan-in, in T: timings do not depend on the values, and the
// seeded spectral / orthonormal inits cost seconds at d = 2048.
template <class T>
std::vector<T> gaussian(index_t count, index_t fan_in, std::uint64_t seed) {
  std::vector<double> v(static_cast<std::size_t>(count));
  fill_normal(v.data(), count, seed, 0.0, 1.0 / std::sqrt(static_cast<double>(fan_in)));
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = detail::HostScalar<T>::from_double(v[i]);
  return out;
}

template <class T>
LowRankLinear<T, Cuda> lowrank(index_t n, index_t m, index_t r, std::uint64_t seed) {
  return LowRankLinear<T, Cuda>(n, m, r, gaussian<T>(r * n, n, seed).data(),
                                gaussian<T>(m * r, r, seed + 1).data(),
                                gaussian<T>(m, 50, seed + 2).data());
}
template <class T>
BlockDenseLinear<T, Cuda> blockdense(index_t n, index_t m, bool large, std::uint64_t seed) {
  const index_t d = std::min(n, m);
  const auto st = blockdense_setting(d, large);
  return BlockDenseLinear<T, Cuda>(
      n, m, st.blocks, st.rank, gaussian<T>(st.rank * n / st.blocks, n / st.blocks, seed).data(),
      gaussian<T>(m * st.rank, st.rank, seed + 1).data(), gaussian<T>(m, 50, seed + 2).data());
}
template <class T>
BlockShuffleLinear<T, Cuda> shuffle(index_t n, index_t m, index_t b, std::uint64_t seed) {
  const index_t q = std::min(n, m) / b;
  return BlockShuffleLinear<T, Cuda>(n, m, b, gaussian<T>(b * q * (n / b), n / b, seed).data(),
                                     gaussian<T>(b * (m / b) * q, q, seed + 1).data(),
                                     gaussian<T>(m, 50, seed + 2).data());
}

template <class T>
std::unique_ptr<Runner> dense_runner(const Shape& s) {
  return std::make_unique<CudaFfnRunner<DenseFFN<T, Cuda>>>(
      s, [&] { return DenseFFN<T, Cuda>::random(s.d_model, s.d_ff, kAct, 20241); });
}
template <class L, class Make>
std::unique_ptr<Runner> structured_runner(const Shape& s, Make make) {
  return std::make_unique<CudaFfnRunner<StructuredFFN<L, L>>>(s, [&] {
    return StructuredFFN<L, L>(make(s.d_model, s.d_ff, 1), make(s.d_ff, s.d_model, 2), kAct);
  });
}

LayerCase device_case(std::string name, std::string description, std::string baseline,
                      bool in_table, std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{std::move(name), std::move(description), std::move(make)};
  c.baseline = std::move(baseline);  // the GPU dense FFN of the same dtype
  c.device_timed = true;
  c.in_table = in_table;
  return c;
}

// The paper's settings (docs/math.md §3.8) per dtype: the 32% ones in the main table, 63% in the
// suite.
template <class T>
void register_structured(const char* dtype, const char* baseline) {
  auto add = [&](const std::string& name, const std::string& what, bool in_table,
                 std::function<std::unique_ptr<Runner>(const Shape&)> make) {
    RegisterCase(device_case("cuda_" + name + "_" + dtype, what + " on CUDA, " + dtype, baseline,
                             in_table, std::move(make)));
  };
  add("lowrank_63", "LowRank FFN, R = d/2 (63%)", false, [](const Shape& s) {
    return structured_runner<LowRankLinear<T, Cuda>>(s,
                                                     [&](index_t n, index_t m, std::uint64_t seed) {
                                                       return lowrank<T>(n, m, s.d_model / 2, seed);
                                                     });
  });
  add("lowrank_32", "LowRank FFN, R = d/4 (32%)", true, [](const Shape& s) {
    return structured_runner<LowRankLinear<T, Cuda>>(s,
                                                     [&](index_t n, index_t m, std::uint64_t seed) {
                                                       return lowrank<T>(n, m, s.d_model / 4, seed);
                                                     });
  });
  add("blockdense_32", "BlockDense FFN (32%)", true, [](const Shape& s) {
    return structured_runner<BlockDenseLinear<T, Cuda>>(
        s,
        [](index_t n, index_t m, std::uint64_t seed) { return blockdense<T>(n, m, false, seed); });
  });
  add("blockshuffle_32", "BlockShuffle FFN, B = 4 (32%)", true, [](const Shape& s) {
    return structured_runner<BlockShuffleLinear<T, Cuda>>(
        s, [](index_t n, index_t m, std::uint64_t seed) { return shuffle<T>(n, m, 4, seed); });
  });
}

const RegisterCase cuda_f32{device_case("cuda_dense_ffn_f32", "dense FFN on CUDA, fp32",
                                        "cuda_dense_ffn_f32", true, dense_runner<float>)};
const RegisterCase cuda_f16{device_case("cuda_dense_ffn_f16", "dense FFN on CUDA, fp16",
                                        "cuda_dense_ffn_f16", true, dense_runner<__half>)};
const RegisterCase cuda_bf16{device_case("cuda_dense_ffn_bf16", "dense FFN on CUDA, bf16",
                                         "cuda_dense_ffn_bf16", true, dense_runner<__nv_bfloat16>)};
const bool cuda_structured = [] {
  register_structured<float>("f32", "cuda_dense_ffn_f32");
  register_structured<__half>("f16", "cuda_dense_ffn_f16");
  return true;
}();

}  // namespace
}  // namespace bench
}  // namespace ffnkit
