// Helpers shared by the emulator's test files.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "ffnkit/core/error.hpp"

namespace ffnkit {
namespace test {

// Runs `fn` and returns the ffnkit::Error message it throws; fails the test if it does not throw.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected ffnkit::Error";
  return {};
}

}  // namespace test
}  // namespace ffnkit
