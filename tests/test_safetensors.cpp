// safetensors I/O (include/ffnkit/io/): the dtype conversions against independent oracles, the
// documented byte layout, every hostile-file case (each must throw ffnkit::Error naming the
// problem, never crash), and save -> load round trips of every layer family whose forward must
// equal the original layer's bit for bit.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ffnkit/io/layers.hpp"
#include "ffnkit/io/safetensors.hpp"
#include "support/harness.hpp"

namespace ffnkit {
namespace io {
namespace {

using Bytes = std::vector<unsigned char>;

// A file image from a literal header (no padding) and data section.
Bytes raw_file(const std::string& header, const Bytes& data = {}) {
  Bytes out;
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Parsing `bytes` must throw ffnkit::Error whose message contains `needle`.
void expect_rejected(const Bytes& bytes, const std::string& needle, const std::string& what) {
  try {
    SafetensorsFile::from_bytes(bytes, "hostile.safetensors");
    ADD_FAILURE() << what << ": accepted, expected an error containing \"" << needle << "\"";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos)
        << what << ": message \"" << msg << "\" lacks \"" << needle << "\"";
    EXPECT_NE(msg.find("hostile.safetensors"), std::string::npos) << msg;
  }
}

std::string temp_path(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/ffnkit_test_" + std::to_string(::getpid()) + "_" +
         name;
}

std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
  std::vector<float> v(n);
  fill_normal(v.data(), static_cast<index_t>(n), seed, 0.0, 1.0);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------
TEST(SafetensorsDtype, HalfWideningIsExactAndInvertedByNarrowing) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    const std::uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f && mant != 0) {
      ASSERT_TRUE(std::isnan(f)) << h;
      continue;
    }
    // The binary16 definition, evaluated in double: (-1)^s 2^(e-15) (1 + m/1024), subnormals
    // 2^-14 (m/1024), all-ones exponent infinity.
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const double expect = exp == 0x1f ? sign * HUGE_VAL
                          : exp == 0  ? sign * std::ldexp(mant / 1024.0, -14)
                                      : sign * std::ldexp(1.0 + mant / 1024.0, int(exp) - 15);
    ASSERT_EQ(static_cast<double>(f), expect) << "half bits " << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
    ASSERT_EQ(float_to_half(f), h) << "half bits " << h;
  }
}

// Round-to-nearest-even between two neighbouring encodings lo < hi (by magnitude), decided in
// double from their decoded values.
template <class Decode>
std::uint16_t nearest_even(double ax, std::uint16_t lo, Decode decode) {
  const auto hi = static_cast<std::uint16_t>(lo + 1);
  const double dl = ax - decode(lo), dh = decode(hi) - ax;
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(SafetensorsDtype, NarrowingRoundsToNearestEven) {
  // Magnitude decoders; the encoding after the largest finite one stands for 2^16 (f16) or 2^128
  // (bf16), the value IEEE rounding compares against before it overflows to infinity.
  const auto half_mag = [](std::uint16_t h) {
    return h == 0x7c00 ? 65536.0 : static_cast<double>(half_to_float(h));
  };
  const auto bf16_mag = [](std::uint16_t b) {
    return b == 0x7f80 ? std::ldexp(1.0, 128) : static_cast<double>(bfloat16_to_float(b));
  };
  // Every finite non-negative half, ascending, for the f16 oracle's bracketing search.
  std::vector<double> halves;
  for (std::uint32_t h = 0; h < 0x7c00; ++h)
    halves.push_back(half_mag(static_cast<std::uint16_t>(h)));

  std::mt19937 rng(7);
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           65504.0f,
                           65519.0f,
                           65520.0f,
                           1e-8f,
                           2.98e-8f,
                           2.9802322e-8f,
                           5.96e-8f,
                           6.1e-5f,
                           3.0e38f,
                           -3.4e38f,
                           1.0f + 1.0f / 2048.0f,
                           std::numeric_limits<float>::infinity()};
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns cover every exponent, subnormals included.
    const std::uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    if (!std::isnan(f)) xs.push_back(f);
  }
  for (float x : xs) {
    const double ax = std::fabs(static_cast<double>(x));
    const std::uint16_t sign16 = std::signbit(x) ? 0x8000 : 0;
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    // bf16: the truncated encoding and its successor bracket |x|.
    const auto tb = static_cast<std::uint16_t>((bits >> 16) & 0x7fff);
    const std::uint16_t b = std::isinf(x) ? tb : nearest_even(ax, tb, bf16_mag);
    ASSERT_EQ(float_to_bfloat16(x), b | sign16) << x;
    // f16: the largest half <= |x| and its successor.
    const auto it = std::upper_bound(halves.begin(), halves.end(), ax);
    const auto lo = static_cast<std::uint16_t>((it - halves.begin()) - 1);
    const std::uint16_t h = halves[lo] == ax ? lo : nearest_even(ax, lo, half_mag);
    ASSERT_EQ(float_to_half(x), h | sign16) << x;
  }
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(std::nanf("")))));
}

TEST(SafetensorsDtype, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("model.layers.0.mlp.weight"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated sequence
}

// ---------------------------------------------------------------------------------------------
// Writing and reading
// ---------------------------------------------------------------------------------------------
TEST(Safetensors, RoundTripsEveryDtypeAndTheMetadata) {
  const auto a = random_floats(12, 1);
  const auto b = random_floats(5, 2);
  const std::vector<double> c = {1.0 / 3.0, -2.5e-300, 7.0};
  const std::int32_t ints[4] = {1, -2, 3, 2147483647};
  SafetensorsWriter w;
  w.add("a.f32", {3, 4}, a);
  w.add("b.f16", {5}, b.data(), Dtype::kF16);
  w.add("b.bf16", {5}, b.data(), Dtype::kBF16);
  w.add("c.f64", {3}, c.data());
  w.add_raw("d.i32", Dtype::kI32, {2, 2}, ints, sizeof ints);
  w.add("e.scalar", {}, b.data());
  w.set_metadata("format", "pt");
  const SafetensorsFile f = SafetensorsFile::from_bytes(w.to_bytes());

  ASSERT_EQ(f.size(), 6u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorView& ta = f.tensor("a.f32", {3, 4});
  EXPECT_EQ(ta.dtype, Dtype::kF32);
  EXPECT_EQ(std::vector<float>(ta.data<float>(), ta.data<float>() + 12), a);  // zero-copy view
  EXPECT_EQ(ta.to_float(), a);
  const auto h = f.tensor("b.f16", {5}).to_float();
  const auto bf = f.tensor("b.bf16", {5}).to_double();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(h[i], half_to_float(float_to_half(b[i])));
    EXPECT_EQ(bf[i], bfloat16_to_float(float_to_bfloat16(b[i])));
  }
  EXPECT_EQ(f.tensor("c.f64").to_double(), c);
  EXPECT_EQ(f.tensor("c.f64").to_float()[0], static_cast<float>(c[0]));
  const TensorView& ti = f.tensor("d.i32", {2, 2});
  EXPECT_EQ(std::memcmp(ti.bytes, ints, sizeof ints), 0);
  EXPECT_THROW(ti.to_float(), Error);
  EXPECT_THROW(f.tensor("b.f16").data<float>(), Error);  // not F32: no in-place view
  const TensorView& s = f.tensor("e.scalar");
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.to_float()[0], b[0]);
  EXPECT_EQ(f.names_with_prefix("b."), (std::vector<std::string>{"b.bf16", "b.f16"}));
  EXPECT_TRUE(f.names_with_prefix("z").empty());
}

TEST(Safetensors, WritesTheDocumentedLayout) {
  SafetensorsWriter w;
  const std::vector<float> x = {1, 2, 3};
  const std::vector<double> y = {4};
  w.add("x", {3}, x);
  w.add("y", {1}, y.data());
  const std::uint16_t z = 0x3c00;
  w.add_raw("z", Dtype::kF16, {1}, &z, 2);
  const Bytes bytes = w.to_bytes();
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u) << "the data section must start 8-byte aligned";
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + n);
  EXPECT_EQ(header.front(), '{');
  const std::size_t close = header.rfind('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << "padding: spaces";
  // Larger elements first: y (F64) at 0, x (F32) at 8, z (F16) at 20; the data is contiguous.
  EXPECT_NE(header.find("\"y\":{\"data_offsets\":[0,8],\"dtype\":\"F64\",\"shape\":[1]}"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find("\"x\":{\"data_offsets\":[8,20],\"dtype\":\"F32\",\"shape\":[3]}"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find("\"z\":{\"data_offsets\":[20,22],\"dtype\":\"F16\",\"shape\":[1]}"),
            std::string::npos)
      << header;
  EXPECT_EQ(bytes.size(), 8 + n + 22);
  double yv;
  std::memcpy(&yv, bytes.data() + 8 + n, 8);
  EXPECT_EQ(yv, 4.0);
}

TEST(Safetensors, OpensAMappedFileAndSelectsByPrefix) {
  SafetensorsWriter w;
  const auto a = random_floats(6, 3);
  w.add("model.layers.0.mlp.weight", {2, 3}, a);
  w.add("model.layers.1.mlp.weight", {3, 2}, a);
  const std::string path = temp_path("open.safetensors");
  w.write(path);
  {
    const SafetensorsFile f = SafetensorsFile::open(path);
    EXPECT_EQ(f.source(), path);
    EXPECT_EQ(f.names_with_prefix("model.layers.0."),
              std::vector<std::string>{"model.layers.0.mlp.weight"});
    SafetensorsFile moved = SafetensorsFile::open(path);
    const float* p = moved.tensor("model.layers.1.mlp.weight").data<float>();
    SafetensorsFile target = std::move(moved);  // views stay valid across a move
    EXPECT_EQ(target.tensor("model.layers.1.mlp.weight").data<float>(), p);
    EXPECT_EQ(std::vector<float>(p, p + 6), a);
    try {
      f.tensor("model.layers.2.mlp.weight");
      ADD_FAILURE() << "missing tensor accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing tensor 'model.layers.2.mlp.weight'"),
                std::string::npos)
          << e.what();
    }
    EXPECT_THROW(f.tensor("model.layers.0.mlp.weight", {3, 2}), Error);  // wrong shape
  }
  std::remove(path.c_str());
  EXPECT_THROW(SafetensorsFile::open(path), Error);  // gone
  EXPECT_THROW(SafetensorsFile::open("/"), Error);   // not a regular file
}

TEST(Safetensors, WriterRejectsBadInput) {
  SafetensorsWriter w;
  const std::vector<float> v(4);
  w.add("a", {4}, v);
  EXPECT_THROW(w.add("a", {4}, v), Error);             // duplicate
  EXPECT_THROW(w.add("__metadata__", {4}, v), Error);  // reserved
  EXPECT_THROW(w.add("\xff", {4}, v), Error);          // not UTF-8
  EXPECT_THROW(w.add("b", {5}, v), Error);             // count mismatch
  EXPECT_THROW(w.add("c", {-1}, v.data()), Error);     // negative dimension
  EXPECT_THROW(w.add("d", {4}, v.data(), Dtype::kI32), Error);
  EXPECT_THROW(w.add("e", {std::int64_t(1) << 40, std::int64_t(1) << 40}, v.data()), Error);
  EXPECT_THROW(w.add_raw("f", Dtype::kF32, {2}, v.data(), 4), Error);  // byte count mismatch
  EXPECT_THROW(w.set_metadata("k", "\xc0\xaf"), Error);
  EXPECT_FALSE(w.contains("b"));
}

// ---------------------------------------------------------------------------------------------
// Hostile files
// ---------------------------------------------------------------------------------------------
const char* kOk = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsHostile, TheBaselineIsAccepted) {
  // Every case below is a small edit of this file; it must itself be valid.
  EXPECT_EQ(SafetensorsFile::from_bytes(raw_file(kOk, Bytes(8))).size(), 1u);
  // Unknown keys inside an entry are ignored, as by the reference reader.
  EXPECT_NO_THROW(SafetensorsFile::from_bytes(raw_file(
      R"({"t":{"dtype":"F32","x":{"y":[[[1]]]},"shape":[2],"data_offsets":[0,8]}})", Bytes(8))));
}

TEST(SafetensorsHostile, TruncatedAndOversizedLengths) {
  expect_rejected({}, "too short", "empty file");
  expect_rejected(Bytes(5), "too short", "5-byte file");
  Bytes past = raw_file(kOk, Bytes(8));
  past[0] = 0xff, past[1] = 0xff;  // header length 65535+ > file
  expect_rejected(past, "runs past the end of the file", "length beyond the file");
  Bytes huge(16, 0xff);  // length 2^64 - 1
  expect_rejected(huge, "runs past the end of the file", "2^64 - 1 length");
  // Every proper prefix of a valid file is rejected with an error (never a crash).
  const Bytes ok = raw_file(kOk, Bytes(8));
  for (std::size_t len = 0; len < ok.size(); ++len) {
    const Bytes cut(ok.begin(), ok.begin() + len);
    EXPECT_THROW(SafetensorsFile::from_bytes(cut), Error) << "prefix of " << len << " bytes";
  }
  expect_rejected(Bytes(ok.begin(), ok.end() - 1), "run past the end of the data section",
                  "data truncated by one byte");
}

TEST(SafetensorsHostile, HeaderLengthIsCapped) {
  // A sparse file just over the 100 MB header cap: no disk used, and only the first page is read.
  const std::string path = temp_path("huge_header.safetensors");
  const std::uint64_t n = 100000001;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  ASSERT_EQ(std::fwrite(len, 1, 8, f), 8u);
  ASSERT_EQ(std::fflush(f), 0);
  ASSERT_EQ(::ftruncate(::fileno(f), static_cast<off_t>(8 + n)), 0);
  std::fclose(f);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "a 100 MB header was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("header length 100000001 exceeds the limit"),
              std::string::npos)
        << e.what();
  }
  std::remove(path.c_str());
}

TEST(SafetensorsHostile, MalformedHeaders) {
  const Bytes d8(8);
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      // header, expected message fragment, description
      {"{\"t\":", "not valid JSON", "truncated JSON"},
      {"{abc}", "not valid JSON", "not JSON"},
      {"[1, 2]", "does not start with '{'", "an array"},
      {"{} x", "not valid JSON", "trailing garbage"},
      {R"({"t":1})", "entry 't' is a number, expected an object", "entry not an object"},
      {R"({"t":{"shape":[2],"data_offsets":[0,8]}})", "has no \"dtype\"", "no dtype"},
      {R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", "has no \"shape\"", "no shape"},
      {R"({"t":{"dtype":"F32","shape":[2]}})", "has no \"data_offsets\"", "no offsets"},
      {R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", "unknown dtype \"F17\"",
       "unknown dtype"},
      {R"({"t":{"dtype":3,"shape":[2],"data_offsets":[0,8]}})", "\"dtype\" is a number",
       "numeric dtype"},
      {R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
       "holds -2, expected a non-negative integer", "negative dimension"},
      {R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})",
       "expected a non-negative integer", "fractional dimension"},
      {R"({"t":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", "shape holds an array",
       "nested shape"},
      {R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", "\"shape\" is a number",
       "scalar shape"},
      {R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})",
       "larger than 2^63 - 1", "dimension past int64"},
      {R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})",
       "more elements than fit in 63 bits", "element count overflow"},
      {R"({"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})",
       "needs more bytes than fit in 64 bits", "byte count overflow"},
      {R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
       "needs 12 bytes, but data_offsets [0, 8] hold 8", "shape disagrees with bytes"},
      {R"({"t":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", "needs 4 bytes",
       "dtype disagrees with bytes"},
      {R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
       "run past the end of the data section", "offsets past the end"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "end before they begin",
       "reversed offsets"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", "expected 2", "one offset"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"dtype":"F32"}})",
       "duplicate key 'dtype'", "duplicate field"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "duplicate tensor name 't'", "duplicate name"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       "overlaps tensor 'a'", "overlapping offsets"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       "overlaps tensor", "aliased offsets"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "begins at data offset 4",
       "gap before the data"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "cover 4 bytes of the 8",
       "trailing bytes"},
      {"{\"t\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "not valid UTF-8",
       "non-UTF-8 name"},
      {"{\"t\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
       "not valid UTF-8", "overlong UTF-8 name"},
      {R"({"t\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "not valid JSON",
       "lone surrogate escape"},
      {R"({"__metadata__":{"k":1},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "__metadata__ value for 'k' is a number", "non-string metadata"},
      {R"({"__metadata__":[],"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       "entry '__metadata__' is an array", "metadata not an object"},
  };
  for (const auto& [header, needle, what] : cases)
    expect_rejected(raw_file(header, d8), needle, what);
}

TEST(SafetensorsHostile, EverySingleByteCorruptionIsHandled) {
  // A deterministic miniature of the fuzzer: overwrite each byte of a valid two-tensor file with
  // values that hit the structural characters; each result parses or throws ffnkit::Error.
  SafetensorsWriter w;
  const std::vector<float> v = {1, 2, 3};
  w.add("p.weight", {3}, v);
  w.add("p.bias", {1}, v.data(), Dtype::kF16);
  w.set_metadata("k", "v");
  const Bytes ok = w.to_bytes();
  int accepted = 0, rejected = 0;
  for (std::size_t i = 0; i < ok.size(); ++i) {
    for (unsigned char c : {0x00, 0x22, 0x2c, 0x31, 0x5b, 0x7b, 0x7d, 0xff}) {
      Bytes b = ok;
      b[i] = c;
      try {
        const SafetensorsFile f = SafetensorsFile::from_bytes(b);
        for (const TensorView& t : f.tensors())
          if (t.dtype == Dtype::kF32 || t.dtype == Dtype::kF16) t.to_double();
        ++accepted;
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);  // data-section bytes are free to change
}

// ---------------------------------------------------------------------------------------------
// Layer loaders
// ---------------------------------------------------------------------------------------------
const std::string kPrefix = "model.layers.3.mlp.";

template <class L>
std::vector<typename L::Scalar> forward_of(const L& layer, index_t tokens, std::uint64_t seed) {
  using T = typename L::Scalar;
  std::vector<T> x(static_cast<std::size_t>(tokens * layer.in_features()));
  std::vector<T> y(static_cast<std::size_t>(tokens * layer.out_features()));
  fill_normal(x.data(), static_cast<index_t>(x.size()), seed, 0.0, 1.0);
  layer.forward(make_view<const T>(x.data(), tokens, layer.in_features()),
                make_view(y.data(), tokens, layer.out_features()));
  return y;
}

// Saves `layer` next to a decoy layer under another prefix, writes the file, maps it back.
template <class L, class Save>
SafetensorsFile save_to_file(const L& layer, const L& decoy, Save save, const std::string& tag) {
  SafetensorsWriter w;
  save(w, kPrefix, layer);
  save(w, "model.layers.4.mlp.", decoy);
  const std::string path = temp_path(tag + ".safetensors");
  w.write(path);
  SafetensorsFile f = SafetensorsFile::open(path);
  std::remove(path.c_str());  // the mapping keeps the data alive
  return f;
}

template <class L>
void expect_same_forward(const L& original, const L& loaded) {
  ASSERT_EQ(loaded.in_features(), original.in_features());
  ASSERT_EQ(loaded.out_features(), original.out_features());
  const auto a = forward_of(original, 5, 99), b = forward_of(loaded, 5, 99);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])), 0)
      << "the loaded layer's forward differs from the original's";
}

TEST(SafetensorsLayers, DenseLinearRoundTrips) {
  const auto l = DenseLinear<float>::random(24, 20, 1);
  const auto decoy = DenseLinear<float>::random(24, 20, 2);
  const auto save = [](auto& w, const std::string& p, const auto& x) {
    save_dense_linear(w, p, x);
  };
  const SafetensorsFile f = save_to_file(l, decoy, save, "dense");
  expect_same_forward(l, load_dense_linear(f, kPrefix));
  // No bias: the loader leaves it out.
  const auto nb = DenseLinear<float>::random(7, 3, 4, false);
  SafetensorsWriter w;
  save_dense_linear(w, "x.", nb);
  const auto g = SafetensorsFile::from_bytes(w.to_bytes());
  const auto loaded = load_dense_linear(g, "x.");
  EXPECT_FALSE(loaded.has_bias());
  expect_same_forward(nb, loaded);
}

TEST(SafetensorsLayers, DenseLinearFromHalfBfloatAndAsDouble) {
  const index_t n = 16, m = 8;
  const auto w32 = random_floats(n * m, 5), b32 = random_floats(m, 6);
  for (Dtype dt : {Dtype::kF16, Dtype::kBF16}) {
    SafetensorsWriter w;
    w.add("l.weight", {m, n}, w32.data(), dt);
    w.add("l.bias", {m}, b32.data(), dt);
    const auto f = SafetensorsFile::from_bytes(w.to_bytes());
    // The oracle: the layer built from the same values rounded to the 16-bit type.
    auto round = [dt](std::vector<float> v) {
      for (float& x : v)
        x = dt == Dtype::kF16 ? half_to_float(float_to_half(x))
                              : bfloat16_to_float(float_to_bfloat16(x));
      return v;
    };
    const auto wr = round(w32), br = round(b32);
    expect_same_forward(DenseLinear<float>(n, m, wr.data(), br.data()), load_dense_linear(f, "l."));
  }
  // F32 file loaded as double: exactly the widened weights.
  SafetensorsWriter w;
  w.add("l.weight", {m, n}, w32);
  w.add("l.bias", {m}, b32);
  const auto f = SafetensorsFile::from_bytes(w.to_bytes());
  const std::vector<double> w64(w32.begin(), w32.end()), b64(b32.begin(), b32.end());
  expect_same_forward(DenseLinear<double>(n, m, w64.data(), b64.data()),
                      load_dense_linear<double>(f, "l."));
}

TEST(SafetensorsLayers, StructuredLayersRoundTrip) {
  {
    const auto l = LowRankLinear<float>::random(24, 20, 6, 1);
    const auto d = LowRankLinear<float>::random(24, 20, 4, 2);
    const auto save = [](auto& w, const std::string& p, const auto& x) {
      save_low_rank_linear(w, p, x);
    };
    const auto f = save_to_file(l, d, save, "lowrank");
    const auto loaded = load_low_rank_linear(f, kPrefix);
    EXPECT_EQ(loaded.rank(), 6);
    expect_same_forward(l, loaded);
  }
  {
    const auto l = BlockDiagonalLinear<float>::random(24, 16, 4, 1);
    const auto d = BlockDiagonalLinear<float>::random(24, 16, 2, 2);
    const auto save = [](auto& w, const std::string& p, const auto& x) {
      save_block_diagonal_linear(w, p, x);
    };
    const auto f = save_to_file(l, d, save, "blockdiag");
    const auto loaded = load_block_diagonal_linear(f, kPrefix);
    EXPECT_EQ(loaded.blocks(), 4);
    expect_same_forward(l, loaded);
  }
  {
    const auto l = BlockDenseLinear<float>::random(24, 20, 4, 8, 1);
    const auto d = BlockDenseLinear<float>::random(24, 20, 2, 8, 2);
    const auto save = [](auto& w, const std::string& p, const auto& x) {
      save_block_dense_linear(w, p, x);
    };
    const auto f = save_to_file(l, d, save, "blockdense");
    const auto loaded = load_block_dense_linear(f, kPrefix);
    EXPECT_EQ(loaded.blocks(), 4);
    EXPECT_EQ(loaded.rank(), 8);
    expect_same_forward(l, loaded);
  }
  for (auto [n, m] : {std::pair<index_t, index_t>{24, 16}, {16, 24}}) {
    const auto l = BlockShuffleLinear<float>::random(n, m, 4, 1);
    const auto d = BlockShuffleLinear<float>::random(n, m, 2, 2, false);
    const auto save = [](auto& w, const std::string& p, const auto& x) {
      save_block_shuffle_linear(w, p, x);
    };
    const auto f = save_to_file(l, d, save, "blockshuffle");
    const auto loaded = load_block_shuffle_linear(f, kPrefix);
    EXPECT_EQ(loaded.blocks(), 4);
    expect_same_forward(l, loaded);
    EXPECT_FALSE(load_block_shuffle_linear(f, "model.layers.4.mlp.").has_bias());
  }
}

TEST(SafetensorsLayers, FastFeedForwardRoundTrips) {
  const auto l = FastFeedForward<float>::random(16, 12, 3, 2, 1);
  const auto d = FastFeedForward<float>::random(16, 12, 3, 2, 2);
  const auto save = [](auto& w, const std::string& p, const auto& x) {
    save_fast_feed_forward(w, p, x);
  };
  const auto f = save_to_file(l, d, save, "fff");
  const auto loaded = load_fast_feed_forward(f, kPrefix, 2);
  EXPECT_EQ(loaded.trees(), 3);
  expect_same_forward(l, loaded);
  // 21 rows are 3 trees of depth 2; depth 3 (15 nodes per tree) does not divide them.
  EXPECT_THROW(load_fast_feed_forward(f, kPrefix, 3), Error);
}

TEST(SafetensorsLayers, NormLinearsRoundTrip) {
  const index_t n = 32, m = 12;
  const auto gamma = random_floats(n, 1), beta = random_floats(n, 2);
  const auto w = random_floats(n * m, 3), b = random_floats(m, 4);
  SafetensorsWriter wr;
  wr.add("model.norm.weight", {n}, gamma);
  wr.add("model.norm.bias", {n}, beta);
  wr.add("model.proj.weight", {m, n}, w);
  wr.add("model.proj.bias", {m}, b);
  wr.add("model.rms.weight", {n}, gamma);
  const auto f = SafetensorsFile::from_bytes(wr.to_bytes());
  expect_same_forward(RMSNormLinear<float>(n, m, gamma.data(), w.data(), b.data()),
                      load_rms_norm_linear(f, "model.rms.", "model.proj."));
  expect_same_forward(LayerNormLinear<float>(n, m, gamma.data(), beta.data(), w.data(), b.data()),
                      load_layer_norm_linear(f, "model.norm.", "model.proj."));
  // An RMSNorm without affine weight: γ = 1.
  expect_same_forward(RMSNormLinear<float>(n, m, nullptr, w.data(), b.data()),
                      load_rms_norm_linear(f, "model.none.", "model.proj."));
}

// The loaders name the prefix and the tensor in every failure.
void expect_load_error(const std::function<void()>& load, const std::string& needle) {
  try {
    load();
    ADD_FAILURE() << "loaded, expected an error containing \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SafetensorsLayers, LoadersRejectMissingAndMisshapenTensors) {
  const index_t n = 8, m = 4;
  const auto w = random_floats(n * m, 1), b = random_floats(m + 1, 2);
  auto nan = w;
  nan[5] = std::nanf("");
  const std::int32_t ints[32] = {};
  SafetensorsWriter wr;
  wr.add("ok.weight", {m, n}, w);
  wr.add("badbias.weight", {m, n}, w);
  wr.add("badbias.bias", {m + 1}, b);
  wr.add("rank3.weight", {2, 2, n}, w);
  wr.add("nan.weight", {m, n}, nan);
  wr.add_raw("int.weight", Dtype::kI32, {m, n}, ints, sizeof ints);
  wr.add("empty.weight", {0, n}, w.data());
  wr.add("lr.lr1", {2, n}, w.data());
  wr.add("lr.lr2", {m, 3}, w.data());
  wr.add("bs.blkdiag1", {2, 1, 4}, w.data());  // q must be min(8, 8) / 2 = 4
  wr.add("bs.blkdiag2", {2, 4, 1}, w.data());
  const auto f = SafetensorsFile::from_bytes(wr.to_bytes(), "weights.safetensors");
  expect_load_error([&] { load_dense_linear(f, "missing."); },
                    "load_dense_linear(prefix 'missing.'): safetensors 'weights.safetensors': "
                    "missing tensor 'missing.weight'");
  expect_load_error([&] { load_dense_linear(f, "badbias."); },
                    "tensor 'badbias.bias' has shape [5], expected [4]");
  expect_load_error([&] { load_dense_linear(f, "rank3."); }, "expected 2 dimensions [out, in]");
  expect_load_error([&] { load_dense_linear(f, "nan."); }, "weight[5] = nan is not finite");
  expect_load_error([&] { load_dense_linear(f, "int."); }, "has dtype I32");
  expect_load_error([&] { load_dense_linear(f, "empty."); }, "it has no elements");
  expect_load_error([&] { load_low_rank_linear(f, "lr."); },
                    "tensor 'lr.lr2' has shape [4, 3], expected [4, 2]");
  expect_load_error([&] { load_block_shuffle_linear(f, "bs."); }, "min(in, out) / blocks = 4");
  expect_load_error([&] { load_rms_norm_linear(f, "ok.", "ok."); },
                    "tensor 'ok.weight' has shape [4, 8], expected [8]");
}

// ---------------------------------------------------------------------------------------------
// Whole FFNs laid out as the official StructuredFFN code's MLP modules store them (FusedMLP,
// FusedLowRankMLP, FusedBlockDenseMLP, FusedBlockShuffleMLP: <prefix>fc1. and <prefix>fc2.),
// against a float64 oracle written from the modules' own math (their einsum/bmm reshapes), not
// from ffnkit's layers or reference.
// ---------------------------------------------------------------------------------------------
enum class Official { kDense, kLowRank, kBlockDense, kBlockShuffle };

const char* name_of(Official k) {
  switch (k) {
    case Official::kDense:
      return "dense";
    case Official::kLowRank:
      return "lowrank";
    case Official::kBlockDense:
      return "blockdense";
    case Official::kBlockShuffle:
      return "blockshuffle";
  }
  return "?";
}

// One official layer: in -> out with the MLP config's rank and nblocks (the modules pass the same
// config to fc1 and fc2).
struct OfficialLayer {
  Official kind;
  index_t in, out, rank, blocks;
};

// The tensors written, by full name, widened to double.
using RawTensors = std::map<std::string, std::vector<double>>;

// Registers the layer's parameters under `prefix` with the official names and shapes, as
// BasicLinear and its subclasses create them; a self-guided layer adds guide_linear [out, in] and
// the buffers count (int64 scalar) and ratio (float scalar), which ffnkit does not read.
void add_official_layer(SafetensorsWriter& w, RawTensors& raw, const std::string& prefix,
                        const OfficialLayer& l, bool bias, bool guided, std::uint64_t seed) {
  auto put = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    auto v = random_floats(static_cast<std::size_t>(n), seed++);
    const double scale = 1.0 / std::sqrt(static_cast<double>(shape.back()));
    for (float& e : v) e = static_cast<float>(e * scale);
    w.add(prefix + name, shape, v);
    raw[prefix + name] = std::vector<double>(v.begin(), v.end());
  };
  const index_t b = l.blocks, q = std::min(l.in, l.out) / std::max<index_t>(b, 1);
  switch (l.kind) {
    case Official::kDense:
      put("weight", {l.out, l.in});
      break;
    case Official::kLowRank:
      put("lr1", {l.rank, l.in});
      put("lr2", {l.out, l.rank});
      break;
    case Official::kBlockDense:
      put("blkdiag", {b, l.rank / b, l.in / b});
      put("lr", {l.out, l.rank});
      break;
    case Official::kBlockShuffle:
      put("blkdiag1", {b, q, l.in / b});
      put("blkdiag2", {b, l.out / b, q});
      break;
  }
  if (bias) put("bias", {l.out});
  if (guided) {
    put("guide_linear", {l.out, l.in});
    const std::int64_t count = 1234;
    w.add_raw(prefix + "count", Dtype::kI64, {}, &count, sizeof count);
    const float ratio = 0.25f;
    w.add(prefix + "ratio", {}, &ratio);
  }
}

// The layer's forward without its bias (the modules return the bias separately), following the
// modules' ops: low_rank_custom, block_dense_bmm, block_shuffle_bmm (Monarch's reshapes).
std::vector<double> official_forward(const RawTensors& raw, const std::string& prefix,
                                     const OfficialLayer& l, const std::vector<double>& x,
                                     index_t tokens) {
  const index_t n = l.in, m = l.out;
  std::vector<double> y(static_cast<std::size_t>(tokens * m), 0.0);
  // y[t] = x[t] W^T for a row-major W [m x k] applied to rows of length k.
  auto matmul_t = [&](const std::vector<double>& in, index_t k, const std::vector<double>& w,
                      index_t rows) {
    std::vector<double> out(static_cast<std::size_t>(tokens * rows), 0.0);
    for (index_t t = 0; t < tokens; ++t)
      for (index_t o = 0; o < rows; ++o)
        for (index_t i = 0; i < k; ++i) out[t * rows + o] += in[t * k + i] * w[o * k + i];
    return out;
  };
  // x reshaped (k, p), out1[k, q] = blkdiag[k] x_k, flattened as k*q + q'.
  auto blockdiag = [&](const std::vector<double>& w, index_t k, index_t qq) {
    const index_t p = n / k;
    std::vector<double> out(static_cast<std::size_t>(tokens * k * qq), 0.0);
    for (index_t t = 0; t < tokens; ++t)
      for (index_t kk = 0; kk < k; ++kk)
        for (index_t j = 0; j < qq; ++j)
          for (index_t i = 0; i < p; ++i)
            out[t * k * qq + kk * qq + j] += w[(kk * qq + j) * p + i] * x[t * n + kk * p + i];
    return out;
  };
  switch (l.kind) {
    case Official::kDense:
      return matmul_t(x, n, raw.at(prefix + "weight"), m);
    case Official::kLowRank:
      return matmul_t(matmul_t(x, n, raw.at(prefix + "lr1"), l.rank), l.rank,
                      raw.at(prefix + "lr2"), m);
    case Official::kBlockDense:
      return matmul_t(blockdiag(raw.at(prefix + "blkdiag"), l.blocks, l.rank / l.blocks), l.rank,
                      raw.at(prefix + "lr"), m);
    case Official::kBlockShuffle: {
      const index_t k = l.blocks, q = std::min(n, m) / k;
      const auto out1 = blockdiag(raw.at(prefix + "blkdiag1"), k, q);
      // out1 (k q) -> (r, l) -> block l reads element r at flat index r * L + l; out2[l, s] =
      // blkdiag2[l] . that; the output is out2 permuted to (s, l), flat index s * L + l.
      const auto& w2 = raw.at(prefix + "blkdiag2");
      const index_t L = k, s_dim = m / L, r_dim = k * q / L;
      for (index_t t = 0; t < tokens; ++t)
        for (index_t li = 0; li < L; ++li)
          for (index_t si = 0; si < s_dim; ++si) {
            double acc = 0.0;
            for (index_t ri = 0; ri < r_dim; ++ri)
              acc += w2[(li * s_dim + si) * r_dim + ri] * out1[t * k * q + ri * L + li];
            y[t * m + si * L + li] = acc;
          }
      return y;
    }
  }
  return y;
}

double official_activation(FfnActivation act, double x) {
  switch (act) {
    case FfnActivation::kGeluTanh:  // bias_gelu_fused_
      return 0.5 * x *
             (1.0 + std::tanh(std::sqrt(2.0 / std::acos(-1.0)) * (x + 0.044715 * x * x * x)));
    case FfnActivation::kGeluErf:
      return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case FfnActivation::kRelu:
      return x > 0.0 ? x : 0.0;
    case FfnActivation::kSilu:
    case FfnActivation::kSwiGlu:
      return x / (1.0 + std::exp(-x));
  }
  return NAN;
}

// FusedBasicMLP.forward with both biases added: fc2(act(fc1(x) + b1)) + b2; for SwiGLU,
// torch.chunk(y, 2, -1) splits fc1's output into (gate, up), gate first: silu(gate) * up.
std::vector<double> official_mlp(const RawTensors& raw, const std::string& prefix,
                                 const OfficialLayer& fc1, const OfficialLayer& fc2,
                                 FfnActivation act, const std::vector<double>& x, index_t tokens) {
  auto h = official_forward(raw, prefix + "fc1.", fc1, x, tokens);
  if (raw.count(prefix + "fc1.bias"))
    for (index_t t = 0; t < tokens; ++t)
      for (index_t j = 0; j < fc1.out; ++j) h[t * fc1.out + j] += raw.at(prefix + "fc1.bias")[j];
  const index_t f = fc2.in;
  std::vector<double> a(static_cast<std::size_t>(tokens * f));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t j = 0; j < f; ++j)
      a[t * f + j] = act == FfnActivation::kSwiGlu
                         ? official_activation(act, h[t * fc1.out + j]) * h[t * fc1.out + f + j]
                         : official_activation(act, h[t * fc1.out + j]);
  auto y = official_forward(raw, prefix + "fc2.", fc2, a, tokens);
  if (raw.count(prefix + "fc2.bias"))
    for (index_t t = 0; t < tokens; ++t)
      for (index_t j = 0; j < fc2.out; ++j) y[t * fc2.out + j] += raw.at(prefix + "fc2.bias")[j];
  return y;
}

// Loads the FFN at `prefix` with the loader for `kind` and runs fn on it.
template <class Fn>
void with_loaded_ffn(Official kind, const SafetensorsFile& f, const std::string& prefix,
                     FfnActivation act, Fn&& fn) {
  switch (kind) {
    case Official::kDense:
      return fn(load_dense_ffn(f, prefix, act));
    case Official::kLowRank:
      return fn(load_structured_ffn<LowRankLinear<float>>(f, prefix, act));
    case Official::kBlockDense:
      return fn(load_structured_ffn<BlockDenseLinear<float>>(f, prefix, act));
    case Official::kBlockShuffle:
      return fn(load_structured_ffn<BlockShuffleLinear<float>>(f, prefix, act));
  }
}

// The official MLP at `prefix`: fc1 d -> d_ff (2 d_ff for SwiGLU), fc2 d_ff -> d.
std::pair<OfficialLayer, OfficialLayer> official_mlp_layers(Official kind, index_t d, index_t d_ff,
                                                            index_t rank, index_t blocks,
                                                            bool swiglu) {
  return {{kind, d, swiglu ? 2 * d_ff : d_ff, rank, blocks}, {kind, d_ff, d, rank, blocks}};
}

TEST(SafetensorsFfn, OfficialMlpCheckpointsMatchTheModulesMath) {
  const index_t d = 16, d_ff = 32, tokens = 5;
  const std::string prefix = "model.layers.0.mlp.";
  struct Config {
    Official kind;
    index_t rank, blocks;
  };
  // BlockDense at rank = d = min(in, out) of fc2: the official module accepts it.
  const Config configs[] = {{Official::kDense, 0, 0},
                            {Official::kLowRank, 4, 0},
                            {Official::kBlockDense, 8, 2},
                            {Official::kBlockDense, d, 4},
                            {Official::kBlockShuffle, 0, 4}};
  const FfnActivation acts[] = {FfnActivation::kGeluTanh, FfnActivation::kGeluErf,
                                FfnActivation::kRelu, FfnActivation::kSilu, FfnActivation::kSwiGlu};
  for (const Config& c : configs) {
    for (FfnActivation act : acts) {
      for (bool bias : {true, false}) {
        for (bool guided : {false, true}) {
          const bool swiglu = act == FfnActivation::kSwiGlu;
          SCOPED_TRACE(testing::Message()
                       << name_of(c.kind) << " rank=" << c.rank << " blocks=" << c.blocks << " act="
                       << static_cast<int>(act) << " bias=" << bias << " guided=" << guided);
          const auto [fc1, fc2] = official_mlp_layers(c.kind, d, d_ff, c.rank, c.blocks, swiglu);
          SafetensorsWriter w;
          RawTensors raw;
          add_official_layer(w, raw, prefix + "fc1.", fc1, bias, guided, 10);
          add_official_layer(w, raw, prefix + "fc2.", fc2, bias, guided, 20);
          // Another layer of the same model, to be left alone.
          add_official_layer(w, raw, "model.layers.1.mlp.fc1.", fc1, bias, guided, 30);
          add_official_layer(w, raw, "model.layers.1.mlp.fc2.", fc2, bias, guided, 40);
          const auto f = SafetensorsFile::from_bytes(w.to_bytes(), "official.safetensors");
          const auto x = random_floats(static_cast<std::size_t>(tokens * d), 7);
          const auto ref = official_mlp(raw, prefix, fc1, fc2, act,
                                        std::vector<double>(x.begin(), x.end()), tokens);
          with_loaded_ffn(c.kind, f, prefix, act, [&](auto ffn) {
            EXPECT_EQ(ffn.d_model(), d);
            EXPECT_EQ(ffn.d_ff(), d_ff);
            EXPECT_EQ(ffn.gated(), swiglu);
            std::vector<float> y(static_cast<std::size_t>(tokens * d));
            ffn.forward(make_view<const float>(x.data(), tokens, d),
                        make_view(y.data(), tokens, d));
            EXPECT_TRUE(test::within_tolerance<float>(test::compare(y.data(), tokens, d, d, ref)));
          });
        }
      }
    }
  }
}

// `load` must throw ffnkit::Error with every one of `parts` in its message.
void expect_ffn_error(const std::function<void()>& load, std::initializer_list<std::string> parts) {
  EXPECT_TRUE(test::throws_error(load, parts));
}

TEST(SafetensorsFfn, LoadersNameWhatTheyFind) {
  const index_t d = 16, d_ff = 32;
  const std::string p = "model.layers.0.mlp.";
  // A file holding one MLP of `kind` (rank 4 / 8, blocks 2 / 4) with fc1 `out1` wide.
  auto file = [&](Official kind, index_t out1, index_t fc2_in) {
    SafetensorsWriter w;
    RawTensors raw;
    const index_t rank = kind == Official::kLowRank ? 4 : 8;
    const index_t blocks = kind == Official::kBlockShuffle ? 4 : 2;
    add_official_layer(w, raw, p + "fc1.", {kind, d, out1, rank, blocks}, true, false, 1);
    add_official_layer(w, raw, p + "fc2.", {kind, fc2_in, d, rank, blocks}, true, false, 2);
    return SafetensorsFile::from_bytes(w.to_bytes(), "mlp.safetensors");
  };
  const FfnActivation gelu = FfnActivation::kGeluTanh, swiglu = FfnActivation::kSwiGlu;
  // Another layer kind at fc1: named, with its tensors' shapes, and the kind that was requested.
  const auto bd = file(Official::kBlockDense, d_ff, d_ff);
  expect_ffn_error([&] { load_structured_ffn<LowRankLinear<float>>(bd, p, gelu); },
                   {"load_structured_ffn(prefix 'model.layers.0.mlp.')", "mlp.safetensors",
                    "'model.layers.0.mlp.fc1.' holds a BlockDenseLinear",
                    "tensor 'model.layers.0.mlp.fc1.blkdiag' has shape [2, 4, 8]",
                    "tensor 'model.layers.0.mlp.fc1.lr' has shape [32, 8]",
                    "not the LowRankLinear requested (lr1 [R, N], lr2 [M, R])"});
  const auto lr = file(Official::kLowRank, d_ff, d_ff);
  expect_ffn_error([&] { load_dense_ffn(lr, p, gelu); },
                   {"load_dense_ffn(prefix 'model.layers.0.mlp.')", "holds a LowRankLinear",
                    "not the DenseLinear requested (weight [M, N])"});
  expect_ffn_error([&] { load_structured_ffn<BlockShuffleLinear<float>>(lr, p, gelu); },
                   {"holds a LowRankLinear", "not the BlockShuffleLinear requested"});
  // A rank-3 weight is a BlockDiagonal layer, not a dense one.
  {
    SafetensorsWriter w;
    w.add(p + "fc1.weight", {2, 16, 8}, random_floats(256, 1));
    const auto f = SafetensorsFile::from_bytes(w.to_bytes());
    expect_ffn_error([&] { load_dense_ffn(f, p, gelu); },
                     {"holds a BlockDiagonalLinear",
                      "tensor 'model.layers.0.mlp.fc1.weight' has shape [2, 16, 8]"});
  }
  // Nothing at the prefix: the per-layer loader's missing tensor.
  expect_ffn_error(
      [&] { load_structured_ffn<LowRankLinear<float>>(lr, "model.layers.9.mlp.", gelu); },
      {"load_structured_ffn(prefix 'model.layers.9.mlp.')",
       "load_low_rank_linear(prefix 'model.layers.9.mlp.fc1.')",
       "missing tensor 'model.layers.9.mlp.fc1.lr1'"});
  // SwiGLU needs an even fc1 width.
  const auto odd = file(Official::kLowRank, 2 * d_ff + 1, d_ff);
  expect_ffn_error([&] { load_structured_ffn<LowRankLinear<float>>(odd, p, swiglu); },
                   {"fc1 has 65 outputs", "tensor 'model.layers.0.mlp.fc1.lr2' has shape [65, 4]",
                    "SwiGLU needs an even width"});
  const auto odd_dense = file(Official::kDense, 2 * d_ff + 1, d_ff);
  expect_ffn_error([&] { load_dense_ffn(odd_dense, p, swiglu); },
                   {"load_dense_ffn", "fc1 has 65 outputs",
                    "tensor 'model.layers.0.mlp.fc1.weight' has shape [65, 16]"});
  // A SwiGLU checkpoint loaded as GELU, and a GELU one loaded as SwiGLU: fc2's width disagrees.
  const auto sw = file(Official::kLowRank, 2 * d_ff, d_ff);
  expect_ffn_error([&] { load_structured_ffn<LowRankLinear<float>>(sw, p, gelu); },
                   {"fc2 takes 32 inputs", "tensor 'model.layers.0.mlp.fc2.lr1' has shape [4, 32]",
                    "but fc1 gives 64", "tensor 'model.layers.0.mlp.fc1.lr2' has shape [64, 4]"});
  expect_ffn_error([&] { load_structured_ffn<LowRankLinear<float>>(lr, p, swiglu); },
                   {"fc2 takes 32 inputs", "but fc1 gives 16 (half of its outputs, SwiGLU)"});
  const auto bs = file(Official::kBlockShuffle, d_ff, d_ff);
  expect_ffn_error([&] { load_dense_ffn(bs, p, swiglu); }, {"holds a BlockShuffleLinear"});
  // The per-layer checks still apply, named through both loaders.
  {
    SafetensorsWriter w;
    RawTensors raw;
    add_official_layer(w, raw, p + "fc1.", {Official::kLowRank, d, d_ff, 4, 0}, false, false, 1);
    add_official_layer(w, raw, p + "fc2.", {Official::kLowRank, d_ff, d, 4, 0}, false, false, 2);
    w.add(p + "fc2.bias", {d + 1}, random_floats(d + 1, 3));
    const auto f = SafetensorsFile::from_bytes(w.to_bytes());
    expect_ffn_error([&] { load_structured_ffn<LowRankLinear<float>>(f, p, gelu); },
                     {"load_structured_ffn(prefix 'model.layers.0.mlp.')",
                      "load_low_rank_linear(prefix 'model.layers.0.mlp.fc2.')",
                      "tensor 'model.layers.0.mlp.fc2.bias' has shape [17], expected [16]"});
  }
}

// The fused gate|up form from a loaded SwiGLU checkpoint shares LowRank's V: fewer parameters and
// FLOPs than the same FFN as separate gate and up layers.
TEST(SafetensorsFfn, StructuredSwigluLoadsAsOneGateUpLayer) {
  const index_t d = 16, d_ff = 32, rank = 4;
  const std::string p = "model.layers.0.mlp.";
  SafetensorsWriter w;
  RawTensors raw;
  add_official_layer(w, raw, p + "fc1.", {Official::kLowRank, d, 2 * d_ff, rank, 0}, true, true, 1);
  add_official_layer(w, raw, p + "fc2.", {Official::kLowRank, d_ff, d, rank, 0}, true, true, 2);
  const auto f = SafetensorsFile::from_bytes(w.to_bytes());
  auto ffn = load_structured_ffn<LowRankLinear<float>>(f, p, FfnActivation::kSwiGlu);
  EXPECT_TRUE(ffn.fused_gate_up());
  EXPECT_EQ(ffn.up().out_features(), 2 * d_ff);
  EXPECT_EQ(ffn.up().rank(), rank);
  // lr1 + lr2 + bias of each layer: what the checkpoint holds, guide_linear excluded.
  EXPECT_EQ(ffn.parameter_count(), rank * (d + 2 * d_ff) + 2 * d_ff + rank * (d_ff + d) + d);
  EXPECT_EQ(ffn.params().front().name, "gate_up.lr1");
}

}  // namespace
}  // namespace io
}  // namespace ffnkit
