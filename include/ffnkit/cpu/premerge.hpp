// Pre-merge (docs/math.md §4, ffnkit's own): a structured layer that also keeps its merged dense
// weight W = materialize(S) and picks, per call, whichever path is faster at that token count on
// this machine. calibrate() measures both; nothing is hard-coded.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/gemm.hpp"

namespace ffnkit {

template <class Structured>
class PreMerged {
 public:
  using Scalar = typename Structured::Scalar;
  using Backend = typename Structured::Backend;
  using T = Scalar;
  using Stream = typename Structured::Stream;
  using Grads = typename Structured::Grads;
  static_assert(std::is_same<Backend, Cpu>::value, "PreMerged runs on the Cpu backend");

  // Token counts are bucketed by powers of two: bucket k holds [2^k, 2^(k+1)).
  static constexpr int kBuckets = 24;
  enum class Path : unsigned char { kStructured, kDense };

  explicit PreMerged(Structured s) : s_(std::move(s)), w_(s_.materialize()) {
    choice_.fill(Path::kStructured);
  }

  const Structured& structured() const { return s_; }
  index_t in_features() const { return s_.in_features(); }
  index_t out_features() const { return s_.out_features(); }
  const T* merged_weight() const { return w_.data(); }
  std::size_t merged_bytes() const { return w_.size() * sizeof(T); }
  std::size_t workspace_size(index_t tokens) const { return s_.workspace_size(tokens); }

  // The path forward takes at `tokens` (structured until calibrated).
  Path path(index_t tokens) const { return choice_[bucket(tokens)]; }

  // Times both paths at 1, 2, 4, ... up to max_tokens (median of `repeats` runs each, on
  // synthetic inputs) and records the faster one per bucket. Returns the measured seconds as
  // {tokens, structured, dense} rows, so callers can print or check the crossover.
  struct Measurement {
    index_t tokens;
    double structured_seconds;
    double dense_seconds;
  };
  std::vector<Measurement> calibrate(index_t max_tokens = 4096, int repeats = 5) {
    check_positive("PreMerged::calibrate", "max_tokens", max_tokens);
    check_positive("PreMerged::calibrate", "repeats", repeats);
    std::vector<Measurement> out;
    const index_t n = in_features(), m = out_features();
    std::vector<T> x(static_cast<std::size_t>(max_tokens * n)), y(max_tokens * m);
    fill_normal(x.data(), static_cast<index_t>(x.size()), 1, 0.0, 1.0);
    std::vector<unsigned char> ws(s_.workspace_size(max_tokens));
    for (index_t t = 1; t <= max_tokens; t *= 2) {
      const MatrixView<const T> xv(x.data(), t, n);
      const MatrixView<T> yv(y.data(), t, m);
      const double ts = time_median(repeats, [&] { s_.forward(xv, yv, {ws.data(), ws.size()}); });
      const double td = time_median(repeats, [&] { dense_forward(xv, yv); });
      out.push_back({t, ts, td});
      choice_[bucket(t)] = td < ts ? Path::kDense : Path::kStructured;
    }
    // Beyond the largest measured count, keep the last decision.
    for (int k = bucket(max_tokens) + 1; k < kBuckets; ++k)
      choice_[k] = choice_[bucket(max_tokens)];
    return out;
  }

  // Forces one path for every token count (tests, or a caller that calibrated elsewhere).
  void set_path(Path p) { choice_.fill(p); }

  void check_ready(const char* where) const { s_.check_ready(where); }
  void check_forward(const MatrixView<const T>& x, const MatrixView<T>& y,
                     Workspace ws = {}) const {
    s_.check_forward(x, y, ws);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws, Activation act,
               const Stream& stream = Stream()) const {
    check_forward(x, y, ws);
    if (path(x.rows) == Path::kDense) {
      if (act == Activation::kIdentity) {
        dense_forward(x, y);
      } else {
        cpu::linear<T>(x, w_.data(), out_features(), nullptr, y);
        cpu::bias_activation_inplace(y, s_.bias(), act);
      }
    } else {
      s_.forward(x, y, ws, act, stream);
    }
  }
  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {},
               const Stream& stream = Stream()) const {
    forward(x, y, ws, Activation::kIdentity, stream);
  }

  // Training goes through the structured factors; after updating them, call refresh() so the
  // merged copy matches again.
  std::size_t backward_workspace_size(index_t tokens) const {
    return s_.backward_workspace_size(tokens);
  }
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, Grads& grads, Workspace ws = {},
                const Stream& stream = Stream()) const {
    s_.backward(x, dy, dx, grads, ws, stream);
  }
  Grads make_grads() const { return s_.make_grads(); }
  std::vector<ParamView<T>> params() { return s_.params(); }
  void refresh() { w_ = s_.materialize(); }

  // The same layer as S: the merged weight is a cache, not extra parameters.
  bool has_bias() const { return s_.has_bias(); }
  const T* bias() const { return s_.bias(); }
  std::vector<T> bias_host() const { return s_.bias_host(); }
  std::vector<T> materialize() const { return w_; }
  index_t parameter_count() const { return s_.parameter_count(); }
  double flops_per_token() const { return s_.flops_per_token(); }

 private:
  static int bucket(index_t tokens) {
    int k = 0;
    while (k + 1 < kBuckets && (index_t{1} << (k + 1)) <= tokens) ++k;
    return k;
  }

  void dense_forward(const MatrixView<const T>& x, const MatrixView<T>& y) const {
    cpu::linear(x, w_.data(), out_features(), s_.bias(), y);
  }

  template <class Fn>
  static double time_median(int repeats, Fn&& fn) {
    fn();  // warm-up
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    return t[t.size() / 2];
  }

  Structured s_;
  std::vector<T> w_;
  std::array<Path, kBuckets> choice_{};
};

}  // namespace ffnkit
