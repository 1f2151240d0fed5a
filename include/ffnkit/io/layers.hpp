// Loading (and saving) ffnkit's CPU layers from safetensors tensors named as their PyTorch
// originals name them. `prefix` selects one layer of a whole-model file: load_dense_linear(f,
// "model.layers.0.mlp.up_proj.") reads "model.layers.0.mlp.up_proj.weight" and "...bias".
//
//   layer                  tensors (after the prefix)                       shapes
//   DenseLinear            weight, bias (optional)                          [M, N], [M]
//   LowRankLinear          lr1, lr2, bias (optional)                        [R, N], [M, R], [M]
//   BlockDiagonalLinear    weight, bias (optional)                          [B, M/B, N/B], [M]
//   BlockDenseLinear       blkdiag, lr, bias (optional)                     [B, R/B, N/B], [M, R]
//   BlockShuffleLinear     blkdiag1, blkdiag2, bias (optional)              [B, q, N/B], [B, M/B,
//   q] FastFeedForward        linear_in.weight, linear_in.bias, linear_out.weight
//                                                  [K·nodes, N], [K·nodes], [M, K·nodes]
//   RMSNormLinear          <norm>weight (optional); <linear>weight, <linear>bias (optional)
//   LayerNormLinear        <norm>weight, <norm>bias (both optional); <linear>weight, bias
// (q = min(N, M) / B, nodes = 2^(depth+1) - 1.) Widths come from the shapes; every tensor is
// checked against the others. F32, F16, BF16 and F64 are converted on load; an F32 tensor loaded
// as float is passed to the layer straight out of the mapping (one copy, into the layer).
// Errors are ffnkit::Error, prefixed with the loader and the prefix.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/dense.hpp"
#include "ffnkit/fff.hpp"
#include "ffnkit/io/safetensors.hpp"
#include "ffnkit/norm.hpp"
#include "ffnkit/structured.hpp"

namespace ffnkit {
namespace io {
namespace detail {

// A tensor's elements as T: a pointer into the mapping when the bytes are already T, else a
// converted copy.
template <class T>
struct Elements {
  const T* ptr = nullptr;
  std::vector<T> copy;
};

template <class T>
Elements<T> elements(const TensorView& t) {
  Elements<T> e;
  const Dtype native = std::is_same<T, float>::value ? Dtype::kF32 : Dtype::kF64;
  if (t.dtype == native && reinterpret_cast<std::uintptr_t>(t.bytes) % alignof(T) == 0) {
    e.ptr = t.template data<T>();
  } else {
    e.copy.resize(static_cast<std::size_t>(t.numel()));
    t.convert(e.copy.data());
    e.ptr = e.copy.data();
  }
  return e;
}

// The tensor `name`, which must have `rank` dimensions; `layout` describes them for the message.
inline const TensorView& tensor_of_rank(const SafetensorsFile& f, const std::string& name,
                                        std::int64_t rank, const char* layout) {
  const TensorView& t = f.tensor(name);
  if (t.rank() != rank)
    fail(("safetensors '" + f.source() + "'").c_str(), "tensor '", name, "' has shape ",
         t.shape_string(), ", expected ", rank, " dimensions ", layout);
  // Every dimension >= 1 also bounds products of dimensions by the (file-checked) element count.
  if (t.numel() == 0)
    fail(("safetensors '" + f.source() + "'").c_str(), "tensor '", name, "' has shape ",
         t.shape_string(), ": it has no elements");
  return t;
}

// An optional tensor: null when absent, else it must have exactly `shape`.
inline const TensorView* optional_tensor(const SafetensorsFile& f, const std::string& name,
                                         const std::vector<std::int64_t>& shape) {
  return f.contains(name) ? &f.tensor(name, shape) : nullptr;
}

template <class T>
Elements<T> optional_elements(const TensorView* t) {
  return t ? elements<T>(*t) : Elements<T>();
}

// Runs `body`, prefixing any ffnkit::Error with the loader's name and the prefix.
template <class F>
auto with_context(const char* loader, const std::string& prefix, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& e) {
    throw Error(make_message(loader, "(prefix '", prefix, "'): ", e.what()));
  }
}

}  // namespace detail

template <class T = float>
DenseLinear<T, Cpu> load_dense_linear(const SafetensorsFile& f, const std::string& prefix) {
  return detail::with_context("load_dense_linear", prefix, [&] {
    const TensorView& w = detail::tensor_of_rank(f, prefix + "weight", 2, "[out, in]");
    const index_t m = w.shape[0], n = w.shape[1];
    const auto we = detail::elements<T>(w);
    const auto be = detail::optional_elements<T>(detail::optional_tensor(f, prefix + "bias", {m}));
    return DenseLinear<T, Cpu>(n, m, we.ptr, be.ptr);
  });
}

template <class T = float>
LowRankLinear<T, Cpu> load_low_rank_linear(const SafetensorsFile& f, const std::string& prefix) {
  return detail::with_context("load_low_rank_linear", prefix, [&] {
    const TensorView& v = detail::tensor_of_rank(f, prefix + "lr1", 2, "[rank, in]");
    const index_t r = v.shape[0], n = v.shape[1];
    const TensorView& u = detail::tensor_of_rank(f, prefix + "lr2", 2, "[out, rank]");
    const index_t m = u.shape[0];
    f.tensor(prefix + "lr2", {m, r});
    const auto ve = detail::elements<T>(v), ue = detail::elements<T>(u);
    const auto be = detail::optional_elements<T>(detail::optional_tensor(f, prefix + "bias", {m}));
    return LowRankLinear<T, Cpu>(n, m, r, ve.ptr, ue.ptr, be.ptr);
  });
}

template <class T = float>
BlockDiagonalLinear<T, Cpu> load_block_diagonal_linear(const SafetensorsFile& f,
                                                       const std::string& prefix) {
  return detail::with_context("load_block_diagonal_linear", prefix, [&] {
    const TensorView& w =
        detail::tensor_of_rank(f, prefix + "weight", 3, "[blocks, out/blocks, in/blocks]");
    const index_t b = w.shape[0], m = b * w.shape[1], n = b * w.shape[2];
    const auto we = detail::elements<T>(w);
    const auto be = detail::optional_elements<T>(detail::optional_tensor(f, prefix + "bias", {m}));
    return BlockDiagonalLinear<T, Cpu>(n, m, b, we.ptr, be.ptr);
  });
}

template <class T = float>
BlockDenseLinear<T, Cpu> load_block_dense_linear(const SafetensorsFile& f,
                                                 const std::string& prefix) {
  return detail::with_context("load_block_dense_linear", prefix, [&] {
    const TensorView& v =
        detail::tensor_of_rank(f, prefix + "blkdiag", 3, "[blocks, rank/blocks, in/blocks]");
    const index_t b = v.shape[0], r = b * v.shape[1], n = b * v.shape[2];
    const TensorView& u = detail::tensor_of_rank(f, prefix + "lr", 2, "[out, rank]");
    const index_t m = u.shape[0];
    f.tensor(prefix + "lr", {m, r});
    const auto ve = detail::elements<T>(v), ue = detail::elements<T>(u);
    const auto be = detail::optional_elements<T>(detail::optional_tensor(f, prefix + "bias", {m}));
    return BlockDenseLinear<T, Cpu>(n, m, b, r, ve.ptr, ue.ptr, be.ptr);
  });
}

template <class T = float>
BlockShuffleLinear<T, Cpu> load_block_shuffle_linear(const SafetensorsFile& f,
                                                     const std::string& prefix) {
  return detail::with_context("load_block_shuffle_linear", prefix, [&] {
    const TensorView& w1 =
        detail::tensor_of_rank(f, prefix + "blkdiag1", 3, "[blocks, q, in/blocks]");
    const TensorView& w2 =
        detail::tensor_of_rank(f, prefix + "blkdiag2", 3, "[blocks, out/blocks, q]");
    const index_t b = w1.shape[0], q = w1.shape[1], n = b * w1.shape[2], m = b * w2.shape[1];
    f.tensor(prefix + "blkdiag2", {b, w2.shape[1], q});
    // q is not free: the layer's two stages meet at min(in, out) features.
    if (q * b != std::min(n, m))
      fail(("safetensors '" + f.source() + "'").c_str(), "tensor '", prefix, "blkdiag1' has shape ",
           w1.shape_string(),
           ": its second dimension must be min(in, out) / blocks = ", std::min(n, m) / (b ? b : 1));
    const auto e1 = detail::elements<T>(w1), e2 = detail::elements<T>(w2);
    const auto be = detail::optional_elements<T>(detail::optional_tensor(f, prefix + "bias", {m}));
    return BlockShuffleLinear<T, Cpu>(n, m, b, e1.ptr, e2.ptr, be.ptr);
  });
}

// `depth` is a hyperparameter of the module (K·nodes rows do not determine K and depth); the tree
// count K follows from linear_in.weight's rows.
template <class T = float>
FastFeedForward<T, Cpu> load_fast_feed_forward(const SafetensorsFile& f, const std::string& prefix,
                                               index_t depth) {
  return detail::with_context("load_fast_feed_forward", prefix, [&] {
    if (depth < 0 || depth > ::ffnkit::detail::kFffMaxDepth)
      fail("load_fast_feed_forward", "depth = ", depth, ", expected 0..",
           ::ffnkit::detail::kFffMaxDepth);
    const index_t nodes = (index_t(2) << depth) - 1;
    const TensorView& wi =
        detail::tensor_of_rank(f, prefix + "linear_in.weight", 2, "[trees * nodes, in]");
    const index_t rows = wi.shape[0], n = wi.shape[1];
    if (rows % nodes != 0)
      fail(("safetensors '" + f.source() + "'").c_str(), "tensor '", prefix,
           "linear_in.weight' has ", rows, " rows, not a multiple of 2^(depth+1) - 1 = ", nodes,
           " (depth = ", depth, ")");
    const TensorView& bi = f.tensor(prefix + "linear_in.bias", {rows});
    const TensorView& wo =
        detail::tensor_of_rank(f, prefix + "linear_out.weight", 2, "[out, trees * nodes]");
    const index_t m = wo.shape[0];
    f.tensor(prefix + "linear_out.weight", {m, rows});
    const auto wie = detail::elements<T>(wi), bie = detail::elements<T>(bi),
               woe = detail::elements<T>(wo);
    return FastFeedForward<T, Cpu>(n, m, rows / nodes, depth, wie.ptr, bie.ptr, woe.ptr);
  });
}

namespace detail {
// The tensors both norm-fused loaders read: the nn.Linear's weight [out, in] and optional bias,
// and the norm's optional γ [in].
template <class T>
struct NormLinearTensors {
  index_t in, out;
  Elements<T> weight, bias, gamma;  // bias and gamma: null ptr when absent
};
template <class T>
NormLinearTensors<T> norm_linear_tensors(const SafetensorsFile& f, const std::string& norm_prefix,
                                         const std::string& linear_prefix) {
  const TensorView& w = tensor_of_rank(f, linear_prefix + "weight", 2, "[out, in]");
  const index_t m = w.shape[0], n = w.shape[1];
  return NormLinearTensors<T>{
      n, m, elements<T>(w), optional_elements<T>(optional_tensor(f, linear_prefix + "bias", {m})),
      optional_elements<T>(optional_tensor(f, norm_prefix + "weight", {n}))};
}
}  // namespace detail

// RMSNorm (γ = <norm_prefix>weight, absent for an RMSNorm without affine weight) fused into the
// nn.Linear at <linear_prefix> (SPEC §1.10).
template <class T = float>
RMSNormLinear<T, Cpu> load_rms_norm_linear(const SafetensorsFile& f, const std::string& norm_prefix,
                                           const std::string& linear_prefix, double eps = 1e-6) {
  return detail::with_context("load_rms_norm_linear", norm_prefix + "', '" + linear_prefix, [&] {
    const auto t = detail::norm_linear_tensors<T>(f, norm_prefix, linear_prefix);
    return RMSNormLinear<T, Cpu>(t.in, t.out, t.gamma.ptr, t.weight.ptr, t.bias.ptr, eps);
  });
}

// LayerNorm (γ, β = <norm_prefix>weight, bias; either may be absent) fused into the nn.Linear at
// <linear_prefix> (SPEC §1.10).
template <class T = float>
LayerNormLinear<T, Cpu> load_layer_norm_linear(const SafetensorsFile& f,
                                               const std::string& norm_prefix,
                                               const std::string& linear_prefix,
                                               double eps = 1e-5) {
  return detail::with_context("load_layer_norm_linear", norm_prefix + "', '" + linear_prefix, [&] {
    const auto t = detail::norm_linear_tensors<T>(f, norm_prefix, linear_prefix);
    const auto beta =
        detail::optional_elements<T>(detail::optional_tensor(f, norm_prefix + "bias", {t.in}));
    return LayerNormLinear<T, Cpu>(t.in, t.out, t.gamma.ptr, beta.ptr, t.weight.ptr, t.bias.ptr,
                                   eps);
  });
}

// ---------------------------------------------------------------------------------------------
// Savers: the same names and shapes, so save -> load reproduces the layer. `dtype` is the file's
// element type (F32 keeps float weights exact). The norm-fused layers keep only their folded
// parameters, so they are saved from the original γ, β, W, b with SafetensorsWriter::add.
// ---------------------------------------------------------------------------------------------
namespace detail {
template <class T>
void add_bias(SafetensorsWriter& w, const std::string& prefix, const T* bias, index_t m,
              Dtype dtype) {
  if (bias) w.add(prefix + "bias", {m}, bias, dtype);
}
}  // namespace detail

template <class T>
void save_dense_linear(SafetensorsWriter& w, const std::string& prefix,
                       const DenseLinear<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  w.add(prefix + "weight", {l.out_features(), l.in_features()}, l.weight(), dtype);
  detail::add_bias(w, prefix, l.bias(), l.out_features(), dtype);
}

template <class T>
void save_low_rank_linear(SafetensorsWriter& w, const std::string& prefix,
                          const LowRankLinear<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  w.add(prefix + "lr1", {l.rank(), l.in_features()}, l.lr1(), dtype);
  w.add(prefix + "lr2", {l.out_features(), l.rank()}, l.lr2(), dtype);
  detail::add_bias(w, prefix, l.bias(), l.out_features(), dtype);
}

template <class T>
void save_block_diagonal_linear(SafetensorsWriter& w, const std::string& prefix,
                                const BlockDiagonalLinear<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  const index_t b = l.blocks();
  w.add(prefix + "weight", {b, l.out_features() / b, l.in_features() / b}, l.weight(), dtype);
  detail::add_bias(w, prefix, l.bias(), l.out_features(), dtype);
}

template <class T>
void save_block_dense_linear(SafetensorsWriter& w, const std::string& prefix,
                             const BlockDenseLinear<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  const index_t b = l.blocks();
  w.add(prefix + "blkdiag", {b, l.rank() / b, l.in_features() / b}, l.blkdiag(), dtype);
  w.add(prefix + "lr", {l.out_features(), l.rank()}, l.lr(), dtype);
  detail::add_bias(w, prefix, l.bias(), l.out_features(), dtype);
}

template <class T>
void save_block_shuffle_linear(SafetensorsWriter& w, const std::string& prefix,
                               const BlockShuffleLinear<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  const index_t b = l.blocks(), n = l.in_features(), m = l.out_features();
  const index_t q = std::min(n, m) / b;
  w.add(prefix + "blkdiag1", {b, q, n / b}, l.blkdiag1(), dtype);
  w.add(prefix + "blkdiag2", {b, m / b, q}, l.blkdiag2(), dtype);
  detail::add_bias(w, prefix, l.bias(), m, dtype);
}

template <class T>
void save_fast_feed_forward(SafetensorsWriter& w, const std::string& prefix,
                            const FastFeedForward<T, Cpu>& l, Dtype dtype = Dtype::kF32) {
  const index_t rows = l.neurons_total();
  w.add(prefix + "linear_in.weight", {rows, l.in_features()}, l.linear_in_weight(), dtype);
  w.add(prefix + "linear_in.bias", {rows}, l.linear_in_bias(), dtype);
  w.add(prefix + "linear_out.weight", {l.out_features(), rows}, l.linear_out_weight().data(),
        dtype);
}

}  // namespace io
}  // namespace ffnkit
