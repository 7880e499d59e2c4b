#include "net/udp_socket.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace rs::net {
namespace {

SockAddr addr(const char* s) {
  return *parse_sockaddr(s);
}

TEST(UdpSocket, OpensBoundNonBlocking) {
  std::string err;
  UniqueFd fd = open_udp(addr("127.0.0.1:0"), &err);
  ASSERT_TRUE(fd) << err;
  SockAddr local = local_of(fd.get());
  EXPECT_EQ(local.to_string().rfind("127.0.0.1:", 0), 0u);
  EXPECT_NE(local.port(), 0);
  char c;
  EXPECT_LT(recv(fd.get(), &c, 1, 0), 0);  // nothing queued: EAGAIN, not a block
  EXPECT_EQ(errno, EAGAIN);
}

TEST(UdpSocket, BindFailureNamesTheAddress) {
  std::string err;
  UniqueFd fd = open_udp(addr("192.0.2.1:0"), &err);  // not a local address
  EXPECT_FALSE(fd);
  EXPECT_NE(err.find("192.0.2.1"), std::string::npos) << err;
}

TEST(UdpSocket, UnmapsIpv4MappedAddresses) {
  EXPECT_EQ(unmapped(addr("[::ffff:127.0.0.1]:53")).to_string(), "127.0.0.1:53");
  EXPECT_EQ(unmapped(addr("[::1]:53")).to_string(), "[::1]:53");
  EXPECT_EQ(unmapped(addr("10.0.0.1:1")).to_string(), "10.0.0.1:1");
}

TEST(UdpSocket, EndpointKeysAndSameIp) {
  EXPECT_EQ(endpoint_key(addr("127.0.0.1:53")), endpoint_key(addr("127.0.0.1:53")));
  EXPECT_NE(endpoint_key(addr("127.0.0.1:53")), endpoint_key(addr("127.0.0.1:54")));
  EXPECT_NE(endpoint_key(addr("127.0.0.1:53")), endpoint_key(addr("127.0.0.2:53")));
  EXPECT_NE(endpoint_key(addr("[::1]:53")), endpoint_key(addr("127.0.0.1:53")));
  EXPECT_TRUE(same_ip(addr("127.0.0.1:1"), addr("127.0.0.1:2")));
  EXPECT_FALSE(same_ip(addr("127.0.0.1:1"), addr("127.0.0.2:1")));
  EXPECT_TRUE(same_ip(addr("[::1]:1"), addr("[::1]:9")));
  EXPECT_FALSE(same_ip(addr("[::ffff:127.0.0.1]:1"), addr("127.0.0.1:1")));  // unmap first
  EXPECT_EQ(any_address(AF_INET6).to_string(), "[::]:0");
  EXPECT_EQ(any_address(AF_INET).to_string(), "0.0.0.0:0");
}

}  // namespace
}  // namespace rs::net
