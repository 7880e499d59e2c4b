#include "net/sockaddr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace rs::net {

namespace {

sockaddr_in* v4(sockaddr_storage& ss) {
  return reinterpret_cast<sockaddr_in*>(&ss);
}
sockaddr_in6* v6(sockaddr_storage& ss) {
  return reinterpret_cast<sockaddr_in6*>(&ss);
}
const sockaddr_in* v4(const sockaddr_storage& ss) {
  return reinterpret_cast<const sockaddr_in*>(&ss);
}
const sockaddr_in6* v6(const sockaddr_storage& ss) {
  return reinterpret_cast<const sockaddr_in6*>(&ss);
}

using NameFn = int (*)(int, sockaddr*, socklen_t*);

SockAddr name_of(int fd, NameFn fn) {
  SockAddr a;
  socklen_t len = sizeof a.ss;
  if (fn(fd, reinterpret_cast<sockaddr*>(&a.ss), &len) != 0) return {};
  a.len = len;
  return a;
}

}  // namespace

uint16_t SockAddr::port() const {
  switch (family()) {
    case AF_INET:
      return ntohs(v4(ss)->sin_port);
    case AF_INET6:
      return ntohs(v6(ss)->sin6_port);
  }
  return 0;
}

void SockAddr::set_port(uint16_t port) {
  switch (family()) {
    case AF_INET:
      v4(ss)->sin_port = htons(port);
      break;
    case AF_INET6:
      v6(ss)->sin6_port = htons(port);
      break;
  }
}

std::string SockAddr::to_string() const {
  if (family() != AF_INET && family() != AF_INET6) return "-";
  return to_address().to_string();
}

SockAddr SockAddr::from(const proto::Ipv4& ip, uint16_t port) {
  SockAddr a;
  auto* sin = v4(a.ss);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(port);
  std::memcpy(&sin->sin_addr, ip.data(), ip.size());
  a.len = sizeof *sin;
  return a;
}

SockAddr SockAddr::from(const proto::Ipv6& ip, uint16_t port) {
  SockAddr a;
  auto* sin6 = v6(a.ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, ip.data(), ip.size());
  a.len = sizeof *sin6;
  return a;
}

std::optional<SockAddr> SockAddr::from_sockaddr(const sockaddr* sa, socklen_t len) {
  if (sa == nullptr) return std::nullopt;
  socklen_t want = 0;
  if (sa->sa_family == AF_INET) want = sizeof(sockaddr_in);
  if (sa->sa_family == AF_INET6) want = sizeof(sockaddr_in6);
  if (want == 0 || len < want) return std::nullopt;
  SockAddr a;
  std::memcpy(&a.ss, sa, want);
  a.len = want;
  return a;
}

proto::Address SockAddr::to_address() const {
  if (family() == AF_INET6) {
    proto::Ipv6 ip;
    std::memcpy(ip.data(), &v6(ss)->sin6_addr, ip.size());
    return {ip, port()};
  }
  proto::Ipv4 ip{};
  if (family() == AF_INET) std::memcpy(ip.data(), &v4(ss)->sin_addr, ip.size());
  return {ip, port()};
}

std::optional<SockAddr> parse_sockaddr(std::string_view s) {
  auto hp = proto::split_host_port(s);
  if (!hp) return std::nullopt;
  auto port = proto::parse_port(hp->port);
  if (!port) return std::nullopt;
  // Brackets are for IPv6 only: "[1.2.3.4]:80" is as wrong as "::1:80".
  bool bracketed = s.front() == '[';
  if (auto ip = proto::parse_ipv6(hp->host); ip && bracketed) return SockAddr::from(*ip, *port);
  if (auto ip = proto::parse_ipv4(hp->host); ip && !bracketed) return SockAddr::from(*ip, *port);
  return std::nullopt;
}

SockAddr peer_of(int fd) {
  return name_of(fd, ::getpeername);
}
SockAddr local_of(int fd) {
  return name_of(fd, ::getsockname);
}

bool is_loopback(const SockAddr& sa) {
  if (sa.family() == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa.get());
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa.family() != AF_INET6) return false;
  auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa.get());
  if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
  return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
}

bool is_wildcard(const SockAddr& sa) {
  if (sa.family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(sa.get())->sin_addr.s_addr == INADDR_ANY;
  if (sa.family() != AF_INET6) return false;
  return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(sa.get())->sin6_addr);
}

namespace {

AddrClass classify_v4(uint32_t ip) {  // host byte order
  if (ip == 0 || (ip >> 24) == 127) return AddrClass::kLoopback;
  if ((ip >> 28) == 0xe) return AddrClass::kMulticast;
  if ((ip >> 24) == 10 || (ip >> 20) == 0xac1 || (ip >> 16) == 0xc0a8 || (ip >> 16) == 0xa9fe)
    return AddrClass::kLocal;
  return AddrClass::kGlobal;
}

}  // namespace

std::string_view to_string(AddrClass c) {
  switch (c) {
    case AddrClass::kLoopback:
      return "loopback";
    case AddrClass::kMulticast:
      return "multicast";
    case AddrClass::kLocal:
      return "local";
    case AddrClass::kGlobal:
      return "global";
  }
  return "?";
}

AddrClass classify(const SockAddr& sa) {
  if (sa.family() == AF_INET)
    return classify_v4(ntohl(reinterpret_cast<const sockaddr_in*>(sa.get())->sin_addr.s_addr));
  const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(sa.get())->sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(&a)) {
    uint32_t ip;
    std::memcpy(&ip, &a.s6_addr[12], sizeof ip);
    return classify_v4(ntohl(ip));
  }
  if (IN6_IS_ADDR_LOOPBACK(&a) || IN6_IS_ADDR_UNSPECIFIED(&a)) return AddrClass::kLoopback;
  if (a.s6_addr[0] == 0xff) return AddrClass::kMulticast;
  if ((a.s6_addr[0] & 0xfe) == 0xfc || (a.s6_addr[0] == 0xfe && (a.s6_addr[1] & 0x80) == 0x80))
    return AddrClass::kLocal;  // fc00::/7 (ULA), fe80::/10 (link), fec0::/10 (old site-local)
  return AddrClass::kGlobal;
}

std::optional<unsigned> parse_class_list(std::string_view list, std::string* bad) {
  unsigned mask = 0;
  for (;;) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    bool known = item.empty();  // as neosocksd's strtok(): "" blocks nothing
    for (auto c :
         {AddrClass::kLoopback, AddrClass::kMulticast, AddrClass::kLocal, AddrClass::kGlobal}) {
      if (item == to_string(c)) {
        mask |= class_bit(c);
        known = true;
      }
    }
    if (!known) {
      *bad = std::string(item);
      return std::nullopt;
    }
    if (comma == std::string_view::npos) return mask;
    list.remove_prefix(comma + 1);
  }
}

}  // namespace rs::net
