#include "proto/http_forward.hpp"

#include <vector>

#include "proto/text.hpp"

namespace rs::proto {
namespace {

// Calls `fn` with each trimmed, non-empty element of a comma-separated list
// spread over every field named `name`.
template <class Fn>
void for_each_element(const HttpHeaders& headers, std::string_view name, Fn fn) {
  for (const auto& [key, value] : headers) {
    if (!iequals(key, name)) continue;
    std::string_view rest = value;
    for (;;) {
      size_t comma = rest.find(',');
      auto item = trim_ows(rest.substr(0, comma));
      if (!item.empty()) fn(item);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
}

size_t count_fields(const HttpHeaders& headers, std::string_view name) {
  size_t n = 0;
  for (const auto& [key, value] : headers) n += iequals(key, name);
  return n;
}

BodyFraming framing_error(std::string why) {
  BodyFraming f;
  f.error = std::move(why);
  return f;
}

// The framing fields shared by requests and responses. `te_fallback` is what
// a Transfer-Encoding not ending in chunked means: an error for a request,
// read-until-close for a response (RFC 9112 section 6.3, rules 3 and 4).
BodyFraming fields_framing(const HttpHeaders& headers, int minor_version, bool is_request) {
  const bool has_te = count_fields(headers, "Transfer-Encoding") > 0;
  const size_t cl_fields = count_fields(headers, "Content-Length");
  if (has_te && cl_fields > 0) return framing_error("Transfer-Encoding with Content-Length");
  if (has_te) {
    if (minor_version == 0) return framing_error("Transfer-Encoding in HTTP/1.0");
    std::vector<std::string_view> codings;
    for_each_element(headers, "Transfer-Encoding",
                     [&](std::string_view c) { codings.push_back(c); });
    size_t chunked = 0;
    for (auto c : codings) chunked += iequals(c, "chunked");
    if (chunked == 1 && iequals(codings.back(), "chunked")) return {BodyFraming::kChunked, 0, {}};
    if (is_request || chunked > 0) return framing_error("unsupported Transfer-Encoding");
    return {BodyFraming::kClose, 0, {}};
  }
  if (cl_fields > 1) return framing_error("duplicate Content-Length");
  if (cl_fields == 1) {
    auto n = parse_content_length(*find_header(headers, "Content-Length"));
    if (!n) return framing_error("invalid Content-Length");
    return {BodyFraming::kLength, *n, {}};
  }
  return {is_request ? BodyFraming::kNone : BodyFraming::kClose, 0, {}};
}

// Connection options name further hop-by-hop fields (RFC 9110 section 7.6.1).
bool is_hop_by_hop(const HttpHeaders& headers, std::string_view name, bool upgrading) {
  static constexpr std::string_view kFixed[] = {
      "Connection", "Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "TE", "Trailer"};
  for (auto f : kFixed) {
    if (iequals(name, f)) return true;
  }
  if (iequals(name, "Upgrade")) return !upgrading;
  // Framing is ours to keep: never let Connection name it away.
  if (iequals(name, "Transfer-Encoding") || iequals(name, "Content-Length")) return false;
  return has_token(headers, "Connection", name);
}

void append_fields(std::string& out, const HttpHeaders& headers, bool upgrading, bool drop_host) {
  for (const auto& [name, value] : headers) {
    if (is_hop_by_hop(headers, name, upgrading)) continue;
    if (drop_host && iequals(name, "Host")) continue;
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
}

}  // namespace

std::optional<AbsoluteTarget> parse_absolute_target(std::string_view target) {
  constexpr std::string_view kScheme = "http://";
  if (target.size() < kScheme.size() || !iequals(target.substr(0, kScheme.size()), kScheme))
    return std::nullopt;
  target.remove_prefix(kScheme.size());
  if (target.find('#') != std::string_view::npos) return std::nullopt;
  size_t end = target.find_first_of("/?");
  auto authority = target.substr(0, end);
  auto rest = end == std::string_view::npos ? std::string_view{} : target.substr(end);
  if (authority.empty() || authority.find('@') != std::string_view::npos) return std::nullopt;

  std::string_view host, port;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return std::nullopt;
      port = after.substr(1);
    }
    if (!parse_ipv6(host)) return std::nullopt;
  } else {
    size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    if (port.find(':') != std::string_view::npos) return std::nullopt;
  }
  uint16_t port_number = 80;
  if (!port.empty()) {
    auto p = parse_port(port);
    if (!p || *p == 0) return std::nullopt;
    port_number = *p;
  }
  if (host.empty()) return std::nullopt;
  auto address = make_address(host, port_number);
  if (!address) return std::nullopt;
  AbsoluteTarget out{std::move(*address), std::string(authority), std::string(rest)};
  if (out.origin_form.empty() || out.origin_form.front() == '?')
    out.origin_form.insert(out.origin_form.begin(), '/');
  return out;
}

BodyFraming request_framing(const HttpRequestHead& head) {
  return fields_framing(head.headers, head.minor_version, true);
}

BodyFraming response_framing(const HttpResponseHead& head, std::string_view method) {
  if (method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304)
    return {BodyFraming::kNone, 0, {}};
  return fields_framing(head.headers, head.minor_version, false);
}

bool has_token(const HttpHeaders& headers, std::string_view name, std::string_view token) {
  bool found = false;
  for_each_element(headers, name, [&](std::string_view item) { found |= iequals(item, token); });
  return found;
}

bool wants_keep_alive(const HttpRequestHead& head) {
  return head.minor_version == 1 && !has_token(head.headers, "Connection", "close") &&
         !has_token(head.headers, "Proxy-Connection", "close");
}

bool is_upgrade(const HttpRequestHead& head) {
  return head.header("Upgrade").has_value() && has_token(head.headers, "Connection", "upgrade");
}

std::string forward_request_head(const HttpRequestHead& head, const AbsoluteTarget& target,
                                 bool keep_upstream) {
  const bool upgrading = is_upgrade(head);
  std::string out = head.method + " " + target.origin_form + " HTTP/1." +
                    std::to_string(head.minor_version) + "\r\nHost: " + target.authority + "\r\n";
  append_fields(out, head.headers, upgrading, true);
  out += "Via: ";
  out += head.minor_version == 0 ? "1.0 rulesocks" : kVia;
  out += upgrading       ? "\r\nConnection: upgrade\r\n\r\n"
         : keep_upstream ? "\r\n\r\n"
                         : "\r\nConnection: close\r\n\r\n";
  return out;
}

std::string forward_response_head(const HttpResponseHead& head, bool keep_alive) {
  const bool upgrading = head.status == 101;
  std::string out = "HTTP/1.1 " + std::to_string(head.status) + " " + head.reason + "\r\n";
  append_fields(out, head.headers, upgrading, false);
  out += "Via: ";
  out += head.minor_version == 0 ? "1.0 rulesocks" : kVia;
  // An interim response (100 Continue) says nothing about the connection.
  const bool interim = head.status < 200 && !upgrading;
  out += upgrading               ? "\r\nConnection: upgrade\r\n\r\n"
         : keep_alive || interim ? "\r\n\r\n"
                                 : "\r\nConnection: close\r\n\r\n";
  return out;
}

}  // namespace rs::proto
