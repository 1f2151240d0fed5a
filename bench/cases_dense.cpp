// The dense FFN baseline, and the same FFN computed with direct OpenBLAS calls, so the baseline's
// strength is measured rather than asserted.
#include <memory>

#include "ffn_runner.hpp"

#ifdef FFNKIT_WITH_OPENBLAS
#include <cblas.h>

#include "ffnkit/cpu/epilogue.hpp"
#endif

namespace ffnkit {
namespace bench {
namespace {

// The paper's FFN: GELU (tanh form), bias on (docs/math.md §3.8).
constexpr Activation kAct = Activation::kGeluTanh;
constexpr std::uint64_t kSeed = 20241;

class DenseRunner : public Runner {
 public:
  explicit DenseRunner(const Shape& s)
      : s_(s),
        ffn_(DenseFFN<float>::random(s.d_model, s.d_ff, kAct, kSeed)),
        x_(s.tokens * s.d_model),
        y_(s.tokens * s.d_model),
        ws_(ffn_.workspace_size(s.tokens) / sizeof(float)) {
    fill_normal(x_.data(), static_cast<index_t>(x_.size()), 7, 0.0, 1.0);
  }
  void run() override {
    ffn_.forward(make_view<const float>(x_.data(), s_.tokens, s_.d_model),
                 make_view(y_.data(), s_.tokens, s_.d_model),
                 Workspace{ws_.data(), ws_.size() * sizeof(float)});
    benchmark::DoNotOptimize(y_.data());
  }
  double flops() const override { return ffn_.flops_per_token() * s_.tokens; }
  double bytes() const override { return ffn_bytes(s_, sizeof(float), ffn_.parameter_count()); }
  double max_rel_error() override { return sampled_ffn_error(ffn_, x_, y_); }

 private:
  Shape s_;
  DenseFFN<float> ffn_;
  std::vector<float> x_, y_, ws_;
};

const RegisterCase dense_case{{kDenseCaseName, "dense FFN (Eigen, the baseline)",
                               [](const Shape& s) { return std::make_unique<DenseRunner>(s); }}};

#ifdef FFNKIT_WITH_OPENBLAS
// The same FFN with both GEMMs as direct cblas_sgemm calls and ffnkit's epilogue; with
// `epilogue == false` only the two GEMMs run (pure sgemm throughput at the FFN's shape).
class OpenBlasRunner : public Runner {
 public:
  OpenBlasRunner(const Shape& s, bool epilogue)
      : s_(s),
        epilogue_(epilogue),
        ffn_(DenseFFN<float>::random(s.d_model, s.d_ff, kAct, kSeed)),
        x_(s.tokens * s.d_model),
        h_(s.tokens * s.d_ff),
        y_(s.tokens * s.d_model) {
    fill_normal(x_.data(), static_cast<index_t>(x_.size()), 7, 0.0, 1.0);
  }
  void run() override {
    const int t = static_cast<int>(s_.tokens), d = static_cast<int>(s_.d_model),
              f = static_cast<int>(s_.d_ff);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, f, d, 1.f, x_.data(), d,
                ffn_.up().weight(), d, 0.f, h_.data(), f);
    if (epilogue_) {
      cpu::bias_activation_inplace(make_view(h_.data(), s_.tokens, s_.d_ff), ffn_.up().bias(),
                                   kAct);
      for (index_t r = 0; r < s_.tokens; ++r) std::copy_n(ffn_.down().bias(), d, y_.data() + r * d);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, d, f, 1.f, h_.data(), f,
                ffn_.down().weight(), f, epilogue_ ? 1.f : 0.f, y_.data(), d);
    benchmark::DoNotOptimize(y_.data());
  }
  double flops() const override { return ffn_.flops_per_token() * s_.tokens; }
  double bytes() const override { return ffn_bytes(s_, sizeof(float), ffn_.parameter_count()); }
  double max_rel_error() override {
    return epilogue_ ? sampled_ffn_error(ffn_, x_, y_) : std::nan("");
  }

 private:
  Shape s_;
  bool epilogue_;
  DenseFFN<float> ffn_;
  std::vector<float> x_, h_, y_;
};

const RegisterCase openblas_ffn_case{
    {"openblas_ffn", "the same FFN with direct cblas_sgemm calls",
     [](const Shape& s) { return std::make_unique<OpenBlasRunner>(s, true); }}};
const RegisterCase openblas_sgemm_case{
    {"openblas_sgemm", "the FFN's two GEMMs alone (cblas_sgemm, no bias or activation)",
     [](const Shape& s) { return std::make_unique<OpenBlasRunner>(s, false); }}};
#endif

}  // namespace
}  // namespace bench
}  // namespace ffnkit
