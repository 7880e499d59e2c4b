#include "api/http_util.hpp"

#include <algorithm>

#include "proto/text.hpp"

namespace rs::api {
namespace {

using proto::iequals;
using proto::is_tchar;
using proto::percent_decode;
using proto::skip_ows;
using proto::to_lower;
using proto::trim_ows;

// Reads a token from the front of `s`; empty when there is none.
std::string_view take_token(std::string_view& s) {
  size_t n = 0;
  while (n < s.size() && is_tchar(s[n])) ++n;
  std::string_view tok = s.substr(0, n);
  s.remove_prefix(n);
  return tok;
}

// Reads a quoted-string (opening quote at the front); nullopt if unterminated.
std::optional<std::string> take_quoted(std::string_view& s) {
  std::string out;
  size_t i = 1;
  while (i < s.size()) {
    char c = s[i];
    if (c == '"') {
      s.remove_prefix(i + 1);
      return out;
    }
    if (c == '\\') {
      if (i + 1 >= s.size()) return std::nullopt;
      c = s[++i];
    }
    if (!proto::is_text_char(c)) return std::nullopt;
    out.push_back(c);
    ++i;
  }
  return std::nullopt;
}

// Splits a comma-separated list, calling fn(element) on each trimmed,
// non-empty element.
template <class Fn>
void for_each_element(const proto::HttpHeaders& headers, std::string_view name, Fn&& fn) {
  for (const auto& [field, value] : headers) {
    if (!iequals(field, name)) continue;
    std::string_view rest = value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view elem = trim_ows(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      if (!elem.empty()) fn(elem);
    }
  }
}

}  // namespace

Target split_target(std::string_view target) {
  if (size_t scheme = target.find("://");
      scheme != std::string_view::npos && target.find('/') > scheme) {
    size_t slash = target.find('/', scheme + 3);
    size_t qmark = target.find('?', scheme + 3);
    size_t start = std::min(slash, qmark);
    target = start == std::string_view::npos ? std::string_view{} : target.substr(start);
  }
  if (size_t hash = target.find('#'); hash != std::string_view::npos)
    target = target.substr(0, hash);
  Target t;
  size_t q = target.find('?');
  t.path = target.substr(0, q);
  if (q != std::string_view::npos) t.query = target.substr(q + 1);
  if (t.path.empty()) t.path = "/";
  return t;
}

std::optional<Query> parse_query(std::string_view query) {
  Query out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view comp = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (comp.empty()) continue;
    size_t eq = comp.find('=');
    auto key = percent_decode(comp.substr(0, eq), true);
    auto value = percent_decode(
        eq == std::string_view::npos ? std::string_view{} : comp.substr(eq + 1), true);
    if (!key || !value) return std::nullopt;
    out.emplace_back(std::move(*key), std::move(*value));
  }
  return out;
}

std::optional<std::string_view> query_get(const Query& query, std::string_view key) {
  for (const auto& [k, v] : query)
    if (k == key) return std::string_view(v);
  return std::nullopt;
}

bool parse_flag(std::string_view value) {
  std::string v = to_lower(value);
  return v == "1" || v == "y" || v == "yes" || v == "on" || v == "t" || v == "true";
}

std::optional<std::string_view> MediaType::param(std::string_view name) const {
  for (const auto& [k, v] : params)
    if (iequals(k, name)) return std::string_view(v);
  return std::nullopt;
}

std::optional<MediaType> parse_media_type(std::string_view s) {
  MediaType mt;
  skip_ows(s);
  std::string_view type = take_token(s);
  if (type.empty() || s.empty() || s.front() != '/') return std::nullopt;
  s.remove_prefix(1);
  std::string_view subtype = take_token(s);
  if (subtype.empty()) return std::nullopt;
  mt.type = to_lower(type);
  mt.subtype = to_lower(subtype);
  for (;;) {
    skip_ows(s);
    if (s.empty()) return mt;
    if (s.front() != ';') return std::nullopt;
    s.remove_prefix(1);
    skip_ows(s);
    if (s.empty() || s.front() == ';') continue;  // empty parameter
    std::string_view name = take_token(s);
    if (name.empty() || s.empty() || s.front() != '=') return std::nullopt;
    s.remove_prefix(1);
    std::string value;
    if (!s.empty() && s.front() == '"') {
      auto q = take_quoted(s);
      if (!q) return std::nullopt;
      value = std::move(*q);
    } else {
      std::string_view tok = take_token(s);
      if (tok.empty()) return std::nullopt;
      value = tok;
    }
    mt.params.emplace_back(to_lower(name), std::move(value));
  }
}

std::optional<std::string> check_rpc_media_type(std::optional<std::string_view> content_type) {
  if (!content_type) return "missing Content-Type, expected " + std::string(kRpcMediaType);
  auto mt = parse_media_type(*content_type);
  if (!mt) return "malformed Content-Type \"" + std::string(*content_type) + "\"";
  if (mt->type != "application" || mt->subtype != "x-neosocksd-rpc")
    return "unsupported Content-Type " + mt->type + "/" + mt->subtype + ", expected " +
           std::string(kRpcMediaType);
  auto version = mt->param("version");
  if (!version) return "missing RPC version, expected " + std::string(kRpcMediaType);
  if (*version != "1") return "unsupported RPC version \"" + std::string(*version) + "\"";
  return std::nullopt;
}

bool has_token(const proto::HttpHeaders& headers, std::string_view name, std::string_view token) {
  bool found = false;
  for_each_element(headers, name, [&](std::string_view elem) {
    if (iequals(trim_ows(elem.substr(0, elem.find(';'))), token)) found = true;
  });
  return found;
}

bool accepts_encoding(const proto::HttpHeaders& headers, std::string_view coding) {
  std::optional<bool> exact, wildcard;
  for_each_element(headers, "Accept-Encoding", [&](std::string_view elem) {
    size_t semi = elem.find(';');
    std::string_view name = trim_ows(elem.substr(0, semi));
    bool acceptable = true;
    std::string_view params =
        semi == std::string_view::npos ? std::string_view{} : elem.substr(semi);
    while (!params.empty()) {
      params.remove_prefix(1);  // ';'
      size_t next = params.find(';');
      std::string_view p = trim_ows(params.substr(0, next));
      params = next == std::string_view::npos ? std::string_view{} : params.substr(next);
      if (p.size() >= 2 && proto::ascii_lower(p[0]) == 'q' && p[1] == '=') {
        // q=0, q=0.0, q=0.000 all mean "not acceptable".
        std::string_view v = p.substr(2);
        bool zero = !v.empty() && v[0] == '0';
        for (size_t i = 1; zero && i < v.size(); ++i) zero = v[i] == '.' || v[i] == '0';
        acceptable = !zero;
      }
    }
    if (iequals(name, coding))
      exact = acceptable;
    else if (name == "*")
      wildcard = acceptable;
  });
  if (exact) return *exact;
  return wildcard.value_or(false);
}

std::vector<std::string> header_list(const proto::HttpHeaders& headers, std::string_view name) {
  std::vector<std::string> out;
  for_each_element(headers, name, [&](std::string_view elem) { out.push_back(to_lower(elem)); });
  return out;
}

ContentCoding content_coding(const proto::HttpHeaders& headers) {
  auto codings = header_list(headers, "Content-Encoding");
  std::erase(codings, "identity");
  if (codings.empty()) return {};
  ContentCoding c{ContentCoding::kUnsupported, proto::Compression::kAuto, codings.front()};
  if (codings.size() != 1) return c;
  if (c.name == "deflate") {
    c.kind = ContentCoding::kCompressed;
  } else if (c.name == "gzip" || c.name == "x-gzip") {
    c.kind = ContentCoding::kCompressed;
    c.format = proto::Compression::kGzip;
  }
  return c;
}

}  // namespace rs::api
