#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "server/server.hpp"

namespace rs::server {
namespace {

TEST(SessionsForFdLimit, TwoFdsPerSessionAfterHeadroom) {
  EXPECT_EQ(sessions_for_fd_limit(64), 24u);     // headroom 16
  EXPECT_EQ(sessions_for_fd_limit(1024), 480u);  // headroom 64
  EXPECT_EQ(sessions_for_fd_limit(20000), 9872u);
  EXPECT_EQ(sessions_for_fd_limit(1 << 20), ((1u << 20) - 256) / 2);  // headroom at most 256
}

TEST(SessionsForFdLimit, TinyLimitsStillAllowOne) {
  EXPECT_EQ(sessions_for_fd_limit(0), 1u);
  EXPECT_EQ(sessions_for_fd_limit(3), 1u);
  EXPECT_EQ(sessions_for_fd_limit(17), 1u);
  EXPECT_EQ(sessions_for_fd_limit(20), 2u);
}

TEST(SessionsForFdLimit, HugeLimitMeansNoLimit) {
  EXPECT_EQ(sessions_for_fd_limit(std::numeric_limits<uint64_t>::max()),
            std::numeric_limits<size_t>::max());
}

}  // namespace
}  // namespace rs::server
