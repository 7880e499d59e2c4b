#include "proto/address.hpp"

#include <arpa/inet.h>

#include <charconv>

namespace rs::proto {

std::string Address::host_string() const {
  char buf[INET6_ADDRSTRLEN];
  if (auto* v4 = std::get_if<Ipv4>(&host)) {
    inet_ntop(AF_INET, v4->data(), buf, sizeof buf);
    return buf;
  }
  if (auto* v6 = std::get_if<Ipv6>(&host)) {
    inet_ntop(AF_INET6, v6->data(), buf, sizeof buf);
    return buf;
  }
  return std::get<std::string>(host);
}

std::string Address::to_string() const {
  if (is_ipv6()) return "[" + host_string() + "]:" + std::to_string(port);
  return host_string() + ":" + std::to_string(port);
}

std::optional<HostPort> split_host_port(std::string_view s) {
  HostPort hp;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return std::nullopt;
    hp.host = s.substr(1, close - 1);
    hp.port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    hp.host = s.substr(0, colon);
    hp.port = s.substr(colon + 1);
    // An unbracketed host with a colon would be an ambiguous IPv6 literal.
    if (hp.host.find(':') != std::string_view::npos) return std::nullopt;
  }
  if (hp.host.empty() || hp.port.empty()) return std::nullopt;
  return hp;
}

std::optional<uint16_t> parse_port(std::string_view s) {
  unsigned v = 0;
  if (s.empty() || s.size() > 5) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// inet_pton() reads a C string: an embedded NUL would end the text early and
// make "1.2.3.4\0junk" read as 1.2.3.4, so it is refused here.
std::optional<Ipv4> parse_ipv4(std::string_view s) {
  if (s.size() >= INET_ADDRSTRLEN || s.find('\0') != std::string_view::npos) return std::nullopt;
  char buf[INET_ADDRSTRLEN];
  s.copy(buf, s.size());
  buf[s.size()] = '\0';
  Ipv4 out;
  if (inet_pton(AF_INET, buf, out.data()) != 1) return std::nullopt;
  return out;
}

std::optional<Ipv6> parse_ipv6(std::string_view s) {
  if (s.size() >= INET6_ADDRSTRLEN || s.find('\0') != std::string_view::npos) return std::nullopt;
  char buf[INET6_ADDRSTRLEN];
  s.copy(buf, s.size());
  buf[s.size()] = '\0';
  Ipv6 out;
  if (inet_pton(AF_INET6, buf, out.data()) != 1) return std::nullopt;
  return out;
}

std::optional<Address> make_address(std::string_view host, uint16_t port) {
  if (auto v4 = parse_ipv4(host)) return Address{*v4, port};
  if (auto v6 = parse_ipv6(host)) return Address{*v6, port};
  if (host.empty() || host.size() > 255) return std::nullopt;
  for (unsigned char c : host) {
    if (c <= ' ' || c == 0x7f || c == '/' || c == '[' || c == ']' || c == ':') return std::nullopt;
  }
  return Address{std::string(host), port};
}

std::optional<Address> parse_address(std::string_view s) {
  auto hp = split_host_port(s);
  if (!hp) return std::nullopt;
  auto port = parse_port(hp->port);
  if (!port) return std::nullopt;
  // Brackets are for IPv6 literals only: "[example.org]:80" is malformed.
  if (s.front() == '[') {
    auto v6 = parse_ipv6(hp->host);
    if (!v6) return std::nullopt;
    return Address{*v6, *port};
  }
  return make_address(hp->host, *port);
}

}  // namespace rs::proto
