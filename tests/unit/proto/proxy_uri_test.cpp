#include "proto/proxy_uri.hpp"

#include <gtest/gtest.h>

#include <random>

namespace rs::proto {
namespace {

using Scheme = ProxyUri::Scheme;

ProxyUri parse_ok(std::string_view text) {
  auto r = parse_proxy_uri(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.error;
  return r.uri;
}

// Expects a failure whose message contains `why`.
void expect_fails(std::string_view text, std::string_view why) {
  auto r = parse_proxy_uri(text);
  EXPECT_FALSE(r.ok()) << text;
  EXPECT_NE(r.error.find(why), std::string::npos) << text << " gave: " << r.error;
}

TEST(ProxyUri, Schemes) {
  EXPECT_EQ(parse_ok("socks4a://h:1").scheme, Scheme::kSocks4a);
  EXPECT_EQ(parse_ok("socks4://h:1").scheme, Scheme::kSocks4a);
  EXPECT_EQ(parse_ok("socks5://h:1").scheme, Scheme::kSocks5);
  EXPECT_EQ(parse_ok("socks5h://h:1").scheme, Scheme::kSocks5);
  EXPECT_EQ(parse_ok("http://h:1").scheme, Scheme::kHttp);
  EXPECT_EQ(parse_ok("SOCKS5://h:1").scheme, Scheme::kSocks5);
  EXPECT_EQ(parse_ok("Http://h:1").scheme, Scheme::kHttp);
}

TEST(ProxyUri, UnknownScheme) {
  expect_fails("ftps://h:1", "unknown scheme \"ftps\"");
  expect_fails("socks4s://h:1", "unknown scheme");
  expect_fails("socks6://h:1", "unknown scheme");
  expect_fails("://h:1", "unknown scheme");
  expect_fails("h:1080", "missing scheme");
  expect_fails("socks5:/h:1080", "missing scheme");
}

TEST(ProxyUri, TlsSchemes) {
  auto https = parse_ok("https://u:p@proxy.example:443");
  EXPECT_EQ(https.scheme, Scheme::kHttp);
  EXPECT_TRUE(https.tls);
  EXPECT_EQ(https.username, "u");
  EXPECT_EQ(https.to_string(), "https://***@proxy.example:443");
  auto s5 = parse_ok("SOCKS5S://[::1]:1080");
  EXPECT_EQ(s5.scheme, Scheme::kSocks5);
  EXPECT_TRUE(s5.tls);
  EXPECT_EQ(s5.to_string(), "socks5s://[::1]:1080");
  EXPECT_FALSE(parse_ok("http://h:1").tls);
  EXPECT_FALSE(parse_ok("socks5h://h:1").tls);
  // The wire format's limits still apply inside TLS.
  expect_fails("https://a%3Ab@h:1", "http user name contains");
  EXPECT_FALSE(parse_proxy_uri("socks5s://" + std::string(256, 'u') + "@h:1").ok());
}

TEST(ProxyUri, Hosts) {
  auto name = parse_ok("socks5://proxy.example:1080");
  EXPECT_EQ(name.host, "proxy.example");
  EXPECT_EQ(name.port, 1080);
  EXPECT_EQ(name.address(), (Address{std::string("proxy.example"), 1080}));
  auto v4 = parse_ok("http://10.0.0.1:3128");
  EXPECT_EQ(v4.address(), (Address{Ipv4{10, 0, 0, 1}, 3128}));
  auto v6 = parse_ok("socks5://[2001:db8::1]:1080");
  EXPECT_EQ(v6.host, "2001:db8::1");
  EXPECT_TRUE(v6.address().is_ipv6());
  EXPECT_EQ(v6.address().port, 1080);
  EXPECT_FALSE(v6.has_auth);
}

TEST(ProxyUri, Port) {
  EXPECT_EQ(parse_ok("socks5://h:1").port, 1);
  EXPECT_EQ(parse_ok("socks5://h:65535").port, 65535);
  expect_fails("socks5://h", "missing port");
  expect_fails("socks5://h:", "missing port");
  expect_fails("socks5://[::1]", "missing port");
  expect_fails("socks5://[::1]:", "missing port");
  expect_fails("socks5://[::1]1080", "missing port");
  expect_fails("socks5://h:0", "bad port \"0\"");
  expect_fails("socks5://h:65536", "bad port");
  expect_fails("socks5://h:http", "bad port");
  expect_fails("socks5://h:-1", "bad port");
  expect_fails("socks5://h: 80", "bad port");
}

TEST(ProxyUri, BadHosts) {
  expect_fails("socks5://[::1:1080", "unterminated IPv6 literal");
  expect_fails("socks5://[zz::]:1080", "bad IPv6 literal \"zz::\"");
  expect_fails("socks5://[]:1080", "bad IPv6 literal");
  expect_fails("socks5://[example.org]:1080", "bad IPv6 literal");
  expect_fails("socks5://[1.2.3.4]:1080", "bad IPv6 literal");
  expect_fails("socks5://::1:1080", "brackets");
  expect_fails("socks5://:1080", "empty host");
  expect_fails("socks5://user@:1080", "empty host");
  expect_fails("socks5://bad host:1080", "invalid host");
  expect_fails("socks5://", "missing port");
}

TEST(ProxyUri, Credentials) {
  auto u = parse_ok("socks5://alice:s3cret@h:1080");
  EXPECT_TRUE(u.has_auth);
  EXPECT_EQ(u.username, "alice");
  EXPECT_EQ(u.password, "s3cret");
  auto no_pass = parse_ok("http://bob@h:8080");
  EXPECT_TRUE(no_pass.has_auth);
  EXPECT_EQ(no_pass.username, "bob");
  EXPECT_EQ(no_pass.password, "");
  auto empty_pass = parse_ok("http://bob:@h:8080");
  EXPECT_EQ(empty_pass.password, "");
  EXPECT_EQ(parse_ok("socks4a://userid@h:1080").username, "userid");
}

TEST(ProxyUri, CredentialsPercentDecoded) {
  auto u = parse_ok("socks5://us%65r%3a1:p%40ss%2F%25@h:1080");
  EXPECT_EQ(u.username, "user:1");
  EXPECT_EQ(u.password, "p@ss/%");
  // A raw '@' or ':' in the password still works: userinfo ends at the last
  // '@', the user name at the first ':'.
  auto raw = parse_ok("socks5://u:p@ss:w@h:1080");
  EXPECT_EQ(raw.username, "u");
  EXPECT_EQ(raw.password, "p@ss:w");
  EXPECT_EQ(raw.host, "h");
  auto nul = parse_ok("http://u:%00@h:1");
  EXPECT_EQ(nul.password, std::string(1, '\0'));
}

TEST(ProxyUri, BadCredentials) {
  expect_fails("socks5://u:%zz@h:1080", "percent-escape");
  expect_fails("socks5://u:%4@h:1080", "percent-escape");
  expect_fails("socks5://u:%@h:1080", "percent-escape");
  expect_fails("socks5://%g1@h:1080", "percent-escape");
  expect_fails("socks5://@h:1080", "user name");
  expect_fails("socks5://:pw@h:1080", "user name");
  expect_fails("socks4a://u:pw@h:1080", "no password");
  expect_fails("socks4://u:@h:1080", "no password");
}

// Credentials the scheme cannot put on the wire are refused here, naming the
// field and the limit, rather than making every dial through the hop fail.
TEST(ProxyUri, CredentialsTheSchemeCannotCarry) {
  const std::string u255(255, 'u'), u256(256, 'u');
  EXPECT_EQ(parse_ok("socks5://" + u255 + ":" + std::string(255, 'p') + "@h:1").username, u255);
  expect_fails("socks5://" + u256 + "@h:1",
               "socks5 user name is 256 bytes, longer than the limit of 255");
  expect_fails("socks5://u:" + std::string(300, 'p') + "@h:1",
               "socks5 password is 300 bytes, longer than the limit of 255");
  // The limit applies to the decoded text: "%75" is one byte.
  std::string escaped;
  for (int i = 0; i < 256; ++i) escaped += "%75";
  expect_fails("socks5://" + escaped + "@h:1", "user name is 256 bytes");
  EXPECT_EQ(parse_ok("socks4a://" + u255 + "@h:1").username, u255);
  expect_fails("socks4a://" + u256 + "@h:1",
               "socks4a user id is 256 bytes, longer than the limit of 255");
  expect_fails("socks4a://a%00b@h:1", "socks4a user id contains a NUL byte");
  expect_fails("http://a%3Ab:pw@h:1", "http user name contains ':'");
  // An http password may hold ':' and be long: Basic credentials have no limit.
  EXPECT_EQ(parse_ok("http://u:" + std::string(300, ':') + "@h:1").password.size(), 300u);
}

TEST(ProxyUri, ErrorsNeverQuoteThePassword) {
  for (const char* text :
       {"socks5://u:hunter2@h", "socks5://u:hunter2@h:0", "socks5://u:hunter2@[zz]:1",
        "socks4a://u:hunter2@h:1", "socks5://u:hunter2@h:1/x", "socks5://u:hunter2%zz@h:1"}) {
    auto r = parse_proxy_uri(text);
    EXPECT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.error.find("hunter2"), std::string::npos) << r.error;
  }
}

TEST(ProxyUri, TrailingPath) {
  EXPECT_EQ(parse_ok("socks5://h:1080/").port, 1080);
  EXPECT_EQ(parse_ok("socks5://[::1]:1080/").port, 1080);
  expect_fails("socks5://h:1080/path", "unexpected path \"/path\"");
  expect_fails("socks5://h:1080//", "unexpected path");
  expect_fails("socks5://h:1080?x=1", "unexpected path");
  expect_fails("socks5://h:1080#frag", "unexpected path");
  expect_fails("socks5://h/:1080", "unexpected path");
}

TEST(ProxyUri, ToStringMasksCredentials) {
  EXPECT_EQ(parse_ok("socks5h://u:secret@h:1080").to_string(), "socks5://***@h:1080");
  EXPECT_EQ(parse_ok("SOCKS4://h:1080/").to_string(), "socks4a://h:1080");
  EXPECT_EQ(parse_ok("http://[::1]:8080").to_string(), "http://[::1]:8080");
}

TEST(ProxyUri, ToStringParsesBack) {
  for (const char* text : {"socks4a://h:1", "socks5://1.2.3.4:1080", "http://[2001:db8::2]:3128"}) {
    auto u = parse_ok(text);
    EXPECT_EQ(u.to_string(), text);
    EXPECT_EQ(parse_ok(u.to_string()), u);
  }
}

TEST(ProxyList, Chain) {
  auto r = parse_proxy_list("socks4a://a:1, socks5://u:p@b:2 ,http://[::1]:3");
  ASSERT_TRUE(r.ok()) << r.error;
  ASSERT_EQ(r.proxies.size(), 3u);
  EXPECT_EQ(r.proxies[0].scheme, Scheme::kSocks4a);
  EXPECT_EQ(r.proxies[1].username, "u");
  EXPECT_EQ(r.proxies[1].host, "b");
  EXPECT_EQ(r.proxies[2].host, "::1");
}

TEST(ProxyList, Single) {
  auto r = parse_proxy_list("socks5://h:1080");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.proxies.size(), 1u);
}

TEST(ProxyList, Errors) {
  auto empty = parse_proxy_list("");
  EXPECT_FALSE(empty.ok());
  EXPECT_TRUE(empty.proxies.empty());
  auto blank = parse_proxy_list("socks5://a:1,,socks5://b:2");
  EXPECT_FALSE(blank.ok());
  EXPECT_NE(blank.error.find("proxy 2: empty entry"), std::string::npos) << blank.error;
  EXPECT_FALSE(parse_proxy_list("socks5://a:1,").ok());
  auto bad = parse_proxy_list("socks5://a:1,socks5://b");
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(bad.proxies.empty());
  EXPECT_NE(bad.error.find("proxy 2: missing port"), std::string::npos) << bad.error;
}

TEST(ProxyUriFuzz, NeverCrashes) {
  std::mt19937 rng(90);
  const std::string alphabet = "socks5ahtp:/@[]%.:0123456789zx,? ";
  for (int i = 0; i < 10000; ++i) {
    std::string s(rng() % 40, ' ');
    for (auto& c : s) c = alphabet[rng() % alphabet.size()];
    if (i % 2 == 0) s = (i % 4 == 0 ? "socks5://" : "http://") + s;
    auto r = parse_proxy_uri(s);
    if (r.ok()) {
      EXPECT_NE(r.uri.port, 0);
      EXPECT_FALSE(r.uri.host.empty());
      // The canonical form of a valid URI is valid (credentials aside).
      auto again = parse_proxy_uri(r.uri.to_string());
      if (!r.uri.has_auth) {
        EXPECT_TRUE(again.ok()) << s << " -> " << r.uri.to_string();
      }
    } else {
      EXPECT_FALSE(r.error.empty());
    }
    parse_proxy_list(s);
  }
}

}  // namespace
}  // namespace rs::proto
