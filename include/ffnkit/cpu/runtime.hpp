// The Cpu backend's runtime (detail/backend.hpp): host memory in std::vector, and a stream that is
// only a name for "in order, on the calling thread" (every Cpu call has finished when it returns).
#pragma once

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "ffnkit/core.hpp"

namespace ffnkit {
namespace cpu {

// The Cpu backend is synchronous; the stream parameter exists so that one signature serves all.
struct Stream {
  void synchronize() const {}
};

}  // namespace cpu

namespace detail {

template <>
struct Runtime<Cpu> {
  template <class T>
  using Buffer = std::vector<T>;
  using Stream = cpu::Stream;
  // Beyond alignof(T): Eigen maps are unaligned, so nothing more is needed.
  static constexpr std::size_t kWorkspaceAlignment = 1;

  static bool available(std::string*) { return true; }
  template <class T>
  static Buffer<T> allocate(std::size_t n) {
    return Buffer<T>(n);
  }
  template <class T>
  static Buffer<T> upload(const T* host, index_t n) {
    return Buffer<T>(host, host + n);
  }
  template <class T>
  static std::vector<T> download(const Buffer<T>& b) {
    return b;
  }
  template <class T>
  static Buffer<T> clone(const Buffer<T>& b) {
    return b;
  }
  template <class T>
  static void zero(Buffer<T>& b, const Stream&) {
    std::fill(b.begin(), b.end(), T(0));
  }
};

}  // namespace detail
}  // namespace ffnkit
