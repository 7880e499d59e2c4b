// The registry of our own connections to the API: which remotes it watches,
// and its bound.
#include "net/self_connections.hpp"

#include <gtest/gtest.h>

namespace rs::net {
namespace {

SockAddr at(const char* text) {
  return *parse_sockaddr(text);
}

TEST(SelfConnectionsTest, WatchesTheApiAddressOnly) {
  SelfConnections reg;
  EXPECT_FALSE(reg.watching());
  reg.watch(at("127.0.0.1:9080"));
  EXPECT_TRUE(reg.watching());
  const SockAddr local = at("127.0.0.1:40000");
  EXPECT_TRUE(reg.reaches_watched(local, at("127.0.0.1:9080")));
  EXPECT_FALSE(reg.reaches_watched(local, at("127.0.0.2:9080")));
  EXPECT_FALSE(reg.reaches_watched(local, at("127.0.0.1:9081")));
}

TEST(SelfConnectionsTest, AWildcardApiIsEveryAddressOfThisHost) {
  SelfConnections reg;
  reg.watch(at("0.0.0.0:9080"));
  EXPECT_TRUE(reg.reaches_watched(at("127.0.0.1:40000"), at("127.0.0.5:9080")));
  EXPECT_TRUE(reg.reaches_watched(at("127.0.0.1:40000"), at("0.0.0.0:9080")));
  // A LAN address of this host shows at our own end too; another host's does not.
  EXPECT_TRUE(reg.reaches_watched(at("10.1.2.3:40000"), at("10.1.2.3:9080")));
  EXPECT_FALSE(reg.reaches_watched(at("10.9.9.9:40000"), at("10.1.2.3:9080")));
}

TEST(SelfConnectionsTest, AddContainsForget) {
  SelfConnections reg;
  const SockAddr a = at("127.0.0.1:40000"), b = at("127.0.0.1:40001");
  EXPECT_TRUE(reg.add(a));
  EXPECT_TRUE(reg.contains(a));
  EXPECT_FALSE(reg.contains(b));
  reg.forget(a);
  EXPECT_FALSE(reg.contains(a));
  EXPECT_EQ(reg.size(), 0u);
  reg.forget(b);  // unknown: nothing happens
}

// A dual-stack API sees our IPv4 socket as an IPv4-mapped IPv6 peer.
TEST(SelfConnectionsTest, MappedPeersMatchTheirIpv4Address) {
  SelfConnections reg;
  EXPECT_TRUE(reg.add(at("127.0.0.1:40000")));
  EXPECT_TRUE(reg.contains(at("[::ffff:127.0.0.1]:40000")));
  EXPECT_FALSE(reg.contains(at("[::ffff:127.0.0.1]:40001")));
  reg.forget(at("[::ffff:127.0.0.1]:40000"));
  EXPECT_EQ(reg.size(), 0u);
}

TEST(SelfConnectionsTest, BoundedAndFailSafe) {
  SelfConnections reg(2);
  EXPECT_TRUE(reg.add(at("127.0.0.1:1")));
  EXPECT_TRUE(reg.add(at("127.0.0.1:2")));
  EXPECT_FALSE(reg.add(at("127.0.0.1:3")));
  EXPECT_EQ(reg.size(), 2u);
  reg.forget(at("127.0.0.1:1"));
  EXPECT_TRUE(reg.add(at("127.0.0.1:3")));
}

TEST(SelfConnectionsTest, LoopbackAndWildcard) {
  EXPECT_TRUE(is_loopback(at("127.1.2.3:1")));
  EXPECT_TRUE(is_loopback(at("[::1]:1")));
  EXPECT_TRUE(is_loopback(at("[::ffff:127.0.0.1]:1")));
  EXPECT_FALSE(is_loopback(at("0.0.0.0:1")));
  EXPECT_FALSE(is_loopback(at("[::]:1")));
  EXPECT_FALSE(is_loopback(at("10.0.0.1:1")));
  EXPECT_TRUE(is_wildcard(at("0.0.0.0:1")));
  EXPECT_TRUE(is_wildcard(at("[::]:1")));
  EXPECT_FALSE(is_wildcard(at("127.0.0.1:1")));
}

}  // namespace
}  // namespace rs::net
