#include "net/self_connections.hpp"

#include <netinet/in.h>

#include "core/log.hpp"

namespace rs::net {

std::string SelfConnections::key_of(const SockAddr& sa) {
  if (sa.family() == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa.get());
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      const uint8_t* b = in6->sin6_addr.s6_addr + 12;
      return SockAddr::from(proto::Ipv4{b[0], b[1], b[2], b[3]}, sa.port()).to_string();
    }
  }
  return sa.to_string();
}

bool SelfConnections::reaches_watched(const SockAddr& local, const SockAddr& remote) const {
  for (const auto& w : watched_) {
    if (w.port() != remote.port()) continue;
    if (w.to_string() == remote.to_string()) return true;
    // A wildcard listener is reached at every address of this host: the
    // loopback ones, and those that show up at our own end too.
    if (is_wildcard(w) && (is_loopback(remote) || is_wildcard(remote) ||
                           local.to_address().host == remote.to_address().host))
      return true;
  }
  return false;
}

bool SelfConnections::record(int fd, const SockAddr& remote) {
  if (watched_.empty()) return true;
  const SockAddr local = local_of(fd);
  if (!reaches_watched(local, remote)) return true;
  return add(local);
}

bool SelfConnections::add(const SockAddr& local) {
  if (entries_.size() >= capacity_) {
    log::warning("{} connections of our own to the API at once: refusing more", entries_.size());
    return false;
  }
  entries_.insert(key_of(local));
  return true;
}

}  // namespace rs::net
