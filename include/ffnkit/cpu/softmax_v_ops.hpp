// The Cpu backend's SoftmaxVOps (detail/norm_ops.hpp): y = softmax(s + mask) V per query row
// (docs/math.md §7.5) on Eigen and OpenMP.
//  - forward: one pass, FlashAttention-style. A block of query rows sweeps the keys in tiles:
//    tile max, exp into a small cache-resident tile buffer, one rescale of the running numerator
//    and denominator by e^{m_old − m_new} per tile (only where the max moved), then a small GEMM
//    P_tile V_tile accumulating into the block's output. The full P is never written. With fewer
//    query blocks than threads (decode) the keys are split too, and the partial triples merged.
//  - three_pass: the unfused baseline (max, exp-sum, normalize into a [queries x keys] buffer),
//    then one GEMM (docs/math.md §7.6).
// A row whose scores are all −inf (fully masked) gives zeros, never NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ffnkit/core.hpp"
#include "ffnkit/cpu/eigen.hpp"
#include "ffnkit/cpu/parallel.hpp"
#include "ffnkit/cpu/runtime.hpp"
#include "ffnkit/detail/norm_ops.hpp"

namespace ffnkit {
namespace detail {

template <class T>
struct SoftmaxVOps<T, Cpu> {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "the Cpu backend supports float and double");
  using Stream = cpu::Stream;

  // Bytes forward needs for the current OpenMP thread count: per thread a P tile, the running
  // numerators, maxima and denominators of one query block; plus, when the keys are split across
  // threads (decode), every split's partial triple.
  static std::size_t workspace_size(index_t queries, index_t keys, index_t dim, index_t key_tile,
                                    index_t query_block) {
    const Plan pl = plan(queries, keys, key_tile, query_block);
    return sizeof(T) *
           static_cast<std::size_t>(pl.threads * per_thread_elements(pl, dim, key_tile) +
                                    (pl.splits > 1 ? pl.items * pl.qb * (dim + 2) : 0));
  }

  // The one pass. ws: workspace_size(...) bytes.
  static void forward(const char*, const MatrixView<const T>& s, const MatrixView<const T>& v,
                      const MatrixView<T>& y, const MatrixView<const T>& mask, index_t key_tile,
                      index_t query_block, T* ws, const Stream&) {
    const index_t q = s.rows, keys = s.cols, dim = v.cols;
    const Plan pl = plan(q, keys, key_tile, query_block);
    const index_t qb = pl.qb, splits = pl.splits, per_split = pl.per_split;
    const index_t per_thread = per_thread_elements(pl, dim, key_tile);
    T* part_m = ws + pl.threads * per_thread;
    T* part_l = part_m + pl.items * qb;
    T* part_acc = part_l + pl.items * qb;
    cpu::parallel_for_slots(pl.items, qb * per_split * (dim + 8), [&](std::int64_t item, int slot) {
      const index_t blk = item / splits, sp = item % splits;
      const index_t q0 = blk * qb, qn = std::min(qb, q - q0);
      const index_t k0 = sp * per_split, k1 = std::min(keys, k0 + per_split);
      T* mine = ws + slot * per_thread;
      TileMap acc(mine, qn, dim), p(mine + qb * dim, qn, std::min(key_tile, k1 - k0));
      T* m = mine + qb * (dim + key_tile);
      T* l = m + qb;
      acc.setZero();
      std::fill(m, m + qn, -std::numeric_limits<T>::infinity());
      std::fill(l, l + qn, T(0));
      sweep(s, v, mask, key_tile, q0, qn, k0, k1, m, l, acc, p);
      if (splits == 1) {
        for (index_t i = 0; i < qn; ++i) {
          Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> yr(y.row(q0 + i), dim);
          // l = 0 only when every key was masked: zeros, not 0/0.
          if (l[i] > T(0))
            yr = acc.row(i) * (T(1) / l[i]);
          else
            yr.setZero();
        }
      } else {
        const index_t at = item * qb;
        std::copy(m, m + qn, part_m + at);
        std::copy(l, l + qn, part_l + at);
        std::copy_n(acc.data(), qn * dim, part_acc + at * dim);
      }
    });
    if (splits == 1) return;
    for (index_t blk = 0; blk < pl.blocks; ++blk) {
      const index_t q0 = blk * qb, qn = std::min(qb, q - q0);
      for (index_t i = 0; i < qn; ++i) {
        T mx = -std::numeric_limits<T>::infinity();
        for (index_t sp = 0; sp < splits; ++sp)
          mx = std::max(mx, part_m[(blk * splits + sp) * qb + i]);
        Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>> yr(y.row(q0 + i), dim);
        yr.setZero();
        if (mx == -std::numeric_limits<T>::infinity()) continue;
        T l = 0;
        for (index_t sp = 0; sp < splits; ++sp) {
          const index_t at = (blk * splits + sp) * qb + i;
          if (part_l[at] == T(0)) continue;
          const T f = std::exp(part_m[at] - mx);
          l += f * part_l[at];
          yr += f * Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(part_acc + at * dim, dim);
        }
        yr *= T(1) / l;
      }
    }
  }

  // The three-pass baseline: per row max, exp and sum, normalize into P ([queries x keys], ld
  // keys); then y = P V.
  static void three_pass(const char*, const MatrixView<const T>& s, const MatrixView<const T>& v,
                         const MatrixView<T>& y, const MatrixView<const T>& mask, T* p,
                         const Stream&) {
    const index_t q = s.rows, keys = s.cols;
    cpu::parallel_for(q, 4 * keys, [&](std::int64_t i) {
      Eigen::Map<RowArray> pr(p + i * keys, keys);
      const Eigen::Map<const RowArray> sr(s.row(i), keys);
      if (mask.data)
        pr = sr + Eigen::Map<const RowArray>(mask.row(i), keys);
      else
        pr = sr;
      const T mx = pr.maxCoeff();  // pass 1
      if (mx == -std::numeric_limits<T>::infinity()) {
        pr.setZero();
        return;
      }
      pr = (pr - mx).exp();  // pass 2
      const T sum = pr.sum();
      pr *= T(1) / sum;  // pass 3
    });
    const Eigen::Map<const cpu::RowMatrix<T>> P(p, q, keys);
    cpu::map(y).noalias() = P * cpu::map(v);
  }

 private:
  using Tile = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using TileMap = Eigen::Map<Tile>;
  using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;

  // How forward splits the work: query blocks of qb rows, and for decode (fewer blocks than
  // threads) the keys in `splits` ranges of per_split keys, as flash-decoding does.
  struct Plan {
    index_t threads, qb, blocks, splits, per_split, items;
  };
  static Plan plan(index_t q, index_t keys, index_t key_tile, index_t query_block) {
    Plan pl;
    pl.threads = cpu::max_threads();
    // Enough query blocks for every thread when there are enough queries (128 queries on 2
    // threads: two blocks of 64, not one of 128 on one thread).
    pl.qb = std::max<index_t>(1, std::min(query_block, (q + pl.threads - 1) / pl.threads));
    pl.blocks = (q + pl.qb - 1) / pl.qb;
    // Few query blocks (decode) cannot fill the threads: split the keys too, and merge the
    // partial (max, sum, numerator) triples afterwards.
    pl.splits = 1;
    if (pl.blocks < pl.threads && keys >= 2 * key_tile)
      pl.splits = std::min<index_t>((pl.threads + pl.blocks - 1) / pl.blocks, keys / key_tile);
    pl.per_split = ((keys + pl.splits - 1) / pl.splits + key_tile - 1) / key_tile * key_tile;
    pl.splits = (keys + pl.per_split - 1) / pl.per_split;
    pl.items = pl.blocks * pl.splits;
    return pl;
  }
  // One thread's scratch: the numerators [qb x dim], the P tile [qb x key_tile], m and l.
  static index_t per_thread_elements(const Plan& pl, index_t dim, index_t key_tile) {
    return pl.qb * (dim + key_tile + 2);
  }

  // The online softmax over keys [k0, k1) for query rows [q0, q0 + qn): running max m, running
  // denominator l and running numerator acc, all in T (fp32 for float); p is the tile buffer.
  static void sweep(const MatrixView<const T>& s, const MatrixView<const T>& v,
                    const MatrixView<const T>& mask, index_t key_tile, index_t q0, index_t qn,
                    index_t k0, index_t k1, T* m, T* l, TileMap& acc, TileMap& p) {
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    const index_t dim = v.cols;
    for (index_t kk = k0; kk < k1; kk += key_tile) {
      const index_t kt = std::min(key_tile, k1 - kk);
      for (index_t i = 0; i < qn; ++i) {
        auto pr = p.row(i).head(kt).array();
        const Eigen::Map<const RowArray> sr(s.row(q0 + i) + kk, kt);
        if (mask.data)
          pr = sr + Eigen::Map<const RowArray>(mask.row(q0 + i) + kk, kt);
        else
          pr = sr;
        const T mnew = std::max(m[i], pr.maxCoeff());
        if (mnew == kNegInf) {  // everything so far masked: contributes nothing
          pr.setZero();
          continue;
        }
        if (mnew > m[i]) {
          // Rescale once per tile, and only rows whose max moved; e^{−inf} = 0 on the first tile.
          const T alpha = std::exp(m[i] - mnew);
          l[i] *= alpha;
          acc.row(i) *= alpha;
          m[i] = mnew;
        }
        pr = (pr - mnew).exp();
        l[i] += pr.sum();
      }
      const cpu::ConstRowMap<T> V(v.row(kk), kt, dim, Eigen::OuterStride<>(v.row_stride));
      acc.noalias() += p.leftCols(kt) * V;
    }
  }
};

}  // namespace detail
}  // namespace ffnkit
