#include "net/sockaddr.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "core/fd.hpp"

namespace rs::net {
namespace {

TEST(SockAddr, FromIpv4) {
  auto a = SockAddr::from(proto::Ipv4{1, 2, 3, 4}, 80);
  EXPECT_EQ(a.family(), AF_INET);
  EXPECT_EQ(a.len, sizeof(sockaddr_in));
  EXPECT_EQ(a.port(), 80);
  EXPECT_EQ(a.to_string(), "1.2.3.4:80");
  EXPECT_EQ(a.get()->sa_family, AF_INET);
}

TEST(SockAddr, FromIpv6) {
  proto::Ipv6 loopback{};
  loopback[15] = 1;
  auto a = SockAddr::from(loopback, 443);
  EXPECT_EQ(a.family(), AF_INET6);
  EXPECT_EQ(a.len, sizeof(sockaddr_in6));
  EXPECT_EQ(a.port(), 443);
  EXPECT_EQ(a.to_string(), "[::1]:443");
}

TEST(SockAddr, SetPort) {
  auto a = SockAddr::from(proto::Ipv4{10, 0, 0, 1}, 1);
  a.set_port(65535);
  EXPECT_EQ(a.port(), 65535);
  EXPECT_EQ(a.to_string(), "10.0.0.1:65535");
  auto b = *parse_sockaddr("[::1]:1");
  b.set_port(8080);
  EXPECT_EQ(b.to_string(), "[::1]:8080");
}

TEST(SockAddr, EmptyIsNoAddress) {
  SockAddr a;
  EXPECT_EQ(a.len, 0u);
  EXPECT_EQ(a.family(), AF_UNSPEC);
  EXPECT_EQ(a.port(), 0);
  EXPECT_EQ(a.to_string(), "-");
  a.set_port(80);  // no family: nothing to set
  EXPECT_EQ(a.port(), 0);
}

TEST(SockAddr, ParseValid) {
  for (const char* s : {"127.0.0.1:1080", "[::1]:1080", "0.0.0.0:1080", "[::]:1080",
                        "[2001:db8::1]:65535", "255.255.255.255:0"}) {
    auto a = parse_sockaddr(s);
    ASSERT_TRUE(a) << s;
    EXPECT_EQ(a->to_string(), s);
  }
  EXPECT_EQ(parse_sockaddr("[::]:1080")->family(), AF_INET6);
  EXPECT_EQ(parse_sockaddr("0.0.0.0:1080")->family(), AF_INET);
}

TEST(SockAddr, ParseInvalid) {
  for (const char* s :
       {"", ":", "127.0.0.1", "127.0.0.1:", ":80", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:8x", "[127.0.0.1]:80", "::1:80", "::1", "[::1]", "[::1]80", "[::1:80",
        "localhost:80", "1.2.3:80", "1.2.3.4.5:80", " 1.2.3.4:80", "[fe80::1%eth0]:80"}) {
    EXPECT_FALSE(parse_sockaddr(s)) << '"' << s << '"';
  }
}

TEST(SockAddr, FromSockaddr) {
  auto v4 = SockAddr::from(proto::Ipv4{192, 0, 2, 7}, 53);
  auto copy = SockAddr::from_sockaddr(v4.get(), v4.len);
  ASSERT_TRUE(copy);
  EXPECT_EQ(copy->to_string(), "192.0.2.7:53");
  EXPECT_EQ(copy->len, v4.len);

  // A larger buffer (e.g. from accept into a sockaddr_storage) is fine.
  EXPECT_TRUE(SockAddr::from_sockaddr(v4.get(), sizeof(sockaddr_storage)));
  EXPECT_FALSE(SockAddr::from_sockaddr(v4.get(), sizeof(sockaddr_in) - 1));
  EXPECT_FALSE(SockAddr::from_sockaddr(nullptr, 0));

  auto v6 = *parse_sockaddr("[2001:db8::2]:8443");
  EXPECT_FALSE(SockAddr::from_sockaddr(v6.get(), sizeof(sockaddr_in)));
  EXPECT_EQ(SockAddr::from_sockaddr(v6.get(), v6.len)->to_string(), "[2001:db8::2]:8443");

  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  EXPECT_FALSE(SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&un), sizeof un));
}

TEST(SockAddr, ToAddress) {
  auto v4 = parse_sockaddr("10.1.2.3:8080")->to_address();
  EXPECT_EQ(v4, (proto::Address{proto::Ipv4{10, 1, 2, 3}, 8080}));
  auto v6 = parse_sockaddr("[::1]:53")->to_address();
  ASSERT_TRUE(v6.is_ipv6());
  EXPECT_EQ(v6.port, 53);
  EXPECT_EQ(v6.to_string(), "[::1]:53");
  EXPECT_EQ(SockAddr::from(std::get<proto::Ipv6>(v6.host), v6.port).to_string(), "[::1]:53");
}

TEST(SockAddr, PeerAndLocalOf) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener);
  auto any_port = *parse_sockaddr("127.0.0.1:0");
  ASSERT_EQ(::bind(listener.get(), any_port.get(), any_port.len), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  SockAddr bound = local_of(listener.get());
  ASSERT_EQ(bound.family(), AF_INET);
  EXPECT_NE(bound.port(), 0);

  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(client.get(), bound.get(), bound.len), 0);
  UniqueFd accepted(::accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(accepted);

  EXPECT_EQ(peer_of(client.get()).to_string(), bound.to_string());
  EXPECT_EQ(local_of(client.get()).to_string(), peer_of(accepted.get()).to_string());
  EXPECT_EQ(peer_of(listener.get()).len, 0u);  // not connected
  EXPECT_EQ(peer_of(-1).len, 0u);
  EXPECT_EQ(local_of(-1).to_string(), "-");
}

}  // namespace
}  // namespace rs::net
