// This process's own outbound connections to its API: how the API tells a
// request that came through the proxy (a ruleset mapped the target to the API
// address) from a direct client. Both come from loopback; only the local
// address of our own dialled socket identifies the former.
//
// Ownership: the Server owns the one registry for the whole run and watches
// the API's bound address. Every Dialer given it (DialOptions::self) records
// the local address of each connection it makes to a watched address, once
// connected and before its callback: before any byte of a request can reach
// the API. The ApiServer looks a connection's peer up when a request head
// arrives (not at accept: the dial's completion and the API's accept may come
// in either order within one loop iteration) and forgets it when that API
// connection closes or is refused. Loop thread only.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_set>
#include <vector>

#include "net/sockaddr.hpp"

namespace rs::net {

class SelfConnections {
 public:
  // At most `capacity` connections are recorded at once; beyond that record()
  // refuses (fail safe: the dial fails rather than pass as a direct client).
  explicit SelfConnections(size_t capacity = 4096) : capacity_(capacity) {}
  SelfConnections(const SelfConnections&) = delete;
  SelfConnections& operator=(const SelfConnections&) = delete;

  // Adds an address to watch (the API's bound one; a wildcard address stands
  // for every address of this host on its port).
  void watch(const SockAddr& api) { watched_.push_back(api); }
  bool watching() const { return !watched_.empty(); }

  // Whether a connection from `local` to `remote` goes to a watched address.
  bool reaches_watched(const SockAddr& local, const SockAddr& remote) const;
  // For a Dialer: `fd` is connected to `remote`. Records its local address if
  // `remote` is watched. Returns false (nothing recorded) when the registry
  // is full.
  bool record(int fd, const SockAddr& remote);
  // Adds `local` directly (record() without a socket; tests).
  bool add(const SockAddr& local);

  // For the API: whether `peer` is one of our own connections.
  bool contains(const SockAddr& peer) const { return entries_.count(key_of(peer)) != 0; }
  // For the API: its connection from `peer` has closed.
  void forget(const SockAddr& peer) { entries_.erase(key_of(peer)); }
  size_t size() const { return entries_.size(); }

 private:
  // The address as text, an IPv4-mapped IPv6 one as IPv4: a dual-stack API
  // sees our IPv4 socket's 127.0.0.1:P as [::ffff:127.0.0.1]:P.
  static std::string key_of(const SockAddr& sa);

  size_t capacity_;
  std::vector<SockAddr> watched_;
  std::unordered_set<std::string> entries_;  // local addresses, key_of()
};

}  // namespace rs::net
