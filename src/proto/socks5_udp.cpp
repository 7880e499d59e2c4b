#include "proto/socks5_udp.hpp"

#include <cstring>

#include "proto/socks5.hpp"

namespace rs::proto {

namespace {
constexpr size_t kPrefix = 3;  // RSV(2) FRAG(1), before the address
}

Parsed<Socks5UdpHeader> parse_socks5_udp_header(Bytes datagram) {
  if (datagram.size() < kPrefix) return parse_error<Socks5UdpHeader>("socks5 udp: short header");
  Socks5UdpHeader h;
  h.frag = datagram[2];
  auto addr = parse_socks5_address(datagram.subspan(kPrefix));
  if (addr.failed()) return parse_error<Socks5UdpHeader>(addr.error, addr.code);
  if (!addr.done()) return parse_error<Socks5UdpHeader>("socks5 udp: short header");
  h.addr = std::move(addr.value);
  return parse_done(kPrefix + addr.consumed, std::move(h));
}

std::optional<size_t> put_socks5_udp_header(std::span<uint8_t> out, const Address& addr) {
  // The common case (a numeric address) is written without allocating.
  const uint8_t* ip = nullptr;
  size_t iplen = 0;
  uint8_t atyp = 0;
  if (const auto* v4 = std::get_if<Ipv4>(&addr.host)) {
    ip = v4->data(), iplen = v4->size(), atyp = socks5::kAtypIpv4;
  } else if (const auto* v6 = std::get_if<Ipv6>(&addr.host)) {
    ip = v6->data(), iplen = v6->size(), atyp = socks5::kAtypIpv6;
  }
  if (ip == nullptr) {
    std::string tail;
    if (!append_socks5_address(tail, addr)) return std::nullopt;
    if (out.size() < kPrefix + tail.size()) return std::nullopt;
    std::memset(out.data(), 0, kPrefix);
    std::memcpy(out.data() + kPrefix, tail.data(), tail.size());
    return kPrefix + tail.size();
  }
  const size_t len = kPrefix + 1 + iplen + 2;
  if (out.size() < len) return std::nullopt;
  std::memset(out.data(), 0, kPrefix);
  out[kPrefix] = atyp;
  std::memcpy(out.data() + kPrefix + 1, ip, iplen);
  out[len - 2] = static_cast<uint8_t>(addr.port >> 8);
  out[len - 1] = static_cast<uint8_t>(addr.port & 0xff);
  return len;
}

std::optional<std::string> socks5_udp_datagram(const Address& addr, Bytes payload) {
  uint8_t head[socks5_udp::kMaxHeader];
  auto n = put_socks5_udp_header(head, addr);
  if (!n) return std::nullopt;
  std::string out(reinterpret_cast<const char*>(head), *n);
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  return out;
}

}  // namespace rs::proto
