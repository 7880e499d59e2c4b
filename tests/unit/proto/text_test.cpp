// The shared ASCII text helpers; the constexpr ones are also checked at compile time.
#include "proto/text.hpp"

#include <gtest/gtest.h>

#include <string>

namespace rs::proto {
namespace {

static_assert(hex_value('0') == 0 && hex_value('9') == 9 && hex_value('a') == 10 &&
              hex_value('F') == 15);
static_assert(hex_value('g') == -1 && hex_value('/') == -1 && hex_value(':') == -1 &&
              hex_value('@') == -1 && hex_value('G') == -1 && hex_value('`') == -1);
static_assert(iequals("Content-Length", "content-LENGTH"));
static_assert(trim_ows(" \t x y \t") == "x y");
static_assert(is_token("x-neosocksd-rpc") && !is_token("") && !is_token("a b"));

TEST(Text, HexValueAllBytes) {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const std::string_view digits = "0123456789abcdef";
    const size_t lower = digits.find(ascii_lower(c));
    const int want = lower == std::string_view::npos ? -1 : static_cast<int>(lower);
    EXPECT_EQ(hex_value(c), want) << b;
  }
}

TEST(Text, Iequals) {
  EXPECT_TRUE(iequals("Content-Length", "content-LENGTH"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_FALSE(iequals("abc", "abcd"));
  EXPECT_FALSE(iequals("a-b", "a_b"));
  EXPECT_FALSE(iequals("\xc3\xa9", "\xc3\x89"));  // ASCII only
  EXPECT_FALSE(iequals("[", "{"));                // 0x5b vs 0x7b: only letters fold
}

TEST(Text, ToLower) {
  EXPECT_EQ(to_lower("GZip, X-Gzip"), "gzip, x-gzip");
  EXPECT_EQ(to_lower("\xc3\x89"), "\xc3\x89");
  EXPECT_EQ(to_lower(""), "");
}

TEST(Text, Ows) {
  EXPECT_EQ(trim_ows("  a b\t"), "a b");
  EXPECT_EQ(trim_ows(" \t "), "");
  EXPECT_EQ(trim_ows("\r a \n"), "\r a \n");  // only SP and HTAB are OWS
  std::string_view s = "\t ; q=1 ";
  skip_ows(s);
  EXPECT_EQ(s, "; q=1 ");
}

TEST(Text, Tchar) {
  std::string all;
  for (int b = 0; b < 256; ++b)
    if (is_tchar(static_cast<char>(b))) all.push_back(static_cast<char>(b));
  EXPECT_EQ(all, "!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz|~");
  EXPECT_TRUE(is_token("CONNECT"));
  EXPECT_FALSE(is_token("Bad Name"));
  EXPECT_FALSE(is_token("a:b"));
}

TEST(Text, TextChar) {
  EXPECT_TRUE(is_text_char('\t'));
  EXPECT_TRUE(is_text_char(' '));
  EXPECT_TRUE(is_text_char('~'));
  EXPECT_TRUE(is_text_char('\x80'));  // obs-text
  EXPECT_FALSE(is_text_char('\x7f'));
  EXPECT_FALSE(is_text_char('\r'));
  EXPECT_FALSE(is_text_char('\0'));
}

TEST(Text, PercentDecode) {
  EXPECT_EQ(percent_decode("a%20b%2Fc"), "a b/c");
  EXPECT_EQ(percent_decode("%40libruleset.lua"), "@libruleset.lua");
  EXPECT_EQ(percent_decode("a+b", true), "a b");
  EXPECT_EQ(percent_decode("a+b"), "a+b");
  EXPECT_EQ(percent_decode("%00%ff"), std::string("\0\xff", 2));
  EXPECT_EQ(percent_decode(""), "");
  EXPECT_EQ(percent_decode("%41"), "A");  // an escape that ends the text
  EXPECT_FALSE(percent_decode("%4"));
  EXPECT_FALSE(percent_decode("%"));
  EXPECT_FALSE(percent_decode("%zz"));
  EXPECT_FALSE(percent_decode("a%g1"));
  EXPECT_FALSE(percent_decode("%4g"));
}

}  // namespace
}  // namespace rs::proto
