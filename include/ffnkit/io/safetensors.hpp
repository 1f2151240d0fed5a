// safetensors reading and writing (https://github.com/huggingface/safetensors, "Format"):
//   [8 bytes: N, u64 little-endian] [N bytes: JSON object, UTF-8, padded with spaces]
//   [data: every tensor's bytes, contiguous, little-endian, row-major].
// The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__" object of string -> string.
//
// SafetensorsFile memory-maps the file read-only and exposes each tensor as a TensorView into the
// mapping: a layer constructor copies the weights once, straight out of the page cache. Every field
// of the header is validated before any tensor is exposed; a malformed or hostile file throws
// ffnkit::Error naming the file, the tensor and the offending value. Compiled in ffnkit::io
// (src/io/safetensors.cpp), so the JSON parser is not a dependency of the headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace io {

// The element types of the safetensors format. Reading accepts them all; conversion to floating
// point supports F16, BF16, F32 and F64.
enum class Dtype : int {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

// The format's spelling ("F32", "BF16", ...).
const char* dtype_name(Dtype dtype);
// Bytes per element.
std::size_t dtype_size(Dtype dtype);
// Parses "F32" etc.; throws ffnkit::Error naming the string for an unknown dtype.
Dtype parse_dtype(const std::string& name);

// IEEE binary16 and bfloat16 <-> float. Widening is exact; narrowing rounds to nearest even
// (NaN stays NaN, overflow gives infinity).
float half_to_float(std::uint16_t bits);
float bfloat16_to_float(std::uint16_t bits);
std::uint16_t float_to_half(float value);
std::uint16_t float_to_bfloat16(float value);

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool is_valid_utf8(const std::string& s);

// One tensor of a SafetensorsFile: a read-only view of its bytes inside the mapping.
struct TensorView {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;  // empty for a scalar
  const unsigned char* bytes = nullptr;
  std::size_t nbytes = 0;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;  // cannot overflow: checked when the file was opened
    return n;
  }
  std::int64_t rank() const { return static_cast<std::int64_t>(shape.size()); }
  // "[3, 4]".
  std::string shape_string() const;

  // The elements in place, without a copy: only when the dtype is exactly T's (F32 for float,
  // F64 for double) and the data is aligned for T; otherwise throws (use to_float / to_double).
  template <class T>
  const T* data() const;

  // The elements converted to float / double (F16, BF16, F32, F64; exact except F64 -> float).
  std::vector<float> to_float() const;
  std::vector<double> to_double() const;
  // The same into a caller buffer of numel() elements.
  void convert(float* out) const;
  void convert(double* out) const;
};

namespace detail {
template <class T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr Dtype value = Dtype::kF32;
};
template <>
struct DtypeOf<double> {
  static constexpr Dtype value = Dtype::kF64;
};
}  // namespace detail

template <class T>
const T* TensorView::data() const {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value,
                "TensorView::data<T>: T must be float or double");
  if (dtype != detail::DtypeOf<T>::value)
    fail("TensorView::data", "tensor '", name, "' has dtype ", dtype_name(dtype), ", not ",
         dtype_name(detail::DtypeOf<T>::value), " (use to_float / to_double to convert)");
  if (reinterpret_cast<std::uintptr_t>(bytes) % alignof(T) != 0)
    fail("TensorView::data", "tensor '", name, "' is not aligned to ", alignof(T),
         " bytes in the file (use to_float / to_double to copy it)");
  return reinterpret_cast<const T*>(bytes);
}

// A parsed, validated safetensors file. Move-only; the TensorViews it hands out stay valid while
// it lives (moving it keeps them valid too).
class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Memory-maps `path` read-only and validates it. Throws ffnkit::Error on any I/O failure or
  // malformed content. (If another process truncates the file while it is mapped, reading the
  // lost pages raises SIGBUS: the usual caveat of mmap, which no check at open time can remove.)
  static SafetensorsFile open(const std::string& path);
  // Parses an in-memory image of a file (kept inside the object); `source` names it in errors.
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes,
                                    const std::string& source = "<memory>");

  // Where the data came from (the path, or from_bytes' `source`).
  const std::string& source() const { return source_; }
  // Every tensor, sorted by name.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  std::size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // Null when absent.
  const TensorView* find(const std::string& name) const;
  // Throws ffnkit::Error ("missing tensor") when absent.
  const TensorView& tensor(const std::string& name) const;
  // Throws when absent or when the shape differs from `expected_shape`.
  const TensorView& tensor(const std::string& name,
                           const std::vector<std::int64_t>& expected_shape) const;
  // The names that start with `prefix` ("model.layers.0.mlp."), sorted.
  std::vector<std::string> names_with_prefix(const std::string& prefix) const;
  // The "__metadata__" entries (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse();
  void release() noexcept;

  std::string source_;
  const unsigned char* base_ = nullptr;  // the whole file
  std::size_t file_size_ = 0;
  void* mapping_ = nullptr;  // non-null when base_ is an mmap of file_size_ bytes
  std::vector<unsigned char> owned_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Builds a safetensors file in memory, then writes it. Tensors are copied in when added; the
// file is laid out as PyTorch's safetensors writer does it: tensors ordered by decreasing element
// size, then by name, so every tensor is naturally aligned (the data section starts at a multiple
// of 8 because the header is padded with spaces to one).
class SafetensorsWriter {
 public:
  // Stores `values` converted to `dtype` (F32, F16, BF16 or F64; narrowing rounds to nearest
  // even). `shape`'s element count must equal the number of values read.
  void add(const std::string& name, const std::vector<std::int64_t>& shape, const float* values,
           Dtype dtype = Dtype::kF32);
  void add(const std::string& name, const std::vector<std::int64_t>& shape, const double* values,
           Dtype dtype = Dtype::kF64);
  void add(const std::string& name, const std::vector<std::int64_t>& shape,
           const std::vector<float>& values, Dtype dtype = Dtype::kF32);
  // Raw little-endian bytes of any dtype; `nbytes` must match the shape.
  void add_raw(const std::string& name, Dtype dtype, const std::vector<std::int64_t>& shape,
               const void* bytes, std::size_t nbytes);
  void set_metadata(const std::string& key, const std::string& value);

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // The complete file image.
  std::vector<unsigned char> to_bytes() const;
  // Writes to_bytes() to `path` (replacing it); throws ffnkit::Error on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Entry {
    Dtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };
  // add() for float and double values: the same checks and encoding.
  template <class V>
  void add_values(const std::string& name, const std::vector<std::int64_t>& shape, const V* values,
                  Dtype dtype);
  Entry& new_entry(const char* where, const std::string& name, Dtype dtype,
                   const std::vector<std::int64_t>& shape, std::size_t* count);
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace io
}  // namespace ffnkit
