// Kernels for the CudaEmu tests, written as ordinary CUDA: they compile with nvcc (sm_80) and, with
// -DFFNKIT_CUDA_EMU, with the host compiler against the emulator. Include from one TU only.
#pragma once

#include "ffnkit/cuda/device_compat.cuh"

namespace ffnkit::emu_test {

constexpr unsigned kFullMask = 0xffffffffu;

// Sum of blockDim.x consecutive elements per block (zero past n): a warp xor-shuffle reduction,
// warp partials through static shared memory, then a reduction by the first warp.
__global__ void BlockSumKernel(const float* in, int n, float* block_sums) {
  __shared__ float warp_sums[32];
  const int tid = static_cast<int>(threadIdx.x);
  const int i = static_cast<int>(blockIdx.x * blockDim.x) + tid;
  float v = i < n ? in[i] : 0.0f;
  for (int offset = warpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  const int lane = tid % warpSize;
  const int warp = tid / warpSize;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = static_cast<int>(blockDim.x) / warpSize;
    float s = lane < num_warps ? warp_sums[lane] : 0.0f;
    for (int offset = warpSize / 2; offset > 0; offset /= 2)
      s += __shfl_xor_sync(kFullMask, s, offset);
    if (lane == 0) block_sums[blockIdx.x] = s;
  }
}

// Reverses each block's slice through dynamic shared memory (smem = blockDim.x * sizeof(T)).
template <class T>
__global__ void ReverseKernel(const T* in, T* out) {
  FFNKIT_DYNAMIC_SHARED(T, buf);
  const unsigned t = threadIdx.x;
  const unsigned base = blockIdx.x * blockDim.x;
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[blockDim.x - 1 - t];
}

// Every shuffle flavour on one value per thread; src_lane is per thread.
template <class T>
__global__ void ShuffleKernel(const T* in, const int* src_lane, unsigned delta, int lane_mask,
                              T* out_idx, T* out_up, T* out_down, T* out_xor) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const T v = in[i];
  out_idx[i] = __shfl_sync(kFullMask, v, src_lane[i]);
  out_up[i] = __shfl_up_sync(kFullMask, v, delta);
  out_down[i] = __shfl_down_sync(kFullMask, v, delta);
  out_xor[i] = __shfl_xor_sync(kFullMask, v, lane_mask);
}

__global__ void VoteKernel(const int* pred, unsigned* ballot, int* any, int* all) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[i];
  ballot[i] = __ballot_sync(kFullMask, p);
  any[i] = __any_sync(kFullMask, p);
  all[i] = __all_sync(kFullMask, p);
  __syncwarp();
}

__global__ void BarrierVoteKernel(const int* pred, int* count, int* all, int* any) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[i];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  count[i] = c;
  all[i] = a;
  any[i] = o;
}

// Grid-stride accumulation into single cells from every block.
__global__ void AtomicKernel(const float* xf, const int* xi, int n, float* sum_f, double* sum_d,
                             int* sum_i, unsigned long long* sum_u64, int* max_i, int* min_i,
                             unsigned* cas_count) {
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
    atomicAdd(sum_f, xf[i]);
    atomicAdd(sum_d, static_cast<double>(xf[i]));
    atomicAdd(sum_i, xi[i]);
    atomicAdd(sum_u64, static_cast<unsigned long long>(xi[i] & 0xff));
    atomicMax(max_i, xi[i]);
    atomicMin(min_i, xi[i]);
    // Increment through a CAS retry loop, the pattern custom atomics are built from.
    unsigned old = atomicAdd(cas_count, 0u);
    unsigned assumed;
    do {
      assumed = old;
      old = atomicCAS(cas_count, assumed, assumed + 1);
    } while (old != assumed);
  }
}

// Each thread swaps its id into one cell and records what it got back.
__global__ void ExchangeKernel(int* cell, int* got) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  got[i] = atomicExch(cell, i);
}

// Writes threadIdx, blockIdx, blockDim, gridDim (12 ints) at the thread's linear position.
__global__ void IndexKernel(int* out) {
  const unsigned block_linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* o = out + 12 * (block_linear * threads + t);
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                          blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
  for (int k = 0; k < 12; ++k) o[k] = static_cast<int>(v[k]);
}

// Hillis-Steele inclusive scan of each block's slice: log2(blockDim.x) + 1 barrier phases.
__global__ void InclusiveScanKernel(const int* in, int* out) {
  __shared__ int buf[2][1024];
  const int t = static_cast<int>(threadIdx.x);
  const int n = static_cast<int>(blockDim.x);
  const int base = static_cast<int>(blockIdx.x) * n;
  int cur = 0;
  buf[cur][t] = in[base + t];
  __syncthreads();
  for (int offset = 1; offset < n; offset *= 2) {
    const int v = buf[cur][t] + (t >= offset ? buf[cur][t - offset] : 0);
    buf[1 - cur][t] = v;
    cur = 1 - cur;
    __syncthreads();
  }
  out[base + t] = buf[cur][t];
}

// out[i] = in[i] + in[i - 1] within a block, through shared memory. Without the barrier a thread
// may read its left neighbour's slot before the neighbour wrote it: a shared-memory race.
template <bool kSync>
__global__ void NeighborSumKernel(const float* in, float* out) {
  __shared__ float tile[1024];
  const int t = static_cast<int>(threadIdx.x);
  const int i = static_cast<int>(blockIdx.x * blockDim.x) + t;
  tile[t] = in[i];
  if (kSync) __syncthreads();
  out[i] = tile[t] + (t > 0 ? tile[t - 1] : 0.0f);
}

// Records, per barrier phase, the order in which the threads of a single block ran.
__global__ void RecordOrderKernel(int* seq, int* counters, int phases) {
  for (int p = 0; p < phases; ++p) {
    seq[p * static_cast<int>(blockDim.x) + atomicAdd(&counters[p], 1)] =
        static_cast<int>(threadIdx.x);
    __syncthreads();
  }
}

// A bug: only threads below `active` reach the barrier.
__global__ void DivergentBarrierKernel(int* out, int active) {
  if (static_cast<int>(threadIdx.x) < active) __syncthreads();
  out[threadIdx.x] = 1;
}

// A bug: half of each warp waits at the block barrier, the other half in a full-warp shuffle.
__global__ void WarpBarrierDeadlockKernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) {
    __syncthreads();
  } else {
    v = __shfl_xor_sync(kFullMask, v, 1);
  }
  out[threadIdx.x] = v;
}

// A warp-subset shuffle (valid CUDA, but outside docs/cuda.md's kernel rules).
__global__ void SubsetMaskKernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_sync(0x0000ffffu, v, 0);
  out[threadIdx.x] = v;
}

// The math intrinsics kernels use, kMathOutputs results per input.
constexpr int kMathOutputs = 14;
__global__ void MathKernel(const float* x, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  const float v = x[i];
  float* o = out + kMathOutputs * i;
  o[0] = __expf(v);
  o[1] = __logf(fabsf(v) + 1.0f);
  o[2] = __fdividef(v, 3.0f);
  o[3] = rsqrtf(fabsf(v) + 0.5f);
  o[4] = __frsqrt_rn(fabsf(v) + 0.5f);
  o[5] = __fmaf_rn(v, 2.0f, 1.0f);
  o[6] = __saturatef(v);
  o[7] = __int_as_float(__float_as_int(v) ^ static_cast<int>(0x80000000u));
  o[8] = __ldg(&x[i]);
  o[9] = min(v, 0.5f) + static_cast<float>(max(i, 3));
  o[10] = __half2float(__float2half(v));
  o[11] = __bfloat162float(__float2bfloat16(v));
  o[12] = tanhf(v);
  o[13] = fmaf(v, v, -1.0f);
  __threadfence();
}

}  // namespace ffnkit::emu_test
