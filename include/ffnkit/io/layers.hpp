// Loading (and saving) ffnkit's CPU layers from safetensors tensors named as their PyTorch
// originals name them. `prefix` selects one layer of a whole-model file: load_dense_linear(f,
// "model.layers.0.mlp.up_proj.") reads "model.layers.0.mlp.up_proj.weight" and "...bias".
//
//   layer                tensors (after the prefix)          shapes
//   DenseLinear          weight, bias (optional)             [M, N], [M]
//   LowRankLinear        lr1, lr2, bias (optional)           [R, N], [M, R], [M]
//   BlockDiagonalLinear  weight, bias (optional)             [B, M/B, N/B], [M]
//   BlockDenseLinear     blkdiag, lr, bias (optional)        [B, R/B, N/B], [M, R], [M]
//   BlockShuffleLinear   blkdiag1, blkdiag2, bias (optional) [B, q, N/B], [B, M/B, q], [M]
//   FastFeedForward      linear_in.weight, linear_in.bias,   [K·nodes, N], [K·nodes],
//                        linear_out.weight                   [M, K·nodes]
//   RMSNormLinear        <norm>weight (optional); <linear>weight, <linear>bias (optional)
//   LayerNormLinear      <norm>weight, <norm>bias (both optional); <linear>weight, bias
//   DenseFFN,            fc1.<layer's tensors>, fc2.<layer's tensors>, as the official
//   StructuredFFN        StructuredFFN MLP modules store them (load_dense_ffn, load_structured_ffn)
// (q = min(N, M) / B, nodes = 2^(depth+1) - 1.) Widths come from the shapes; every tensor is
// checked against the others; tensors a loader does not read are ignored. F32, F16, BF16 and F64
// are converted on load; an F32 tensor loaded as float is passed to the layer straight out of the
// mapping (one copy, into the layer). Errors are ffnkit::Error, prefixed with the loader and the
// prefix.
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
// nn.Linear at <linear_prefix> (docs/math.md §7). eps is not stored in the file: pass the module's
// (its config's rms_norm_eps); the default is 1e-6.
template <class T = float>
RMSNormLinear<T, Cpu> load_rms_norm_linear(const SafetensorsFile& f, const std::string& norm_prefix,
                                           const std::string& linear_prefix, double eps = 1e-6) {
  return detail::with_context("load_rms_norm_linear", norm_prefix + "', '" + linear_prefix, [&] {
    const auto t = detail::norm_linear_tensors<T>(f, norm_prefix, linear_prefix);
    return RMSNormLinear<T, Cpu>(t.in, t.out, t.gamma.ptr, t.weight.ptr, t.bias.ptr, eps);
  });
}

// LayerNorm (γ, β = <norm_prefix>weight, bias; either may be absent) fused into the nn.Linear at
// <linear_prefix> (docs/math.md §7). eps is not stored in the file: pass the module's. The default
// is nn.LayerNorm's 1e-5; BERT and UltraFastBERT use 1e-12 (layer_norm_eps in their configs).
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
// Whole FFNs as the official StructuredFFN code (CLAIRE-Labo/StructuredFFN) stores its MLP modules
// (FusedMLP, FusedLowRankMLP, FusedBlockDenseMLP, FusedBlockShuffleMLP): <prefix>fc1. and
// <prefix>fc2. hold one layer each, e.g. prefix "model.layers.0.mlp." reads
// "model.layers.0.mlp.fc1.lr1". For SwiGLU, fc1 maps d_model -> 2 d_ff and its outputs are the
// gate's, then up's (torch.chunk order), fc1.bias likewise. Both biases are added here; the
// modules return fc2's bias to their caller instead (see docs/integration.md).
// ---------------------------------------------------------------------------------------------

// The activation between fc1 and fc2: the elementwise ones, or SwiGLU, which is not elementwise
// (it halves fc1's width) and so is not an ffnkit::Activation. The official modules' act "gelu"
// is kGeluTanh, "swiglu" kSwiGlu.
enum class FfnActivation { kGeluTanh, kGeluErf, kRelu, kSilu, kSwiGlu };

namespace detail {

// A layer kind as a file shows it. The first tensor gives the input width, the second the output
// width; the one-matrix kinds share one tensor name and are told apart by its rank.
struct LayerKind {
  const char* name;
  const char* in_tensor;
  const char* out_tensor;
  std::int64_t in_rank;  // checked for the one-matrix kinds only (0: any)
  const char* layout;
};
inline const LayerKind* layer_kinds() {
  static const LayerKind kinds[] = {
      {"DenseLinear", "weight", "weight", 2, "weight [M, N]"},
      {"LowRankLinear", "lr1", "lr2", 0, "lr1 [R, N], lr2 [M, R]"},
      {"BlockDiagonalLinear", "weight", "weight", 3, "weight [B, M/B, N/B]"},
      {"BlockDenseLinear", "blkdiag", "lr", 0, "blkdiag [B, R/B, N/B], lr [M, R]"},
      {"BlockShuffleLinear", "blkdiag1", "blkdiag2", 0,
       "blkdiag1 [B, q, N/B], blkdiag2 [B, M/B, q]"}};
  return kinds;
}
constexpr int kLayerKinds = 5;

// Which kind each Cpu layer is, and its loader.
template <class L>
struct LayerLoader {
  static_assert(
      sizeof(L) == 0,
      "the FFN loaders build Cpu layers: DenseLinear, LowRankLinear, BlockDiagonalLinear, "
      "BlockDenseLinear or BlockShuffleLinear");
};
template <class L, int Kind, L (*Load)(const SafetensorsFile&, const std::string&)>
struct LayerLoaderOf {
  static const LayerKind& kind() { return layer_kinds()[Kind]; }
  static L load(const SafetensorsFile& f, const std::string& prefix) { return Load(f, prefix); }
};
template <class T>
struct LayerLoader<DenseLinear<T, Cpu>>
    : LayerLoaderOf<DenseLinear<T, Cpu>, 0, &load_dense_linear<T>> {};
template <class T>
struct LayerLoader<LowRankLinear<T, Cpu>>
    : LayerLoaderOf<LowRankLinear<T, Cpu>, 1, &load_low_rank_linear<T>> {};
template <class T>
struct LayerLoader<BlockDiagonalLinear<T, Cpu>>
    : LayerLoaderOf<BlockDiagonalLinear<T, Cpu>, 2, &load_block_diagonal_linear<T>> {};
template <class T>
struct LayerLoader<BlockDenseLinear<T, Cpu>>
    : LayerLoaderOf<BlockDenseLinear<T, Cpu>, 3, &load_block_dense_linear<T>> {};
template <class T>
struct LayerLoader<BlockShuffleLinear<T, Cpu>>
    : LayerLoaderOf<BlockShuffleLinear<T, Cpu>, 4, &load_block_shuffle_linear<T>> {};

inline std::string file_context(const SafetensorsFile& f) {
  return "safetensors '" + f.source() + "'";
}

// "tensor 'name' has shape [..]", for messages.
inline std::string shape_of(const SafetensorsFile& f, const std::string& name) {
  return "tensor '" + name + "' has shape " + f.tensor(name).shape_string();
}

inline bool holds(const SafetensorsFile& f, const std::string& prefix, const LayerKind& k) {
  const std::string in = prefix + k.in_tensor;
  return f.contains(in) && f.contains(prefix + k.out_tensor) &&
         (k.in_rank == 0 || f.tensor(in).rank() == k.in_rank);
}

// The layer L at `prefix`. When the file holds another kind of layer there, the error says which
// (a checkpoint of another MLP variant), rather than only that a tensor is missing.
template <class L>
L load_sublayer(const SafetensorsFile& f, const std::string& prefix) {
  const LayerKind& want = LayerLoader<L>::kind();
  if (!holds(f, prefix, want)) {
    for (int i = 0; i < kLayerKinds; ++i) {
      const LayerKind& k = layer_kinds()[i];
      if (&k == &want || !holds(f, prefix, k)) continue;
      std::string found = shape_of(f, prefix + k.in_tensor);
      if (std::string(k.out_tensor) != k.in_tensor)
        found += ", " + shape_of(f, prefix + k.out_tensor);
      fail(file_context(f).c_str(), "'", prefix, "' holds a ", k.name, " (", found, "), not the ",
           want.name, " requested (", want.layout, ")");
    }
  }
  return LayerLoader<L>::load(f, prefix);
}

// fc2 must read what fc1 gives: d_ff, or for SwiGLU half of fc1's outputs (which must be even).
template <class Up, class Down>
void check_ffn_widths(const SafetensorsFile& f, const std::string& prefix, const Up& fc1,
                      const Down& fc2, bool swiglu) {
  const std::string out1 = shape_of(f, prefix + "fc1." + LayerLoader<Up>::kind().out_tensor);
  const index_t width = fc1.out_features();
  if (swiglu && width % 2 != 0)
    fail(file_context(f).c_str(), "fc1 has ", width, " outputs (", out1,
         "): SwiGLU needs an even width, the gate's outputs then up's");
  const index_t d_ff = swiglu ? width / 2 : width;
  if (fc2.in_features() != d_ff)
    fail(file_context(f).c_str(), "fc2 takes ", fc2.in_features(), " inputs (",
         shape_of(f, prefix + "fc2." + LayerLoader<Down>::kind().in_tensor), "), but fc1 gives ",
         d_ff, swiglu ? " (half of its outputs, SwiGLU)" : "", " (", out1, ")");
}

inline Activation elementwise(FfnActivation act) {
  switch (act) {
    case FfnActivation::kGeluTanh:
      return Activation::kGeluTanh;
    case FfnActivation::kGeluErf:
      return Activation::kGeluErf;
    case FfnActivation::kRelu:
      return Activation::kRelu;
    case FfnActivation::kSilu:
      return Activation::kSilu;
    case FfnActivation::kSwiGlu:  // not elementwise: the loaders build SwiGLU themselves
      break;
  }
  fail("FfnActivation", "activation = ", static_cast<int>(act),
       " is not one of kGeluTanh, kGeluErf, kRelu, kSilu");
}

}  // namespace detail

// FusedMLP: fc1.weight, fc1.bias?, fc2.weight, fc2.bias?. SwiGLU splits fc1's rows into gate and
// up (no factor is shared, so nothing is computed twice); DenseFFN keeps them as one matrix.
template <class T = float>
DenseFFN<T, Cpu> load_dense_ffn(const SafetensorsFile& f, const std::string& prefix,
                                FfnActivation act) {
  return detail::with_context("load_dense_ffn", prefix, [&] {
    using L = DenseLinear<T, Cpu>;
    L fc1 = detail::load_sublayer<L>(f, prefix + "fc1.");
    L fc2 = detail::load_sublayer<L>(f, prefix + "fc2.");
    const bool swiglu = act == FfnActivation::kSwiGlu;
    detail::check_ffn_widths(f, prefix, fc1, fc2, swiglu);
    if (!swiglu) return DenseFFN<T, Cpu>(std::move(fc1), std::move(fc2), detail::elementwise(act));
    const index_t d = fc1.in_features(), d_ff = fc1.out_features() / 2;
    const T* b = fc1.bias();
    return DenseFFN<T, Cpu>::swiglu(L(d, d_ff, fc1.weight(), b),
                                    L(d, d_ff, fc1.weight() + d_ff * d, b ? b + d_ff : nullptr),
                                    std::move(fc2));
  });
}

// FusedLowRankMLP, FusedBlockDenseMLP, FusedBlockShuffleMLP (and BlockDiagonal layers): Up and
// Down are the Cpu layer types, e.g. load_structured_ffn<LowRankLinear<float>>(f, prefix, act).
// SwiGLU gives StructuredFFN::swiglu(fc1, fc2), fc1 being gate|up in one layer.
template <class Up, class Down = Up>
StructuredFFN<Up, Down, Cpu> load_structured_ffn(const SafetensorsFile& f,
                                                 const std::string& prefix, FfnActivation act) {
  return detail::with_context("load_structured_ffn", prefix, [&] {
    Up fc1 = detail::load_sublayer<Up>(f, prefix + "fc1.");
    Down fc2 = detail::load_sublayer<Down>(f, prefix + "fc2.");
    const bool swiglu = act == FfnActivation::kSwiGlu;
    detail::check_ffn_widths(f, prefix, fc1, fc2, swiglu);
    if (swiglu) return StructuredFFN<Up, Down, Cpu>::swiglu(std::move(fc1), std::move(fc2));
    return StructuredFFN<Up, Down, Cpu>(std::move(fc1), std::move(fc2), detail::elementwise(act));
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
  w.add(prefix + "linear_out.weight", {l.out_features(), rows}, l.linear_out_weight_host().data(),
        dtype);
}

}  // namespace io
}  // namespace ffnkit
