// A seeded, platform-independent RNG for initialisation and stochastic decisions. std::normal_
// distribution is implementation-defined, so the same seed would give different weights under
// libstdc++ and libc++; this one gives the same stream everywhere, including on the device.
#pragma once

#include <math.h>

#include <cstdint>

#include "ffnkit/core/macros.hpp"

namespace ffnkit {

// splitmix64: used to seed and as a stateless counter hash (hash(seed, counter) is what a kernel
// needs to draw per-element decisions without shared state).
FFNKIT_HOST_DEVICE inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// xoshiro256** (Blackman & Vigna), seeded through splitmix64.
class Rng {
 public:
  FFNKIT_HOST_DEVICE explicit Rng(std::uint64_t seed = 0) {
    std::uint64_t s = seed;
    for (auto& word : state_) {
      s += 0x9E3779B97F4A7C15ull;
      word = splitmix64(s);
    }
  }

  FFNKIT_HOST_DEVICE std::uint64_t next_u64() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  FFNKIT_HOST_DEVICE double uniform() {
    return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
  }

  // Standard normal by Box-Muller; the second value of each pair is kept for the next call.
  FFNKIT_HOST_DEVICE double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double radius = ::sqrt(-2.0 * ::log(u1));
    const double angle = 6.283185307179586477 * u2;
    spare_ = radius * ::sin(angle);
    has_spare_ = true;
    return radius * ::cos(angle);
  }

  FFNKIT_HOST_DEVICE double normal(double mean, double stddev) { return mean + stddev * normal(); }

 private:
  FFNKIT_HOST_DEVICE static std::uint64_t rotl(std::uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
  }
  std::uint64_t state_[4] = {0, 0, 0, 0};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// Fills `count` values with N(mean, stddev^2) from `seed`.
template <class T>
void fill_normal(T* out, std::int64_t count, std::uint64_t seed, double mean, double stddev) {
  Rng rng(seed);
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(rng.normal(mean, stddev));
}

template <class T>
void fill_uniform(T* out, std::int64_t count, std::uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  for (std::int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(lo + (hi - lo) * rng.uniform());
}

}  // namespace ffnkit
