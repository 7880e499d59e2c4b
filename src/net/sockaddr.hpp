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

// Outbound address classes, which --block-outbound refuses to dial.
enum class AddrClass : uint8_t {
  kLoopback,   // 127.0.0.0/8, ::1, and 0.0.0.0 / :: (which connect to this host)
  kMulticast,  // 224.0.0.0/4, ff00::/8
  kLocal,      // 10/8, 172.16/12, 192.168/16, 169.254/16, fc00::/7, fe80::/10, fec0::/10
  kGlobal,     // everything else
};
constexpr unsigned class_bit(AddrClass c) {
  return 1u << static_cast<unsigned>(c);
}
// "loopback", "multicast", "local", "global": the --block-outbound names.
std::string_view to_string(AddrClass c);
// An IPv4-mapped IPv6 address is classified by its IPv4 part.
AddrClass classify(const SockAddr& sa);
// A comma separated list of class names as a mask of class_bit()s (empty
// items are skipped: "" is the empty mask); nullopt with the unknown item in `bad`.
std::optional<unsigned> parse_class_list(std::string_view list, std::string* bad);

}  // namespace rs::net

// fmt::format("{}", sockaddr): lets log calls pass the address itself, so that
// it is only converted when the line is written.
template <>
struct fmt::formatter<rs::net::SockAddr> : fmt::formatter<std::string_view> {
  auto format(const rs::net::SockAddr& a, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(a.to_string(), ctx);
  }
};
