// Argument checks shared by every backend's structured layers (docs/math.md §3), so the Cpu and
// device layers reject exactly the same inputs with exactly the same messages.
#pragma once

#include <algorithm>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/view.hpp"

namespace ffnkit {
namespace detail {

inline void check_lowrank_args(const char* where, index_t in, index_t out, index_t rank) {
  check_positive(where, "in_features", in);
  check_positive(where, "out_features", out);
  check_positive(where, "rank", rank);
  if (rank > std::min(in, out))
    fail(where, "rank = ", rank, " exceeds min(in_features, out_features) = ", std::min(in, out));
}

inline void check_block_diagonal_args(const char* where, index_t in, index_t out, index_t blocks) {
  check_positive(where, "in_features", in);
  check_positive(where, "out_features", out);
  check_divides(where, "blocks", blocks, "in_features", in);
  check_divides(where, "blocks", blocks, "out_features", out);
}

inline void check_block_dense_args(const char* where, index_t in, index_t out, index_t blocks,
                                   index_t rank) {
  check_positive(where, "in_features", in);
  check_positive(where, "out_features", out);
  check_positive(where, "rank", rank);
  check_divides(where, "blocks", blocks, "in_features", in);
  check_divides(where, "blocks", blocks, "rank", rank);
  // rank == min(in, out) is allowed: the official BlockDense module accepts it (it only asks that
  // blocks divide in_features and rank), so its checkpoints may use it.
  if (rank > std::min(in, out))
    fail(where, "rank = ", rank, " exceeds min(in_features, out_features) = ", std::min(in, out));
}

}  // namespace detail
}  // namespace ffnkit
