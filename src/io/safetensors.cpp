// safetensors reader and writer (include/ffnkit/io/safetensors.hpp). The header is parsed with
// nlohmann::json's SAX interface against the format's fixed schema, so a hostile header is
// rejected at the first event that breaks it, never materialized as a deep DOM.
#include "ffnkit/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "ffnkit's safetensors I/O assumes a little-endian host (the format's byte order)");

namespace ffnkit {
namespace io {
namespace {

// The reference implementation's cap on the header, which keeps a hostile length from making us
// parse (or allocate for) an arbitrarily large JSON text.
constexpr std::uint64_t kMaxHeaderBytes = 100000000;

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  std::size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},      {Dtype::kU8, "U8", 1},          {Dtype::kI8, "I8", 1},
    {Dtype::kF8E5M2, "F8_E5M2", 1}, {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},        {Dtype::kBF16, "BF16", 2},
    {Dtype::kI32, "I32", 4},        {Dtype::kU32, "U32", 4},        {Dtype::kF32, "F32", 4},
    {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},        {Dtype::kU64, "U64", 8},
};

const DtypeInfo& info(Dtype d) {
  for (const auto& i : kDtypes)
    if (i.dtype == d) return i;
  fail("ffnkit::io", "invalid Dtype value ", static_cast<int>(d));
}

bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

std::string shape_to_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Element count and byte size of a shape, or an error naming the overflow.
std::uint64_t checked_nbytes(const char* where, const std::string& what,
                             const std::vector<std::int64_t>& shape, Dtype dtype) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) fail(where, what, ": shape ", shape_to_string(shape), " has a negative dimension");
    if (mul_overflows(n, static_cast<std::uint64_t>(d), &n) ||
        n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      fail(where, what, ": shape ", shape_to_string(shape),
           " has more elements than fit in 63 bits");
  }
  std::uint64_t bytes = 0;
  if (mul_overflows(n, dtype_size(dtype), &bytes))
    fail(where, what, ": shape ", shape_to_string(shape), " with dtype ", dtype_name(dtype),
         " needs more bytes than fit in 64 bits");
  return bytes;
}

// One tensor entry of the header as parsed, before validation against the data section.
struct RawEntry {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::vector<std::uint64_t> offsets;
  bool has_dtype = false, has_shape = false, has_offsets = false;
};

using Json = nlohmann::json;

// Schema-checking SAX handler. Nesting: depth 0 = outside, 1 = inside the top object, 2 = inside a
// tensor entry or __metadata__, 3 = inside "shape" / "data_offsets". Unknown keys of a tensor entry
// are skipped (the reference reader ignores them too); everything else off-schema aborts the parse
// with `error` set.
class HeaderSax : public nlohmann::json_sax<Json> {
 public:
  std::string error;
  std::vector<RawEntry> entries;
  std::map<std::string, std::string> metadata;

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t v) override {
    if (skip_) return true;
    if (depth_ == 3)
      return bad("tensor '" + cur().name + "': " + field_ + " holds " + std::to_string(v) +
                 ", expected a non-negative integer");
    return scalar("a number");
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (skip_) return true;
    if (depth_ == 3) {
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return bad("tensor '" + cur().name + "': " + field_ + " holds " + std::to_string(v) +
                   ", larger than 2^63 - 1");
      (field_ == "shape" ? cur().shape : cur().offsets).push_back(v);
      return true;
    }
    return scalar("a number");
  }
  bool number_float(number_float_t, const string_t& s) override {
    if (skip_) return true;
    if (depth_ == 3)
      return bad("tensor '" + cur().name + "': " + field_ + " holds " + s +
                 ", expected a non-negative integer");
    return scalar("a number");
  }
  bool string(string_t& s) override {
    if (skip_) return true;
    if (depth_ == 2 && in_metadata_) {
      metadata[meta_key_] = s;
      return true;
    }
    if (depth_ == 2 && field_ == "dtype") {
      cur().dtype = s;
      return true;
    }
    return scalar("a string");
  }
  bool binary(binary_t&) override { return scalar("binary data"); }

  bool start_object(std::size_t) override {
    if (skip_) return ++skip_, true;
    if (depth_ == 0) return ++depth_, true;
    if (depth_ == 1) {
      in_metadata_ = entry_name_ == "__metadata__";
      if (!in_metadata_) {
        entries.emplace_back();
        cur().name = entry_name_;
      }
      keys_.clear();
      return ++depth_, true;
    }
    if (depth_ == 2 && !in_metadata_ && field_.empty()) return ++skip_, true;
    return scalar("an object");
  }
  bool key(string_t& k) override {
    if (skip_) return true;
    if (!(depth_ == 1 ? names_ : keys_).insert(k).second)
      return bad(depth_ == 1 ? "duplicate tensor name '" + k + "'"
                             : "duplicate key '" + k + "' in entry '" + entry_name_ + "'");
    if (depth_ == 1) {
      entry_name_ = k;
    } else if (in_metadata_) {
      meta_key_ = k;
    } else {
      field_.clear();
      if (k == "dtype") cur().has_dtype = true, field_ = k;
      if (k == "shape") cur().has_shape = true, field_ = k;
      if (k == "data_offsets") cur().has_offsets = true, field_ = k;
    }
    return true;
  }
  bool end_object() override {
    if (skip_) return --skip_, true;
    --depth_;
    if (depth_ == 1) {
      in_metadata_ = false;
      field_.clear();
    }
    return true;
  }
  bool start_array(std::size_t) override {
    if (skip_) return ++skip_, true;
    if (depth_ == 2 && !in_metadata_) {
      if (field_ == "shape" || field_ == "data_offsets") return ++depth_, true;
      if (field_.empty()) return ++skip_, true;
    }
    return scalar("an array");
  }
  bool end_array() override {
    if (skip_) return --skip_, true;
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    error = make_message("header is not valid JSON (at byte ", position, "): ", ex.what());
    return false;
  }

 private:
  RawEntry& cur() { return entries.back(); }
  bool bad(const std::string& message) {
    error = message;
    return false;
  }
  // A value where the schema has none of its kind.
  bool scalar(const char* what) {
    if (skip_) return true;
    if (depth_ == 0) return bad(std::string("header is ") + what + ", not a JSON object");
    if (depth_ == 1) return bad("entry '" + entry_name_ + "' is " + what + ", expected an object");
    if (depth_ == 2 && in_metadata_)
      return bad("__metadata__ value for '" + meta_key_ + "' is " + what + ", expected a string");
    if (depth_ == 2 && field_.empty()) return true;  // an unknown key's value: ignored
    if (depth_ == 2)
      return bad("tensor '" + cur().name + "': \"" + field_ + "\" is " + what + ", expected " +
                 (field_ == "dtype" ? "a string" : "an array of integers"));
    return bad("tensor '" + cur().name + "': " + field_ + " holds " + what +
               ", expected a non-negative integer");
  }

  int depth_ = 0;
  long skip_ = 0;  // nesting inside an ignored value
  bool in_metadata_ = false;
  std::string entry_name_, meta_key_, field_;
  std::set<std::string> names_;  // the top object's keys
  std::set<std::string> keys_;   // the current entry's keys
};

}  // namespace

const char* dtype_name(Dtype dtype) { return info(dtype).name; }
std::size_t dtype_size(Dtype dtype) { return info(dtype).size; }

Dtype parse_dtype(const std::string& name) {
  for (const auto& i : kDtypes)
    if (name == i.name) return i.dtype;
  fail("ffnkit::io::parse_dtype", "unknown dtype \"", name, "\"");
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bfloat16_to_float(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::uint16_t float_to_half(float value) {
  std::uint32_t x;
  std::memcpy(&x, &value, sizeof x);
  const std::uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);   // NaN (quiet)
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (ax <= 0x33000000u) return static_cast<std::uint16_t>(sign);            // <= 2^-25: ties to 0
  std::uint32_t q, rem, halfway;
  if (ax < 0x38800000u) {
    // Subnormal result in units of 2^-24: the 24-bit significand shifted right, rounded.
    const std::uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, s = 126 - e;
    q = m >> s;
    rem = m & ((1u << s) - 1);
    halfway = 1u << (s - 1);
  } else {
    q = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
    rem = ax & 0x1fffu;
    halfway = 0x1000u;
  }
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;  // a carry into the exponent is right
  return static_cast<std::uint16_t>(sign | q);
}

std::uint16_t float_to_bfloat16(float value) {
  std::uint32_t x;
  std::memcpy(&x, &value, sizeof x);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

namespace {
// The offset of the first byte that breaks UTF-8, or n when all n bytes are well-formed.
std::size_t utf8_invalid_at(const unsigned char* p, std::size_t n) {
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len;
    std::uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return n;
}
}  // namespace

bool is_valid_utf8(const std::string& s) {
  return utf8_invalid_at(reinterpret_cast<const unsigned char*>(s.data()), s.size()) == s.size();
}

// ---------------------------------------------------------------------------------------------
// TensorView
// ---------------------------------------------------------------------------------------------
std::string TensorView::shape_string() const { return shape_to_string(shape); }

namespace {
template <class Out>
void convert_to(const TensorView& t, Out* out) {
  const std::size_t n = static_cast<std::size_t>(t.numel());
  const unsigned char* b = t.bytes;
  switch (t.dtype) {
    case Dtype::kF32:
      for (std::size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, b + 4 * i, 4);
        out[i] = static_cast<Out>(v);
      }
      return;
    case Dtype::kF64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, b + 8 * i, 8);
        out[i] = static_cast<Out>(v);
      }
      return;
    case Dtype::kF16:
    case Dtype::kBF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t v;
        std::memcpy(&v, b + 2 * i, 2);
        out[i] = static_cast<Out>(t.dtype == Dtype::kF16 ? half_to_float(v) : bfloat16_to_float(v));
      }
      return;
    default:
      fail("TensorView::convert", "tensor '", t.name, "' has dtype ", dtype_name(t.dtype),
           "; only F16, BF16, F32 and F64 convert to floating point");
  }
}
}  // namespace

void TensorView::convert(float* out) const { convert_to(*this, out); }
void TensorView::convert(double* out) const { convert_to(*this, out); }
std::vector<float> TensorView::to_float() const {
  std::vector<float> v(static_cast<std::size_t>(numel()));
  convert(v.data());
  return v;
}
std::vector<double> TensorView::to_double() const {
  std::vector<double> v(static_cast<std::size_t>(numel()));
  convert(v.data());
  return v;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile
// ---------------------------------------------------------------------------------------------
SafetensorsFile::~SafetensorsFile() { release(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    release();
    source_ = std::move(o.source_);
    base_ = o.base_;
    file_size_ = o.file_size_;
    mapping_ = o.mapping_;
    owned_ = std::move(o.owned_);  // the buffer moves, so views into it stay valid
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
    o.base_ = nullptr;
    o.mapping_ = nullptr;
    o.file_size_ = 0;
    o.tensors_.clear();
  }
  return *this;
}

void SafetensorsFile::release() noexcept {
  if (mapping_) munmap(mapping_, file_size_);
  mapping_ = nullptr;
  base_ = nullptr;
  file_size_ = 0;
  owned_.clear();
  tensors_.clear();
  metadata_.clear();
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  constexpr const char* where = "SafetensorsFile::open";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(where, "cannot open '", path, "': ", std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(where, "cannot stat '", path, "': ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(where, "'", path, "' is not a regular file");
  }
  SafetensorsFile f;
  f.source_ = path;
  f.file_size_ = static_cast<std::size_t>(st.st_size);
  // Too short to map meaningfully; parse() reports it.
  if (f.file_size_ >= 8) {
    void* p = mmap(nullptr, f.file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(where, "cannot memory-map '", path, "' (", f.file_size_,
           " bytes): ", std::strerror(err));
    }
    f.mapping_ = p;
    f.base_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);  // the mapping keeps the file referenced
  f.parse();
  return f;
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<unsigned char> bytes,
                                            const std::string& source) {
  SafetensorsFile f;
  f.source_ = source;
  f.owned_ = std::move(bytes);
  f.base_ = f.owned_.data();
  f.file_size_ = f.owned_.size();
  f.parse();
  return f;
}

void SafetensorsFile::parse() {
  const std::string where = "safetensors '" + source_ + "'";
  auto bad = [&](const auto&... args) { fail(where.c_str(), args...); };

  if (file_size_ < 8)
    bad("the file is ", file_size_, " bytes, too short for the 8-byte header length (truncated?)");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];
  const std::uint64_t rest = file_size_ - 8;
  if (n > rest)
    bad("header length ", n, " runs past the end of the file (", rest,
        " bytes follow the length field; truncated?)");
  if (n > kMaxHeaderBytes) bad("header length ", n, " exceeds the limit of ", kMaxHeaderBytes);
  const auto* h = reinterpret_cast<const char*>(base_ + 8);
  if (n < 2 || h[0] != '{') bad("the header does not start with '{' (not a safetensors file?)");
  const std::size_t bad_byte = utf8_invalid_at(base_ + 8, static_cast<std::size_t>(n));
  if (bad_byte != n)
    bad("the header is not valid UTF-8 (tensor names and metadata must be UTF-8): invalid byte "
        "at header offset ",
        bad_byte);

  HeaderSax sax;
  if (!Json::sax_parse(h, h + n, &sax)) bad(sax.error);

  const std::uint64_t data_size = rest - n;
  const unsigned char* data = base_ + 8 + n;
  std::vector<TensorView> views;
  views.reserve(sax.entries.size());
  for (RawEntry& e : sax.entries) {
    const std::string what = "tensor '" + e.name + "'";
    if (!e.has_dtype) bad(what, " has no \"dtype\"");
    if (!e.has_shape) bad(what, " has no \"shape\"");
    if (!e.has_offsets) bad(what, " has no \"data_offsets\"");
    Dtype dtype = Dtype::kF32;
    try {
      dtype = parse_dtype(e.dtype);
    } catch (const Error&) {
      bad(what, " has unknown dtype \"", e.dtype, "\"");
    }
    if (e.offsets.size() != 2)
      bad(what, ": data_offsets has ", e.offsets.size(), " entries, expected 2 ([begin, end])");
    const std::uint64_t b = e.offsets[0], end = e.offsets[1];
    if (b > end) bad(what, ": data_offsets [", b, ", ", end, "] end before they begin");
    if (end > data_size)
      bad(what, ": data_offsets [", b, ", ", end, "] run past the end of the data section (",
          data_size, " bytes; truncated?)");
    TensorView v;
    v.name = std::move(e.name);
    v.dtype = dtype;
    v.shape.assign(e.shape.begin(), e.shape.end());  // each <= 2^63 - 1, checked by the parser
    const std::uint64_t need = checked_nbytes(where.c_str(), what, v.shape, dtype);
    if (need != end - b)
      bad(what, ": shape ", v.shape_string(), " with dtype ", dtype_name(dtype), " needs ", need,
          " bytes, but data_offsets [", b, ", ", end, "] hold ", end - b);
    v.bytes = data + b;
    v.nbytes = static_cast<std::size_t>(end - b);
    views.push_back(std::move(v));
  }

  // The tensors must tile the data section exactly, as the reference reader demands: no overlap
  // (two names aliasing bytes), no gap, no trailing bytes.
  std::vector<const TensorView*> order;
  for (const auto& v : views) order.push_back(&v);
  std::sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
    return a->bytes != b->bytes ? a->bytes < b->bytes : a->nbytes < b->nbytes;
  });
  std::uint64_t pos = 0;
  const TensorView* prev = nullptr;
  for (const TensorView* v : order) {
    const std::uint64_t b = static_cast<std::uint64_t>(v->bytes - data);
    if (b < pos)
      bad("tensor '", v->name, "' (data_offsets [", b, ", ", b + v->nbytes, "]) overlaps tensor '",
          prev->name, "', which ends at ", pos);
    if (b > pos)
      bad("tensor '", v->name, "' begins at data offset ", b, " but the previous tensor ends at ",
          pos, " (data must be contiguous)");
    pos = b + v->nbytes;
    prev = v;
  }
  if (pos != data_size)
    bad("the tensors cover ", pos, " bytes of the ", data_size,
        "-byte data section (trailing bytes; not a safetensors file?)");

  std::sort(views.begin(), views.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  tensors_ = std::move(views);
  metadata_ = std::move(sax.metadata);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  const auto it =
      std::lower_bound(tensors_.begin(), tensors_.end(), name,
                       [](const TensorView& t, const std::string& n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

const TensorView& SafetensorsFile::tensor(const std::string& name) const {
  if (const TensorView* t = find(name)) return *t;
  fail(("safetensors '" + source_ + "'").c_str(), "missing tensor '", name, "' (the file has ",
       tensors_.size(), " tensors)");
}

const TensorView& SafetensorsFile::tensor(const std::string& name,
                                          const std::vector<std::int64_t>& expected) const {
  const TensorView& t = tensor(name);
  if (t.shape != expected)
    fail(("safetensors '" + source_ + "'").c_str(), "tensor '", name, "' has shape ",
         t.shape_string(), ", expected ", shape_to_string(expected));
  return t;
}

std::vector<std::string> SafetensorsFile::names_with_prefix(const std::string& prefix) const {
  std::vector<std::string> out;
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), prefix,
                             [](const TensorView& t, const std::string& p) { return t.name < p; });
  for (; it != tensors_.end() && it->name.compare(0, prefix.size(), prefix) == 0; ++it)
    out.push_back(it->name);
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter
// ---------------------------------------------------------------------------------------------
SafetensorsWriter::Entry& SafetensorsWriter::new_entry(const char* where, const std::string& name,
                                                       Dtype dtype,
                                                       const std::vector<std::int64_t>& shape,
                                                       std::size_t* count) {
  if (!is_valid_utf8(name)) fail(where, "tensor name is not valid UTF-8");
  if (name == "__metadata__") fail(where, "'__metadata__' is reserved, not a tensor name");
  if (entries_.count(name)) fail(where, "tensor '", name, "' was already added");
  const std::uint64_t nbytes = checked_nbytes(where, "tensor '" + name + "'", shape, dtype);
  Entry& e = entries_[name];
  e.dtype = dtype;
  e.shape = shape;
  e.bytes.resize(static_cast<std::size_t>(nbytes));
  *count = static_cast<std::size_t>(nbytes / dtype_size(dtype));
  return e;
}

namespace {
template <class In>
void encode(const char* where, const std::string& name, const In* values, std::size_t n,
            Dtype dtype, unsigned char* out) {
  if (n != 0 && values == nullptr) fail(where, "tensor '", name, "': values is a null pointer");
  for (std::size_t i = 0; i < n; ++i) {
    switch (dtype) {
      case Dtype::kF32: {
        const float v = static_cast<float>(values[i]);
        std::memcpy(out + 4 * i, &v, 4);
        break;
      }
      case Dtype::kF64: {
        const double v = static_cast<double>(values[i]);
        std::memcpy(out + 8 * i, &v, 8);
        break;
      }
      case Dtype::kF16:
      case Dtype::kBF16: {
        const float f = static_cast<float>(values[i]);
        const std::uint16_t v = dtype == Dtype::kF16 ? float_to_half(f) : float_to_bfloat16(f);
        std::memcpy(out + 2 * i, &v, 2);
        break;
      }
      default:
        fail(where, "tensor '", name, "': cannot encode floating-point values as ",
             dtype_name(dtype), " (use add_raw)");
    }
  }
}
}  // namespace

template <class V>
void SafetensorsWriter::add_values(const std::string& name, const std::vector<std::int64_t>& shape,
                                   const V* values, Dtype dtype) {
  constexpr const char* where = "SafetensorsWriter::add";
  if (dtype != Dtype::kF32 && dtype != Dtype::kF64 && dtype != Dtype::kF16 && dtype != Dtype::kBF16)
    fail(where, "tensor '", name, "': cannot encode floating-point values as ", dtype_name(dtype),
         " (use add_raw)");
  std::size_t n = 0;
  Entry& e = new_entry(where, name, dtype, shape, &n);
  try {
    encode(where, name, values, n, dtype, e.bytes.data());
  } catch (...) {
    entries_.erase(name);
    throw;
  }
}

void SafetensorsWriter::add(const std::string& name, const std::vector<std::int64_t>& shape,
                            const float* values, Dtype dtype) {
  add_values(name, shape, values, dtype);
}

void SafetensorsWriter::add(const std::string& name, const std::vector<std::int64_t>& shape,
                            const double* values, Dtype dtype) {
  add_values(name, shape, values, dtype);
}

void SafetensorsWriter::add(const std::string& name, const std::vector<std::int64_t>& shape,
                            const std::vector<float>& values, Dtype dtype) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d < 0 ? 0 : d);
  if (n != values.size())
    fail("SafetensorsWriter::add", "tensor '", name, "': shape ", shape_to_string(shape), " holds ",
         n, " elements but ", values.size(), " values were given");
  add(name, shape, values.data(), dtype);
}

void SafetensorsWriter::add_raw(const std::string& name, Dtype dtype,
                                const std::vector<std::int64_t>& shape, const void* bytes,
                                std::size_t nbytes) {
  constexpr const char* where = "SafetensorsWriter::add_raw";
  const std::uint64_t need = checked_nbytes(where, "tensor '" + name + "'", shape, dtype);
  if (need != nbytes)
    fail(where, "tensor '", name, "': shape ", shape_to_string(shape), " with dtype ",
         dtype_name(dtype), " needs ", need, " bytes, got nbytes = ", nbytes);
  if (nbytes != 0 && bytes == nullptr) fail(where, "tensor '", name, "': bytes is a null pointer");
  std::size_t n = 0;
  Entry& e = new_entry(where, name, dtype, shape, &n);
  if (nbytes) std::memcpy(e.bytes.data(), bytes, nbytes);
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  if (!is_valid_utf8(key) || !is_valid_utf8(value))
    fail("SafetensorsWriter::set_metadata", "metadata key '", key, "' or its value is not UTF-8");
  metadata_[key] = value;
}

std::vector<unsigned char> SafetensorsWriter::to_bytes() const {
  // Larger elements first, then by name: every offset is then a multiple of its element size.
  std::vector<std::pair<const std::string*, const Entry*>> order;
  for (const auto& kv : entries_) order.emplace_back(&kv.first, &kv.second);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second->dtype) > dtype_size(b.second->dtype);
  });
  Json header = Json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::uint64_t pos = 0;
  for (const auto& [name, e] : order) {
    header[*name] = {{"dtype", dtype_name(e->dtype)},
                     {"shape", e->shape},
                     {"data_offsets", {pos, pos + e->bytes.size()}}};
    pos += e->bytes.size();
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<unsigned char> out;
  out.reserve(8 + text.size() + pos);
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(n >> (8 * i)));
  out.insert(out.end(), text.begin(), text.end());
  for (const auto& kv : order)
    out.insert(out.end(), kv.second->bytes.begin(), kv.second->bytes.end());
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  constexpr const char* where = "SafetensorsWriter::write";
  const std::vector<unsigned char> bytes = to_bytes();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail(where, "cannot open '", path, "' for writing: ", std::strerror(errno));
  const std::size_t written = std::fwrite(bytes.data(), 1, bytes.size(), f);
  const int err = errno;
  if (std::fclose(f) != 0 || written != bytes.size())
    fail(where, "writing '", path, "' failed after ", written, " of ", bytes.size(),
         " bytes: ", std::strerror(err));
}

}  // namespace io
}  // namespace ffnkit
