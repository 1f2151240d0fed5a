// StructuredFFN<Up, Down>: both projections structured (docs/math.md §3.7), GELU (tanh) by default,
// SwiGLU with separate gate and up layers or with gate|up fused in one; forward and backward. CPU
// backend: the shared orchestration is detail::StructuredFFNCommon, this adds the scratch and the
// elementwise passes.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/epilogue.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/detail/structured_ffn_common.hpp"

namespace ffnkit {

template <class Up, class Down>
class StructuredFFN<Up, Down, Cpu>
    : public detail::StructuredFFNCommon<Up, Down, StructuredFFN<Up, Down, Cpu>> {
  using Base = detail::StructuredFFNCommon<Up, Down, StructuredFFN<Up, Down, Cpu>>;
  friend Base;

 public:
  using T = typename Base::T;
  using Base::Base;
  StructuredFFN() = default;

  // The hidden activations ([tokens x 2 d_ff] for SwiGLU) plus the largest sublayer scratch.
  std::size_t workspace_size(index_t tokens) const {
    return this->hidden_bytes(tokens) + this->sublayer_workspace(tokens);
  }

  void forward(const MatrixView<const T>& x, const MatrixView<T>& y, Workspace ws = {}) const {
    constexpr const char* where = "StructuredFFN::forward";
    this->check_forward(where, x, y);
    const std::size_t need = workspace_size(x.rows);
    std::unique_ptr<unsigned char[]> owned;
    unsigned char* base = static_cast<unsigned char*>(ws.data);
    if (base == nullptr) {
      owned.reset(new unsigned char[need]);
      base = owned.get();
    } else if (ws.bytes < need) {
      fail(where, "workspace.bytes = ", ws.bytes, ", need workspace_size(", x.rows, ") = ", need);
    }
    const std::size_t head = this->hidden_bytes(x.rows);
    this->forward_with(x, y, reinterpret_cast<T*>(base), Workspace{base + head, need - head});
  }

  // Gradients in params() order; dx skipped when dx.data is null.
  void backward(const MatrixView<const T>& x, const MatrixView<const T>& dy,
                const MatrixView<T>& dx, GradList<T>& grads) {
    this->backward_with(x, dy, dx, grads);
  }

 private:
  // h = act(h), or for SwiGLU SiLU(gate) * up over the gate half of h = gate | up.
  void activate(const MatrixView<T>& h) const {
    if (this->gated()) {
      cpu::swiglu_inplace(h, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr));
    } else {
      cpu::bias_activation_inplace(h, static_cast<const T*>(nullptr), this->act_);
    }
  }

  // dh holds d(act) (SwiGLU: in its up half); becomes d(pre). For a = SiLU(g) u:
  // dg = da u SiLU'(g), du = da SiLU(g), with SiLU(g) = g s and SiLU'(g) = s (1 + g (1 - s)).
  void hidden_grad(const MatrixView<T>& dh, const MatrixView<const T>& pre) const {
    if (!this->gated()) {
      cpu::multiply_activation_grad(dh, pre, this->act_);
      return;
    }
    const index_t f = this->d_ff();
    cpu::parallel_for(dh.rows, 4 * f, [&](std::int64_t r) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> dg(dh.row(r), f), du(dh.row(r) + f, f);
      Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> g(pre.row(r), f), u(pre.row(r) + f, f);
      const auto s = (T(1) + (-g).exp()).inverse().eval();
      dg = du * u * s * (T(1) + g * (T(1) - s));
      du *= g * s;
    });
  }

  static void copy(const MatrixView<const T>& src, const MatrixView<T>& dst) {
    cpu::parallel_for(src.rows, src.cols,
                      [&](std::int64_t r) { std::copy_n(src.row(r), src.cols, dst.row(r)); });
  }

  static void accumulate(const MatrixView<const T>& src, const MatrixView<T>& dst) {
    cpu::parallel_for(src.rows, src.cols, [&](std::int64_t r) {
      for (index_t j = 0; j < src.cols; ++j) dst.row(r)[j] += src.row(r)[j];
    });
  }

  // Scratch buffer `i` of backward, grown to at least `n` elements and never shrunk: at 2048
  // tokens x 4096 they are ~100 MB, and allocating them per step cost a visible share of a step.
  T* buffer(std::size_t i, std::size_t n) {
    if (scratch_[i].size() < n) scratch_[i].resize(n);
    return scratch_[i].data();
  }

  std::array<std::vector<T>, 4> scratch_;
};

}  // namespace ffnkit
