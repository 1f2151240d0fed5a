// The device backends' fast feedforward kernels (docs/math.md §6), detail::FffOps<T, Cuda |
// CudaEmu> for the FastFeedForward class of ffnkit/fff.hpp, T = float, __half or __nv_bfloat16: the
// launchers of ffnkit/cuda/kernels/fff.cuh, on scratch carved from the call's workspace. λ, GELU
// and every sum are fp32 for every T; a 16-bit output row (and dx row) is accumulated in fp32
// scratch and rounded once.
//
// Forward: the warp-per-token kernel or the grouped one (tokens grouped by node per level, a
// node's rows read once per tile from shared memory); both give the same paths bit for bit.
// Backward (the recorded paths held fixed): a warp per token for dx, then the tokens bucketed by
// leaf on the device (a stable counting sort per tree) and a block per gradient row over the
// tokens whose path crosses it. Stream-ordered, no host round trip, no allocation given the
// workspace, deterministic (no float atomics).
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "ffnkit/core.hpp"
#include "ffnkit/cuda/device_api.hpp"
#include "ffnkit/cuda/launchers.hpp"
#include "ffnkit/detail/backend.hpp"
#include "ffnkit/detail/fff_checks.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
class DeviceFffOps {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __half>::value ||
                    std::is_same<T, __nv_bfloat16>::value,
                "the CUDA backends support float, __half and __nv_bfloat16");
  using Api = Runtime<B>;
  static constexpr bool kFloat = std::is_same<T, float>::value;

 public:
  using Stream = typename Api::Stream;

  // Token count from which kAuto takes the grouped kernel. Not measured (no GPU here): the
  // grouped kernel pays four launches per level, which only a batch with groups of many tokens at
  // the upper levels repays.
  static constexpr index_t kGroupedMinTokens = 512;
  // The grouped kernel keeps a node's w_in and w_out rows in 48 KB of shared memory.
  static constexpr index_t kGroupedMaxWidth = kFffGroupedMaxWidth;
  // Leaves are device memory: reading them back to check them would be a host round trip, so
  // backward's kernels check them (an invalid leaf poisons its tree's gradients and its token's
  // dx with NaN) and check_leaves() is the explicit, synchronous check.
  static constexpr bool kHostLeaves = false;

  explicit DeviceFffOps(const FffTree<T>& tree) : t_(tree) {}

  // The fp32 output accumulators (16-bit T only), then the grouped kernel's int32 bookkeeping.
  std::size_t workspace_size(index_t tokens, bool grouped) const {
    const std::size_t ints =
        grouped ? static_cast<std::size_t>(fff_grouped_scratch_ints(tokens, t_.depth)) : 0;
    return round_up_64(fp32_rows(tokens, t_.out)) + round_up_64(ints * sizeof(std::int32_t));
  }

  void forward(const char* where, const MatrixView<const T>& x, const MatrixView<T>& y,
               std::int32_t* leaves, bool grouped, unsigned char* scratch,
               const Stream& stream) const {
    float* acc = kFloat ? nullptr : reinterpret_cast<float*>(scratch);
    const index_t tokens = x.rows;
    if (grouped) {
      auto* ints =
          reinterpret_cast<std::int32_t*>(scratch + round_up_64(fp32_rows(tokens, t_.out)));
      throw_if_error(cuda::FffGroupedForward<T, B>(
                         x.data, x.row_stride, t_.w_in, t_.b_in, t_.w_out, y.data, y.row_stride,
                         acc, t_.out, tokens, t_.in, t_.out, t_.trees, t_.depth, leaves, ints,
                         fff_grouped_scratch_ints(tokens, t_.depth), stream),
                     where);
    } else {
      throw_if_error(cuda::FffForward<T, B>(x.data, x.row_stride, t_.w_in, t_.b_in, t_.w_out,
                                            y.data, y.row_stride, acc, t_.out, tokens, t_.in,
                                            t_.out, t_.trees, t_.depth, leaves, stream),
                     where);
    }
  }

  // GELU(λ) and dλ per (token, tree, level) pair, the fp32 dx accumulators (16-bit T only), the
  // bucketing's int32 scratch.
  std::size_t backward_workspace_size(index_t tokens) const {
    const std::size_t pairs = static_cast<std::size_t>(tokens * t_.per_token());
    const std::size_t ints =
        static_cast<std::size_t>(fff_backward_scratch_ints(tokens, t_.trees, t_.depth));
    return 2 * round_up_64(pairs * sizeof(float)) + round_up_64(fp32_rows(tokens, t_.in)) +
           round_up_64(ints * sizeof(std::int32_t));
  }

  // Every gradient row is written (rows no token visited with zeros), so nothing is cleared first.
  void backward(const char* where, const MatrixView<const T>& x, const std::int32_t* leaves,
                const MatrixView<const T>& dy, const MatrixView<T>& dx, T* gwi, T* gbi, T* gwo,
                unsigned char* scratch, const Stream& stream) const {
    const index_t tokens = x.rows;
    if (tokens > std::numeric_limits<std::int32_t>::max() / t_.per_token())
      fail(where, "x.rows (tokens) = ", tokens, " times K (D+1) = ", t_.per_token(),
           " overflows the int32 pair indices");
    const std::size_t pair_bytes =
        round_up_64(static_cast<std::size_t>(tokens * t_.per_token()) * sizeof(float));
    float* g = reinterpret_cast<float*>(scratch);
    float* dl = reinterpret_cast<float*>(scratch + pair_bytes);
    unsigned char* rest = scratch + 2 * pair_bytes;
    float* dx_acc = kFloat || !dx.data ? nullptr : reinterpret_cast<float*>(rest);
    auto* ints = reinterpret_cast<std::int32_t*>(rest + round_up_64(fp32_rows(tokens, t_.in)));
    throw_if_error(cuda::FffBackwardTokens<T, B>(x.data, x.row_stride, dy.data, dy.row_stride,
                                                 t_.w_in, t_.b_in, t_.w_out, leaves, dx.data,
                                                 dx.row_stride, dx_acc, t_.in, g, dl, tokens, t_.in,
                                                 t_.out, t_.trees, t_.depth, stream),
                   where);
    throw_if_error(
        cuda::FffBackwardNodes<T, B>(x.data, x.row_stride, dy.data, dy.row_stride, g, dl, leaves,
                                     tokens, t_.in, t_.out, t_.trees, t_.depth, ints,
                                     fff_backward_scratch_ints(tokens, t_.trees, t_.depth), gwi,
                                     gbi, gwo, stream),
        where);
  }

  // The explicit check of recorded leaves: copied to the host (synchronizing `stream`), then the
  // Cpu's check and message.
  void check_leaves(const char* where, const std::int32_t* leaves, index_t tokens,
                    const Stream& stream) const {
    std::vector<std::int32_t> host(static_cast<std::size_t>(tokens * t_.trees));
    Api::copy(host.data(), leaves, host.size() * sizeof(std::int32_t), Api::CopyKind::kDeviceToHost,
              stream);
    check_fff_leaves(where, host.data(), tokens, t_.trees, t_.depth);
  }

 private:
  // Bytes of a fp32 [tokens x width] accumulator, which only a 16-bit T needs.
  static std::size_t fp32_rows(index_t tokens, index_t width) {
    return kFloat ? 0 : static_cast<std::size_t>(tokens * width) * sizeof(float);
  }

  FffTree<T> t_;
};

#if defined(FFNKIT_WITH_CUDA)
template <class T>
class FffOps<T, Cuda> : public DeviceFffOps<T, Cuda> {
 public:
  using DeviceFffOps<T, Cuda>::DeviceFffOps;
};
#endif
#if defined(FFNKIT_WITH_CUDA_EMU)
template <class T>
class FffOps<T, CudaEmu> : public DeviceFffOps<T, CudaEmu> {
 public:
  using DeviceFffOps<T, CudaEmu>::DeviceFffOps;
};
#endif

}  // namespace detail
}  // namespace ffnkit
