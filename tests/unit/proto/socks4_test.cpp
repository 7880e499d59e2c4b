#include "proto/socks4.hpp"

#include <gtest/gtest.h>

#include "codec_test_util.hpp"

namespace rs::proto {
namespace {

using test::expect_error;
using test::expect_message;
using test::raw;

auto parse_request = [](Bytes in) { return parse_socks4_request(in); };
auto parse_reply = [](Bytes in) { return parse_socks4_reply(in); };

std::string to_string(const std::array<uint8_t, 8>& a) {
  return std::string(a.begin(), a.end());
}

// ---- Server side: requests ----

TEST(Socks4Request, Connect) {
  auto msg = raw({4, 1, 0x1f, 0x90, 10, 0, 0, 1}) + "fred" + raw({0});
  auto req = expect_message(parse_request, msg);
  EXPECT_EQ(req.command, socks4::kConnect);
  EXPECT_EQ(req.target, (Address{Ipv4{10, 0, 0, 1}, 8080}));
  EXPECT_EQ(req.userid, "fred");
  EXPECT_FALSE(req.is_4a);
}

TEST(Socks4Request, BindWithEmptyUserid) {
  auto req = expect_message(parse_request, raw({4, 2, 0, 21, 192, 168, 1, 2, 0}));
  EXPECT_EQ(req.command, socks4::kBind);
  EXPECT_EQ(req.target, (Address{Ipv4{192, 168, 1, 2}, 21}));
  EXPECT_EQ(req.userid, "");
}

TEST(Socks4Request, ZeroAddressIsPlainSocks4) {
  // 0.0.0.0 is not the SOCKS4A marker (x must be non-zero).
  auto req = expect_message(parse_request, raw({4, 1, 0, 80, 0, 0, 0, 0, 0}));
  EXPECT_FALSE(req.is_4a);
  EXPECT_EQ(req.target, (Address{Ipv4{0, 0, 0, 0}, 80}));
}

TEST(Socks4Request, Socks4a) {
  auto msg = raw({4, 1, 0x01, 0xbb, 0, 0, 0, 7}) + "user" + raw({0}) + "example.org" + raw({0});
  auto req = expect_message(parse_request, msg);
  EXPECT_TRUE(req.is_4a);
  EXPECT_EQ(req.target, (Address{std::string("example.org"), 443}));
  EXPECT_EQ(req.userid, "user");
}

TEST(Socks4Request, Socks4aNumericNameBecomesIp) {
  auto msg = raw({4, 1, 0, 80, 0, 0, 0, 1, 0}) + "127.0.0.1" + raw({0});
  auto req = expect_message(parse_request, msg);
  EXPECT_TRUE(req.is_4a);
  EXPECT_EQ(req.target, (Address{Ipv4{127, 0, 0, 1}, 80}));
  auto v6 = expect_message(parse_request, raw({4, 1, 0, 80, 0, 0, 0, 1, 0}) + "::1" + raw({0}));
  EXPECT_TRUE(v6.target.is_ipv6());
}

TEST(Socks4Request, LongestStrings) {
  std::string id(255, 'u'), host(255, 'h');
  auto msg = raw({4, 1, 0, 80, 0, 0, 0, 1}) + id + raw({0}) + host + raw({0});
  auto req = expect_message(parse_request, msg);
  EXPECT_EQ(req.userid, id);
  EXPECT_EQ(req.target.host_string(), host);
}

TEST(Socks4Request, BadVersion) {
  expect_error(parse_request, raw({5}), socks4::kRejected);
  expect_error(parse_request, raw({0, 1, 0, 80, 1, 2, 3, 4, 0}), socks4::kRejected);
}

TEST(Socks4Request, UnknownCommand) {
  expect_error(parse_request, raw({4, 0}), socks4::kRejected);
  expect_error(parse_request, raw({4, 3, 0, 80, 1, 2, 3, 4, 0}), socks4::kRejected);
  expect_error(parse_request, raw({4, 0xff}), socks4::kRejected);
}

TEST(Socks4Request, UseridTooLong) {
  // Refused as soon as the 256th byte arrives without a NUL.
  auto head = raw({4, 1, 0, 80, 1, 2, 3, 4});
  EXPECT_TRUE(parse_socks4_request(to_bytes(head + std::string(255, 'u'))).need_more());
  auto r = expect_error(parse_request, head + std::string(256, 'u'), socks4::kRejected);
  EXPECT_NE(r.error.find("userid"), std::string::npos);
  expect_error(parse_request, head + std::string(256, 'u') + raw({0}));
}

TEST(Socks4Request, HostNameTooLong) {
  auto head = raw({4, 1, 0, 80, 0, 0, 0, 1, 0});
  EXPECT_TRUE(parse_socks4_request(to_bytes(head + std::string(255, 'h'))).need_more());
  auto r = expect_error(parse_request, head + std::string(256, 'h'), socks4::kRejected);
  EXPECT_NE(r.error.find("host"), std::string::npos);
}

TEST(Socks4Request, EmptyHostName) {
  expect_error(parse_request, raw({4, 1, 0, 80, 0, 0, 0, 1, 0, 0}), socks4::kRejected);
}

TEST(Socks4Request, InvalidHostName) {
  auto head = raw({4, 1, 0, 80, 0, 0, 0, 1, 0});
  for (std::string bad : {"a b", "a/b", "a:b", "\x01", "[::1]"}) {
    expect_error(parse_request, head + bad + raw({0}), socks4::kRejected);
  }
}

TEST(Socks4Request, NeverReadsPastTheSpan) {
  // A NUL right after the span must not be seen.
  auto buf = raw({4, 1, 0, 80, 1, 2, 3, 4, 'a', 0});
  EXPECT_TRUE(parse_socks4_request(to_bytes(buf).first(9)).need_more());
  EXPECT_TRUE(parse_socks4_request(Bytes{}).need_more());
}

// ---- Server side: reply ----

TEST(Socks4Reply, Build) {
  EXPECT_EQ(to_string(socks4_reply(socks4::kGranted)), raw({0, 0x5a, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(to_string(socks4_reply(socks4::kRejected, {1, 2, 3, 4}, 0x1234)),
            raw({0, 0x5b, 0x12, 0x34, 1, 2, 3, 4}));
}

// ---- Client side ----

TEST(Socks4Client, RequestForIpv4IsPlainSocks4) {
  auto msg = socks4a_request(Address{Ipv4{1, 2, 3, 4}, 80}, "id");
  EXPECT_EQ(msg.bytes, raw({4, 1, 0, 80, 1, 2, 3, 4}) + "id" + raw({0}));
  EXPECT_TRUE(msg.ok());
}

TEST(Socks4Client, RequestForNameIsSocks4a) {
  auto msg = socks4a_request(Address{std::string("example.org"), 443}, "");
  EXPECT_EQ(msg.bytes, raw({4, 1, 1, 0xbb, 0, 0, 0, 1, 0}) + "example.org" + raw({0}));
}

// SOCKS4 has no field for these; SOCKS4A's host name (which the server
// resolves, and a numeric literal resolves to itself) carries them.
TEST(Socks4Client, AddressesWithoutASocks4FieldGoAsSocks4aNames) {
  // As DSTIP, 0.0.0.9 would be the SOCKS4A marker with no name after it.
  EXPECT_EQ(socks4a_request(Address{Ipv4{0, 0, 0, 9}, 80}, "").bytes,
            raw({4, 1, 0, 80, 0, 0, 0, 1, 0}) + "0.0.0.9" + raw({0}));
  EXPECT_EQ(socks4a_request(*parse_address("[2001:db8::1]:80"), "id").bytes,
            raw({4, 1, 0, 80, 0, 0, 0, 1}) + "id" + raw({0}) + "2001:db8::1" + raw({0}));
}

// Each failure names the field; the message is never empty bytes alone.
TEST(Socks4Client, RequestsThatCannotBeExpressed) {
  auto expect_refused = [](const Address& target, const std::string& id, std::string_view why) {
    auto msg = socks4a_request(target, id);
    EXPECT_FALSE(msg.ok()) << target.to_string();
    EXPECT_EQ(msg.bytes, "");
    EXPECT_EQ(msg.error, why) << target.to_string();
  };
  expect_refused(Address{std::string(""), 80}, "", "empty host name");
  expect_refused(Address{std::string(256, 'h'), 80}, "", "host name longer than 255 bytes");
  expect_refused(Address{std::string("a\0b", 3), 80}, "", "host name contains a NUL byte");
  expect_refused(Address{Ipv4{1, 2, 3, 4}, 80}, std::string(256, 'u'),
                 "user id longer than 255 bytes");
  expect_refused(Address{Ipv4{1, 2, 3, 4}, 80}, std::string("a\0b", 3),
                 "user id contains a NUL byte");
}

TEST(Socks4Client, RoundTrip) {
  for (const Address& target :
       {Address{Ipv4{8, 8, 8, 8}, 53}, Address{Ipv4{0, 0, 0, 0}, 1}, Address{Ipv4{0, 0, 0, 5}, 1},
        Address{Ipv4{0, 0, 0, 255}, 2}, *parse_address("[::1]:80"),
        *parse_address("[::ffff:1.2.3.4]:80"), Address{std::string("example.org"), 65535},
        Address{std::string(255, 'x'), 1}}) {
    for (const std::string& id : std::vector<std::string>{"", "user", std::string(255, 'u')}) {
      auto msg = socks4a_request(target, id);
      ASSERT_TRUE(msg.ok()) << target.to_string() << ": " << msg.error;
      auto req = expect_message(parse_request, msg.bytes);
      EXPECT_EQ(req.command, socks4::kConnect);
      EXPECT_EQ(req.target, target);
      EXPECT_EQ(req.userid, id);
      const bool marker = target.is_ipv4() && target.host_string().starts_with("0.0.0.") &&
                          target.host_string() != "0.0.0.0";
      EXPECT_EQ(req.is_4a, !target.is_ipv4() || marker) << target.to_string();
    }
  }
}

TEST(Socks4Client, ParseReply) {
  EXPECT_EQ(expect_message(parse_reply, to_string(socks4_reply(socks4::kGranted))),
            socks4::kGranted);
  EXPECT_EQ(expect_message(parse_reply, raw({0, 0x5b, 0, 0, 0, 0, 0, 0})), socks4::kRejected);
  // Lenient: VN 4 as some servers send.
  EXPECT_EQ(expect_message(parse_reply, raw({4, 0x5a, 0, 80, 1, 2, 3, 4})), socks4::kGranted);
}

TEST(Socks4Client, ParseReplyBadVersion) {
  expect_error(parse_reply, raw({5, 0x5a, 0, 0, 0, 0, 0, 0}));
  expect_error(parse_reply, raw({'H'}));
}

// ---- Random input ----

TEST(Socks4Fuzz, Request) {
  test::fuzz(parse_request,
             {socks4a_request(Address{Ipv4{1, 2, 3, 4}, 80}, "id").bytes,
              socks4a_request(Address{std::string("example.org"), 443}, "user").bytes,
              raw({4, 1, 0, 80, 0, 0, 0, 1, 0, 0})},
             4);
}

TEST(Socks4Fuzz, RequestNearLimits) {
  test::fuzz(parse_request,
             {socks4a_request(Address{std::string(255, 'h'), 1}, std::string(255, 'u')).bytes}, 44,
             300, 600);
}

TEST(Socks4Fuzz, Reply) {
  test::fuzz(parse_reply, {to_string(socks4_reply(socks4::kGranted, {1, 2, 3, 4}, 80))}, 40);
}

}  // namespace
}  // namespace rs::proto
