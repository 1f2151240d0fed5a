// Activation functors shared by every backend (docs/math.md §2). Each is FFNKIT_HOST_DEVICE so one
// body serves the CPU scalar tail, CUDA kernels and the CudaEmu build; computation is in float for
// float inputs and in double for double inputs (half types are widened to float by the caller).
#pragma once

#include <math.h>

#include <string>

#include "ffnkit/core/error.hpp"
#include "ffnkit/core/macros.hpp"

namespace ffnkit {

enum class Activation : int {
  kIdentity = 0,
  kRelu,
  kGeluTanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the paper's FFN (docs/math.md
              // §3.8)
  kGeluErf,   // x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))): UltraFastBERT's FFF (docs/math.md §6)
  kSilu,      // x / (1 + exp(-x)), the gate of SwiGLU
};

inline const char* to_string(Activation a) {
  switch (a) {
    case Activation::kIdentity:
      return "identity";
    case Activation::kRelu:
      return "relu";
    case Activation::kGeluTanh:
      return "gelu_tanh";
    case Activation::kGeluErf:
      return "gelu_erf";
    case Activation::kSilu:
      return "silu";
  }
  return "unknown";
}

// Rejects a value outside the enum (e.g. a cast from an integer read from a file), which every
// switch over Activation would otherwise treat as no activation at all.
inline void check_activation_value(const char* where, Activation a) {
  switch (a) {
    case Activation::kIdentity:
    case Activation::kRelu:
    case Activation::kGeluTanh:
    case Activation::kGeluErf:
    case Activation::kSilu:
      return;
  }
  fail(where, "activation = ", static_cast<int>(a), " is not a valid ffnkit::Activation");
}

inline Activation parse_activation(const std::string& s) {
  for (Activation a : {Activation::kIdentity, Activation::kRelu, Activation::kGeluTanh,
                       Activation::kGeluErf, Activation::kSilu}) {
    if (s == to_string(a)) return a;
  }
  fail("parse_activation", "activation = \"", s, "\" is not one of identity, relu, gelu_tanh, ",
       "gelu_erf, silu");
}

namespace detail {
// C math entry points exist on the host and, under nvcc, on the device, for both precisions.
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float m_tanh(float x) { return ::tanhf(x); }
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE double m_tanh(double x) { return ::tanh(x); }
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float m_erfc(float x) { return ::erfcf(x); }
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE double m_erfc(double x) { return ::erfc(x); }
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE float m_exp(float x) { return ::expf(x); }
FFNKIT_HOST_DEVICE FFNKIT_FORCEINLINE double m_exp(double x) { return ::exp(x); }
}  // namespace detail

struct IdentityFn {
  template <class T>
  FFNKIT_HOST_DEVICE T operator()(T x) const {
    return x;
  }
  template <class T>
  FFNKIT_HOST_DEVICE T grad(T) const {
    return T(1);
  }
};

struct ReluFn {
  template <class T>
  FFNKIT_HOST_DEVICE T operator()(T x) const {
    return x > T(0) ? x : T(0);
  }
  // The subgradient at 0 is taken as 0, as PyTorch does.
  template <class T>
  FFNKIT_HOST_DEVICE T grad(T x) const {
    return x > T(0) ? T(1) : T(0);
  }
};

// Evaluated as x * sigmoid(2u) = x / (1 + exp(-2u)), the same function as 0.5 x (1 + tanh(u)):
// the textbook form cancels catastrophically for x << 0 (GELU(-5) ~ -1.4e-6 from 1 + tanh ~ 0).
struct GeluTanhFn {
  static constexpr double kSqrt2OverPi = 0.79788456080286535588;
  static constexpr double kCubic = 0.044715;
  template <class T>
  FFNKIT_HOST_DEVICE T operator()(T x) const {
    const T u = T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x);
    return x / (T(1) + detail::m_exp(T(-2) * u));
  }
  template <class T>
  FFNKIT_HOST_DEVICE T grad(T x) const {
    const T u = T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x);
    const T s = T(1) / (T(1) + detail::m_exp(T(-2) * u));
    const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kCubic) * x * x);
    return s + T(2) * x * s * (T(1) - s) * du;
  }
};

// Evaluated as 0.5 x erfc(-x / sqrt(2)), equal to 0.5 x (1 + erf(x / sqrt(2))) but without the
// cancellation of 1 + erf for x << 0.
struct GeluErfFn {
  static constexpr double kInvSqrt2 = 0.70710678118654752440;
  static constexpr double kInvSqrt2Pi = 0.39894228040143267794;
  template <class T>
  FFNKIT_HOST_DEVICE T operator()(T x) const {
    return T(0.5) * x * detail::m_erfc(-x * T(kInvSqrt2));
  }
  template <class T>
  FFNKIT_HOST_DEVICE T grad(T x) const {
    return T(0.5) * detail::m_erfc(-x * T(kInvSqrt2)) +
           x * T(kInvSqrt2Pi) * detail::m_exp(T(-0.5) * x * x);
  }
};

struct SiluFn {
  template <class T>
  FFNKIT_HOST_DEVICE T operator()(T x) const {
    return x / (T(1) + detail::m_exp(-x));
  }
  template <class T>
  FFNKIT_HOST_DEVICE T grad(T x) const {
    const T s = T(1) / (T(1) + detail::m_exp(-x));
    return s * (T(1) + x * (T(1) - s));
  }
};

// Calls f(Functor{}) for the runtime activation, so kernels are instantiated per activation and the
// functor inlines into the inner loop.
template <class F>
decltype(auto) dispatch_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::kIdentity:
      return f(IdentityFn{});
    case Activation::kRelu:
      return f(ReluFn{});
    case Activation::kGeluTanh:
      return f(GeluTanhFn{});
    case Activation::kGeluErf:
      return f(GeluErfFn{});
    case Activation::kSilu:
      return f(SiluFn{});
  }
  fail("dispatch_activation", "activation = ", static_cast<int>(a), " is not a known Activation");
}

}  // namespace ffnkit
