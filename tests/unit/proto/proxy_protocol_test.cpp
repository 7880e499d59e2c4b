#include "proto/proxy_protocol.hpp"

#include <gtest/gtest.h>

#include <random>

#include "codec_test_util.hpp"

namespace rs::proto {
namespace {

using test::expect_error;
using test::expect_message;
using test::expect_prefix_consistent;
using test::raw;

auto parse = [](Bytes in) { return parse_proxy_header(in); };

const std::string kSig =
    raw({0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A});

TEST(ProxyProtocolV1, Tcp4) {
  auto h = expect_message(parse, "PROXY TCP4 192.0.2.7 198.51.100.1 56324 1080\r\n");
  EXPECT_EQ(h.version, 1);
  EXPECT_EQ(h.source, (Address{Ipv4{192, 0, 2, 7}, 56324}));
  EXPECT_EQ(h.destination, (Address{Ipv4{198, 51, 100, 1}, 1080}));
}

TEST(ProxyProtocolV1, Tcp6) {
  auto h = expect_message(parse, "PROXY TCP6 2001:db8::7 ::1 65535 443\r\n");
  ASSERT_TRUE(h.source);
  EXPECT_EQ(h.source->to_string(), "[2001:db8::7]:65535");
  EXPECT_EQ(h.destination->to_string(), "[::1]:443");
}

TEST(ProxyProtocolV1, UnknownKeepsConnectionAddresses) {
  auto h = expect_message(parse, "PROXY UNKNOWN\r\n");
  EXPECT_EQ(h.version, 1);
  EXPECT_FALSE(h.source);
  // The spec lets UNKNOWN carry anything up to the CRLF.
  auto h2 = expect_message(parse, "PROXY UNKNOWN ffff::1 ::1 1 2\r\n");
  EXPECT_FALSE(h2.destination);
}

TEST(ProxyProtocolV1, Malformed) {
  expect_error(parse, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n");        // bare LF
  expect_error(parse, "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n");        // a field short
  expect_error(parse, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n");    // a field too many
  expect_error(parse, "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n");     // double space
  expect_error(parse, "PROXY TCP4 ::1 ::1 1 2\r\n");              // v6 in TCP4
  expect_error(parse, "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n");      // v4 in TCP6
  expect_error(parse, "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n");  // port
  expect_error(parse, "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n");      // protocol
  expect_error(parse, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n");     // trailing space
  expect_error(parse, "PROXY \r\n");
  expect_error(parse, "PROXY UNKNOWN" + std::string(100, 'x') + "\r\n");  // > 107 bytes
}

TEST(ProxyProtocol, NotAHeader) {
  // What a SOCKS5 or HTTP client sends: refused on the first byte that differs.
  expect_error(parse, raw({5, 1, 0}));
  expect_error(parse, "GET / HTTP/1.1\r\n\r\n");
  expect_error(parse, "PROXZ");
  EXPECT_TRUE(maybe_proxy_header(to_bytes("PRO")));
  EXPECT_TRUE(maybe_proxy_header(to_bytes(kSig.substr(0, 5))));
  EXPECT_FALSE(maybe_proxy_header(to_bytes("PUT")));
}

std::string v2(int ver_cmd, int fam, const std::string& body) {
  return kSig +
         raw({ver_cmd, fam, static_cast<int>(body.size() >> 8),
              static_cast<int>(body.size() & 0xff)}) +
         body;
}

TEST(ProxyProtocolV2, Tcp4WithTlvs) {
  // HAProxy's send-proxy-v2 for 192.0.2.7:56324 -> 127.0.0.1:1080, with an
  // ALPN TLV and a NOOP TLV after the addresses.
  auto body = raw({192, 0, 2, 7, 127, 0, 0, 1, 0xdc, 0x04, 0x04, 0x38}) +
              raw({0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x01, 0x00});
  auto h = expect_message(parse, v2(0x21, 0x11, body));
  EXPECT_EQ(h.version, 2);
  EXPECT_EQ(h.source, (Address{Ipv4{192, 0, 2, 7}, 56324}));
  EXPECT_EQ(h.destination, (Address{Ipv4{127, 0, 0, 1}, 1080}));
}

TEST(ProxyProtocolV2, Tcp6) {
  Ipv6 s{0x20, 0x01, 0x0d, 0xb8};
  s[15] = 7;
  Ipv6 d{};
  d[15] = 1;
  std::string body(s.begin(), s.end());
  body.append(d.begin(), d.end());
  body += raw({0x12, 0x34, 0x00, 0x50});
  auto h = expect_message(parse, v2(0x21, 0x21, body));
  EXPECT_EQ(h.source, (Address{s, 0x1234}));
  EXPECT_EQ(h.destination, (Address{d, 80}));
}

TEST(ProxyProtocolV2, LocalAndOtherFamiliesKeepConnectionAddresses) {
  auto local = expect_message(parse, v2(0x20, 0x00, ""));
  EXPECT_EQ(local.version, 2);
  EXPECT_FALSE(local.source);
  // LOCAL with addresses: they are ignored.
  EXPECT_FALSE(expect_message(parse, v2(0x20, 0x11, std::string(12, '\1'))).source);
  // UDP over IPv4 and unix stream sockets: not a TCP client to take.
  EXPECT_FALSE(expect_message(parse, v2(0x21, 0x12, std::string(12, '\1'))).source);
  EXPECT_FALSE(expect_message(parse, v2(0x21, 0x31, std::string(216, '\0'))).source);
}

TEST(ProxyProtocolV2, Malformed) {
  expect_error(parse, v2(0x11, 0x11, std::string(12, '\0')));  // version 1 in a v2 header
  expect_error(parse, v2(0x22, 0x11, std::string(12, '\0')));  // command 2
  expect_error(parse, v2(0x21, 0x41, std::string(12, '\0')));  // family 4
  expect_error(parse, v2(0x21, 0x13, std::string(12, '\0')));  // transport 3
  expect_error(parse, v2(0x21, 0x11, std::string(11, '\0')));  // short for IPv4
  expect_error(parse, v2(0x21, 0x21, std::string(12, '\0')));  // short for IPv6
  // Longer than we take: refused from the length alone, without waiting.
  auto big = kSig + raw({0x21, 0x11, 0x10, 0x01});
  expect_error(parse, big);
}

TEST(ProxyProtocol, BuildersReadBack) {
  const Address s4{Ipv4{10, 1, 2, 3}, 40000}, d4{Ipv4{127, 0, 0, 1}, 8080};
  EXPECT_EQ(proxy_header_v1(s4, d4), "PROXY TCP4 10.1.2.3 127.0.0.1 40000 8080\r\n");
  for (auto built : {proxy_header_v1(s4, d4), proxy_header_v2(s4, d4)}) {
    auto h = expect_message(parse, built);
    EXPECT_EQ(h.source, s4);
    EXPECT_EQ(h.destination, d4);
  }
  Ipv6 ip6{};
  ip6[0] = 0xfe;
  ip6[1] = 0x80;
  ip6[15] = 9;
  const Address s6{ip6, 1}, d6{Ipv6{}, 2};
  for (auto built : {proxy_header_v1(s6, d6), proxy_header_v2(s6, d6)}) {
    auto h = expect_message(parse, built);
    EXPECT_EQ(h.source, s6);
    EXPECT_EQ(h.destination, d6);
  }
  // A mixed pair cannot be said: UNKNOWN / LOCAL, which read back as no addresses.
  EXPECT_EQ(proxy_header_v1(s4, d6), "PROXY UNKNOWN\r\n");
  auto local = expect_message(parse, proxy_header_v2(s4, d6));
  EXPECT_FALSE(local.source);
}

TEST(ProxyProtocol, SeededInputsArePrefixConsistent) {
  test::fuzz(parse,
             {"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1080\r\n",
              "PROXY TCP6 2001:db8::7 ::1 65535 443\r\n", "PROXY UNKNOWN\r\n",
              v2(0x21, 0x11, raw({1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2})),
              v2(0x21, 0x21, std::string(36, '\1') + raw({1, 2, 3}))},
             15);
}

}  // namespace
}  // namespace rs::proto
