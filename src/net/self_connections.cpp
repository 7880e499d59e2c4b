#include "net/self_connections.hpp"

#include "core/log.hpp"

namespace rs::net {

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
  entries_.insert(local.to_string());
  return true;
}

}  // namespace rs::net
