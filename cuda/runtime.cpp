// The real device runtime (ffnkit::cuda) over the CUDA runtime API and cuBLAS. Host-compiled: no
// kernels here.
#include "ffnkit/cuda/runtime.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <library_types.h>

namespace ffnkit {
namespace cuda {

namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear it, or the next launch check would report this failure again
    fail(call, "CUDA error ", static_cast<int>(status), " (", cudaGetErrorName(status),
         "): ", cudaGetErrorString(status));
  }
}

void check_blas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail(call, "cuBLAS error ", static_cast<int>(status), " (", cublasGetStatusName(status),
         "): ", cublasGetStatusString(status));
}

cudaStream_t raw(const Stream& s) { return static_cast<cudaStream_t>(s.handle()); }

cudaDataType_t to_cuda(DataType t) {
  switch (t) {
    case DataType::kF32:
      return CUDA_R_32F;
    case DataType::kF16:
      return CUDA_R_16F;
    case DataType::kBF16:
      return CUDA_R_16BF;
  }
  fail("gemm", "data type ", static_cast<int>(t), " is unknown");
}

cublasOperation_t to_cuda(Op op) { return op == Op::kN ? CUBLAS_OP_N : CUBLAS_OP_T; }

}  // namespace

bool device_available(std::string* why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // Without a driver this is cudaErrorInsufficientDriver ("CUDA driver version is
    // insufficient for CUDA runtime version"): it means no usable device, not a bug.
    if (why) *why = make_message("cudaGetDeviceCount: ", cudaGetErrorString(status));
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return false;
  }
  if (count == 0) {
    if (why) *why = "cudaGetDeviceCount found 0 devices";
    return false;
  }
  // The kernels are built for sm_80 and sm_90 (+ PTX); an older device has no image for them.
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = "could not query the current device's compute capability";
    return false;
  }
  if (major < 8) {
    if (why)
      *why = make_message("device ", device, " has compute capability ", major, ".", minor,
                          "; ffnkit's kernels need 8.0 or newer (FFNKIT_CUDA_ARCHITECTURES)");
    return false;
  }
  return true;
}

void* device_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    fail("cudaMalloc", "bytes = ", bytes, ": ", cudaGetErrorString(status));
  }
  return p;
}

void device_free(void* ptr) noexcept {
  if (ptr) cudaFree(ptr);
}

Stream Stream::create() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  Stream out;
  out.handle_ = s;
  out.owned_ = true;
  return out;
}

Stream::~Stream() {
  if (owned_ && handle_) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (owned_ && handle_) cudaStreamDestroy(static_cast<cudaStream_t>(handle_));
    handle_ = other.handle_;
    owned_ = other.owned_;
    other.handle_ = nullptr;
    other.owned_ = false;
  }
  return *this;
}

void Stream::synchronize() const {
  check(cudaStreamSynchronize(raw(*this)), "cudaStreamSynchronize");
}

Event Event::create() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  Event out;
  out.handle_ = e;
  return out;
}

Event::~Event() {
  if (handle_) cudaEventDestroy(static_cast<cudaEvent_t>(handle_));
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (handle_) cudaEventDestroy(static_cast<cudaEvent_t>(handle_));
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

void Event::record(const Stream& stream) {
  if (handle_ == nullptr)
    fail("Event::record", "the event is empty (default-constructed or moved)");
  check(cudaEventRecord(static_cast<cudaEvent_t>(handle_), raw(stream)), "cudaEventRecord");
}

void Event::synchronize() const {
  if (handle_ == nullptr)
    fail("Event::synchronize", "the event is empty (default-constructed or moved)");
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(handle_)), "cudaEventSynchronize");
}

void wait_event(const Stream& stream, const Event& event) {
  if (event.handle() == nullptr)
    fail("wait_event", "the event is empty (default-constructed or moved)");
  check(cudaStreamWaitEvent(raw(stream), static_cast<cudaEvent_t>(event.handle()), 0),
        "cudaStreamWaitEvent");
}

void copy(void* dst, const void* src, std::size_t bytes, CopyKind kind, const Stream& stream) {
  if (bytes == 0) return;
  const cudaMemcpyKind k = kind == CopyKind::kHostToDevice   ? cudaMemcpyHostToDevice
                           : kind == CopyKind::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                             : cudaMemcpyDeviceToDevice;
  check(cudaMemcpyAsync(dst, src, bytes, k, raw(stream)), "cudaMemcpyAsync");
  if (kind != CopyKind::kDeviceToDevice) stream.synchronize();
}

void fill_zero(void* dst, std::size_t bytes, const Stream& stream) {
  if (bytes == 0) return;
  check(cudaMemsetAsync(dst, 0, bytes, raw(stream)), "cudaMemsetAsync");
}

BlasHandle::BlasHandle() {
  cublasHandle_t h = nullptr;
  check_blas(cublasCreate(&h), "cublasCreate");
  handle_ = h;
}

BlasHandle::~BlasHandle() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

void BlasHandle::set_stream(const Stream& stream) {
  check_blas(cublasSetStream(static_cast<cublasHandle_t>(handle_), raw(stream)), "cublasSetStream");
}

void gemm(BlasHandle& blas, Op op_a, Op op_b, int m, int n, int k, float alpha, const void* a,
          DataType type_a, int lda, const void* b, DataType type_b, int ldb, float beta, void* c,
          DataType type_c, int ldc) {
  check_blas(cublasGemmEx(static_cast<cublasHandle_t>(blas.handle()), to_cuda(op_a), to_cuda(op_b),
                          m, n, k, &alpha, a, to_cuda(type_a), lda, b, to_cuda(type_b), ldb, &beta,
                          c, to_cuda(type_c), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

void gemm_strided_batched(BlasHandle& blas, Op op_a, Op op_b, int m, int n, int k, float alpha,
                          const void* a, DataType type_a, int lda, long long stride_a,
                          const void* b, DataType type_b, int ldb, long long stride_b, float beta,
                          void* c, DataType type_c, int ldc, long long stride_c, int batch) {
  check_blas(
      cublasGemmStridedBatchedEx(static_cast<cublasHandle_t>(blas.handle()), to_cuda(op_a),
                                 to_cuda(op_b), m, n, k, &alpha, a, to_cuda(type_a), lda, stride_a,
                                 b, to_cuda(type_b), ldb, stride_b, &beta, c, to_cuda(type_c), ldc,
                                 stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace cuda
}  // namespace ffnkit
