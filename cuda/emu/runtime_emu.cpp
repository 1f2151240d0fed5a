// The emulated device runtime (ffnkit::cuda_emu, docs/cuda.md): device memory is host memory
// tracked in a registry of live allocations, streams and cuBLAS handles are tokens, everything is
// synchronous, and the GEMMs are a reference implementation of cublasGemmEx /
// cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F. Deliberately independent of Eigen: the tests
// use Eigen as the oracle.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "ffnkit/cuda/emu/runtime.hpp"

namespace ffnkit {
namespace cuda_emu {

namespace {

// cudaMalloc's alignment guarantee, so code that relies on it (vector loads) behaves as on a GPU.
constexpr std::size_t kDeviceAlignment = 256;

// Live device allocations: start address -> requested size in bytes.
struct Registry {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> live;
};

Registry& registry() {
  static Registry* r = new Registry;  // leaked: buffers in static objects may outlive main
  return *r;
}

std::string hex(std::uintptr_t p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(p));
  return buf;
}

// Throws unless [begin, end) lies inside one live allocation; `what` names the range in the error.
void check_device_range(const char* where, const std::string& what, std::uintptr_t begin,
                        std::uintptr_t end) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.live.upper_bound(begin);
  std::string detail = "no live allocation starts at or before it";
  if (it != r.live.begin()) {
    --it;
    const std::uintptr_t alloc_end = it->first + it->second;
    if (end <= alloc_end && begin < alloc_end) return;
    detail = make_message("the nearest allocation below it is [", hex(it->first), ", ",
                          hex(alloc_end), ") (", it->second, " bytes)");
  }
  fail(where, what, " device range [", hex(begin), ", ", hex(end), ") (", end - begin,
       " bytes) is not inside a live device allocation; ", detail);
}

// Throws if a pointer the caller says is host memory lies inside a live device allocation: on a GPU
// that mix-up is an illegal access, while here device memory is host memory and it would work.
void check_host_pointer(const char* where, const char* what, const void* p) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  auto it = r.live.upper_bound(addr);
  if (it == r.live.begin()) return;
  --it;
  if (addr < it->first + it->second)
    fail(where, what, " = ", hex(addr), " is device memory, but the copy kind says host memory");
}

void check_device_bytes(const char* where, const char* what, const void* p, std::size_t bytes) {
  if (p == nullptr) fail(where, what, " is a null pointer (bytes = ", bytes, ")");
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  check_device_range(where, what, begin, begin + bytes);
}

struct StreamToken {
  int unused = 0;
};

struct EventToken {
  int unused = 0;
};

thread_local std::vector<TraceEntry>* active_trace = nullptr;

struct BlasState {
  void* stream = nullptr;  // the emulation runs everything synchronously; traces name the stream
};

const char* to_string(Op op) { return op == Op::kN ? "N" : "T"; }

const char* to_string(DataType t) {
  switch (t) {
    case DataType::kF32:
      return "F32";
    case DataType::kF16:
      return "F16";
    case DataType::kBF16:
      return "BF16";
  }
  return "unknown";
}

std::size_t element_size(DataType t) { return t == DataType::kF32 ? 4 : 2; }

void check_op(const char* where, const char* name, Op op) {
  if (op != Op::kN && op != Op::kT) fail(where, name, " = ", static_cast<int>(op), " is not an Op");
}

void check_type(const char* where, const char* name, DataType t) {
  if (t != DataType::kF32 && t != DataType::kF16 && t != DataType::kBF16)
    fail(where, name, " = ", static_cast<int>(t), " is not a DataType");
}

// One matrix argument of a GEMM as cuBLAS takes it: pointer, element type, leading dimension and
// (for batches) the distance between consecutive matrices in elements.
template <class Ptr>
struct Operand {
  Ptr data;
  DataType type;
  int ld;
  long long stride;
};

struct GemmArgs {
  Op op_a, op_b;
  int m, n, k;
  float alpha, beta;
  Operand<const void*> a, b;
  Operand<void*> c;
  int batch;
};

// Elements from the first to one past the last element of a column-major rows x cols matrix.
long long extent(int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<long long>(cols - 1) * ld + rows;
}

// Checks that all `batch` matrices (each `elems` elements from base + i * stride) lie in one live
// allocation. Overflowing spans are reported as such instead of wrapping around.
void check_matrix_span(const char* where, const char* name, const void* base, DataType type,
                       long long elems, long long stride, int batch) {
  if (elems == 0 || batch == 0) return;
  long long last = 0;
  long long lo = 0, hi = 0;
  const long long es = static_cast<long long>(element_size(type));
  if (__builtin_mul_overflow(static_cast<long long>(batch - 1), stride, &last) ||
      __builtin_add_overflow(std::max(0LL, last), elems, &hi) ||
      __builtin_mul_overflow(hi, es, &hi) || __builtin_mul_overflow(std::min(0LL, last), es, &lo))
    fail(where, name, ": the span of ", batch, " matrices with stride ", stride,
         " overflows the address space");
  const auto p = reinterpret_cast<std::uintptr_t>(base);
  check_device_range(where, name, p + static_cast<std::uintptr_t>(lo),
                     p + static_cast<std::uintptr_t>(hi));
}

// cuBLAS's CUBLAS_STATUS_INVALID_VALUE / NOT_SUPPORTED conditions, plus device-range checks that a
// GPU would only report as an illegal address (or not at all).
void validate(const char* where, bool batched, const GemmArgs& g) {
  check_op(where, "op_a", g.op_a);
  check_op(where, "op_b", g.op_b);
  check_type(where, "type_a", g.a.type);
  check_type(where, "type_b", g.b.type);
  check_type(where, "type_c", g.c.type);
  if (g.m < 0) fail(where, "m = ", g.m, " is negative");
  if (g.n < 0) fail(where, "n = ", g.n, " is negative");
  if (g.k < 0) fail(where, "k = ", g.k, " is negative");
  if (batched && g.batch < 0) fail(where, "batch = ", g.batch, " is negative");
  // CUBLAS_COMPUTE_32F accepts A and B of one type, with C of that type or F32.
  if (g.a.type != g.b.type || (g.c.type != g.a.type && g.c.type != DataType::kF32))
    fail(where, "type_a = ", to_string(g.a.type), ", type_b = ", to_string(g.b.type),
         ", type_c = ", to_string(g.c.type),
         " is not a combination cuBLAS supports with CUBLAS_COMPUTE_32F (A and B share a type; C "
         "is that type or F32)");

  const bool a_n = g.op_a == Op::kN;
  const int rows_a = a_n ? g.m : g.k;
  if (g.a.ld < std::max(1, rows_a))
    fail(where, "lda = ", g.a.ld, " is smaller than ", rows_a == 0 ? "1, the minimum" : "",
         rows_a == 0 ? "" : "the rows of A as stored", " (op_a = ", to_string(g.op_a),
         a_n ? ", m = " : ", k = ", rows_a, ")");
  const bool b_n = g.op_b == Op::kN;
  const int rows_b = b_n ? g.k : g.n;
  if (g.b.ld < std::max(1, rows_b))
    fail(where, "ldb = ", g.b.ld, " is smaller than ", rows_b == 0 ? "1, the minimum" : "",
         rows_b == 0 ? "" : "the rows of B as stored", " (op_b = ", to_string(g.op_b),
         b_n ? ", k = " : ", n = ", rows_b, ")");
  if (g.c.ld < std::max(1, g.m))
    fail(where, "ldc = ", g.c.ld, " is smaller than ",
         g.m == 0 ? "1, the minimum" : "the rows of C", " (m = ", g.m, ")");

  const int batch = batched ? g.batch : 1;
  if (g.m == 0 || g.n == 0 || batch == 0) return;  // nothing is read or written
  if (g.c.data == nullptr) fail(where, "c is a null pointer (m = ", g.m, ", n = ", g.n, ")");
  check_matrix_span(where, "C", g.c.data, g.c.type, extent(g.m, g.n, g.c.ld), g.c.stride, batch);
  if (g.k == 0) return;  // A and B are not read
  if (g.a.data == nullptr) fail(where, "a is a null pointer (m = ", g.m, ", k = ", g.k, ")");
  if (g.b.data == nullptr) fail(where, "b is a null pointer (k = ", g.k, ", n = ", g.n, ")");
  check_matrix_span(where, "A", g.a.data, g.a.type, extent(rows_a, a_n ? g.k : g.m, g.a.ld),
                    g.a.stride, batch);
  check_matrix_span(where, "B", g.b.data, g.b.type, extent(rows_b, b_n ? g.n : g.k, g.b.ld),
                    g.b.stride, batch);
}

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
T from_float(float x);
template <>
inline float from_float<float>(float x) {
  return x;
}
template <>
inline __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Copies the column-major rows x cols matrix op(X) into dst (leading dimension rows) as floats,
// reading X as stored with leading dimension ld (X is rows x cols for kN, cols x rows for kT).
template <class T>
void pack(float* dst, const T* x, Op op, int rows, int cols, long long ld) {
  for (long long j = 0; j < cols; ++j) {
    float* out = dst + j * rows;
    if (op == Op::kN) {
      const T* col = x + j * ld;
      for (long long i = 0; i < rows; ++i) out[i] = to_float(col[i]);
    } else {
      for (long long i = 0; i < rows; ++i) out[i] = to_float(x[j + i * ld]);
    }
  }
}

void pack_any(float* dst, const void* x, DataType type, Op op, int rows, int cols, long long ld) {
  switch (type) {
    case DataType::kF32:
      return pack(dst, static_cast<const float*>(x), op, rows, cols, ld);
    case DataType::kF16:
      return pack(dst, static_cast<const __half*>(x), op, rows, cols, ld);
    case DataType::kBF16:
      return pack(dst, static_cast<const __nv_bfloat16*>(x), op, rows, cols, ld);
  }
}

// Cache blocking of the product: a kRowBlock x kColBlock tile of accumulators (8 KiB) stays in L1
// while a column panel of op(A) streams past it once per kColBlock columns of C.
constexpr int kRowBlock = 256;
constexpr int kColBlock = 8;

// C = alpha * Ap * Bp + beta * C for packed float Ap (m x k) and Bp (k x n). Every element is
// summed over l = 0..k-1 in order by one thread, so the result does not depend on the thread count.
template <class TC>
void multiply(const float* ap, const float* bp, int m, int n, int k, float alpha, float beta, TC* c,
              long long ldc) {
  const int col_blocks = (n + kColBlock - 1) / kColBlock;
#if defined(_OPENMP)
  // Small products are not worth waking the thread pool for.
  const bool parallel = static_cast<long long>(m) * n * k >= (1LL << 18);
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (int jb = 0; jb < col_blocks; ++jb) {
    alignas(64) float acc[kColBlock * kRowBlock];
    const int j0 = jb * kColBlock;
    const int nb = std::min(kColBlock, n - j0);
    for (int i0 = 0; i0 < m; i0 += kRowBlock) {
      const int mb = std::min(kRowBlock, m - i0);
      std::fill(acc, acc + kColBlock * kRowBlock, 0.0f);
      for (long long l = 0; l < k; ++l) {
        const float* __restrict__ a = ap + l * m + i0;
        for (int jj = 0; jj < nb; ++jj) {
          const float bv = bp[(j0 + jj) * static_cast<long long>(k) + l];
          float* __restrict__ out = acc + jj * kRowBlock;
          for (int i = 0; i < mb; ++i) out[i] += a[i] * bv;
        }
      }
      for (int jj = 0; jj < nb; ++jj) {
        TC* col = c + (j0 + jj) * ldc + i0;
        const float* in = acc + jj * kRowBlock;
        // beta == 0 must not read C: it may hold NaN or garbage (cuBLAS semantics).
        if (beta == 0.0f) {
          for (int i = 0; i < mb; ++i) col[i] = from_float<TC>(alpha * in[i]);
        } else {
          for (int i = 0; i < mb; ++i)
            col[i] = from_float<TC>(alpha * in[i] + beta * to_float(col[i]));
        }
      }
    }
  }
}

void multiply_any(const float* ap, const float* bp, int m, int n, int k, float alpha, float beta,
                  void* c, DataType type_c, long long ldc) {
  switch (type_c) {
    case DataType::kF32:
      return multiply(ap, bp, m, n, k, alpha, beta, static_cast<float*>(c), ldc);
    case DataType::kF16:
      return multiply(ap, bp, m, n, k, alpha, beta, static_cast<__half*>(c), ldc);
    case DataType::kBF16:
      return multiply(ap, bp, m, n, k, alpha, beta, static_cast<__nv_bfloat16*>(c), ldc);
  }
}

void run_gemm(const char* where, bool batched, const GemmArgs& g) {
  validate(where, batched, g);
  const int batch = batched ? g.batch : 1;
  if (g.m == 0 || g.n == 0 || batch == 0) return;
  std::vector<float> ap(static_cast<std::size_t>(g.m) * g.k);
  std::vector<float> bp(static_cast<std::size_t>(g.k) * g.n);
  const auto* a = static_cast<const unsigned char*>(g.a.data);
  const auto* b = static_cast<const unsigned char*>(g.b.data);
  auto* c = static_cast<unsigned char*>(g.c.data);
  const long long es_a = static_cast<long long>(element_size(g.a.type));
  const long long es_b = static_cast<long long>(element_size(g.b.type));
  const long long es_c = static_cast<long long>(element_size(g.c.type));
  for (int p = 0; p < batch; ++p) {
    if (g.k > 0) {
      pack_any(ap.data(), a + p * g.a.stride * es_a, g.a.type, g.op_a, g.m, g.k, g.a.ld);
      pack_any(bp.data(), b + p * g.b.stride * es_b, g.b.type, g.op_b, g.k, g.n, g.b.ld);
    }
    multiply_any(ap.data(), bp.data(), g.m, g.n, g.k, g.alpha, g.beta, c + p * g.c.stride * es_c,
                 g.c.type, g.c.ld);
  }
}

}  // namespace

bool device_available(std::string* /*why*/) { return true; }

void* device_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  // aligned_alloc wants a multiple of the alignment; the registry keeps the requested size so that
  // range checks are exact.
  const std::size_t rounded = (bytes + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
  if (rounded < bytes) fail("device_alloc", "bytes = ", bytes, " is too large");
  void* p = std::aligned_alloc(kDeviceAlignment, rounded);
  if (p == nullptr) fail("device_alloc", "bytes = ", bytes, ": out of host memory");
  // cudaMalloc does not zero memory; 0xFF bytes make reads of unwritten data show up as NaN / -1.
  std::memset(p, 0xFF, rounded);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.live.emplace(reinterpret_cast<std::uintptr_t>(p), bytes);
  return p;
}

void device_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.live.erase(reinterpret_cast<std::uintptr_t>(ptr)) == 0) {
      // Cannot throw (noexcept); a double free or a foreign pointer is a bug worth stopping for.
      std::fprintf(stderr, "ffnkit::cuda_emu::device_free: %p is not a live device allocation\n",
                   ptr);
      std::abort();
    }
  }
  std::free(ptr);
}

Stream Stream::create() {
  Stream out;
  out.handle_ = new StreamToken;
  out.owned_ = true;
  return out;
}

Stream::~Stream() {
  if (owned_) delete static_cast<StreamToken*>(handle_);
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (owned_) delete static_cast<StreamToken*>(handle_);
    handle_ = other.handle_;
    owned_ = other.owned_;
    other.handle_ = nullptr;
    other.owned_ = false;
  }
  return *this;
}

void Stream::synchronize() const {}  // every emulated operation completes before it returns

const char* to_string(TraceOp op) {
  switch (op) {
    case TraceOp::kLaunch:
      return "launch";
    case TraceOp::kGemm:
      return "gemm";
    case TraceOp::kCopy:
      return "copy";
    case TraceOp::kFill:
      return "fill";
    case TraceOp::kEventRecord:
      return "event_record";
    case TraceOp::kWaitEvent:
      return "wait_event";
  }
  return "unknown";
}

ScopedTrace::ScopedTrace() : saved_(active_trace) { active_trace = &entries_; }

ScopedTrace::~ScopedTrace() { active_trace = saved_; }

void trace(TraceOp op, const void* stream, const void* event) {
  if (active_trace) active_trace->push_back({op, stream, event});
}

Event Event::create() {
  Event out;
  out.handle_ = new EventToken;
  return out;
}

Event::~Event() { delete static_cast<EventToken*>(handle_); }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    delete static_cast<EventToken*>(handle_);
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

// Work is complete when issued, so recording and waiting only check the event and leave a trace.
void Event::record(const Stream& stream) {
  if (handle_ == nullptr)
    fail("Event::record", "the event is empty (default-constructed or moved)");
  trace(TraceOp::kEventRecord, stream.handle(), handle_);
}

void Event::synchronize() const {
  if (handle_ == nullptr)
    fail("Event::synchronize", "the event is empty (default-constructed or moved)");
}

void wait_event(const Stream& stream, const Event& event) {
  if (event.handle() == nullptr)
    fail("wait_event", "the event is empty (default-constructed or moved)");
  trace(TraceOp::kWaitEvent, stream.handle(), event.handle());
}

void copy(void* dst, const void* src, std::size_t bytes, CopyKind kind, const Stream& stream) {
  if (bytes == 0) return;
  trace(TraceOp::kCopy, stream.handle());
  const bool dst_device = kind != CopyKind::kDeviceToHost;
  const bool src_device = kind != CopyKind::kHostToDevice;
  if (kind != CopyKind::kHostToDevice && kind != CopyKind::kDeviceToHost &&
      kind != CopyKind::kDeviceToDevice)
    fail("copy", "kind = ", static_cast<int>(kind), " is not a CopyKind");
  if (dst == nullptr) fail("copy", "dst is a null pointer (bytes = ", bytes, ")");
  if (src == nullptr) fail("copy", "src is a null pointer (bytes = ", bytes, ")");
  if (dst_device) check_device_bytes("copy", "dst", dst, bytes);
  if (src_device) check_device_bytes("copy", "src", src, bytes);
  if (!dst_device) check_host_pointer("copy", "dst", dst);
  if (!src_device) check_host_pointer("copy", "src", src);
  std::memmove(dst, src, bytes);
}

void fill_zero(void* dst, std::size_t bytes, const Stream& stream) {
  if (bytes == 0) return;
  trace(TraceOp::kFill, stream.handle());
  check_device_bytes("fill_zero", "dst", dst, bytes);
  std::memset(dst, 0, bytes);
}

BlasHandle::BlasHandle() : handle_(new BlasState) {}

BlasHandle::~BlasHandle() { delete static_cast<BlasState*>(handle_); }

void BlasHandle::set_stream(const Stream& stream) {
  static_cast<BlasState*>(handle_)->stream = stream.handle();
}

void gemm(BlasHandle& blas, Op op_a, Op op_b, int m, int n, int k, float alpha, const void* a,
          DataType type_a, int lda, const void* b, DataType type_b, int ldb, float beta, void* c,
          DataType type_c, int ldc) {
  trace(TraceOp::kGemm, static_cast<BlasState*>(blas.handle())->stream);
  run_gemm("gemm", /*batched=*/false,
           {op_a,
            op_b,
            m,
            n,
            k,
            alpha,
            beta,
            {a, type_a, lda, 0},
            {b, type_b, ldb, 0},
            {c, type_c, ldc, 0},
            1});
}

void gemm_strided_batched(BlasHandle& blas, Op op_a, Op op_b, int m, int n, int k, float alpha,
                          const void* a, DataType type_a, int lda, long long stride_a,
                          const void* b, DataType type_b, int ldb, long long stride_b, float beta,
                          void* c, DataType type_c, int ldc, long long stride_c, int batch) {
  trace(TraceOp::kGemm, static_cast<BlasState*>(blas.handle())->stream);
  run_gemm("gemm_strided_batched", /*batched=*/true,
           {op_a,
            op_b,
            m,
            n,
            k,
            alpha,
            beta,
            {a, type_a, lda, stride_a},
            {b, type_b, ldb, stride_b},
            {c, type_c, ldc, stride_c},
            batch});
}

}  // namespace cuda_emu
}  // namespace ffnkit
