#include "proto/socks5.hpp"

#include <gtest/gtest.h>

#include "codec_test_util.hpp"

namespace rs::proto {
namespace {

using test::expect_error;
using test::expect_message;
using test::raw;

auto parse_greeting = [](Bytes in) { return parse_socks5_greeting(in); };
auto parse_auth = [](Bytes in) { return parse_socks5_auth(in); };
auto parse_request = [](Bytes in) { return parse_socks5_request(in); };
auto parse_addr = [](Bytes in) { return parse_socks5_address(in); };
auto parse_selection = [](Bytes in) { return parse_method_selection(in); };
auto parse_auth_status = [](Bytes in) { return parse_auth_reply(in); };
auto parse_reply = [](Bytes in) { return parse_socks5_reply(in); };

template <size_t N>
std::string to_string(const std::array<uint8_t, N>& a) {
  return std::string(a.begin(), a.end());
}

Address v6_loopback(uint16_t port) {
  return *parse_address("[::1]:" + std::to_string(port));
}

const std::string kV6LoopbackBytes = raw({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});

// ---- Greeting ----

TEST(Socks5Greeting, Parse) {
  auto g = expect_message(parse_greeting, raw({5, 2, 0, 2}));
  EXPECT_EQ(g.methods, (std::vector<uint8_t>{0, 2}));
  EXPECT_TRUE(g.offers(socks5::kMethodNoAuth));
  EXPECT_TRUE(g.offers(socks5::kMethodPassword));
  EXPECT_FALSE(g.offers(socks5::kMethodGssapi));
}

TEST(Socks5Greeting, AllMethods) {
  std::string msg = raw({5, 255});
  for (int m = 0; m < 255; ++m) msg.push_back(static_cast<char>(m));
  auto g = expect_message(parse_greeting, msg);
  EXPECT_EQ(g.methods.size(), 255u);
  EXPECT_EQ(g.methods.back(), 254);
}

TEST(Socks5Greeting, Errors) {
  expect_error(parse_greeting, raw({4}));
  expect_error(parse_greeting, raw({'G', 'E', 'T'}));
  expect_error(parse_greeting, raw({5, 0}));
}

TEST(Socks5Greeting, MethodReply) {
  EXPECT_EQ(to_string(method_reply(socks5::kMethodPassword)), raw({5, 2}));
  EXPECT_EQ(to_string(method_reply(socks5::kMethodNoAcceptable)), raw({5, 0xff}));
}

// ---- Username/password ----

TEST(Socks5Auth, Parse) {
  auto a = expect_message(parse_auth, raw({1, 4}) + "user" + raw({6}) + "secret");
  EXPECT_EQ(a.username, "user");
  EXPECT_EQ(a.password, "secret");
}

TEST(Socks5Auth, EmptyPasswordAccepted) {
  auto a = expect_message(parse_auth, raw({1, 1, 'u', 0}));
  EXPECT_EQ(a.username, "u");
  EXPECT_EQ(a.password, "");
}

TEST(Socks5Auth, LongestFields) {
  std::string u(255, 'u'), p(255, 'p');
  auto a = expect_message(parse_auth, raw({1, 255}) + u + raw({255}) + p);
  EXPECT_EQ(a.username, u);
  EXPECT_EQ(a.password, p);
}

TEST(Socks5Auth, BinaryFieldsKeptVerbatim) {
  auto a = expect_message(parse_auth, raw({1, 2, 0, 0xff, 2, ':', 0}));
  EXPECT_EQ(a.username, raw({0, 0xff}));
  EXPECT_EQ(a.password, raw({':', 0}));
}

TEST(Socks5Auth, Errors) {
  expect_error(parse_auth, raw({5, 1, 'u', 0}));
  expect_error(parse_auth, raw({0}));
  expect_error(parse_auth, raw({1, 0, 0}));
}

TEST(Socks5Auth, Reply) {
  EXPECT_EQ(to_string(auth_reply(true)), raw({1, 0}));
  EXPECT_EQ(to_string(auth_reply(false)), raw({1, 1}));
}

// ---- Requests ----

TEST(Socks5Request, ConnectIpv4) {
  auto r = expect_message(parse_request, raw({5, 1, 0, 1, 93, 184, 216, 34, 0, 80}));
  EXPECT_EQ(r.command, socks5::kConnect);
  EXPECT_EQ(r.target, (Address{Ipv4{93, 184, 216, 34}, 80}));
}

TEST(Socks5Request, ConnectIpv6) {
  auto r = expect_message(parse_request, raw({5, 1, 0, 4}) + kV6LoopbackBytes + raw({0x01, 0xbb}));
  EXPECT_EQ(r.target, v6_loopback(443));
}

TEST(Socks5Request, ConnectDomain) {
  auto r = expect_message(parse_request, raw({5, 1, 0, 3, 11}) + "example.org" + raw({0x1f, 0x90}));
  EXPECT_EQ(r.target, (Address{std::string("example.org"), 8080}));
}

TEST(Socks5Request, LongestDomain) {
  std::string name(255, 'd');
  auto r = expect_message(parse_request, raw({5, 1, 0, 3, 255}) + name + raw({0, 1}));
  EXPECT_EQ(r.target, (Address{name, 1}));
}

TEST(Socks5Request, NumericDomainBecomesIp) {
  auto r = expect_message(parse_request, raw({5, 1, 0, 3, 7}) + "1.2.3.4" + raw({0, 80}));
  EXPECT_EQ(r.target, (Address{Ipv4{1, 2, 3, 4}, 80}));
}

// Found by tests/fuzz: a short name with an embedded NUL read as the numeric
// address before the NUL.
TEST(Socks5Request, NumericDomainWithNulIsRefused) {
  expect_error(parse_request, raw({5, 1, 0, 3, 10}) + std::string("10.0.0.1\0x", 10) + raw({0, 80}),
               socks5::kGeneralFailure);
}

TEST(Socks5Request, BindAndUdpAssociateParse) {
  EXPECT_EQ(expect_message(parse_request, raw({5, 2, 0, 1, 0, 0, 0, 0, 0, 0})).command,
            socks5::kBind);
  EXPECT_EQ(expect_message(parse_request, raw({5, 3, 0, 1, 0, 0, 0, 0, 0, 0})).command,
            socks5::kUdpAssociate);
}

TEST(Socks5Request, ReservedByteIgnored) {
  auto r = expect_message(parse_request, raw({5, 1, 0x7f, 1, 1, 2, 3, 4, 0, 80}));
  EXPECT_EQ(r.target, (Address{Ipv4{1, 2, 3, 4}, 80}));
}

TEST(Socks5Request, BadVersion) {
  expect_error(parse_request, raw({4, 1, 0, 1, 1, 2, 3, 4, 0, 80}), socks5::kGeneralFailure);
}

TEST(Socks5Request, UnknownCommand) {
  for (int cmd : {0, 4, 0xff}) {
    expect_error(parse_request, raw({5, cmd, 0, 1, 1, 2, 3, 4, 0, 80}),
                 socks5::kCommandNotSupported);
  }
}

TEST(Socks5Request, UnknownAddressType) {
  for (int atyp : {0, 2, 5, 0xff}) {
    auto r = expect_error(parse_request, raw({5, 1, 0, atyp, 1, 2, 3, 4, 0, 80}),
                          socks5::kAddressTypeNotSupported);
    EXPECT_NE(r.error.find("address type"), std::string::npos);
  }
}

TEST(Socks5Request, EmptyDomain) {
  expect_error(parse_request, raw({5, 1, 0, 3, 0, 0, 80}), socks5::kGeneralFailure);
}

TEST(Socks5Request, InvalidDomain) {
  for (const std::string& bad :
       std::vector<std::string>{"a b", "a/b", "a:b", std::string("a\0b", 3), "[::1]"}) {
    auto msg = raw({5, 1, 0, 3, static_cast<int>(bad.size())}) + bad + raw({0, 80});
    expect_error(parse_request, msg, socks5::kGeneralFailure);
  }
}

TEST(Socks5Request, ClientBuilderRoundTrip) {
  for (const Address& target :
       {Address{Ipv4{1, 2, 3, 4}, 80}, Address{Ipv4{255, 255, 255, 255}, 65535}, v6_loopback(0),
        Address{std::string("example.org"), 443}, Address{std::string(255, 'n'), 1}}) {
    auto msg = socks5_request(target);
    ASSERT_TRUE(msg.ok()) << target.to_string();
    auto r = expect_message(parse_request, msg.bytes);
    EXPECT_EQ(r.command, socks5::kConnect);
    EXPECT_EQ(r.target, target);
  }
  EXPECT_EQ(
      expect_message(parse_request, socks5_request(Address{}, socks5::kUdpAssociate).bytes).command,
      socks5::kUdpAssociate);
}

TEST(Socks5Request, BuilderRefusesUnsendableNames) {
  EXPECT_EQ(socks5_request(Address{std::string(), 80}).error, "empty host name");
  EXPECT_EQ(socks5_request(Address{std::string(256, 'n'), 80}).error,
            "host name longer than 255 bytes");
  EXPECT_EQ(socks5_request(Address{std::string(256, 'n'), 80}).bytes, "");
}

TEST(Socks5Request, BuilderBytes) {
  EXPECT_EQ(socks5_request(Address{std::string("a.b"), 0x1234}).bytes,
            raw({5, 1, 0, 3, 3, 'a', '.', 'b', 0x12, 0x34}));
  EXPECT_EQ(socks5_request(Address{Ipv4{1, 2, 3, 4}, 80}).bytes,
            raw({5, 1, 0, 1, 1, 2, 3, 4, 0, 80}));
  EXPECT_EQ(socks5_request(v6_loopback(80)).bytes,
            raw({5, 1, 0, 4}) + kV6LoopbackBytes + raw({0, 80}));
}

// ---- Address alone ----

TEST(Socks5Address, ParseAndAppend) {
  for (const Address& a :
       {Address{Ipv4{10, 1, 2, 3}, 9}, v6_loopback(7), Address{std::string("x.y"), 5}}) {
    std::string out;
    ASSERT_TRUE(append_socks5_address(out, a));
    EXPECT_EQ(expect_message(parse_addr, out), a);
  }
  std::string out = "keep";
  EXPECT_FALSE(append_socks5_address(out, Address{std::string(), 1}));
  EXPECT_EQ(out, "keep");
}

// ---- Replies ----

TEST(Socks5Reply, BuildDefaultsToZeroAddress) {
  EXPECT_EQ(socks5_reply(socks5::kSucceeded), raw({5, 0, 0, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(socks5_reply(socks5::kConnectionRefused), raw({5, 5, 0, 1, 0, 0, 0, 0, 0, 0}));
}

TEST(Socks5Reply, BuildWithBoundAddress) {
  EXPECT_EQ(socks5_reply(0, Address{Ipv4{1, 2, 3, 4}, 0x0102}),
            raw({5, 0, 0, 1, 1, 2, 3, 4, 1, 2}));
  EXPECT_EQ(socks5_reply(0, v6_loopback(1)), raw({5, 0, 0, 4}) + kV6LoopbackBytes + raw({0, 1}));
  EXPECT_EQ(socks5_reply(0, Address{std::string("h"), 1}), raw({5, 0, 0, 3, 1, 'h', 0, 1}));
  // A name that does not fit falls back to 0.0.0.0:0.
  EXPECT_EQ(socks5_reply(1, Address{std::string(300, 'h'), 1}),
            raw({5, 1, 0, 1, 0, 0, 0, 0, 0, 0}));
}

TEST(Socks5Reply, RepCodes) {
  EXPECT_EQ(socks5::kSucceeded, 0);
  EXPECT_EQ(socks5::kGeneralFailure, 1);
  EXPECT_EQ(socks5::kNotAllowed, 2);
  EXPECT_EQ(socks5::kNetworkUnreachable, 3);
  EXPECT_EQ(socks5::kHostUnreachable, 4);
  EXPECT_EQ(socks5::kConnectionRefused, 5);
  EXPECT_EQ(socks5::kTtlExpired, 6);
  EXPECT_EQ(socks5::kCommandNotSupported, 7);
  EXPECT_EQ(socks5::kAddressTypeNotSupported, 8);
}

TEST(Socks5Reply, ParseRoundTrip) {
  for (uint8_t rep = 0; rep <= 8; ++rep) {
    for (const Address& bound : {Address{}, Address{Ipv4{127, 0, 0, 1}, 1080}, v6_loopback(65535),
                                 Address{std::string("proxy.lan"), 1}}) {
      auto r = expect_message(parse_reply, socks5_reply(rep, bound));
      EXPECT_EQ(r.rep, rep);
      EXPECT_EQ(r.bound, bound);
    }
  }
}

TEST(Socks5Reply, ParseErrors) {
  expect_error(parse_reply, raw({1, 0, 0, 1, 0, 0, 0, 0, 0, 0}));
  expect_error(parse_reply, raw({'H', 'T', 'T', 'P'}));
  expect_error(parse_reply, raw({5, 0, 0, 9, 0, 0, 0, 0, 0, 0}));
  expect_error(parse_reply, raw({5, 0, 0, 3, 0, 0, 0}));
}

// ---- Client side handshake ----

TEST(Socks5Client, Greeting) {
  EXPECT_EQ(socks5_greeting(false), raw({5, 1, 0}));
  EXPECT_EQ(socks5_greeting(true), raw({5, 2, 0, 2}));
  auto g = expect_message(parse_greeting, socks5_greeting(true));
  EXPECT_TRUE(g.offers(socks5::kMethodPassword));
  EXPECT_FALSE(expect_message(parse_greeting, socks5_greeting(false)).offers(2));
}

TEST(Socks5Client, MethodSelection) {
  EXPECT_EQ(expect_message(parse_selection, to_string(method_reply(2))), 2);
  EXPECT_EQ(expect_message(parse_selection, raw({5, 0xff})), socks5::kMethodNoAcceptable);
  expect_error(parse_selection, raw({4, 0}));
  expect_error(parse_selection, raw({1, 0}));
}

TEST(Socks5Client, AuthRequestRoundTrip) {
  for (auto [user, pass] : std::vector<std::pair<std::string, std::string>>{
           {"u", ""}, {"user", "pass:word"}, {std::string(255, 'u'), std::string(255, 'p')}}) {
    auto msg = socks5_auth_request(user, pass);
    ASSERT_TRUE(msg.ok());
    auto a = expect_message(parse_auth, msg.bytes);
    EXPECT_EQ(a.username, user);
    EXPECT_EQ(a.password, pass);
  }
}

TEST(Socks5Client, AuthRequestRefusesUnsendable) {
  EXPECT_EQ(socks5_auth_request("", "p").error, "empty user name");
  EXPECT_EQ(socks5_auth_request(std::string(256, 'u'), "p").error,
            "user name longer than 255 bytes");
  EXPECT_EQ(socks5_auth_request("u", std::string(256, 'p')).error,
            "password longer than 255 bytes");
  EXPECT_EQ(socks5_auth_request("u", std::string(256, 'p')).bytes, "");
}

TEST(Socks5Client, AuthReply) {
  EXPECT_TRUE(expect_message(parse_auth_status, to_string(auth_reply(true))));
  EXPECT_FALSE(expect_message(parse_auth_status, to_string(auth_reply(false))));
  EXPECT_FALSE(expect_message(parse_auth_status, raw({1, 0xff})));
  EXPECT_TRUE(expect_message(parse_auth_status, raw({5, 0})));  // lenient VER
  expect_error(parse_auth_status, raw({0, 0}));
  expect_error(parse_auth_status, raw({4, 0}));
}

// ---- Random input ----

TEST(Socks5Fuzz, Greeting) {
  test::fuzz(parse_greeting, {socks5_greeting(true), raw({5, 3, 0, 1, 2})}, 51);
}

TEST(Socks5Fuzz, Auth) {
  test::fuzz(parse_auth, {socks5_auth_request("user", "password").bytes}, 52);
}

TEST(Socks5Fuzz, Request) {
  test::fuzz(
      parse_request,
      {socks5_request(Address{Ipv4{1, 2, 3, 4}, 80}).bytes, socks5_request(v6_loopback(443)).bytes,
       socks5_request(Address{std::string("example.org"), 443}).bytes},
      53);
}

TEST(Socks5Fuzz, ClientSide) {
  test::fuzz(parse_selection, {raw({5, 0})}, 54);
  test::fuzz(parse_auth_status, {raw({1, 0})}, 55);
  test::fuzz(parse_reply,
             {socks5_reply(0, Address{Ipv4{1, 2, 3, 4}, 80}), socks5_reply(0, v6_loopback(1)),
              socks5_reply(0, Address{std::string("bound.example"), 9})},
             56);
}

}  // namespace
}  // namespace rs::proto
