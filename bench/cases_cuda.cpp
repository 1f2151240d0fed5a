// The dense FFN on the real CUDA backend, timed with cudaEvents. Without a device every case is
// skipped with the reason (SkipWithError), never reported as a time. The emulator is never
// benchmarked: its timings would say nothing about a GPU.
#include <cuda_runtime_api.h>

#include <memory>

#include "ffnkit/dense.hpp"
#include "ffnkit/reference.hpp"
#include "harness.hpp"

namespace ffnkit {
namespace bench {
namespace {

constexpr Activation kAct = Activation::kGeluTanh;

template <class T>
class CudaDenseRunner : public Runner {
 public:
  explicit CudaDenseRunner(const Shape& s) : s_(s) {
    std::string why;
    if (!cuda::device_available(&why)) fail("cuda_dense_ffn", "no CUDA device: ", why);
    ffn_ = DenseFFN<T, Cuda>::random(s.d_model, s.d_ff, kAct, 20241);
    std::vector<double> xd(static_cast<std::size_t>(s.tokens * s.d_model));
    fill_normal(xd.data(), static_cast<index_t>(xd.size()), 7, 0.0, 1.0);
    x_host_.resize(xd.size());
    for (std::size_t i = 0; i < xd.size(); ++i)
      x_host_[i] = detail::HostScalar<T>::from_double(xd[i]);
    x_ = cuda::DeviceBuffer<T>(x_host_.data(), x_host_.size());
    y_ = cuda::DeviceBuffer<T>(x_host_.size());
    ws_ = cuda::DeviceBuffer<unsigned char>(ffn_.workspace_size(s.tokens));
    stream_ = cuda::Stream::create();
    check(cudaEventCreate(&start_.e), "cudaEventCreate");
    check(cudaEventCreate(&stop_.e), "cudaEventCreate");
  }
  void run() override {
    ffn_.forward(make_view<const T>(x_.data(), s_.tokens, s_.d_model),
                 make_view(y_.data(), s_.tokens, s_.d_model), Workspace{ws_.data(), ws_.bytes()},
                 stream_);
  }
  bool device_timed() const override { return true; }
  double run_device_timed() override {
    auto stream = static_cast<cudaStream_t>(stream_.handle());
    check(cudaEventRecord(start_.e, stream), "cudaEventRecord");
    run();
    check(cudaEventRecord(stop_.e, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop_.e), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start_.e, stop_.e), "cudaEventElapsedTime");
    return ms * 1e-3;
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
    const auto w1 = to64(ffn_.up().weight_host()), b1 = to64(ffn_.up().bias_host());
    const auto w2 = to64(ffn_.down().weight_host()), b2 = to64(ffn_.down().bias_host());
    const auto ref = reference::ffn(xs.data(), static_cast<index_t>(rows.size()), d, w1.data(),
                                    b1.data(), f, kAct, w2.data(), b2.data(), d);
    return reference::compare(ys.data(), static_cast<index_t>(rows.size()), d, d, ref).max_rel;
  }

 private:
  static void check(cudaError_t e, const char* call) {
    if (e != cudaSuccess) fail(call, cudaGetErrorString(e));
  }
  Shape s_;
  DenseFFN<T, Cuda> ffn_;
  std::vector<T> x_host_;
  cuda::DeviceBuffer<T> x_, y_;
  cuda::DeviceBuffer<unsigned char> ws_;
  cuda::Stream stream_;
  // Owned events: destroyed even when the constructor throws half-way.
  struct Event {
    cudaEvent_t e = nullptr;
    ~Event() {
      if (e) cudaEventDestroy(e);
    }
  };
  Event start_, stop_;
};

LayerCase device_case(const char* name, const char* description,
                      std::function<std::unique_ptr<Runner>(const Shape&)> make) {
  LayerCase c{name, description, std::move(make)};
  c.baseline = name;  // the GPU dense FFN is its own baseline
  c.device_timed = true;
  return c;
}

const RegisterCase cuda_f32{
    device_case("cuda_dense_ffn_f32", "dense FFN on CUDA, fp32",
                [](const Shape& s) { return std::make_unique<CudaDenseRunner<float>>(s); })};
const RegisterCase cuda_f16{
    device_case("cuda_dense_ffn_f16", "dense FFN on CUDA, fp16",
                [](const Shape& s) { return std::make_unique<CudaDenseRunner<__half>>(s); })};
const RegisterCase cuda_bf16{device_case(
    "cuda_dense_ffn_bf16", "dense FFN on CUDA, bf16",
    [](const Shape& s) { return std::make_unique<CudaDenseRunner<__nv_bfloat16>>(s); })};

}  // namespace
}  // namespace bench
}  // namespace ffnkit
