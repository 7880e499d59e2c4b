#include "proto/address.hpp"

#include <gtest/gtest.h>

namespace rs::proto {
namespace {

TEST(SplitHostPort, NameAndPort) {
  auto hp = split_host_port("example.org:80");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "example.org");
  EXPECT_EQ(hp->port, "80");
}

TEST(SplitHostPort, Ipv4) {
  auto hp = split_host_port("10.0.0.1:1080");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "10.0.0.1");
  EXPECT_EQ(hp->port, "1080");
}

TEST(SplitHostPort, BracketedIpv6LosesBrackets) {
  auto hp = split_host_port("[::1]:80");
  ASSERT_TRUE(hp);
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, "80");
}

TEST(SplitHostPort, Rejects) {
  for (const char* s : {
           "::1:80",        // unbracketed IPv6 is ambiguous
           "example.org",   // no port
           "example.org:",  // empty port
           ":80",           // empty host
           "",              // nothing
           "[::1]",         // bracketed, no port
           "[::1]80",       // no colon after the bracket
           "[::1:80",       // unterminated bracket
           "[]:80",         // empty bracketed host
           "[::1]:",        // empty port after bracket
       }) {
    EXPECT_FALSE(split_host_port(s)) << s;
  }
}

TEST(ParsePort, Range) {
  EXPECT_EQ(parse_port("0"), 0);
  EXPECT_EQ(parse_port("1"), 1);
  EXPECT_EQ(parse_port("65535"), 65535);
  EXPECT_FALSE(parse_port("65536"));
  EXPECT_FALSE(parse_port("99999"));
  EXPECT_FALSE(parse_port("100000"));
}

TEST(ParsePort, RejectsNonDigits) {
  for (const char* s : {"", "-1", "+1", " 80", "80 ", "8o", "0x50", "1e3"}) {
    EXPECT_FALSE(parse_port(s)) << s;
  }
}

TEST(ParseIp, Ipv4) {
  EXPECT_EQ(parse_ipv4("1.2.3.4"), (Ipv4{1, 2, 3, 4}));
  EXPECT_EQ(parse_ipv4("255.255.255.255"), (Ipv4{255, 255, 255, 255}));
  for (const char* s : {"", "1.2.3", "1.2.3.4.5", "256.0.0.1", "a.b.c.d", "1.2.3.4 ",
                        "111111111111111111111.1.1.1"}) {
    EXPECT_FALSE(parse_ipv4(s)) << s;
  }
}

TEST(ParseIp, Ipv6) {
  Ipv6 loopback{};
  loopback[15] = 1;
  EXPECT_EQ(parse_ipv6("::1"), loopback);
  EXPECT_TRUE(parse_ipv6("2001:db8::8a2e:370:7334"));
  EXPECT_TRUE(parse_ipv6("::ffff:1.2.3.4"));
  for (const char* s : {"", ":::", "zz::", "[::1]", "1.2.3.4", "1:2:3:4:5:6:7:8:9",
                        "0000000000000000000000000000000000000000000000000::"}) {
    EXPECT_FALSE(parse_ipv6(s)) << s;
  }
}

// Found by tests/fuzz (proxy_uri): inet_pton() stopped at an embedded NUL, so
// "1.2.3.4\0junk" read as 1.2.3.4.
TEST(ParseIp, RejectsEmbeddedNul) {
  using namespace std::string_view_literals;
  for (auto s : {"1.2.3.4\0"sv, "1.2.3.4\0junk"sv, "\0"sv, "1.2\0.3.4"sv}) {
    EXPECT_FALSE(parse_ipv4(s)) << s.size();
  }
  for (auto s : {"::1\0"sv, "::1\0:2"sv, "2001:db8::1\0.example"sv}) {
    EXPECT_FALSE(parse_ipv6(s)) << s.size();
  }
  // Nor is it a host name, nor part of one of the address forms.
  EXPECT_FALSE(make_address("10.0.0.1\0x"sv, 80));
  EXPECT_FALSE(parse_address("1.2.3.4\0junk:80"sv));
  EXPECT_FALSE(parse_address("[::1\0]:80"sv));
}

TEST(MakeAddress, NumericHostsBecomeIps) {
  EXPECT_EQ(make_address("1.2.3.4", 80), (Address{Ipv4{1, 2, 3, 4}, 80}));
  auto v6 = make_address("::1", 443);
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->is_ipv6());
  EXPECT_EQ(v6->port, 443);
}

TEST(MakeAddress, DomainValidation) {
  auto name = make_address("example.org", 80);
  ASSERT_TRUE(name);
  EXPECT_TRUE(name->is_domain());
  EXPECT_TRUE(make_address(std::string(255, 'a'), 1));
  EXPECT_TRUE(make_address("under_score-dash.example", 1));
  EXPECT_FALSE(make_address("", 80));
  EXPECT_FALSE(make_address(std::string(256, 'a'), 1));
  for (const char* s : {"a b", "a\tb", "a/b", "a:b", "[a]", "a\x7f"}) {
    EXPECT_FALSE(make_address(s, 80)) << s;
  }
  EXPECT_FALSE(make_address(std::string("a\0b", 3), 80));
  EXPECT_FALSE(make_address("a\nb", 80));
}

TEST(ParseAddress, AllForms) {
  EXPECT_EQ(parse_address("1.2.3.4:80"), (Address{Ipv4{1, 2, 3, 4}, 80}));
  EXPECT_EQ(parse_address("example.org:0"), (Address{std::string("example.org"), 0}));
  auto v6 = parse_address("[::1]:65535");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->is_ipv6());
  EXPECT_EQ(v6->port, 65535);
  EXPECT_FALSE(parse_address("::1:80"));
  EXPECT_FALSE(parse_address("example.org:65536"));
  EXPECT_FALSE(parse_address("example.org"));
  EXPECT_FALSE(parse_address("[example.org]:80"));  // a name is not an IPv6 literal
  EXPECT_FALSE(parse_address("bad host:80"));
}

TEST(Address, ToString) {
  EXPECT_EQ((Address{Ipv4{1, 2, 3, 4}, 80}).to_string(), "1.2.3.4:80");
  EXPECT_EQ(parse_address("[2001:db8::1]:443")->to_string(), "[2001:db8::1]:443");
  EXPECT_EQ(parse_address("[2001:db8::1]:443")->host_string(), "2001:db8::1");
  EXPECT_EQ((Address{std::string("example.org"), 8080}).to_string(), "example.org:8080");
  EXPECT_EQ(Address{}.to_string(), "0.0.0.0:0");
}

TEST(Address, RoundTripThroughText) {
  for (const char* s : {"1.2.3.4:80", "[::1]:1", "[2001:db8::1]:65535", "example.org:443"}) {
    auto a = parse_address(s);
    ASSERT_TRUE(a) << s;
    EXPECT_EQ(a->to_string(), s);
    EXPECT_EQ(parse_address(a->to_string()), a);
  }
}

}  // namespace
}  // namespace rs::proto
