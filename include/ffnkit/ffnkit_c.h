/* ffnkit's C API: opaque layer handles, float32 forward on raw pointers with row strides, status
 * codes with a per-thread message. For engines written in C, and for other languages through FFI.
 * Link ffnkit::c (a static library; its C++ runtime comes with it through CMake).
 *
 * Every weight argument is in PyTorch's layout and is copied at creation; activations are never
 * copied: forward reads x and writes y in place through their row strides (in elements). Bad
 * arguments (null pointers, mismatched or non-positive sizes, block counts that do not divide,
 * ranks larger than the widths, non-finite weights, overlapping x and y, a too-small workspace)
 * return FFNKIT_ERROR_INVALID_ARGUMENT, and ffnkit_last_error() names the offending value. A
 * handle is immutable after creation, so several threads may call forward on one handle at once,
 * each with its own workspace. */
#ifndef FFNKIT_FFNKIT_C_H_
#define FFNKIT_FFNKIT_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ffnkit_status {
  FFNKIT_OK = 0,
  FFNKIT_ERROR_INVALID_ARGUMENT = 1, /* a bad shape, pointer or value: see ffnkit_last_error() */
  FFNKIT_ERROR_OUT_OF_MEMORY = 2,
  FFNKIT_ERROR_INTERNAL = 3 /* anything else; a bug: please report the message */
} ffnkit_status;

/* The message of the last call on this thread that did not return FFNKIT_OK ("" if none). Valid
 * until the next failing call on the same thread. */
const char* ffnkit_last_error(void);

/* ffnkit's version, "major.minor.patch". */
const char* ffnkit_version(void);

typedef struct ffnkit_layer ffnkit_layer;

/* y = x W^T + b. weight: [out x in] (nn.Linear.weight), bias: [out] or NULL. */
ffnkit_status ffnkit_dense_linear_create(int64_t in_features, int64_t out_features,
                                         const float* weight, const float* bias,
                                         ffnkit_layer** layer);
/* y = x (U V)^T + b, rank R. lr1: [R x in] (V), lr2: [out x R] (U), bias: [out] or NULL. */
ffnkit_status ffnkit_lowrank_create(int64_t in_features, int64_t out_features, int64_t rank,
                                    const float* lr1, const float* lr2, const float* bias,
                                    ffnkit_layer** layer);
/* Block-diagonal then low-rank: blkdiag [blocks x R/blocks x in/blocks], lr [out x R]. */
ffnkit_status ffnkit_blockdense_create(int64_t in_features, int64_t out_features, int64_t blocks,
                                       int64_t rank, const float* blkdiag, const float* lr,
                                       const float* bias, ffnkit_layer** layer);
/* Monarch: blkdiag1 [blocks x q x in/blocks], blkdiag2 [blocks x out/blocks x q] with
 * q = min(in, out) / blocks. */
ffnkit_status ffnkit_blockshuffle_create(int64_t in_features, int64_t out_features, int64_t blocks,
                                         const float* blkdiag1, const float* blkdiag2,
                                         const float* bias, ffnkit_layer** layer);
/* Fast feedforward: `trees` trees of depth `depth`; nodes = 2^(depth+1) - 1 per tree.
 * linear_in_weight [trees*nodes x in], linear_in_bias [trees*nodes],
 * linear_out_weight [out x trees*nodes]. */
ffnkit_status ffnkit_fff_create(int64_t in_features, int64_t out_features, int64_t trees,
                                int64_t depth, const float* linear_in_weight,
                                const float* linear_in_bias, const float* linear_out_weight,
                                ffnkit_layer** layer);
/* y = Linear(RMSNorm(x)) with the norm deferred past the product. gamma [in] or NULL,
 * weight [out x in], bias [out] or NULL. */
ffnkit_status ffnkit_rmsnorm_linear_create(int64_t in_features, int64_t out_features,
                                           const float* gamma, const float* weight,
                                           const float* bias, double eps, ffnkit_layer** layer);
/* y = Linear(LayerNorm(x)), deferred. gamma, beta [in] or NULL. */
ffnkit_status ffnkit_layernorm_linear_create(int64_t in_features, int64_t out_features,
                                             const float* gamma, const float* beta,
                                             const float* weight, const float* bias, double eps,
                                             ffnkit_layer** layer);

/* A memory-mapped safetensors file (validated at open), to load layers from by tensor name. */
typedef struct ffnkit_safetensors ffnkit_safetensors;
ffnkit_status ffnkit_safetensors_open(const char* path, ffnkit_safetensors** file);
void ffnkit_safetensors_close(ffnkit_safetensors* file); /* NULL is ignored */

/* Loads one layer, converting F32/F16/BF16/F64 tensors to float. kind: "dense_linear" (weight,
 * bias?), "lowrank" (lr1, lr2, bias?), "blockdense" (blkdiag, lr, bias?), "blockshuffle"
 * (blkdiag1, blkdiag2, bias?), "fff" (linear_in.weight, linear_in.bias, linear_out.weight; depth
 * is the tree depth), "rmsnorm_linear" / "layernorm_linear" (prefix: the norm's, with weight and
 * for LayerNorm bias; linear_prefix: the nn.Linear's). Tensor names are prefix + name; depth and
 * linear_prefix are ignored by the kinds that do not use them. */
ffnkit_status ffnkit_layer_load(const ffnkit_safetensors* file, const char* kind,
                                const char* prefix, const char* linear_prefix, int64_t depth,
                                ffnkit_layer** layer);

/* Destroys a handle; NULL is ignored. */
void ffnkit_layer_destroy(ffnkit_layer* layer);

/* The layer's family ("dense_linear", "lowrank", ...) and widths; 0 / "" for a NULL handle. */
const char* ffnkit_layer_kind(const ffnkit_layer* layer);
int64_t ffnkit_layer_in_features(const ffnkit_layer* layer);
int64_t ffnkit_layer_out_features(const ffnkit_layer* layer);

/* Bytes of scratch forward needs for `tokens` tokens at the current OpenMP thread count. */
size_t ffnkit_layer_workspace_size(const ffnkit_layer* layer, int64_t tokens);

/* y [tokens x out] = layer(x [tokens x in]). x_stride, y_stride: elements between rows (>= the
 * width). With a workspace of ffnkit_layer_workspace_size(tokens) bytes (8-byte aligned) the call
 * does not allocate; workspace = NULL allocates per call. */
ffnkit_status ffnkit_layer_forward(const ffnkit_layer* layer, const float* x, int64_t tokens,
                                   int64_t x_stride, float* y, int64_t y_stride, void* workspace,
                                   size_t workspace_bytes);

/* Attention's P V with the softmax fused (one pass, online max): y [queries x dim] =
 * softmax(s + mask) v per row, s [queries x keys], v [keys x dim], mask [queries x keys]
 * (additive, -INFINITY masks a key) or NULL. A fully masked row gives zeros. Strides in elements;
 * mask shares s_stride. */
ffnkit_status ffnkit_softmax_v(const float* s, int64_t queries, int64_t keys, int64_t s_stride,
                               const float* v, int64_t dim, int64_t v_stride, const float* mask,
                               float* y, int64_t y_stride);

#ifdef __cplusplus
}
#endif

#endif /* FFNKIT_FFNKIT_C_H_ */
