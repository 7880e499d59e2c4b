// The client side of each proxy scheme, driven by canned server replies.
#include "net/hop.hpp"

#include <gtest/gtest.h>

#include "proto/http.hpp"
#include "proto/parse.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"

namespace rs::net {
namespace {

using Step = HopHandshake::Step;

std::string str(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

proto::ProxyUri uri(const char* text) {
  auto r = proto::parse_proxy_uri(text);
  EXPECT_TRUE(r.ok()) << r.error;
  return r.uri;
}

proto::Address target(const char* text) {
  return *proto::parse_address(text);
}

// The first message, which must be built.
std::string start(HopHandshake& hs) {
  Step s = hs.start();
  EXPECT_EQ(s.status, Step::kSend) << s.message;
  EXPECT_EQ(s.consumed, 0u);
  return s.out;
}

// Feeds `reply` one byte at a time; the hop must keep asking for more until
// the last byte, and never consume bytes past its reply.
Step feed_bytewise(HopHandshake& hs, const std::string& reply, const std::string& extra = {}) {
  for (size_t k = 1; k <= reply.size(); ++k) {
    std::string in = reply.substr(0, k) + (k == reply.size() ? extra : "");
    Step s = hs.feed(proto::to_bytes(in));
    if (k < reply.size()) {
      EXPECT_EQ(s.status, Step::kNeedMore) << "prefix " << k;
      continue;
    }
    if (s.status != Step::kError) {
      EXPECT_EQ(s.consumed, reply.size());
    }
    return s;
  }
  return {};
}

TEST(HopHandshake, Socks4aDomain) {
  HopHandshake hs(uri("socks4a://127.0.0.1:1080"), target("example.org:80"));
  auto req = proto::parse_socks4_request(proto::to_bytes(start(hs)));
  ASSERT_TRUE(req.done());
  EXPECT_TRUE(req.value.is_4a);
  EXPECT_EQ(req.value.target.to_string(), "example.org:80");
  EXPECT_EQ(feed_bytewise(hs, str({0, 0x5A, 0, 0, 0, 0, 0, 0}), "payload").status, Step::kDone);
}

TEST(HopHandshake, Socks4Rejected) {
  HopHandshake hs(uri("socks4a://127.0.0.1:1080"), target("10.0.0.1:80"));
  auto req = proto::parse_socks4_request(proto::to_bytes(start(hs)));
  ASSERT_TRUE(req.done());
  EXPECT_FALSE(req.value.is_4a);
  Step s = feed_bytewise(hs, str({0, 0x5B, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.status, Step::kError);
  EXPECT_EQ(s.error, DialError::kNotAllowed);
}

TEST(HopHandshake, Socks5NoAuth) {
  HopHandshake hs(uri("socks5://127.0.0.1:1080"), target("[::1]:443"));
  EXPECT_EQ(start(hs), str({5, 1, 0}));
  Step s = feed_bytewise(hs, str({5, 0}));
  ASSERT_EQ(s.status, Step::kSend);
  auto req = proto::parse_socks5_request(proto::to_bytes(s.out));
  ASSERT_TRUE(req.done());
  EXPECT_EQ(req.value.target.to_string(), "[::1]:443");
  s = feed_bytewise(hs, proto::socks5_reply(0, target("10.1.2.3:4567")), "data");
  EXPECT_EQ(s.status, Step::kDone);
}

TEST(HopHandshake, Socks5OtherCommandsReportTheBoundAddress) {
  for (uint8_t cmd : {proto::socks5::kBind, proto::socks5::kUdpAssociate}) {
    HopHandshake hs(uri("socks5://127.0.0.1:1080"), target("0.0.0.0:0"), cmd);
    EXPECT_EQ(start(hs), str({5, 1, 0}));
    Step s = feed_bytewise(hs, str({5, 0}));
    ASSERT_EQ(s.status, Step::kSend);
    auto req = proto::parse_socks5_request(proto::to_bytes(s.out));
    ASSERT_TRUE(req.done());
    EXPECT_EQ(req.value.command, cmd);
    EXPECT_EQ(feed_bytewise(hs, proto::socks5_reply(0, target("127.0.0.9:5000"))).status,
              Step::kDone);
    EXPECT_EQ(hs.bound(), target("127.0.0.9:5000"));
  }
}

TEST(HopHandshake, Socks5Password) {
  HopHandshake hs(uri("socks5://alice:s%3Acret@127.0.0.1:1080"), target("example.org:80"));
  EXPECT_EQ(start(hs), str({5, 2, 0, 2}));
  Step s = feed_bytewise(hs, str({5, 2}));
  ASSERT_EQ(s.status, Step::kSend);
  auto auth = proto::parse_socks5_auth(proto::to_bytes(s.out));
  ASSERT_TRUE(auth.done());
  EXPECT_EQ(auth.value.username, "alice");
  EXPECT_EQ(auth.value.password, "s:cret");
  s = feed_bytewise(hs, str({1, 0}));
  ASSERT_EQ(s.status, Step::kSend);
  EXPECT_EQ(feed_bytewise(hs, proto::socks5_reply(0, target("0.0.0.0:0"))).status, Step::kDone);
}

TEST(HopHandshake, Socks5WrongPassword) {
  HopHandshake hs(uri("socks5://alice:bad@127.0.0.1:1080"), target("example.org:80"));
  hs.start();
  ASSERT_EQ(feed_bytewise(hs, str({5, 2})).status, Step::kSend);
  Step s = feed_bytewise(hs, str({1, 1}));
  EXPECT_EQ(s.status, Step::kError);
  EXPECT_EQ(s.error, DialError::kNotAllowed);
  EXPECT_NE(s.message.find("authentication failed"), std::string::npos);
}

TEST(HopHandshake, Socks5NeedsCredentialsWeDoNotHave) {
  HopHandshake hs(uri("socks5://127.0.0.1:1080"), target("example.org:80"));
  hs.start();
  Step s = feed_bytewise(hs, str({5, 0xFF}));
  EXPECT_EQ(s.status, Step::kError);
  EXPECT_EQ(s.error, DialError::kNotAllowed);
}

TEST(HopHandshake, Socks5ErrorRepsMap) {
  for (auto [rep, err] : {std::pair{1, DialError::kGeneral},
                          {2, DialError::kNotAllowed},
                          {3, DialError::kNetUnreachable},
                          {4, DialError::kHostUnreachable},
                          {5, DialError::kRefused},
                          {6, DialError::kTimeout}}) {
    HopHandshake hs(uri("socks5://127.0.0.1:1080"), target("example.org:80"));
    hs.start();
    ASSERT_EQ(feed_bytewise(hs, str({5, 0})).status, Step::kSend);
    Step s = feed_bytewise(hs, proto::socks5_reply(static_cast<uint8_t>(rep), target("0.0.0.0:0")));
    EXPECT_EQ(s.status, Step::kError);
    EXPECT_EQ(s.error, err) << rep;
  }
}

TEST(HopHandshake, HttpConnect) {
  HopHandshake hs(uri("http://u:p@127.0.0.1:8080"), target("example.org:443"));
  auto req = proto::parse_http_request(proto::to_bytes(start(hs)));
  ASSERT_TRUE(req.done());
  EXPECT_EQ(req.value.method, "CONNECT");
  EXPECT_EQ(req.value.target, "example.org:443");
  auto auth = req.value.header("Proxy-Authorization");
  ASSERT_TRUE(auth);
  EXPECT_EQ(proto::parse_basic_auth(*auth)->first, "u");
  Step s = feed_bytewise(hs, "HTTP/1.1 200 Connection established\r\n\r\n", "\x16\x03");
  EXPECT_EQ(s.status, Step::kDone);
}

TEST(HopHandshake, HttpStatuses) {
  for (auto [status, err] : {std::pair{407, DialError::kNotAllowed},
                             {401, DialError::kNotAllowed},  // tinyproxy: wrong credentials
                             {403, DialError::kNotAllowed},
                             {504, DialError::kTimeout},
                             {502, DialError::kGeneral}}) {
    HopHandshake hs(uri("http://127.0.0.1:8080"), target("example.org:443"));
    hs.start();
    Step s = feed_bytewise(hs, proto::http_response(status));
    EXPECT_EQ(s.status, Step::kError);
    EXPECT_EQ(s.error, err) << status;
  }
}

TEST(HopHandshake, GarbageReplies) {
  HopHandshake a(uri("socks5://127.0.0.1:1080"), target("example.org:80"));
  a.start();
  EXPECT_EQ(a.feed(proto::to_bytes("HTTP/1.1 400 Bad\r\n")).status, Step::kError);
  HopHandshake b(uri("http://127.0.0.1:1080"), target("example.org:80"));
  b.start();
  EXPECT_EQ(b.feed(proto::to_bytes(str({5, 0, 0, 0}) + "\r\n\r\n")).status, Step::kError);
}

// What SOCKS4 has no field for goes as a SOCKS4A name: 0.0.0.x as DSTIP would
// be the 4A marker with no name after it, and used to make start() return ""
// (so the Dialer sent nothing and waited for -t).
TEST(HopHandshake, Socks4aCarriesMarkerAndIpv6AsNames) {
  for (const char* next : {"0.0.0.5:8000", "[2001:db8::1]:443"}) {
    HopHandshake hs(uri("socks4a://u@127.0.0.1:1080"), target(next));
    std::string out = start(hs);
    auto req = proto::parse_socks4_request(proto::to_bytes(out));
    ASSERT_TRUE(req.done()) << next;
    EXPECT_TRUE(req.value.is_4a) << next;
    EXPECT_EQ(req.value.target, target(next));
    EXPECT_EQ(req.value.userid, "u");
    EXPECT_EQ(feed_bytewise(hs, str({0, 0x5A, 0, 0, 0, 0, 0, 0})).status, Step::kDone);
  }
}

// A ProxyUri built by hand (parse_proxy_uri refuses these) whose request
// cannot be built: the handshake fails at once, naming the hop and the reason,
// instead of sending nothing and waiting for a reply.
proto::ProxyUri hand_built(proto::ProxyUri::Scheme scheme, std::string user, std::string pass) {
  proto::ProxyUri hop;
  hop.scheme = scheme;
  hop.host = "127.0.0.1";
  hop.port = 1081;
  hop.username = std::move(user);
  hop.password = std::move(pass);
  hop.has_auth = true;
  return hop;
}

void expect_fails_at_once(const Step& s, std::string_view why) {
  EXPECT_EQ(s.status, Step::kError);
  EXPECT_EQ(s.error, DialError::kGeneral);
  EXPECT_TRUE(s.out.empty());
  EXPECT_EQ(s.message, why);
}

TEST(HopHandshake, Socks4aUnsendableUseridFailsAtOnce) {
  using Scheme = proto::ProxyUri::Scheme;
  HopHandshake a(hand_built(Scheme::kSocks4a, std::string(256, 'u'), ""), target("10.0.0.1:80"));
  expect_fails_at_once(a.start(),
                       "socks4a hop 127.0.0.1:1081 cannot carry 10.0.0.1:80: user id longer than "
                       "255 bytes");
  HopHandshake b(hand_built(Scheme::kSocks4a, std::string("a\0b", 3), ""), target("0.0.0.5:80"));
  expect_fails_at_once(
      b.start(), "socks4a hop 127.0.0.1:1081 cannot carry 0.0.0.5:80: user id contains a NUL byte");
}

TEST(HopHandshake, Socks5OverLongCredentialsFailAtOnce) {
  using Scheme = proto::ProxyUri::Scheme;
  for (auto [user, pass, why] :
       {std::tuple{std::string(256, 'u'), std::string("p"), "user name longer than 255 bytes"},
        {std::string("u"), std::string(300, 'p'), "password longer than 255 bytes"},
        {std::string(), std::string("p"), "empty user name"}}) {
    HopHandshake hs(hand_built(Scheme::kSocks5, user, pass), target("example.org:80"));
    EXPECT_EQ(start(hs), str({5, 2, 0, 2}));
    // The proxy picks username/password: there is nothing we can send.
    expect_fails_at_once(
        feed_bytewise(hs, str({5, 2})),
        std::string("socks5 hop 127.0.0.1:1081 cannot take the credentials: ") + why);
  }
}

TEST(HopHandshake, Socks5UnsendableTargetFailsAtOnce) {
  HopHandshake hs(uri("socks5://127.0.0.1:1081"),
                  proto::Address{std::string(256, 'n'), 80});  // only by hand
  start(hs);
  Step s = feed_bytewise(hs, str({5, 0}));
  EXPECT_EQ(s.status, Step::kError);
  EXPECT_EQ(s.error, DialError::kGeneral);
  EXPECT_NE(s.message.find("socks5 hop 127.0.0.1:1081 cannot carry "), std::string::npos);
  EXPECT_NE(s.message.find(": host name longer than 255 bytes"), std::string::npos);
}

TEST(HopHandshake, HttpUserWithColonFailsAtOnce) {
  HopHandshake hs(hand_built(proto::ProxyUri::Scheme::kHttp, "a:b", "c"), target("[::1]:443"));
  expect_fails_at_once(hs.start(),
                       "http hop 127.0.0.1:1081 cannot carry [::1]:443: user name contains ':'");
}

}  // namespace
}  // namespace rs::net
