// Attention's softmax · V with the softmax deferred into the product (docs/math.md §7.5), one class
// template over scalar and backend (Cpu, Cuda, CudaEmu), written once against the backend's
// SoftmaxVOps (detail/norm_ops.hpp):
//   SoftmaxLinear<T, Backend>:  y = softmax(s + mask) V per query row, one pass with an online
//                               running max; the full P is never written.
// Operator contract (docs/design.md) with attention's inputs: check_forward(s, v, y, mask, ws),
// workspace_size(queries, keys, dim), forward(s, v, y, mask, ws[, stream]) const; no parameters,
// no backward. The three-pass baseline is reference::UnfusedSoftmaxLinear
// (reference/unfused_norm.hpp).
#pragma once

#include <cstddef>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/softmax_v_ops.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/detail/norm_ops.hpp"
#if defined(FFNKIT_WITH_CUDA) || defined(FFNKIT_WITH_CUDA_EMU)
#include "ffnkit/cuda/softmax_v_ops.hpp"
#endif

namespace ffnkit {
namespace detail {

// The views of one softmax · V call: s [queries x keys], v [keys x dim], y [queries x dim], the
// optional additive mask [queries x keys]; y overlaps neither input.
template <class T>
void check_softmax_v_views(const char* where, const MatrixView<const T>& s,
                           const MatrixView<const T>& v, const MatrixView<T>& y,
                           const MatrixView<const T>& mask) {
  if (s.rows <= 0) fail(where, "s.rows (queries) = ", s.rows, ", must be > 0");
  if (s.cols <= 0) fail(where, "s.cols (keys) = ", s.cols, ", must be > 0");
  check_activation(where, "s", s, s.cols, "s.cols");
  if (v.cols <= 0) fail(where, "v.cols (head dim) = ", v.cols, ", must be > 0");
  check_activation(where, "v", v, v.cols, "v.cols");
  check_equal(where, "v.rows", v.rows, "s.cols (keys)", s.cols);
  check_activation(where, "y", y, v.cols, "v.cols (head dim)");
  check_equal(where, "y.rows", y.rows, "s.rows (queries)", s.rows);
  check_no_overlap(where, s, y, "s", "y");
  check_no_overlap(where, v, y, "v", "y");
  if (mask.data) {
    check_activation(where, "mask", mask, s.cols, "s.cols (keys)");
    check_equal(where, "mask.rows", mask.rows, "s.rows (queries)", s.rows);
    check_no_overlap(where, mask, y, "mask", "y");
  }
}

}  // namespace detail

// A row whose scores are all −inf (fully masked) gives zeros, never NaN (docs/math.md §7.5).
template <class T, class B = Cpu>
class SoftmaxLinear {
  using Ops = detail::SoftmaxVOps<T, B>;

 public:
  using Scalar = T;
  using Backend = B;
  using Stream = detail::StreamOf<B>;

  static constexpr const char* kForward = "SoftmaxLinear::forward";

  // key_tile: keys per tile; query_block: query rows sharing one sweep over V (the Cpu backend's
  // blocking; the device kernel's tiles are fixed). Every query block re-reads all of V (8 MB at
  // 16384 keys x 128 dims), so blocks are as large as L2 allows: a 128 x 256 fp32 P tile (128 KB)
  // plus 128 x dim accumulators (64 KB) sit in a 1 MB L2.
  explicit SoftmaxLinear(index_t key_tile = 256, index_t query_block = 128)
      : key_tile_(key_tile), query_block_(query_block) {
    check_positive("SoftmaxLinear", "key_tile", key_tile);
    check_positive("SoftmaxLinear", "query_block", query_block);
  }

  index_t key_tile() const { return key_tile_; }
  index_t query_block() const { return query_block_; }

  // Bytes of scratch forward needs for `queries` rows of scores over `keys` keys and values of
  // width `dim` (on the Cpu backend, for the current OpenMP thread count; the device kernel needs
  // none). An empty Workspace allocates per call.
  std::size_t workspace_size(index_t queries, index_t keys, index_t dim) const {
    return Ops::workspace_size(queries, keys, dim, key_tile_, query_block_);
  }

  // Everything forward checks, before any memory is touched.
  void check_forward(const MatrixView<const T>& s, const MatrixView<const T>& v,
                     const MatrixView<T>& y,
                     const MatrixView<const T>& mask = MatrixView<const T>(),
                     Workspace ws = {}) const {
    detail::check_softmax_v_views(kForward, s, v, y, mask);
    detail::check_workspace<T, B>(kForward, ws, workspace_size(s.rows, s.cols, v.cols),
                                  "workspace_size(s.rows, s.cols, v.cols)", detail::named("s", s),
                                  detail::named("v", v), detail::named("y", y),
                                  detail::named("mask", mask));
  }

  // s: [queries x keys], v: [keys x dim], y: [queries x dim], mask: [queries x keys] additive
  // (−inf masks a key), or an empty view for none; all in the backend's memory, all may be
  // strided.
  void forward(const MatrixView<const T>& s, const MatrixView<const T>& v, const MatrixView<T>& y,
               const MatrixView<const T>& mask = MatrixView<const T>(), Workspace ws = {},
               const Stream& stream = Stream()) const {
    check_forward(s, v, y, mask, ws);
    const std::size_t need = workspace_size(s.rows, s.cols, v.cols);
    detail::CallScratch<B> scratch(ws, need, stream);
    Ops::forward(kForward, s, v, y, mask, key_tile_, query_block_,
                 scratch.template take<T>(need / sizeof(T)), stream);
  }

 private:
  index_t key_tile_;
  index_t query_block_;
};

}  // namespace ffnkit
