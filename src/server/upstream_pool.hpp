// Idle upstream connections of the plain HTTP proxy, kept for the next
// request to the same origin through the same chain: a small bounded pool,
// each entry closed after an idle timeout or as soon as its origin closes it
// (or sends anything: an idle HTTP/1.1 connection carries nothing).
//
// Owned by the Server; lives on the loop's thread. Connections are moved in
// and out as UniqueFds: an entry owns its fd and watchers until take() hands
// the fd back or the entry expires.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <string>

#include "core/fd.hpp"
#include "core/loop.hpp"

namespace rs::server {

class UpstreamPool {
 public:
  // At most `max_idle` connections in all, each kept `idle_timeout` seconds.
  UpstreamPool(ev::Loop* loop, size_t max_idle, double idle_timeout);
  ~UpstreamPool();  // closes every idle connection
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  // The most recently parked connection for `key`, or an empty fd.
  UniqueFd take(const std::string& key);
  // Parks `fd` under `key`; the oldest entry goes when the pool is full.
  void put(const std::string& key, UniqueFd fd);
  size_t size() const { return idle_.size(); }
  // Closes every idle connection (server shutdown).
  void clear();

 private:
  struct Entry;
  using List = std::list<std::unique_ptr<Entry>>;
  // Closes an entry from one of its own watchers: unlinked now, destroyed later.
  void expire(List::iterator it);

  ev::Loop* loop_;
  size_t max_idle_;
  double idle_timeout_;
  List idle_;  // oldest first
};

}  // namespace rs::server
