// ASCII text helpers shared by the wire codecs (HTTP heads, proxy URIs) and the
// API's HTTP handling (queries, media types, chunked bodies): the character
// classes of RFC 9110, case folding, OWS trimming, hex digits and
// percent-decoding. Pure functions over string_view; no locale, no state.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>

namespace rs::proto {

constexpr bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

constexpr bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// The value of a hex digit in either case; -1 for any other character.
constexpr int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Folds A-Z only: bytes above 0x7f are never letters here.
constexpr char ascii_lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

// ASCII case-insensitive comparison (header names, schemes, auth schemes).
constexpr bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

std::string to_lower(std::string_view s);

//   OWS = *( SP / HTAB )                      (RFC 9110 section 5.6.3)
constexpr bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

// Drops OWS from the front of `s`.
constexpr void skip_ows(std::string_view& s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
}

constexpr std::string_view trim_ows(std::string_view s) {
  skip_ows(s);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

//   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
//           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA   (RFC 9110 section 5.6.2)
constexpr bool is_tchar(char c) {
  return is_alpha(c) || is_digit(c) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

//   token = 1*tchar
constexpr bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar);
}

// HTAB, SP, VCHAR and obs-text: what field values, reason phrases, quoted
// strings and chunk extensions may hold (no other control characters, no DEL).
constexpr bool is_text_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

// Percent-decoding (RFC 3986 section 2.1); with `plus_as_space`, '+' reads as
// a space as in HTML form data. nullopt on a '%' not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s, bool plus_as_space = false);

}  // namespace rs::proto
