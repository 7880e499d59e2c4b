#include "proto/socks5_udp.hpp"

#include <gtest/gtest.h>

#include "codec_test_util.hpp"
#include "proto/socks5.hpp"

namespace rs::proto {
namespace {

using test::raw;

TEST(Socks5UdpHeader, ParsesIpv4AndKeepsThePayload) {
  std::string d = raw({0, 0, 0, 1, 127, 0, 0, 1, 0x00, 0x35}) + "query";
  auto r = parse_socks5_udp_header(to_bytes(d));
  ASSERT_TRUE(r.done()) << r.error;
  EXPECT_EQ(r.consumed, 10u);
  EXPECT_EQ(r.value.frag, 0);
  EXPECT_EQ(r.value.addr, *parse_address("127.0.0.1:53"));
  EXPECT_EQ(d.substr(r.consumed), "query");
}

TEST(Socks5UdpHeader, ParsesIpv6) {
  std::string d = raw({0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1f, 0x90});
  auto r = parse_socks5_udp_header(to_bytes(d));
  ASSERT_TRUE(r.done()) << r.error;
  EXPECT_EQ(r.consumed, d.size());  // an empty payload is a valid datagram
  EXPECT_EQ(r.value.addr, *parse_address("[::1]:8080"));
}

TEST(Socks5UdpHeader, ParsesDomainAndNumericNames) {
  std::string d = raw({0, 0, 0, 3, 11}) + "example.org" + raw({0, 80}) + "x";
  auto r = parse_socks5_udp_header(to_bytes(d));
  ASSERT_TRUE(r.done()) << r.error;
  EXPECT_EQ(r.value.addr, *parse_address("example.org:80"));
  EXPECT_EQ(r.consumed, d.size() - 1);
  // A name that is a literal becomes the address it spells.
  std::string lit = raw({0, 0, 0, 3, 8}) + "10.0.0.1" + raw({0, 7});
  auto l = parse_socks5_udp_header(to_bytes(lit));
  ASSERT_TRUE(l.done()) << l.error;
  EXPECT_TRUE(l.value.addr.is_ipv4());
}

TEST(Socks5UdpHeader, ReportsFragments) {
  std::string d = raw({0, 0, 0x81, 1, 1, 2, 3, 4, 0, 9});
  auto r = parse_socks5_udp_header(to_bytes(d));
  ASSERT_TRUE(r.done());
  EXPECT_EQ(r.value.frag, 0x81);
}

TEST(Socks5UdpHeader, ShortHeadersAreErrorsNeverNeedMore) {
  std::string d = raw({0, 0, 0, 1, 127, 0, 0, 1, 0, 53});
  for (size_t k = 0; k < d.size(); ++k) {
    auto r = parse_socks5_udp_header(to_bytes(std::string_view(d).substr(0, k)));
    EXPECT_TRUE(r.failed()) << k;
    EXPECT_FALSE(r.error.empty());
  }
}

TEST(Socks5UdpHeader, RejectsBadAddresses) {
  auto atyp = parse_socks5_udp_header(to_bytes(raw({0, 0, 0, 9, 1, 2, 3, 4, 0, 1})));
  ASSERT_TRUE(atyp.failed());
  EXPECT_EQ(atyp.code, socks5::kAddressTypeNotSupported);
  EXPECT_TRUE(parse_socks5_udp_header(to_bytes(raw({0, 0, 0, 3, 0, 0, 1}))).failed());
  EXPECT_TRUE(
      parse_socks5_udp_header(to_bytes(raw({0, 0, 0, 3, 3, 'a', ' ', 'b', 0, 1}))).failed());
}

TEST(Socks5UdpHeader, PutWritesWhatParseReads) {
  for (const char* s : {"1.2.3.4:53", "[2001:db8::1]:443", "example.org:9"}) {
    Address a = *parse_address(s);
    uint8_t buf[socks5_udp::kMaxHeader];
    auto n = put_socks5_udp_header(buf, a);
    ASSERT_TRUE(n) << s;
    auto r = parse_socks5_udp_header(Bytes(buf, *n));
    ASSERT_TRUE(r.done()) << s << ": " << r.error;
    EXPECT_EQ(r.consumed, *n);
    EXPECT_EQ(r.value.addr, a);
    EXPECT_EQ(r.value.frag, 0);
  }
  uint8_t v6[socks5_udp::kMaxNumericHeader];
  EXPECT_EQ(put_socks5_udp_header(v6, *parse_address("[::1]:1")), socks5_udp::kMaxNumericHeader);
}

TEST(Socks5UdpHeader, PutFailsWhenItDoesNotFit) {
  uint8_t small[9];
  EXPECT_FALSE(put_socks5_udp_header(small, *parse_address("1.2.3.4:53")));
  uint8_t buf[socks5_udp::kMaxHeader];
  Address empty{std::string(), 1};
  EXPECT_FALSE(put_socks5_udp_header(buf, empty));
  Address longname{std::string(256, 'a'), 1};
  EXPECT_FALSE(put_socks5_udp_header(buf, longname));
}

TEST(Socks5UdpHeader, DatagramIsHeaderThenPayload) {
  auto d = socks5_udp_datagram(*parse_address("127.0.0.1:7"), to_bytes("ping"));
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, raw({0, 0, 0, 1, 127, 0, 0, 1, 0, 7}) + "ping");
  EXPECT_FALSE(socks5_udp_datagram(Address{std::string(), 1}, to_bytes("x")));
}

}  // namespace
}  // namespace rs::proto
