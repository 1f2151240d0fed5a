// The interface every layer family is written against once (docs/design.md, "One class per
// family, one policy per backend"). A backend tag B (core/backend.hpp) supplies
//   Runtime<B>        owning buffers, a stream (cpu/runtime.hpp, cuda/device_api.hpp);
//   LinearOps<T, B>   the products and elementwise passes of the linear layers and FFNs
//                     (cpu/linear_ops.hpp, cuda/linear_ops.hpp);
// and a family with kernels of its own (FFF, deferred normalization, self-guided) a policy of the
// same shape. Everything else (checks, counts, workspace plans, params(), seeded initialisation,
// the norm fold) is written once, in the family's class.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ffnkit/core.hpp"

namespace ffnkit {
namespace detail {

template <class T, class B>
struct LinearOps;

template <class B>
using StreamOf = typename Runtime<B>::Stream;
template <class T, class B>
using BufferOf = typename Runtime<B>::template Buffer<T>;

// Host-side conversions between a storage type and double (initialisation, materialize, checks);
// the device backends specialize it for __half and __nv_bfloat16 (cuda/device_api.hpp).
template <class T>
struct HostScalar {
  static T from_double(double v) { return static_cast<T>(v); }
  static double to_double(T v) { return static_cast<double>(v); }
};

template <class T>
std::vector<T> from_doubles(const double* p, std::size_t n) {
  std::vector<T> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = HostScalar<T>::from_double(p[i]);
  return out;
}
template <class T>
std::vector<double> to_doubles(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = HostScalar<T>::to_double(v[i]);
  return out;
}

// Load-time check of host weights of any storage type: every element finite.
template <class T>
void check_host_finite(const char* where, const char* name, const T* p, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    const double v = HostScalar<T>::to_double(p[i]);
    if (!(v - v == 0.0)) fail(where, name, "[", i, "] = ", v, " is not finite");
  }
}

// An owning array of T in backend B's memory with value semantics: a copy is deep, and a
// moved-from Storage is empty, so a moved-from layer reports itself empty instead of handing a null
// pointer to a GEMM.
template <class T, class B>
class Storage {
 public:
  Storage() = default;
  // Uploads n host elements.
  Storage(const T* host, index_t n) : buf_(Runtime<B>::template upload<T>(host, n)) {}
  Storage(const Storage& o) : buf_(Runtime<B>::clone(o.buf_)) {}
  Storage& operator=(const Storage& o) {
    if (this != &o) buf_ = Runtime<B>::clone(o.buf_);
    return *this;
  }
  Storage(Storage&& o) noexcept : buf_(std::move(o.buf_)) { o.buf_ = BufferOf<T, B>(); }
  Storage& operator=(Storage&& o) noexcept {
    if (this != &o) {
      buf_ = std::move(o.buf_);
      o.buf_ = BufferOf<T, B>();
    }
    return *this;
  }

  T* data() { return buf_.data(); }
  const T* data() const { return buf_.data(); }
  index_t size() const { return static_cast<index_t>(buf_.size()); }
  bool empty() const { return buf_.size() == 0; }
  std::size_t bytes() const { return buf_.size() * sizeof(T); }
  std::vector<T> to_host() const { return Runtime<B>::download(buf_); }

 private:
  BufferOf<T, B> buf_;
};

// The scratch of one call: the caller's workspace, or, when the caller passed none, memory the
// call allocates and frees once the stream has consumed it. take<T>(n) carves consecutive arrays.
template <class B>
class CallScratch {
 public:
  CallScratch(Workspace ws, std::size_t bytes, const StreamOf<B>& stream) : stream_(stream) {
    if (ws.data != nullptr || bytes == 0) {
      base_ = static_cast<unsigned char*>(ws.data);
    } else {
      owned_ = Runtime<B>::template allocate<unsigned char>(bytes);
      base_ = owned_.data();
    }
  }
  CallScratch(const CallScratch&) = delete;
  CallScratch& operator=(const CallScratch&) = delete;
  ~CallScratch() {
    if (owned_.size() != 0) {
      try {
        stream_.synchronize();  // kernels still reading the owned memory must finish first
      } catch (...) {
      }
    }
  }

  template <class T>
  T* take(std::size_t elements) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += elements * sizeof(T);
    return elements ? p : nullptr;
  }

 private:
  const StreamOf<B>& stream_;
  BufferOf<unsigned char, B> owned_;
  unsigned char* base_ = nullptr;
  std::size_t used_ = 0;
};

// The byte range a view spans (for the overlap checks).
template <class V>
void view_bytes(const MatrixView<V>& v, const char** begin, const char** end) {
  if (v.data == nullptr || v.rows <= 0) {  // a view the call does not use (dx not wanted)
    *begin = *end = nullptr;
    return;
  }
  *begin = reinterpret_cast<const char*>(v.data);
  *end = reinterpret_cast<const char*>(v.data + (v.rows - 1) * v.row_stride + v.cols);
}

// Bytes rounded up to 64, so that every piece carved from one workspace stays aligned for the
// backends' vector loads.
constexpr std::size_t round_up_64(std::size_t bytes) { return (bytes + 63) / 64 * 64; }

// The one workspace check of every layer (checked before any memory is touched): a workspace given
// must hold `need` bytes, be aligned for T and for backend B's kernels, and not overlap the views
// the call reads and writes. An empty workspace is fine: the call then allocates its own.
template <class T, class B, class... Views>
void check_workspace(const char* where, Workspace ws, std::size_t need, const char* size_call,
                     const Views&... views) {
  if (ws.data == nullptr) {
    if (ws.bytes != 0)
      fail(where, "workspace.data is a null pointer but workspace.bytes = ", ws.bytes);
    return;
  }
  if (ws.bytes < need)
    fail(where, "workspace.bytes = ", ws.bytes, ", need ", size_call, " = ", need);
  const std::size_t align =
      alignof(T) > Runtime<B>::kWorkspaceAlignment ? alignof(T) : Runtime<B>::kWorkspaceAlignment;
  if (reinterpret_cast<std::uintptr_t>(ws.data) % align != 0)
    fail(where, "workspace.data is not aligned to ", align, " bytes");
  if (need == 0) return;
  const char* w0 = static_cast<const char*>(ws.data);
  const char* w1 = w0 + need;
  const char* names[] = {views.first...};
  const char* b[sizeof...(Views)];
  const char* e[sizeof...(Views)];
  std::size_t i = 0;
  (void)std::initializer_list<int>{(view_bytes(views.second, &b[i], &e[i]), ++i, 0)...};
  for (std::size_t k = 0; k < sizeof...(Views); ++k)
    if (b[k] != nullptr && w0 < e[k] && b[k] < w1)
      fail(where, "the workspace overlaps ", names[k], " in memory");
}

// A (name, view) pair for check_workspace.
template <class V>
std::pair<const char*, MatrixView<V>> named(const char* name, const MatrixView<V>& v) {
  return {name, v};
}

}  // namespace detail

// True when `layer.check_forward(args...)` accepts the call; otherwise false, with the reason in
// *why (CUTLASS's can_implement). Nothing is allocated or launched either way.
template <class Layer, class... Args>
bool can_implement(const Layer& layer, std::string* why, const Args&... args) {
  try {
    layer.check_forward(args...);
    return true;
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
}

}  // namespace ffnkit
