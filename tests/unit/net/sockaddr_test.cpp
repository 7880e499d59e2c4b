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

AddrClass class_of(const char* text) {
  auto sa = parse_sockaddr(text);
  EXPECT_TRUE(sa) << text;
  return sa ? classify(*sa) : AddrClass::kGlobal;
}

TEST(AddrClass, Ipv4) {
  for (const char* s : {"127.0.0.1:80", "127.255.255.254:1", "0.0.0.0:80"})
    EXPECT_EQ(class_of(s), AddrClass::kLoopback) << s;
  for (const char* s : {"224.0.0.1:80", "239.255.255.250:1900"})
    EXPECT_EQ(class_of(s), AddrClass::kMulticast) << s;
  for (const char* s :
       {"10.0.0.1:80", "172.16.0.1:80", "172.31.255.255:80", "192.168.1.1:80", "169.254.1.1:80"})
    EXPECT_EQ(class_of(s), AddrClass::kLocal) << s;
  for (const char* s : {"8.8.8.8:53", "172.32.0.1:80", "172.15.0.1:80", "192.169.0.1:80",
                        "128.0.0.1:80", "223.255.255.255:80", "240.0.0.1:80", "11.0.0.1:80"})
    EXPECT_EQ(class_of(s), AddrClass::kGlobal) << s;
}

TEST(AddrClass, Ipv6) {
  for (const char* s : {"[::1]:80", "[::]:80"}) EXPECT_EQ(class_of(s), AddrClass::kLoopback) << s;
  for (const char* s : {"[ff02::1]:80", "[ff0e::101]:123"})
    EXPECT_EQ(class_of(s), AddrClass::kMulticast) << s;
  for (const char* s :
       {"[fe80::1]:80", "[febf::1]:80", "[fc00::1]:80", "[fd12:3456::1]:80", "[fec0::1]:80"})
    EXPECT_EQ(class_of(s), AddrClass::kLocal) << s;
  for (const char* s : {"[2001:db8::1]:80", "[2606:4700::1111]:443", "[fe00::1]:80", "[::2]:80"})
    EXPECT_EQ(class_of(s), AddrClass::kGlobal) << s;
}

TEST(AddrClass, MappedIpv4ByItsIpv4Part) {
  EXPECT_EQ(class_of("[::ffff:127.0.0.1]:80"), AddrClass::kLoopback);
  EXPECT_EQ(class_of("[::ffff:0.0.0.0]:80"), AddrClass::kLoopback);
  EXPECT_EQ(class_of("[::ffff:224.0.0.1]:80"), AddrClass::kMulticast);
  EXPECT_EQ(class_of("[::ffff:192.168.0.1]:80"), AddrClass::kLocal);
  EXPECT_EQ(class_of("[::ffff:10.1.2.3]:80"), AddrClass::kLocal);
  EXPECT_EQ(class_of("[::ffff:8.8.8.8]:80"), AddrClass::kGlobal);
}

TEST(AddrClass, ParseList) {
  std::string bad;
  EXPECT_EQ(parse_class_list("loopback", &bad), class_bit(AddrClass::kLoopback));
  EXPECT_EQ(parse_class_list("multicast,local,global", &bad), class_bit(AddrClass::kMulticast) |
                                                                  class_bit(AddrClass::kLocal) |
                                                                  class_bit(AddrClass::kGlobal));
  EXPECT_EQ(parse_class_list("local,local", &bad), class_bit(AddrClass::kLocal));
  EXPECT_FALSE(parse_class_list("loopback,lan", &bad));
  EXPECT_EQ(bad, "lan");
  EXPECT_EQ(parse_class_list("loopback,", &bad), class_bit(AddrClass::kLoopback));
  EXPECT_EQ(parse_class_list("", &bad), 0u);  // blocks nothing, not even multicast
  EXPECT_FALSE(parse_class_list("Loopback", &bad));
  EXPECT_EQ(to_string(AddrClass::kGlobal), "global");
}

}  // namespace
}  // namespace rs::net
