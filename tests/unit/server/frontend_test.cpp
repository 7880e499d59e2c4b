// Whole inbound conversations on byte buffers: what the client sends, what
// the frontend answers, and the request it produces.
#include "server/frontend.hpp"

#include <gtest/gtest.h>

#include "proto/http.hpp"
#include "proto/parse.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"

namespace rs::server {
namespace {

using net::DialError;

std::string str(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

// Feeds `input` one byte at a time, as the slowest client would, and returns
// the first step that is not kNeedMore together with the unconsumed rest.
Step feed_bytewise(Frontend& fe, const std::string& input, std::string* rest = nullptr) {
  std::string buf;
  for (char c : input) {
    buf.push_back(c);
    Step s = fe.feed(proto::to_bytes(buf));
    if (s.status != Step::kNeedMore) {
      buf.erase(0, s.consumed);
      if (rest) *rest = buf;
      return s;
    }
  }
  return {};
}

TEST(Socks4Frontend, ConnectIpv4WithUserId) {
  auto fe = make_socks4_frontend({});
  Step s = feed_bytewise(*fe, str({4, 1, 0, 80, 127, 0, 0, 1}) + "bob" + std::string(1, '\0'));
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.target.to_string(), "127.0.0.1:80");
  EXPECT_EQ(s.request.username, "bob");
  EXPECT_EQ(fe->reply(DialError::kOk), str({0, 0x5A, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(fe->reply(DialError::kRefused)[1], 0x5B);
  EXPECT_STREQ(fe->name(), "socks4");
}

TEST(Socks4Frontend, Socks4aHostName) {
  auto fe = make_socks4_frontend({});
  std::string msg = str({4, 1, 0x1F, 0x90, 0, 0, 0, 1, 0}) + "example.org" + std::string(1, '\0');
  Step s = feed_bytewise(*fe, msg);
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.target.to_string(), "example.org:8080");
  EXPECT_FALSE(s.request.username.has_value());
  EXPECT_STREQ(fe->name(), "socks4a");
}

TEST(Socks4Frontend, BindIsRejected) {
  auto fe = make_socks4_frontend({});
  Step s = feed_bytewise(*fe, str({4, 2, 0, 80, 127, 0, 0, 1, 0}));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(s.out, str({0, 0x5B, 0, 0, 0, 0, 0, 0}));
}

TEST(Socks4Frontend, AuthRequiredNeedsUserId) {
  auto fe = make_socks4_frontend({.auth_required = true});
  Step s = feed_bytewise(*fe, str({4, 1, 0, 80, 127, 0, 0, 1, 0}));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(static_cast<uint8_t>(s.out[1]), 0x5B);
}

TEST(Socks5Frontend, NoAuthConnectDomain) {
  auto fe = make_socks5_frontend({});
  std::string rest;
  Step s = feed_bytewise(*fe, str({5, 1, 0}), &rest);
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({5, 0}));
  // The request and early payload arrive together (pipelined clients).
  std::string req = str({5, 1, 0, 3, 11}) + "example.org" + str({0, 80}) + "GET";
  s = fe->feed(proto::to_bytes(req));
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.consumed, req.size() - 3);
  EXPECT_EQ(s.request.target.to_string(), "example.org:80");
}

TEST(Socks5Frontend, Ipv6Target) {
  auto fe = make_socks5_frontend({});
  ASSERT_EQ(fe->feed(proto::to_bytes(str({5, 1, 0}))).status, Step::kReply);
  std::string req = str({5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xBB});
  Step s = feed_bytewise(*fe, req);
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.target.to_string(), "[::1]:443");
}

TEST(Socks5Frontend, PasswordWhenAuthRequired) {
  auto fe = make_socks5_frontend({.auth_required = true});
  Step s = feed_bytewise(*fe, str({5, 2, 0, 2}));
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({5, 2}));
  s = feed_bytewise(*fe, str({1, 3}) + "bob" + str({2}) + "pw");
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({1, 0}));
  s = feed_bytewise(*fe, str({5, 1, 0, 1, 10, 0, 0, 1, 0, 22}));
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.username, "bob");
  EXPECT_EQ(s.request.password, "pw");
}

TEST(Socks5Frontend, AuthRequiredRefusesNoAuthClients) {
  auto fe = make_socks5_frontend({.auth_required = true});
  Step s = feed_bytewise(*fe, str({5, 1, 0}));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(s.out, str({5, 0xFF}));
}

TEST(Socks5Frontend, EmptyUsernameFailsAuth) {
  auto fe = make_socks5_frontend({.auth_required = true});
  ASSERT_EQ(feed_bytewise(*fe, str({5, 1, 2})).status, Step::kReply);
  Step s = feed_bytewise(*fe, str({1, 0, 0}));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(s.out, str({1, 1}));
  EXPECT_EQ(s.error, "socks5: empty username");
}

TEST(Socks5Frontend, NoAuthPreferredWithoutRuleset) {
  auto fe = make_socks5_frontend({});
  Step s = feed_bytewise(*fe, str({5, 2, 2, 0}));
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({5, 0}));
}

TEST(Socks5Frontend, PasswordOnlyClientIsServedWithoutRuleset) {
  // Offers only username/password: taken, and any non-empty username passes.
  auto fe = make_socks5_frontend({});
  Step s = fe->feed(proto::to_bytes(str({5, 1, 2})));
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({5, 2}));
  s = fe->feed(proto::to_bytes(str({1, 1, 'u', 1, 'p'})));
  ASSERT_EQ(s.status, Step::kReply);
  EXPECT_EQ(s.out, str({1, 0}));
}

TEST(Socks5Frontend, UnsupportedCommands) {
  for (int cmd : {2, 3, 9}) {
    auto fe = make_socks5_frontend({});
    ASSERT_EQ(feed_bytewise(*fe, str({5, 1, 0})).status, Step::kReply);
    Step s = feed_bytewise(*fe, str({5, cmd, 0, 1, 10, 0, 0, 1, 0, 22}));
    ASSERT_EQ(s.status, Step::kFail) << cmd;
    ASSERT_GE(s.out.size(), 2u);
    EXPECT_EQ(s.out[1], 0x07) << cmd;
  }
}

TEST(Socks5Frontend, UdpAssociateAndBindWhenEnabled) {
  FrontendOptions opts;
  opts.udp_associate = true;
  opts.bind = true;
  for (int cmd : {2, 3}) {
    auto fe = make_socks5_frontend(opts);
    ASSERT_EQ(feed_bytewise(*fe, str({5, 1, 0})).status, Step::kReply);
    Step s = feed_bytewise(*fe, str({5, cmd, 0, 1, 10, 0, 0, 1, 0x1F, 0x90}));
    ASSERT_EQ(s.status, Step::kRequest) << cmd;
    EXPECT_EQ(s.request.udp_associate, cmd == 3);
    EXPECT_EQ(s.request.bind, cmd == 2);
    // For UDP the address is where the client sends from; for BIND the peer.
    EXPECT_EQ(s.request.target.to_string(), "10.0.0.1:8080");
  }
  // Enabling one leaves the other refused, and unknown commands stay so.
  FrontendOptions udp_only;
  udp_only.udp_associate = true;
  for (int cmd : {2, 9}) {
    auto fe = make_socks5_frontend(udp_only);
    ASSERT_EQ(feed_bytewise(*fe, str({5, 1, 0})).status, Step::kReply);
    Step s = feed_bytewise(*fe, str({5, cmd, 0, 1, 10, 0, 0, 1, 0, 22}));
    ASSERT_EQ(s.status, Step::kFail) << cmd;
    EXPECT_EQ(s.out[1], 0x07) << cmd;
  }
}

TEST(Socks5Frontend, UnknownAddressType) {
  auto fe = make_socks5_frontend({});
  ASSERT_EQ(feed_bytewise(*fe, str({5, 1, 0})).status, Step::kReply);
  Step s = fe->feed(proto::to_bytes(str({5, 1, 0, 9, 1, 2, 3, 4, 0, 80})));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(s.out[1], 0x08);
}

TEST(Socks5Frontend, RepliesMapDialErrors) {
  auto fe = make_socks5_frontend({});
  const std::pair<DialError, int> cases[] = {{DialError::kOk, 0},
                                             {DialError::kGeneral, 1},
                                             {DialError::kNotAllowed, 2},
                                             {DialError::kNetUnreachable, 3},
                                             {DialError::kHostUnreachable, 4},
                                             {DialError::kRefused, 5},
                                             {DialError::kTimeout, 6},
                                             {DialError::kAddressType, 8}};
  for (auto [err, rep] : cases) {
    std::string r = fe->reply(err);
    ASSERT_EQ(r.size(), 10u);
    EXPECT_EQ(r[0], 5);
    EXPECT_EQ(r[1], rep) << to_string(err);
  }
}

TEST(Socks5Frontend, BadVersionCloses) {
  auto fe = make_socks5_frontend({});
  Step s = fe->feed(proto::to_bytes(str({5, 0})));
  EXPECT_EQ(s.status, Step::kFail);
}

TEST(HttpFrontend, Connect) {
  auto fe = make_http_frontend({});
  std::string rest;
  Step s = feed_bytewise(
      *fe, "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n\x16\x03", &rest);
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.target.to_string(), "example.org:443");
  EXPECT_EQ(fe->reply(DialError::kOk), "HTTP/1.1 200 Connection established\r\n\r\n");
}

TEST(HttpFrontend, NonHttpFirstByteFailsAtOnce) {
  for (int first : {5, 4, 0, int{'\r'}, int{'{'}}) {
    auto fe = make_http_frontend({});
    Step s = fe->feed(proto::to_bytes(str({first})));
    ASSERT_EQ(s.status, Step::kFail) << first;
    EXPECT_TRUE(s.out.starts_with("HTTP/1.1 400 ")) << s.out;
  }
}

TEST(HttpFrontend, Credentials) {
  auto fe = make_http_frontend({.auth_required = true});
  Step s = fe->feed(proto::to_bytes("CONNECT [::1]:80 HTTP/1.1\r\nProxy-Authorization: Basic " +
                                    proto::base64_encode("u:p") + "\r\n\r\n"));
  ASSERT_EQ(s.status, Step::kRequest);
  EXPECT_EQ(s.request.target.to_string(), "[::1]:80");
  EXPECT_EQ(s.request.username, "u");
  EXPECT_EQ(s.request.password, "p");
}

TEST(HttpFrontend, AuthRequired407) {
  auto fe = make_http_frontend({.auth_required = true});
  Step s = fe->feed(proto::to_bytes("CONNECT a.example:80 HTTP/1.1\r\n\r\n"));
  ASSERT_EQ(s.status, Step::kFail);
  EXPECT_EQ(s.out.rfind("HTTP/1.1 407 ", 0), 0u) << s.out;
  EXPECT_NE(s.out.find("Proxy-Authenticate: Basic"), std::string::npos);
}

// Plain requests (any method but CONNECT) go to the HTTP proxy, which reads
// the head again: nothing is consumed or answered here.
TEST(HttpFrontend, PlainRequestIsForwarded) {
  for (const char* method : {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
    auto fe = make_http_frontend({.auth_required = true});
    Step s = fe->feed(proto::to_bytes(
        std::string(method) + " http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n"));
    ASSERT_EQ(s.status, Step::kForward) << method;
    EXPECT_EQ(s.consumed, 0u);
    EXPECT_TRUE(s.out.empty());
  }
}

TEST(HttpFrontend, BadTargetAndGarbage) {
  for (const char* req : {"CONNECT example.org HTTP/1.1\r\n\r\n", "CONNECT :80 HTTP/1.1\r\n\r\n",
                          "CONNECT example.org:99999 HTTP/1.1\r\n\r\n",
                          "CONNECT\x01 x HTTP/1.1\r\n\r\n", "HELLO\r\n\r\n"}) {
    auto fe = make_http_frontend({});
    Step s = fe->feed(proto::to_bytes(req));
    ASSERT_EQ(s.status, Step::kFail) << req;
    EXPECT_EQ(s.out.rfind("HTTP/1.1 400 ", 0), 0u) << req << " -> " << s.out;
  }
}

TEST(HttpFrontend, FailureStatuses) {
  auto fe = make_http_frontend({});
  EXPECT_EQ(fe->reply(DialError::kTimeout).rfind("HTTP/1.1 504 ", 0), 0u);
  EXPECT_EQ(fe->reply(DialError::kRefused).rfind("HTTP/1.1 502 ", 0), 0u);
  EXPECT_EQ(fe->reply(DialError::kNotAllowed).rfind("HTTP/1.1 403 ", 0), 0u);
}

// The session logs a failure as "<peer>: closing: <error>", so the error must
// name its protocol exactly once, whether the parser or the frontend found it.
TEST(FrontendErrors, NameTheProtocolOnce) {
  struct Case {
    std::unique_ptr<Frontend> fe;
    std::vector<std::string> messages;  // fed in turn; the last one fails
    std::string error;
  };
  Case cases[] = {
      {make_socks4_frontend({}),
       {str({4, 1, 0, 80, 0, 0, 0, 1, 0, 0})},
       "socks4a: empty host name"},
      {make_socks4_frontend({}), {str({4, 9, 0, 80, 1, 2, 3, 4, 0})}, "socks4: unknown command 9"},
      {make_socks4_frontend({}),
       {str({4, 2, 0, 80, 1, 2, 3, 4, 0})},
       "socks4: command not supported"},
      {make_socks5_frontend({}), {str({5, 0})}, "socks5: greeting offers no method"},
      {make_socks5_frontend({.auth_required = true}),
       {str({5, 1, 2}), str({1, 0, 0})},
       "socks5: empty username"},
      {make_socks5_frontend({}),
       {str({5, 1, 0}), str({5, 1, 0, 9, 0, 0})},
       "socks5: unknown address type 9"},
      {make_http_frontend({}),
       {"CONNECT a.example:80 HTTP/2.0\r\n\r\n"},
       "http: unsupported version HTTP/2.0"},
      {make_http_frontend({}),
       {"CONNECT a.example:80 HTTP/1.1\r\nBad Name: x\r\n\r\n"},
       "http: invalid header name"},
  };
  for (auto& c : cases) {
    Step s;
    for (const auto& m : c.messages) s = feed_bytewise(*c.fe, m);
    ASSERT_EQ(s.status, Step::kFail) << c.error;
    EXPECT_EQ(s.error, c.error);
  }
}

TEST(Sniff, FirstByte) {
  EXPECT_STREQ(sniff_frontend(4, {})->name(), "socks4");
  EXPECT_STREQ(sniff_frontend(5, {})->name(), "socks5");
  EXPECT_STREQ(sniff_frontend('C', {})->name(), "http");
  EXPECT_EQ(sniff_frontend(0, {}), nullptr);
  EXPECT_EQ(sniff_frontend(0x16, {}), nullptr);
}

}  // namespace
}  // namespace rs::server
