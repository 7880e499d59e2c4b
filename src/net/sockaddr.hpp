// Socket addresses (IPv4/IPv6) as the kernel wants them, and conversions to and
// from proto::Address. Plain value type: copy it freely.
#pragma once

#include <fmt/format.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/address.hpp"

namespace rs::net {

struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;  // 0 means "no address"

  int family() const { return ss.ss_family; }
  uint16_t port() const;
  void set_port(uint16_t port);
  // "1.2.3.4:80", "[::1]:80"; "-" for an empty or non-IP address.
  std::string to_string() const;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&ss); }

  static SockAddr from(const proto::Ipv4& ip, uint16_t port);
  static SockAddr from(const proto::Ipv6& ip, uint16_t port);
  // Copies an AF_INET/AF_INET6 address; nullopt for other families or a short `len`.
  static std::optional<SockAddr> from_sockaddr(const sockaddr* sa, socklen_t len);
  // The numeric Address (Ipv4 or Ipv6 host); an empty SockAddr gives 0.0.0.0:0.
  proto::Address to_address() const;
};

// Parses a numeric "127.0.0.1:1080" or "[::1]:1080" (also "0.0.0.0:1080",
// "[::]:1080"). Host names are refused: resolve them with resolve_blocking().
std::optional<SockAddr> parse_sockaddr(std::string_view s);

// getpeername(2) / getsockname(2); an empty SockAddr (len 0) on failure.
SockAddr peer_of(int fd);
SockAddr local_of(int fd);

// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
bool is_loopback(const SockAddr& sa);
// 0.0.0.0 or ::
bool is_wildcard(const SockAddr& sa);

}  // namespace rs::net

// fmt::format("{}", sockaddr): lets log calls pass the address itself, so that
// it is only converted when the line is written.
template <>
struct fmt::formatter<rs::net::SockAddr> : fmt::formatter<std::string_view> {
  auto format(const rs::net::SockAddr& a, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(a.to_string(), ctx);
  }
};
