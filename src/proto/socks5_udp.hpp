// SOCKS5 UDP request header (RFC 1928 section 7): what a client puts before
// each datagram it sends to a UDP ASSOCIATE relay, and what the relay puts
// before each reply. Pure functions over one whole datagram: UDP delivers
// datagrams entire, so a short header is an error, never "need more".
//
//   +----+------+------+----------+----------+----------+
//   |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//   +----+------+------+----------+----------+----------+
//   | 2  |  1   |  1   | Variable |    2     | Variable |
//   +----+------+------+----------+----------+----------+
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "proto/address.hpp"
#include "proto/parse.hpp"

namespace rs::proto {

namespace socks5_udp {
// RSV(2) FRAG(1) ATYP(1) + IPv6(16) + PORT(2): the longest header we write
// for a numeric address (replies always carry the peer's numeric address).
inline constexpr size_t kMaxNumericHeader = 22;
// The same with a 255-byte host name: the longest header there is.
inline constexpr size_t kMaxHeader = 4 + 1 + 255 + 2;
}  // namespace socks5_udp

struct Socks5UdpHeader {
  // 0 for a datagram that stands alone; other values are fragments, which we
  // (like most servers) drop: RFC 1928 lets an implementation not support them.
  uint8_t frag = 0;
  Address addr;  // DST on a request, the source of the reply on a reply
  bool operator==(const Socks5UdpHeader&) const = default;
};

// kDone with `consumed` = header length (DATA is the rest of `datagram`, maybe
// empty); kError for a short header, an unknown ATYP, an empty or invalid host
// name. RSV is not checked, as most servers do not. Never kNeedMore.
Parsed<Socks5UdpHeader> parse_socks5_udp_header(Bytes datagram);

// Writes the header (FRAG 0) for `addr` into `out`; its length, or nullopt when
// `out` is too small or a host name is empty or longer than 255 bytes.
std::optional<size_t> put_socks5_udp_header(std::span<uint8_t> out, const Address& addr);

// Header and payload as one datagram (tests, the client side of an upstream
// association when the target is a name). Fails like put_socks5_udp_header().
std::optional<std::string> socks5_udp_datagram(const Address& addr, Bytes payload);

}  // namespace rs::proto
