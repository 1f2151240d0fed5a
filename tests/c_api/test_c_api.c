/* The C API from C (compiled as C11): each layer family created from PyTorch-layout weights and
 * run on strided float buffers, checked against a naive double-precision loop written here (the
 * layer's own math, independent of ffnkit's kernels); then the error model. Exit status 0 on
 * success; every failed check prints where it failed. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffnkit/ffnkit_c.h"

static int failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

#define CHECK_OK(call)                                                              \
  do {                                                                              \
    ffnkit_status st_ = (call);                                                     \
    if (st_ != FFNKIT_OK) {                                                         \
      fprintf(stderr, "%s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call, (int)st_, \
              ffnkit_last_error());                                                 \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float uniform(void) { /* xorshift64*, in [-1, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 -
                 1.0);
}
static float* random_floats(size_t n, float scale) {
  float* p = (float*)malloc(n * sizeof(float));
  for (size_t i = 0; i < n; ++i) p[i] = scale * uniform();
  return p;
}

/* Runs `layer` on `tokens` rows of x (row stride in + 3) into y (row stride out + 2), with a
 * workspace, and compares with ref [tokens x out] (double): max |diff| / max(1, max |ref|). */
static double run_and_compare(const ffnkit_layer* layer, const float* x, int64_t tokens,
                              const double* ref) {
  const int64_t in = ffnkit_layer_in_features(layer), out = ffnkit_layer_out_features(layer);
  const int64_t xs = in + 3, ys = out + 2;
  float* xb = (float*)calloc((size_t)(tokens * xs), sizeof(float));
  float* yb = (float*)calloc((size_t)(tokens * ys), sizeof(float));
  for (int64_t t = 0; t < tokens; ++t) memcpy(xb + t * xs, x + t * in, (size_t)in * sizeof(float));
  for (int64_t t = 0; t < tokens; ++t) yb[t * ys + out] = yb[t * ys + out + 1] = 12345.0f;
  const size_t bytes = ffnkit_layer_workspace_size(layer, tokens);
  void* ws = bytes ? malloc(bytes + 8) : NULL;
  CHECK_OK(ffnkit_layer_forward(layer, xb, tokens, xs, yb, ys, ws, bytes));
  double err = 0, scale = 1;
  for (int64_t t = 0; t < tokens; ++t) {
    CHECK(yb[t * ys + out] == 12345.0f && yb[t * ys + out + 1] == 12345.0f); /* row padding */
    for (int64_t j = 0; j < out; ++j) {
      const double d = fabs((double)yb[t * ys + j] - ref[t * out + j]);
      if (d > err) err = d;
      if (fabs(ref[t * out + j]) > scale) scale = fabs(ref[t * out + j]);
    }
  }
  free(ws);
  free(xb);
  free(yb);
  return err / scale;
}

static double gelu_erf(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }

static void test_dense_and_lowrank(void) {
  const int64_t n = 37, m = 29, r = 5, tokens = 9;
  float* w = random_floats((size_t)(m * n), 0.3f);
  float* b = random_floats((size_t)m, 0.1f);
  float* v = random_floats((size_t)(r * n), 0.3f);
  float* u = random_floats((size_t)(m * r), 0.3f);
  float* x = random_floats((size_t)(tokens * n), 1.0f);
  double* ref = (double*)malloc((size_t)(tokens * m) * sizeof(double));
  ffnkit_layer* dense = NULL;
  ffnkit_layer* lowrank = NULL;
  CHECK_OK(ffnkit_dense_linear_create(n, m, w, b, &dense));
  CHECK(strcmp(ffnkit_layer_kind(dense), "dense_linear") == 0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < m; ++i) {
      double s = b[i];
      for (int64_t j = 0; j < n; ++j) s += (double)w[i * n + j] * x[t * n + j];
      ref[t * m + i] = s;
    }
  CHECK(run_and_compare(dense, x, tokens, ref) < 1e-5);
  /* LowRank: the dense materialization U V, computed here. */
  CHECK_OK(ffnkit_lowrank_create(n, m, r, v, u, b, &lowrank));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < m; ++i) {
      double s = b[i];
      for (int64_t j = 0; j < n; ++j) {
        double uv = 0;
        for (int64_t k = 0; k < r; ++k) uv += (double)u[i * r + k] * v[k * n + j];
        s += uv * x[t * n + j];
      }
      ref[t * m + i] = s;
    }
  CHECK(run_and_compare(lowrank, x, tokens, ref) < 1e-5);
  ffnkit_layer_destroy(dense);
  ffnkit_layer_destroy(lowrank);
  free(w), free(b), free(v), free(u), free(x), free(ref);
}

static void test_block_layers(void) {
  const int64_t n = 24, m = 16, blocks = 4, rank = 8, tokens = 5;
  const int64_t p = n / blocks, rb = rank / blocks, q = (n < m ? n : m) / blocks, s = m / blocks;
  float* blk = random_floats((size_t)(blocks * rb * p), 0.4f);
  float* lr = random_floats((size_t)(m * rank), 0.4f);
  float* bd1 = random_floats((size_t)(blocks * q * p), 0.4f);
  float* bd2 = random_floats((size_t)(blocks * s * q), 0.4f);
  float* x = random_floats((size_t)(tokens * n), 1.0f);
  double* ref = (double*)malloc((size_t)(tokens * m) * sizeof(double));
  double h[64];
  ffnkit_layer* bdense = NULL;
  ffnkit_layer* shuffle = NULL;
  /* BlockDense: h = blockdiag(V_b) x, y = lr h (no bias). */
  CHECK_OK(ffnkit_blockdense_create(n, m, blocks, rank, blk, lr, NULL, &bdense));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < rb; ++i) {
        double acc = 0;
        for (int64_t j = 0; j < p; ++j)
          acc += (double)blk[(b * rb + i) * p + j] * x[t * n + b * p + j];
        h[b * rb + i] = acc;
      }
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < rank; ++k) acc += (double)lr[i * rank + k] * h[k];
      ref[t * m + i] = acc;
    }
  }
  CHECK(run_and_compare(bdense, x, tokens, ref) < 1e-5);
  /* BlockShuffle (docs/math.md §3.5): stage 1 per block, stage-2 block b reads stage-1 outputs b,
   * b+B, ...; element i of stage-2 block b lands at output i B + b. */
  CHECK_OK(ffnkit_blockshuffle_create(n, m, blocks, bd1, bd2, NULL, &shuffle));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < q; ++i) {
        double acc = 0;
        for (int64_t j = 0; j < p; ++j)
          acc += (double)bd1[(b * q + i) * p + j] * x[t * n + b * p + j];
        h[b * q + i] = acc;
      }
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t i = 0; i < s; ++i) {
        double acc = 0;
        for (int64_t k = 0; k < q; ++k) acc += (double)bd2[(b * s + i) * q + k] * h[k * blocks + b];
        ref[t * m + i * blocks + b] = acc;
      }
  }
  CHECK(run_and_compare(shuffle, x, tokens, ref) < 1e-5);
  ffnkit_layer_destroy(bdense);
  ffnkit_layer_destroy(shuffle);
  free(blk), free(lr), free(bd1), free(bd2), free(x), free(ref);
}

static void test_fff(void) {
  const int64_t n = 20, m = 12, depth = 3, nodes = 15, tokens = 40;
  float* wi = random_floats((size_t)(nodes * n), 0.5f);
  float* bi = random_floats((size_t)nodes, 0.2f);
  float* wo = random_floats((size_t)(m * nodes), 0.5f);
  float* x = random_floats((size_t)(tokens * n), 1.0f);
  double* ref = (double*)calloc((size_t)(tokens * m), sizeof(double));
  ffnkit_layer* fff = NULL;
  CHECK_OK(ffnkit_fff_create(n, m, 1, depth, wi, bi, wo, &fff));
  for (int64_t t = 0; t < tokens; ++t) {
    int64_t node = 0;
    for (int64_t d = 0; d <= depth; ++d) {
      double lambda = bi[node];
      for (int64_t j = 0; j < n; ++j) lambda += (double)wi[node * n + j] * x[t * n + j];
      for (int64_t i = 0; i < m; ++i) ref[t * m + i] += gelu_erf(lambda) * wo[i * nodes + node];
      node = 2 * node + 1 + (lambda > 0);
    }
  }
  CHECK(run_and_compare(fff, x, tokens, ref) < 1e-5);
  ffnkit_layer_destroy(fff);
  free(wi), free(bi), free(wo), free(x), free(ref);
}

static void test_norm_layers(void) {
  const int64_t n = 33, m = 10, tokens = 6;
  float* g = random_floats((size_t)n, 1.0f);
  float* be = random_floats((size_t)n, 0.5f);
  float* w = random_floats((size_t)(m * n), 0.3f);
  float* b = random_floats((size_t)m, 0.1f);
  float* x = random_floats((size_t)(tokens * n), 2.0f);
  double* ref = (double*)malloc((size_t)(tokens * m) * sizeof(double));
  double xn[64];
  ffnkit_layer* rms = NULL;
  ffnkit_layer* ln = NULL;
  CHECK_OK(ffnkit_rmsnorm_linear_create(n, m, g, w, b, 1e-6, &rms));
  CHECK_OK(ffnkit_layernorm_linear_create(n, m, g, be, w, b, 1e-5, &ln));
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t t = 0; t < tokens; ++t) {
      double mean = 0, ms = 0;
      for (int64_t j = 0; j < n; ++j) mean += x[t * n + j];
      mean /= (double)n;
      for (int64_t j = 0; j < n; ++j) {
        const double c = pass ? x[t * n + j] - mean : x[t * n + j];
        ms += c * c;
      }
      const double r = 1.0 / sqrt(ms / (double)n + (pass ? 1e-5 : 1e-6));
      for (int64_t j = 0; j < n; ++j)
        xn[j] = (pass ? (x[t * n + j] - mean) * r * g[j] + be[j] : x[t * n + j] * r * g[j]);
      for (int64_t i = 0; i < m; ++i) {
        double s = b[i];
        for (int64_t j = 0; j < n; ++j) s += (double)w[i * n + j] * xn[j];
        ref[t * m + i] = s;
      }
    }
    CHECK(run_and_compare(pass ? ln : rms, x, tokens, ref) < 1e-5);
  }
  ffnkit_layer_destroy(rms);
  ffnkit_layer_destroy(ln);
  free(g), free(be), free(w), free(b), free(x), free(ref);
}

static void test_softmax_v(void) {
  const int64_t q = 3, keys = 50, dim = 8;
  float* s = random_floats((size_t)(q * keys), 4.0f);
  float* v = random_floats((size_t)(keys * dim), 1.0f);
  float* mask = (float*)calloc((size_t)(q * keys), sizeof(float));
  float y[3 * 8];
  for (int64_t k = 0; k < keys; ++k) mask[2 * keys + k] = -INFINITY; /* row 2 fully masked */
  for (int64_t k = 0; k < keys; k += 3) mask[k] = -INFINITY;         /* row 0 partly */
  CHECK_OK(ffnkit_softmax_v(s, q, keys, keys, v, dim, dim, mask, y, dim));
  for (int64_t r = 0; r < q; ++r) {
    double mx = -INFINITY, sum = 0;
    for (int64_t k = 0; k < keys; ++k)
      if (s[r * keys + k] + mask[r * keys + k] > mx) mx = s[r * keys + k] + mask[r * keys + k];
    for (int64_t c = 0; c < dim; ++c) {
      double acc = 0;
      sum = 0;
      for (int64_t k = 0; k < keys; ++k) {
        const double e = isinf(mx) ? 0.0 : exp(s[r * keys + k] + mask[r * keys + k] - mx);
        sum += e;
        acc += e * v[k * dim + c];
      }
      const double want = sum > 0 ? acc / sum : 0.0;
      CHECK(fabs(y[r * dim + c] - want) < 1e-5);
    }
  }
  free(s), free(v), free(mask);
}

static void test_errors(void) {
  float w[12] = {0};
  float x[8] = {0}, y[8];
  ffnkit_layer* layer = NULL;
  /* A rank larger than the widths, named. */
  CHECK(ffnkit_lowrank_create(4, 3, 9, w, w, NULL, &layer) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(layer == NULL);
  CHECK(strstr(ffnkit_last_error(), "rank") != NULL);
  /* Block counts that do not divide. */
  CHECK(ffnkit_blockdense_create(6, 4, 4, 4, w, w, NULL, &layer) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "blocks") != NULL);
  /* Null weights, NaN weights. */
  CHECK(ffnkit_dense_linear_create(2, 2, NULL, NULL, &layer) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "weight") != NULL);
  w[3] = NAN;
  CHECK(ffnkit_dense_linear_create(2, 2, w, NULL, &layer) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "not finite") != NULL);
  w[3] = 0;
  CHECK_OK(ffnkit_dense_linear_create(4, 2, w, NULL, &layer));
  /* Zero tokens, a short stride, a null x, a null handle, a too-small workspace. */
  CHECK(ffnkit_layer_forward(layer, x, 0, 4, y, 2, NULL, 0) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "tokens") != NULL);
  CHECK(ffnkit_layer_forward(layer, x, 2, 3, y, 2, NULL, 0) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "stride") != NULL);
  CHECK(ffnkit_layer_forward(layer, NULL, 2, 4, y, 2, NULL, 0) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "null") != NULL);
  CHECK(ffnkit_layer_forward(NULL, x, 2, 4, y, 2, NULL, 0) == FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(ffnkit_layer_forward(layer, x, 2, 4, y, 2, NULL, 0) == FFNKIT_OK);
  ffnkit_layer_destroy(layer);
  {
    ffnkit_layer* f = NULL;
    float wi[7 * 4] = {0}, bi[7] = {0}, wo[3 * 7] = {0};
    char small[8];
    CHECK_OK(ffnkit_fff_create(4, 3, 1, 2, wi, bi, wo, &f));
    CHECK(ffnkit_layer_forward(f, x, 2, 4, y, 3, small, sizeof small) ==
          FFNKIT_ERROR_INVALID_ARGUMENT);
    CHECK(strstr(ffnkit_last_error(), "workspace") != NULL);
    ffnkit_layer_destroy(f);
  }
  ffnkit_layer_destroy(NULL);
  CHECK(ffnkit_layer_in_features(NULL) == 0);
}

/* A safetensors file written by hand (8-byte little-endian header length, JSON header padded
 * with spaces to 8 bytes, data), so the loader is checked against the format, not its own writer.
 */
static void test_safetensors(void) {
  const char* path = "c_api_test.safetensors";
  const float w[6] = {1, 2, 3, -1, 0, 4}, b[2] = {0.5f, -0.5f}, x[3] = {1, -1, 2};
  char header[160];
  int len = snprintf(header, sizeof header,
                     "{\"mlp.fc.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                     "\"data_offsets\":[0,24]},\"mlp.fc.bias\":{\"dtype\":\"F32\","
                     "\"shape\":[2],\"data_offsets\":[24,32]}}");
  while (len % 8) header[len++] = ' ';
  unsigned char size[8];
  for (int i = 0; i < 8; ++i) size[i] = (unsigned char)(((uint64_t)len >> (8 * i)) & 0xFF);
  FILE* f = fopen(path, "wb");
  CHECK(f != NULL);
  if (!f) return;
  fwrite(size, 1, 8, f);
  fwrite(header, 1, (size_t)len, f);
  fwrite(w, sizeof(float), 6, f); /* little-endian floats on the machines we build for */
  fwrite(b, sizeof(float), 2, f);
  fclose(f);

  ffnkit_safetensors* file = NULL;
  ffnkit_layer* layer = NULL;
  float y[2];
  CHECK_OK(ffnkit_safetensors_open(path, &file));
  CHECK_OK(ffnkit_layer_load(file, "dense_linear", "mlp.fc.", NULL, 0, &layer));
  CHECK(ffnkit_layer_in_features(layer) == 3 && ffnkit_layer_out_features(layer) == 2);
  CHECK_OK(ffnkit_layer_forward(layer, x, 1, 3, y, 2, NULL, 0));
  CHECK(fabsf(y[0] - 5.5f) < 1e-6f && fabsf(y[1] - 6.5f) < 1e-6f);
  ffnkit_layer_destroy(layer);
  layer = NULL;
  /* A missing tensor and an unknown kind are named. */
  CHECK(ffnkit_layer_load(file, "lowrank", "mlp.fc.", NULL, 0, &layer) ==
        FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "mlp.fc.lr1") != NULL);
  CHECK(layer == NULL);
  CHECK(ffnkit_layer_load(file, "conv", "mlp.fc.", NULL, 0, &layer) ==
        FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "kind = 'conv'") != NULL);
  ffnkit_safetensors_close(file);
  remove(path);
  /* A file that is not there. */
  CHECK(ffnkit_safetensors_open("no/such/file.safetensors", &file) ==
        FFNKIT_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(ffnkit_last_error(), "no/such/file.safetensors") != NULL);
  CHECK(file == NULL);
}

int main(void) {
  printf("ffnkit %s C API\n", ffnkit_version());
  test_dense_and_lowrank();
  test_block_layers();
  test_fff();
  test_norm_layers();
  test_softmax_v();
  test_errors();
  test_safetensors();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all checks passed\n");
  return 0;
}
