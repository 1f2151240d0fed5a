// Which backends this test binary carries, stated as tests so that a missing backend shows up as a
// visible skip in every test run, never as silence.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "support/harness.hpp"

namespace ffnkit {
namespace {

TEST(Backends, CudaEmuIsCompiled) {
#if defined(FFNKIT_WITH_CUDA_EMU)
  FFNKIT_SKIP_IF_UNAVAILABLE(CudaEmu);
  SUCCEED();
#else
  GTEST_SKIP() << "backend CudaEmu not compiled: needs the CUDA toolkit headers and "
                  "libboost-context-dev at configure time";
#endif
}

TEST(Backends, CudaIsCompiledAndHasADevice) {
#if defined(FFNKIT_WITH_CUDA)
  FFNKIT_SKIP_IF_UNAVAILABLE(Cuda);
  SUCCEED();
#else
  const char* req = std::getenv("FFNKIT_REQUIRE_CUDA");
  if (req && std::string(req) == "1") FAIL() << "FFNKIT_REQUIRE_CUDA=1 but CUDA was not compiled";
  GTEST_SKIP() << "backend Cuda not compiled: configure with nvcc available (FFNKIT_CUDA=AUTO/ON)";
#endif
}

#if defined(FFNKIT_WITH_CUDA_EMU)
// On a GPU, passing device memory where a copy expects host memory faults; the emulator, where
// both are host memory, must reject it rather than let the mistake pass silently.
TEST(CudaEmuRuntime, HostDeviceMixUpIsAnError) {
  cuda_emu::DeviceBuffer<float> a(16), b(16);
  std::vector<float> host(16, 1.f);
  EXPECT_TRUE(test::throws_error(
      [&] {
        cuda_emu::copy(a.data(), b.data(), 64, cuda_emu::CopyKind::kHostToDevice,
                       cuda_emu::Stream());
      },
      {"src", "is device memory"}));
  EXPECT_TRUE(test::throws_error(
      [&] {
        cuda_emu::copy(a.data(), b.data(), 64, cuda_emu::CopyKind::kDeviceToHost,
                       cuda_emu::Stream());
      },
      {"dst", "is device memory"}));
  EXPECT_NO_THROW(a.upload(host.data(), 16));
}
#endif

}  // namespace
}  // namespace ffnkit
