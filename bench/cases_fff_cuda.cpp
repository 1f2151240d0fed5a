// Fast feedforward (docs/math.md §6) on the real CUDA backend, timed with cudaEvents, at
// UltraFastBERT's shape (K = 1, D = 11, N = M = d_model; random seeded weights and inputs, so the
// tokens spread), against the CUDA dense FFNs of the same dtype in the same run: d→4d→d (the model
// FFF replaces, `cuda_dense_ffn_<dtype>` from cases_cuda.cpp) and d→4095→d (equal neuron count).
// Without a device every case is skipped with the reason (SkipWithError), never reported as a time.
//   cuda_fff_1x11_<dtype>            kAuto (warp per token below 512 tokens, grouped from there)
//   cuda_fff_1x11_pertoken_f32       the warp-per-token kernel at every token count
//   cuda_fff_1x11_grouped_f32        the grouped kernel at every token count
//   cuda_fff_1x11_vs_dense4095_f32   kAuto, scored against cuda_dense_ffn_4095_f32
// Counter distinct_leaves: how many of the 2048 leaves the run's tokens reach.
#include <memory>
#include <set>

#include "device_timer.hpp"
#include "fff_oracle.hpp"
#include "ffn_runner.hpp"
#include "ffnkit/dense.hpp"
#include "ffnkit/fff.hpp"
#include "ffnkit/reference.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {
namespace {

constexpr index_t kDepth = 11;
constexpr std::uint64_t kSeed = 20245;

template <class T>
std::vector<T> random_input(index_t count) {
  std::vector<double> xd(static_cast<std::size_t>(count));
  fill_normal(xd.data(), count, 7, 0.0, 1.0);
  std::vector<T> x(xd.size());
  for (std::size_t i = 0; i < xd.size(); ++i) x[i] = detail::HostScalar<T>::from_double(xd[i]);
  return x;
}

template <class T>
class CudaFffRunner : public Runner {
 public:
  CudaFffRunner(const Shape& s, FffKernel kernel) : s_(s), kernel_(kernel) {
    fff_ = FastFeedForward<T, Cuda>::random(s.d_model, s.d_model, 1, kDepth, kSeed);
    x_host_ = random_input<T>(s.tokens * s.d_model);
    x_ = cuda::DeviceBuffer<T>(x_host_.data(), x_host_.size());
    y_ = cuda::DeviceBuffer<T>(x_host_.size());
    leaves_ = cuda::DeviceBuffer<std::int32_t>(static_cast<std::size_t>(s.tokens));
    ws_ = cuda::DeviceBuffer<unsigned char>(fff_.workspace_size(s.tokens));
    stream_ = cuda::Stream::create();
    forward(leaves_.data());
    stream_.synchronize();
    leaves_host_ = leaves_.to_host();
    distinct_ = static_cast<double>(
        std::set<std::int32_t>(leaves_host_.begin(), leaves_host_.end()).size());
  }
  void run() override { forward(nullptr); }
  bool device_timed() const override { return true; }
  double run_device_timed() override {
    return timer_.seconds(stream_, [&] { run(); });
  }
  double flops() const override { return fff_.flops_per_token() * s_.tokens; }
  // x read and y written once, plus the rows the tokens touch (at most all of them).
  double bytes() const override {
    const double rows = std::min<double>(static_cast<double>(fff_.neurons_total()),
                                         static_cast<double>(s_.tokens * fff_.neurons_per_token()));
    return (rows * (2.0 * s_.d_model + 1) + 2.0 * s_.tokens * s_.d_model) * sizeof(T);
  }
  double max_rel_error() override {
    stream_.synchronize();
    return sampled_fff_error(fff_, x_host_, y_.to_host(), leaves_host_);
  }
  std::vector<std::pair<std::string, double>> extra_counters() const override {
    return {{"distinct_leaves", distinct_}};
  }

 private:
  void forward(std::int32_t* leaves) {
    fff_.forward(make_view<const T>(x_.data(), s_.tokens, s_.d_model),
                 make_view(y_.data(), s_.tokens, s_.d_model), leaves, kernel_,
                 Workspace{ws_.data(), ws_.bytes()}, stream_);
  }
  // First: checks for a device before anything else is set up.
  DeviceTimer timer_{"cuda fff case"};
  Shape s_;
  FffKernel kernel_;
  FastFeedForward<T, Cuda> fff_;
  std::vector<T> x_host_;
  std::vector<std::int32_t> leaves_host_;
  cuda::DeviceBuffer<T> x_, y_;
  cuda::DeviceBuffer<std::int32_t> leaves_;
  cuda::DeviceBuffer<unsigned char> ws_;
  cuda::Stream stream_;
  double distinct_ = 0;
};

// The dense FFN d→4095→d on CUDA (GELU erf, as the FFF), the equal-neuron-count baseline.
template <class T>
class CudaDense4095Runner : public Runner {
 public:
  explicit CudaDense4095Runner(const Shape& s) : s_(s) {
    s_.d_ff = (index_t(2) << kDepth) - 1;
    ffn_ = DenseFFN<T, Cuda>::random(s.d_model, s_.d_ff, Activation::kGeluErf, kSeed);
    x_host_ = random_input<T>(s.tokens * s.d_model);
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
  double bytes() const override { return ffn_bytes(s_, sizeof(T), ffn_.parameter_count()); }
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
    const auto w1 = to64(ffn_.up().weight_host()), b1 = to64(ffn_.up().bias_host());
    const auto w2 = to64(ffn_.down().weight_host()), b2 = to64(ffn_.down().bias_host());
    const auto ref = reference::ffn(xs.data(), static_cast<index_t>(rows.size()), d, w1.data(),
                                    b1.data(), f, ffn_.activation(), w2.data(), b2.data(), d);
    return reference::compare(ys.data(), static_cast<index_t>(rows.size()), d, d, ref).max_rel;
  }

 private:
  // First: checks for a device before anything else is set up.
  DeviceTimer timer_{"cuda fff case"};
  Shape s_;
  DenseFFN<T, Cuda> ffn_;
  std::vector<T> x_host_;
  cuda::DeviceBuffer<T> x_, y_;
  cuda::DeviceBuffer<unsigned char> ws_;
  cuda::Stream stream_;
};

LayerCase device_case(std::string name, std::string description, std::string baseline,
                      bool in_table, std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{std::move(name), std::move(description), std::move(make)};
  c.baseline = std::move(baseline);
  c.device_timed = true;
  c.in_table = in_table;
  return c;
}

template <class T>
std::function<std::unique_ptr<Runner>(const Shape&)> fff(FffKernel kernel) {
  return [kernel](const Shape& s) { return std::make_unique<CudaFffRunner<T>>(s, kernel); };
}

const RegisterCase cuda_fff_cases[] = {
    RegisterCase(device_case(
        "cuda_dense_ffn_4095_f32", "dense FFN d -> 4095 -> d on CUDA, fp32 (equal neuron count)",
        "cuda_dense_ffn_4095_f32", false,
        [](const Shape& s) { return std::make_unique<CudaDense4095Runner<float>>(s); })),
    RegisterCase(device_case("cuda_fff_1x11_f32", "FFF 1x11 on CUDA, fp32, kernel by token count",
                             "cuda_dense_ffn_f32", true, fff<float>(FffKernel::kAuto))),
    RegisterCase(device_case("cuda_fff_1x11_pertoken_f32",
                             "FFF 1x11 on CUDA, fp32, warp-per-token kernel at every token count",
                             "cuda_dense_ffn_f32", false, fff<float>(FffKernel::kPerToken))),
    RegisterCase(device_case("cuda_fff_1x11_grouped_f32",
                             "FFF 1x11 on CUDA, fp32, grouped kernel at every token count",
                             "cuda_dense_ffn_f32", false, fff<float>(FffKernel::kGrouped))),
    RegisterCase(device_case("cuda_fff_1x11_vs_dense4095_f32",
                             "FFF 1x11 on CUDA, fp32, against cuda_dense_ffn_4095_f32",
                             "cuda_dense_ffn_4095_f32", false, fff<float>(FffKernel::kAuto))),
    RegisterCase(device_case("cuda_fff_1x11_f16", "FFF 1x11 on CUDA, fp16, kernel by token count",
                             "cuda_dense_ffn_f16", false, fff<__half>(FffKernel::kAuto))),
    RegisterCase(device_case("cuda_fff_1x11_bf16", "FFF 1x11 on CUDA, bf16, kernel by token count",
                             "cuda_dense_ffn_bf16", false, fff<__nv_bfloat16>(FffKernel::kAuto))),
};

}  // namespace
}  // namespace bench
}  // namespace ffnkit
