// Argument checks shared by every backend's DenseFFN, so the Cpu and device layers reject exactly
// the same inputs with exactly the same messages.
#pragma once

#include <cstdint>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/view.hpp"

namespace ffnkit {
namespace detail {

// up: d_model -> d_ff, down: d_ff -> d_out.
template <class Linear>
void check_ffn_pieces(const Linear& up, const Linear& down) {
  up.check_ready("DenseFFN: up");
  down.check_ready("DenseFFN: down");
  check_equal("DenseFFN", "down.in_features", down.in_features(), "up.out_features",
              up.out_features());
}

template <class Linear>
void check_swiglu_pieces(const Linear& gate, const Linear& up, const Linear& down) {
  constexpr const char* where = "DenseFFN::swiglu";
  gate.check_ready("DenseFFN::swiglu: gate");
  up.check_ready("DenseFFN::swiglu: up");
  down.check_ready("DenseFFN::swiglu: down");
  check_equal(where, "up.in_features", up.in_features(), "gate.in_features", gate.in_features());
  check_equal(where, "up.out_features", up.out_features(), "gate.out_features",
              gate.out_features());
  check_equal(where, "down.in_features", down.in_features(), "gate.out_features",
              gate.out_features());
  if (gate.has_bias() != up.has_bias())
    fail(where, "gate.has_bias = ", gate.has_bias(), " but up.has_bias = ", up.has_bias(),
         "; both or neither must have a bias");
}

// Checks a forward call and returns the hidden buffer to use: the caller's workspace, or null when
// the caller passed none (the layer then allocates `need` bytes itself).
template <class T, class Linear>
T* check_ffn_forward(const char* where, const Linear& up, const Linear& down,
                     const MatrixView<const T>& x, const MatrixView<T>& y, Workspace workspace,
                     std::size_t need) {
  up.check_ready(where);
  down.check_ready(where);
  check_activation(where, "x", x, up.in_features(), "d_model");
  check_activation(where, "y", y, down.out_features(), "d_out");
  check_equal(where, "y.rows", y.rows, "x.rows", x.rows);
  check_no_overlap(where, x, y);
  if (workspace.data == nullptr) return nullptr;
  if (workspace.bytes < need)
    fail(where, "workspace.bytes = ", workspace.bytes, ", need workspace_size(", x.rows,
         ") = ", need);
  if (reinterpret_cast<std::uintptr_t>(workspace.data) % alignof(T) != 0)
    fail(where, "workspace.data is not aligned to ", alignof(T), " bytes");
  T* hidden = static_cast<T*>(workspace.data);
  // The GEMMs would read x (or write y) while writing the hidden activations over it.
  const MatrixView<const T> ws(hidden, x.rows, up.out_features());
  check_no_overlap(where, x, ws);
  check_no_overlap(where, ws, y);
  return hidden;
}

}  // namespace detail
}  // namespace ffnkit
