#include "proto/http.hpp"

#include <algorithm>
#include <limits>

#include "proto/text.hpp"

namespace rs::proto {

namespace {

// ---- Character classes (RFC 9110 section 5.6.2, RFC 9112 section 3.2) ----
// tchar, OWS and field text are in proto/text.hpp.

// Visible ASCII: a request target carries no spaces, controls or raw 8-bit.
bool is_target_char(char c) {
  return c > 0x20 && c < 0x7f;
}

bool is_text(std::string_view s) {
  return std::all_of(s.begin(), s.end(), is_text_char);
}

// ---- Head reader ----

struct HeadError {
  std::string message;
  int status = 400;
};
using MaybeError = std::optional<HeadError>;

// "HTTP/1.0" or "HTTP/1.1"; a well-formed other version is a 505.
MaybeError parse_version(std::string_view v, int& minor) {
  if (v.size() != 8 || !v.starts_with("HTTP/") || !is_digit(v[5]) || v[6] != '.' || !is_digit(v[7]))
    return HeadError{"http: malformed version"};
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
    return HeadError{"http: unsupported version " + std::string(v), 505};
  minor = v[7] - '0';
  return std::nullopt;
}

MaybeError parse_request_line(std::string_view line, HttpRequestHead& head) {
  // Exactly two single spaces: more whitespace hints at request smuggling.
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return HeadError{"http: malformed request line"};
  auto method = line.substr(0, sp1);
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (!is_token(method)) return HeadError{"http: invalid method"};
  if (target.empty() || !std::all_of(target.begin(), target.end(), is_target_char))
    return HeadError{"http: invalid request target"};
  if (auto err = parse_version(line.substr(sp2 + 1), head.minor_version)) return err;
  head.method = method;
  head.target = target;
  return std::nullopt;
}

MaybeError parse_status_line(std::string_view line, HttpResponseHead& head) {
  if (line.size() < 12 || line[8] != ' ' || !is_digit(line[9]) || !is_digit(line[10]) ||
      !is_digit(line[11]) || (line.size() > 12 && line[12] != ' '))
    return HeadError{"http: malformed status line"};
  if (auto err = parse_version(line.substr(0, 8), head.minor_version)) return err;
  head.status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  if (head.status < 100 || head.status > 599)
    return HeadError{"http: invalid status " + std::to_string(head.status)};
  auto reason = line.size() > 12 ? line.substr(13) : std::string_view{};
  if (!is_text(reason)) return HeadError{"http: invalid reason phrase"};
  head.reason = reason;
  return std::nullopt;
}

MaybeError parse_field(std::string_view line, HttpHeaders& headers) {
  // A continuation line (obs-fold) is refused rather than unfolded (RFC 9112
  // section 5.2), which leaves no room for two readers to disagree.
  if (line.front() == ' ' || line.front() == '\t') return HeadError{"http: obsolete line folding"};
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return HeadError{"http: header without colon"};
  // is_token() also refuses whitespace before the colon (RFC 9112 section 5.1).
  auto name = line.substr(0, colon);
  if (!is_token(name)) return HeadError{"http: invalid header name"};
  auto value = trim_ows(line.substr(colon + 1));
  if (!is_text(value)) return HeadError{"http: invalid character in header " + std::string(name)};
  headers.emplace_back(name, value);
  return std::nullopt;
}

// Reads lines until the empty one ending the head. Each complete line is
// checked as soon as it arrives, so garbage is refused without waiting for a
// full head; an incomplete line is never judged, so every prefix of a valid
// head is merely kNeedMore.
template <class Head, class StartLine>
Parsed<Head> parse_head(Bytes in, size_t max_head, int error_status, StartLine parse_start_line) {
  auto fail = [&](HeadError e) {
    return parse_error<Head>(std::move(e.message), error_status ? error_status : e.status);
  };
  std::string_view text(reinterpret_cast<const char*>(in.data()), in.size());
  Head head;
  bool have_start_line = false;
  size_t pos = 0;
  for (;;) {
    size_t lf = text.find('\n', pos);
    size_t line_end = lf == std::string_view::npos ? text.size() : lf + 1;
    if (line_end > max_head) {
      if (!have_start_line) return fail({"http: start line too long", 414});
      return fail({"http: header section too large", 431});
    }
    if (lf == std::string_view::npos) return need_more<Head>();
    auto line = text.substr(pos, lf - pos);
    if (line.ends_with('\r')) line.remove_suffix(1);  // CRLF or bare LF
    pos = line_end;
    if (!have_start_line) {
      if (line.empty()) continue;  // RFC 9112 section 2.2: skip leading empty lines
      if (auto err = parse_start_line(line, head)) return fail(std::move(*err));
      have_start_line = true;
    } else if (line.empty()) {
      return parse_done(pos, std::move(head));
    } else if (auto err = parse_field(line, head.headers)) {
      return fail(std::move(*err));
    }
  }
}

// ---- base64 ----

constexpr std::string_view kBase64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::optional<std::string_view> find_header(const HttpHeaders& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) return value;
  }
  return std::nullopt;
}

Parsed<HttpRequestHead> parse_http_request(Bytes in, size_t max_head) {
  return parse_head<HttpRequestHead>(in, max_head, 0, parse_request_line);
}

Parsed<HttpResponseHead> parse_http_response(Bytes in, size_t max_head) {
  return parse_head<HttpResponseHead>(in, max_head, 502, parse_status_line);
}

std::optional<uint64_t> parse_content_length(std::string_view value) {
  if (value.empty()) return std::nullopt;
  uint64_t n = 0;
  for (char c : value) {
    if (!is_digit(c)) return std::nullopt;
    unsigned digit = c - '0';
    if (n > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    n = n * 10 + digit;
  }
  return n;
}

ContentLength content_length(const HttpHeaders& headers) {
  ContentLength result;
  for (const auto& [name, value] : headers) {
    if (!iequals(name, "Content-Length")) continue;
    std::string_view rest = value;
    for (;;) {
      size_t comma = rest.find(',');
      auto n = parse_content_length(trim_ows(rest.substr(0, comma)));
      if (!n || (result.length && *result.length != *n)) return {false, std::nullopt};
      result.length = n;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return result;
}

std::string base64_encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(data[i]) << 16 | static_cast<uint8_t>(data[i + 1]) << 8 |
                 static_cast<uint8_t>(data[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out.push_back(kBase64Alphabet[v >> shift & 63]);
  }
  size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint8_t>(data[i]) << 16;
    if (rest == 2) v |= static_cast<uint8_t>(data[i + 1]) << 8;
    out.push_back(kBase64Alphabet[v >> 18 & 63]);
    out.push_back(kBase64Alphabet[v >> 12 & 63]);
    out.push_back(rest == 2 ? kBase64Alphabet[v >> 6 & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (text.ends_with("==")) {
    pad = 2;
  } else if (text.ends_with('=')) {
    pad = 1;
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  // Any '=' left before the padding is not in the alphabet and fails here.
  for (size_t i = 0; i < text.size() - pad; ++i) {
    int v = base64_value(text[i]);
    if (v < 0) return std::nullopt;
    acc = acc << 6 | static_cast<uint32_t>(v);
    if (i % 4 == 3) {
      out.push_back(static_cast<char>(acc >> 16));
      out.push_back(static_cast<char>(acc >> 8 & 0xff));
      out.push_back(static_cast<char>(acc & 0xff));
      acc = 0;
    }
  }
  // The last group holds 12 bits (one byte) or 18 bits (two bytes); the bits
  // beyond them must be zero, so every text decodes from one encoding only.
  if (pad == 2) {
    if (acc & 0xf) return std::nullopt;
    out.push_back(static_cast<char>(acc >> 4));
  } else if (pad == 1) {
    if (acc & 0x3) return std::nullopt;
    out.push_back(static_cast<char>(acc >> 10));
    out.push_back(static_cast<char>(acc >> 2 & 0xff));
  }
  return out;
}

std::optional<std::pair<std::string, std::string>> parse_basic_auth(std::string_view value) {
  value = trim_ows(value);
  size_t sp = value.find(' ');
  if (sp == std::string_view::npos || !iequals(value.substr(0, sp), "Basic")) return std::nullopt;
  auto decoded = base64_decode(trim_ows(value.substr(sp + 1)));
  if (!decoded) return std::nullopt;
  size_t colon = decoded->find(':');
  if (colon == std::string::npos) return std::nullopt;
  return std::pair{decoded->substr(0, colon), decoded->substr(colon + 1)};
}

std::string_view status_reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 407:
      return "Proxy Authentication Required";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

std::string http_response(int status, std::string_view reason, const HttpHeaders& headers,
                          std::string_view body) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " ";
  out += reason.empty() ? status_reason(status) : reason;
  out += "\r\n";
  for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  if (!find_header(headers, "Content-Length"))
    out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += "\r\n";
  out += body;
  return out;
}

std::string http_connect_established() {
  return "HTTP/1.1 200 Connection established\r\n\r\n";
}

Built http_connect_request(const Address& target, std::string_view user, std::string_view pass) {
  if (user.find(':') != std::string_view::npos) return build_error("user name contains ':'");
  std::string authority = target.to_string();
  std::string out = "CONNECT " + authority + " HTTP/1.1\r\nHost: " + authority + "\r\n";
  if (!user.empty()) {
    std::string credentials = std::string(user) + ":" + std::string(pass);
    out += "Proxy-Authorization: Basic " + base64_encode(credentials) + "\r\n";
  }
  out += "\r\n";
  return built(std::move(out));
}

}  // namespace rs::proto
