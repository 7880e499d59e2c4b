#include "net/udp_socket.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace rs::net {

UniqueFd open_udp(const SockAddr& bind_to, std::string* err) {
  UniqueFd fd(socket(bind_to.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP));
  if (!fd) {
    *err = std::string("socket: ") + std::strerror(errno);
    return {};
  }
  if (bind(fd.get(), bind_to.get(), bind_to.len) != 0) {
    *err = "bind " + bind_to.to_string() + ": " + std::strerror(errno);
    return {};
  }
  return fd;
}

SockAddr any_address(int family) {
  if (family == AF_INET6) return SockAddr::from(proto::Ipv6{}, 0);
  return SockAddr::from(proto::Ipv4{}, 0);
}

SockAddr unmapped(const SockAddr& sa) {
  if (sa.family() != AF_INET6) return sa;
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&sa.ss);
  if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return sa;
  proto::Ipv4 v4;
  std::memcpy(v4.data(), in6->sin6_addr.s6_addr + 12, 4);
  return SockAddr::from(v4, sa.port());
}

std::string endpoint_key(const SockAddr& sa) {
  std::string key(1, static_cast<char>(sa.family()));
  if (sa.family() == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&sa.ss);
    key.append(reinterpret_cast<const char*>(&in->sin_addr), sizeof in->sin_addr);
    key.append(reinterpret_cast<const char*>(&in->sin_port), sizeof in->sin_port);
  } else if (sa.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&sa.ss);
    key.append(reinterpret_cast<const char*>(&in6->sin6_addr), sizeof in6->sin6_addr);
    key.append(reinterpret_cast<const char*>(&in6->sin6_port), sizeof in6->sin6_port);
  }
  return key;
}

bool same_ip(const SockAddr& a, const SockAddr& b) {
  if (a.family() != b.family()) return false;
  if (a.family() == AF_INET) {
    const auto* x = reinterpret_cast<const sockaddr_in*>(&a.ss);
    const auto* y = reinterpret_cast<const sockaddr_in*>(&b.ss);
    return x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a.family() == AF_INET6) {
    const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.ss);
    const auto* y = reinterpret_cast<const sockaddr_in6*>(&b.ss);
    return std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return false;
}

}  // namespace rs::net
