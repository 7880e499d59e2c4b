// A proxy target as it travels on the wire: IPv4, IPv6 or a host name, plus a port.
// Pure value type; conversions to sockaddr live in net/sockaddr.hpp.
#pragma once

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace rs::proto {

using Ipv4 = std::array<uint8_t, 4>;
using Ipv6 = std::array<uint8_t, 16>;

struct Address {
  std::variant<Ipv4, Ipv6, std::string> host;
  uint16_t port = 0;

  bool is_ipv4() const { return std::holds_alternative<Ipv4>(host); }
  bool is_ipv6() const { return std::holds_alternative<Ipv6>(host); }
  bool is_domain() const { return std::holds_alternative<std::string>(host); }
  // "1.2.3.4:80", "[::1]:80", "example.org:80".
  std::string to_string() const;
  // The host part alone, without brackets.
  std::string host_string() const;
  bool operator==(const Address&) const = default;
};

// Splits "host:port" / "[v6]:port" into its parts (brackets removed).
// Fails on a missing port, an empty host or a malformed bracket.
struct HostPort {
  std::string_view host;
  std::string_view port;
};
std::optional<HostPort> split_host_port(std::string_view s);

std::optional<uint16_t> parse_port(std::string_view s);
std::optional<Ipv4> parse_ipv4(std::string_view s);
std::optional<Ipv6> parse_ipv6(std::string_view s);

// Parses "host:port"; numeric hosts become Ipv4/Ipv6, everything else a domain
// name (validated: 1..255 bytes, no spaces or control characters).
std::optional<Address> parse_address(std::string_view s);
// Builds an Address from a host string (numeric or name) and a port.
std::optional<Address> make_address(std::string_view host, uint16_t port);

}  // namespace rs::proto

// fmt::format("{}", address), converted only when a log line is written.
template <>
struct fmt::formatter<rs::proto::Address> : fmt::formatter<std::string_view> {
  auto format(const rs::proto::Address& a, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(a.to_string(), ctx);
  }
};
