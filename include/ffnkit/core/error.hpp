// ffnkit::Error and the argument checks every public entry point runs before touching memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ffnkit {

using index_t = std::int64_t;

// Thrown for every invalid argument or failed runtime call. The message always names the function,
// the offending argument and the value it had, e.g.
//   "DenseLinear::forward: x.cols = 767, expected in_features = 768".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Launchers (FlashInfer/CUTLASS style) return a status instead of throwing, so they can be called
// from code that is not exception-safe; `throw_if_error` converts at the C++ API boundary.
enum class Status : int {
  kSuccess = 0,
  kInvalidArgument,
  kNotSupported,
  kWorkspaceTooSmall,
  kRuntimeError,
};

inline const char* to_string(Status s) {
  switch (s) {
    case Status::kSuccess:
      return "success";
    case Status::kInvalidArgument:
      return "invalid argument";
    case Status::kNotSupported:
      return "not supported";
    case Status::kWorkspaceTooSmall:
      return "workspace too small";
    case Status::kRuntimeError:
      return "runtime error";
  }
  return "unknown status";
}

namespace detail {

inline void append_all(std::ostringstream&) {}
template <class A, class... Rest>
void append_all(std::ostringstream& os, const A& a, const Rest&... rest) {
  os << a;
  append_all(os, rest...);
}

}  // namespace detail

// Builds a message from any streamable pieces: make_message("x.cols = ", 7, ", expected ", 8).
template <class... Args>
std::string make_message(const Args&... args) {
  std::ostringstream os;
  os.precision(9);
  detail::append_all(os, args...);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const char* where, const Args&... args) {
  throw Error(make_message(where, ": ", args...));
}

// Checks that `value` (named `name`) is > 0.
inline void check_positive(const char* where, const char* name, index_t value) {
  if (value <= 0) fail(where, name, " = ", value, ", must be > 0");
}

// Checks that an argument equals what the layer expects.
inline void check_equal(const char* where, const char* name, index_t value,
                        const char* expected_name, index_t expected) {
  if (value != expected)
    fail(where, name, " = ", value, ", expected ", expected_name, " = ", expected);
}

inline void check_not_null(const char* where, const char* name, const void* ptr) {
  if (ptr == nullptr) fail(where, name, " is a null pointer");
}

// Checks that `divisor` divides `value`, e.g. a block count dividing a width.
inline void check_divides(const char* where, const char* divisor_name, index_t divisor,
                          const char* value_name, index_t value) {
  check_positive(where, divisor_name, divisor);
  if (value % divisor != 0)
    fail(where, divisor_name, " = ", divisor, " does not divide ", value_name, " = ", value);
}

// Checks that every element of a host array is finite; used on weights at load time (activations
// are allowed to carry NaN: it propagates per token and never crashes).
template <class T>
void check_finite(const char* where, const char* name, const T* data, index_t count) {
  for (index_t i = 0; i < count; ++i) {
    if (!std::isfinite(static_cast<double>(data[i])))
      fail(where, name, "[", i, "] = ", static_cast<double>(data[i]), " is not finite");
  }
}

}  // namespace ffnkit
