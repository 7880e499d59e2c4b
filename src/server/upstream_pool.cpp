#include "server/upstream_pool.hpp"

namespace rs::server {

struct UpstreamPool::Entry {
  Entry(ev::Loop* loop, std::string k, UniqueFd f)
      : key(std::move(k)), fd(std::move(f)), io(loop), timer(loop) {}
  std::string key;
  UniqueFd fd;  // before the watchers, which stop first
  ev::Io io;
  ev::Timer timer;
};

UpstreamPool::UpstreamPool(ev::Loop* loop, size_t max_idle, double idle_timeout)
    : loop_(loop), max_idle_(max_idle), idle_timeout_(idle_timeout) {}

UpstreamPool::~UpstreamPool() = default;

void UpstreamPool::clear() {
  idle_.clear();  // from the server's shutdown, never from an entry's callback
}

UniqueFd UpstreamPool::take(const std::string& key) {
  for (auto it = idle_.end(); it != idle_.begin();) {
    --it;
    if ((*it)->key != key) continue;
    UniqueFd fd = std::move((*it)->fd);
    idle_.erase(it);  // not inside the entry's callbacks: safe to destroy
    return fd;
  }
  return {};
}

void UpstreamPool::put(const std::string& key, UniqueFd fd) {
  if (max_idle_ == 0 || !fd) return;
  if (idle_.size() >= max_idle_) idle_.pop_front();
  idle_.push_back(std::make_unique<Entry>(loop_, key, std::move(fd)));
  auto it = std::prev(idle_.end());
  Entry& e = **it;
  e.io.set_callback([this, it](int) { expire(it); });
  e.timer.set_callback([this, it](int) { expire(it); });
  e.io.set(e.fd.get(), EV_READ);
  e.io.start();
  e.timer.start(idle_timeout_);
}

void UpstreamPool::expire(List::iterator it) {
  auto entry = std::move(*it);
  idle_.erase(it);
  entry->io.stop();
  entry->timer.stop();
  entry->fd.reset();
  // The watcher whose callback is running is a member: destroy it later.
  ev::Deferred::of(loop_).dispose(std::move(entry));
}

}  // namespace rs::server
