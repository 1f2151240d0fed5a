// ffnkit's C API (include/ffnkit/ffnkit_c.h): a thin shell over the Cpu float layers. Every entry
// point catches everything, so no C++ exception crosses into C.
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include "ffnkit/ffnkit.hpp"
#include "ffnkit/ffnkit_c.h"
#include "ffnkit/io/layers.hpp"

struct ffnkit_layer {
  virtual ~ffnkit_layer() = default;
  virtual const char* kind() const = 0;
  virtual ffnkit::index_t in() const = 0;
  virtual ffnkit::index_t out() const = 0;
  virtual std::size_t workspace_size(ffnkit::index_t tokens) const = 0;
  virtual void forward(const ffnkit::MatrixView<const float>& x, const ffnkit::MatrixView<float>& y,
                       ffnkit::Workspace ws) const = 0;
};

struct ffnkit_safetensors {
  ffnkit::io::SafetensorsFile file;
};

namespace {

using ffnkit::index_t;

thread_local std::string g_last_error;

ffnkit_status fail(ffnkit_status status, std::string message) {
  g_last_error = std::move(message);
  return status;
}

// Runs f, turning every exception into a status and a message.
template <class F>
ffnkit_status guarded(F&& f) {
  try {
    f();
    return FFNKIT_OK;
  } catch (const ffnkit::Error& e) {
    return fail(FFNKIT_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(FFNKIT_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(FFNKIT_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(FFNKIT_ERROR_INTERNAL, "unknown exception");
  }
}

template <class L>
class Layer final : public ffnkit_layer {
 public:
  Layer(const char* kind, L layer) : kind_(kind), layer_(std::move(layer)) {}
  const char* kind() const override { return kind_; }
  index_t in() const override { return layer_.in_features(); }
  index_t out() const override { return layer_.out_features(); }
  std::size_t workspace_size(index_t tokens) const override {
    if constexpr (std::is_same<L, ffnkit::DenseLinear<float, ffnkit::Cpu>>::value) {
      (void)tokens;
      return 0;
    } else {
      return layer_.workspace_size(tokens);
    }
  }
  void forward(const ffnkit::MatrixView<const float>& x, const ffnkit::MatrixView<float>& y,
               ffnkit::Workspace ws) const override {
    if constexpr (std::is_same<L, ffnkit::DenseLinear<float, ffnkit::Cpu>>::value) {
      (void)ws;
      layer_.forward(x, y);
    } else {
      layer_.forward(x, y, ws);
    }
  }

 private:
  const char* kind_;
  L layer_;
};

template <class L, class Make>
ffnkit_status create(const char* kind, ffnkit_layer** out, Make&& make) {
  if (!out) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(kind) + ": layer is NULL");
  *out = nullptr;
  return guarded([&] { *out = new Layer<L>(kind, make()); });
}

}  // namespace

extern "C" {

const char* ffnkit_last_error(void) { return g_last_error.c_str(); }

const char* ffnkit_version(void) {
#define FFNKIT_STR2(x) #x
#define FFNKIT_STR(x) FFNKIT_STR2(x)
  return FFNKIT_STR(FFNKIT_VERSION_MAJOR) "." FFNKIT_STR(FFNKIT_VERSION_MINOR) "." FFNKIT_STR(
      FFNKIT_VERSION_PATCH);
#undef FFNKIT_STR
#undef FFNKIT_STR2
}

ffnkit_status ffnkit_dense_linear_create(int64_t in_features, int64_t out_features,
                                         const float* weight, const float* bias,
                                         ffnkit_layer** layer) {
  using L = ffnkit::DenseLinear<float, ffnkit::Cpu>;
  return create<L>("dense_linear", layer, [&] {
    ffnkit::check_not_null("ffnkit_dense_linear_create", "weight", weight);
    return L(in_features, out_features, weight, bias);
  });
}

ffnkit_status ffnkit_lowrank_create(int64_t in_features, int64_t out_features, int64_t rank,
                                    const float* lr1, const float* lr2, const float* bias,
                                    ffnkit_layer** layer) {
  using L = ffnkit::LowRankLinear<float, ffnkit::Cpu>;
  return create<L>("lowrank", layer,
                   [&] { return L(in_features, out_features, rank, lr1, lr2, bias); });
}

ffnkit_status ffnkit_blockdense_create(int64_t in_features, int64_t out_features, int64_t blocks,
                                       int64_t rank, const float* blkdiag, const float* lr,
                                       const float* bias, ffnkit_layer** layer) {
  using L = ffnkit::BlockDenseLinear<float, ffnkit::Cpu>;
  return create<L>("blockdense", layer,
                   [&] { return L(in_features, out_features, blocks, rank, blkdiag, lr, bias); });
}

ffnkit_status ffnkit_blockshuffle_create(int64_t in_features, int64_t out_features, int64_t blocks,
                                         const float* blkdiag1, const float* blkdiag2,
                                         const float* bias, ffnkit_layer** layer) {
  using L = ffnkit::BlockShuffleLinear<float, ffnkit::Cpu>;
  return create<L>("blockshuffle", layer,
                   [&] { return L(in_features, out_features, blocks, blkdiag1, blkdiag2, bias); });
}

ffnkit_status ffnkit_fff_create(int64_t in_features, int64_t out_features, int64_t trees,
                                int64_t depth, const float* linear_in_weight,
                                const float* linear_in_bias, const float* linear_out_weight,
                                ffnkit_layer** layer) {
  using L = ffnkit::FastFeedForward<float, ffnkit::Cpu>;
  return create<L>("fff", layer, [&] {
    return L(in_features, out_features, trees, depth, linear_in_weight, linear_in_bias,
             linear_out_weight);
  });
}

ffnkit_status ffnkit_rmsnorm_linear_create(int64_t in_features, int64_t out_features,
                                           const float* gamma, const float* weight,
                                           const float* bias, double eps, ffnkit_layer** layer) {
  using L = ffnkit::RMSNormLinear<float, ffnkit::Cpu>;
  return create<L>("rmsnorm_linear", layer,
                   [&] { return L(in_features, out_features, gamma, weight, bias, eps); });
}

ffnkit_status ffnkit_layernorm_linear_create(int64_t in_features, int64_t out_features,
                                             const float* gamma, const float* beta,
                                             const float* weight, const float* bias, double eps,
                                             ffnkit_layer** layer) {
  using L = ffnkit::LayerNormLinear<float, ffnkit::Cpu>;
  return create<L>("layernorm_linear", layer,
                   [&] { return L(in_features, out_features, gamma, beta, weight, bias, eps); });
}

ffnkit_status ffnkit_safetensors_open(const char* path, ffnkit_safetensors** file) {
  constexpr const char* where = "ffnkit_safetensors_open";
  if (!file) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(where) + ": file is NULL");
  *file = nullptr;
  return guarded([&] {
    ffnkit::check_not_null(where, "path", path);
    *file = new ffnkit_safetensors{ffnkit::io::SafetensorsFile::open(path)};
  });
}

void ffnkit_safetensors_close(ffnkit_safetensors* file) { delete file; }

ffnkit_status ffnkit_layer_load(const ffnkit_safetensors* file, const char* kind,
                                const char* prefix, const char* linear_prefix, int64_t depth,
                                ffnkit_layer** layer) {
  namespace io = ffnkit::io;
  using ffnkit::Cpu;
  constexpr const char* where = "ffnkit_layer_load";
  if (!layer) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(where) + ": layer is NULL");
  *layer = nullptr;
  if (!file) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(where) + ": file is NULL");
  if (!kind) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(where) + ": kind is NULL");
  const std::string k = kind, p = prefix ? prefix : "", lp = linear_prefix ? linear_prefix : "";
  const io::SafetensorsFile& f = file->file;
  if (k == "dense_linear")
    return create<ffnkit::DenseLinear<float, Cpu>>("dense_linear", layer,
                                                   [&] { return io::load_dense_linear(f, p); });
  if (k == "lowrank")
    return create<ffnkit::LowRankLinear<float, Cpu>>(
        "lowrank", layer, [&] { return io::load_low_rank_linear(f, p); });
  if (k == "blockdense")
    return create<ffnkit::BlockDenseLinear<float, Cpu>>(
        "blockdense", layer, [&] { return io::load_block_dense_linear(f, p); });
  if (k == "blockshuffle")
    return create<ffnkit::BlockShuffleLinear<float, Cpu>>(
        "blockshuffle", layer, [&] { return io::load_block_shuffle_linear(f, p); });
  if (k == "fff")
    return create<ffnkit::FastFeedForward<float, Cpu>>(
        "fff", layer, [&] { return io::load_fast_feed_forward(f, p, depth); });
  if (k == "rmsnorm_linear")
    return create<ffnkit::RMSNormLinear<float, Cpu>>(
        "rmsnorm_linear", layer, [&] { return io::load_rms_norm_linear(f, p, lp); });
  if (k == "layernorm_linear")
    return create<ffnkit::LayerNormLinear<float, Cpu>>(
        "layernorm_linear", layer, [&] { return io::load_layer_norm_linear(f, p, lp); });
  return fail(FFNKIT_ERROR_INVALID_ARGUMENT,
              std::string(where) + ": kind = '" + k +
                  "', expected dense_linear, lowrank, blockdense, blockshuffle, fff, "
                  "rmsnorm_linear or layernorm_linear");
}

void ffnkit_layer_destroy(ffnkit_layer* layer) { delete layer; }

const char* ffnkit_layer_kind(const ffnkit_layer* layer) { return layer ? layer->kind() : ""; }
int64_t ffnkit_layer_in_features(const ffnkit_layer* layer) { return layer ? layer->in() : 0; }
int64_t ffnkit_layer_out_features(const ffnkit_layer* layer) { return layer ? layer->out() : 0; }

size_t ffnkit_layer_workspace_size(const ffnkit_layer* layer, int64_t tokens) {
  if (!layer || tokens <= 0) return 0;
  try {
    return layer->workspace_size(tokens);
  } catch (...) {
    return 0;
  }
}

ffnkit_status ffnkit_layer_forward(const ffnkit_layer* layer, const float* x, int64_t tokens,
                                   int64_t x_stride, float* y, int64_t y_stride, void* workspace,
                                   size_t workspace_bytes) {
  constexpr const char* where = "ffnkit_layer_forward";
  if (!layer) return fail(FFNKIT_ERROR_INVALID_ARGUMENT, std::string(where) + ": layer is NULL");
  return guarded([&] {
    ffnkit::check_positive(where, "tokens", tokens);
    const ffnkit::MatrixView<const float> xv(x, tokens, layer->in(), x_stride);
    const ffnkit::MatrixView<float> yv(y, tokens, layer->out(), y_stride);
    layer->forward(xv, yv, ffnkit::Workspace{workspace, workspace ? workspace_bytes : 0});
  });
}

ffnkit_status ffnkit_softmax_v(const float* s, int64_t queries, int64_t keys, int64_t s_stride,
                               const float* v, int64_t dim, int64_t v_stride, const float* mask,
                               float* y, int64_t y_stride) {
  return guarded([&] {
    const ffnkit::SoftmaxLinear<float, ffnkit::Cpu> op;
    op.forward(ffnkit::MatrixView<const float>(s, queries, keys, s_stride),
               ffnkit::MatrixView<const float>(v, keys, dim, v_stride),
               ffnkit::MatrixView<float>(y, queries, dim, y_stride),
               mask ? ffnkit::MatrixView<const float>(mask, queries, keys, s_stride)
                    : ffnkit::MatrixView<const float>());
  });
}

}  // extern "C"
