// Named parameter views and gradient buffers: the uniform surface optimizers, checkpoint I/O and
// the self-guided blend use on every layer, whatever its factors are.
#pragma once

#include <string>
#include <vector>

#include "ffnkit/core/backend.hpp"
#include "ffnkit/core/error.hpp"

namespace ffnkit {

// A mutable view of one of a layer's parameters, named as in the PyTorch original
// (e.g. "lr1", "lr2", "blkdiag", "bias"), with its logical shape.
template <class T>
struct ParamView {
  std::string name;
  std::vector<index_t> shape;
  T* data = nullptr;
  index_t size = 0;
};

// One gradient buffer per parameter, in the order of the layer's params(); backward overwrites.
// Backend B's memory: std::vector<T> on Cpu, device buffers on the device backends. A layer's
// make_grads() returns them zero-filled.
template <class T, class B = Cpu>
using GradList = std::vector<typename detail::Runtime<B>::template Buffer<T>>;

// Checks that `grads` matches `params` in count and sizes (backward resizes nothing silently).
// Grads: GradList<T> on Cpu, or a list of device buffers on the device backends.
template <class T, class Grads>
void check_grads(const char* where, const std::vector<ParamView<T>>& params, const Grads& grads) {
  if (grads.size() != params.size())
    fail(where, "grads.size() = ", grads.size(),
         ", expected one buffer per parameter = ", params.size());
  for (std::size_t i = 0; i < params.size(); ++i)
    if (static_cast<index_t>(grads[i].size()) != params[i].size)
      fail(where, "grads[", i, "] (", params[i].name, ").size() = ", grads[i].size(), ", expected ",
           params[i].size);
}

}  // namespace ffnkit
