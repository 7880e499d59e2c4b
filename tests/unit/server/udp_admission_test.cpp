#include "server/udp_admission.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace rs::server {
namespace {

TEST(UdpAdmission, LimitsPerClientAndInTotal) {
  UdpAdmission a;
  a.set_limits(3, 2);
  std::vector<UdpAdmission::Ticket> held;
  held.push_back(*a.admit("10.0.0.1"));
  held.push_back(*a.admit("10.0.0.1"));
  EXPECT_FALSE(a.admit("10.0.0.1"));  // per client
  held.push_back(*a.admit("10.0.0.2"));
  EXPECT_FALSE(a.admit("10.0.0.3"));  // in total
  EXPECT_EQ(a.live(), 3u);
  held.erase(held.begin());  // a ticket gives its place back
  EXPECT_EQ(a.live(), 2u);
  auto again = a.admit("10.0.0.1");
  EXPECT_TRUE(again);
  EXPECT_FALSE(a.admit("10.0.0.2"));
}

TEST(UdpAdmission, MovedTicketsReleaseOnce) {
  UdpAdmission a;
  a.set_limits(1, 1);
  {
    auto t = a.admit("c");
    ASSERT_TRUE(t);
    UdpAdmission::Ticket moved(std::move(*t));
    EXPECT_EQ(a.live(), 1u);
  }
  EXPECT_EQ(a.live(), 0u);
  EXPECT_TRUE(a.admit("c"));
}

}  // namespace
}  // namespace rs::server
