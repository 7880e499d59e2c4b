// Asynchronous name resolution: c-ares driven by the libev loop.
//
// A Resolver owns one c-ares channel, an ev::Io watcher per c-ares socket and
// one ev::Timer for c-ares timeouts; it delivers answers through the loop's
// ev::Deferred (which the loop owns and which outlives the Resolver). resolve() hands back a Query;
// the callback runs at most once, always later from the loop (never inside resolve()), and never
// after the Query or the Resolver has been destroyed. Everything runs on the loop thread. A
// callback may destroy its Query, but not the Resolver (defer that, see rs::ev::Deferred).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/loop.hpp"
#include "net/sockaddr.hpp"

// c-ares types, declared here so that includers need not see <ares.h>.
struct ares_channeldata;
struct ares_addrinfo;

namespace rs::net {

// Which addresses a name may turn into (neosocksd -4 / -6 are kOnlyV4 / kOnlyV6).
// kAny keeps c-ares' order (RFC 6724 sorting); the kPrefer* modes move one
// family to the front. Numeric literals are never filtered: the caller named
// that exact address.
enum class Family { kAny, kPreferV4, kPreferV6, kOnlyV4, kOnlyV6 };

struct ResolverOptions {
  Family family = Family::kAny;
  // "ip" or "ip:port" ("[v6]:port"); empty uses /etc/resolv.conf.
  std::string nameserver;
  // Seconds spent on each nameserver before a name fails with "timeout".
  double timeout = 5.0;
};

class Resolver {
 public:
  // `loop` must outlive the Resolver. Throws std::runtime_error naming the
  // problem, e.g. a malformed nameserver.
  Resolver(ev::Loop* loop, ResolverOptions opts);
  // Cancels everything outstanding without calling any callback.
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // On success `addrs` is non-empty and `error` empty; on failure `addrs` is
  // empty and `error` reads "host: Domain name not found", "host: timeout", ...
  using Callback = std::function<void(std::vector<SockAddr> addrs, std::string error)>;

  class Query;
  // Starts a lookup for `host` (name or numeric literal); every result carries
  // `port`. Dropping the returned handle cancels the callback.
  [[nodiscard]] std::unique_ptr<Query> resolve(std::string host, uint16_t port, Callback cb);

  // Number of resolve() calls so far, and of those that found an address (for /stats).
  uint64_t queries() const { return queries_; }
  uint64_t successes() const { return successes_; }

 private:
  struct Request;
  // c-ares callbacks (ares_socket_t is an int on POSIX).
  static void on_sock_state(void* self, int fd, int readable, int writable);
  static void on_addrinfo(void* arg, int status, int timeouts, ares_addrinfo* res);
  void process(int read_fd, int write_fd);
  void arm_timer();
  void finish_later(std::shared_ptr<Request> req);
  void flush_later();
  void flush();

  ev::Loop* loop_;
  Family family_;
  ares_channeldata* channel_ = nullptr;
  uint64_t queries_ = 0;
  uint64_t successes_ = 0;
  std::map<int, std::unique_ptr<ev::Io>> ios_;  // c-ares sockets by fd
  ev::Timer timeout_timer_;
  // Work that must not happen on the current stack: finished requests whose
  // callbacks are due, and watchers of sockets c-ares closed (possibly from
  // inside that watcher's own callback). One task on the loop's Deferred
  // drains both before the loop next blocks (an idle watcher would starve
  // while other I/O is pending); destroying the Resolver cancels it.
  std::vector<std::shared_ptr<Request>> finished_;
  std::vector<std::unique_ptr<ev::Io>> retired_;
  ev::Deferred::Scope later_;
};

// The handle resolve() returns. Destroying it cancels delivery; c-ares may
// still finish the lookup in the background, and its answer is dropped.
class Resolver::Query {
 public:
  ~Query();
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;

 private:
  friend class Resolver;
  explicit Query(std::shared_ptr<Request> req) : req_(std::move(req)) {}
  std::shared_ptr<Request> req_;
};

// Resolves with getaddrinfo(3), blocking the thread: only for start-up (listen
// addresses) and the deprecated neosocksd.resolve Lua API, never on the proxy
// path. On failure returns nothing and sets `error` ("host: reason").
std::vector<SockAddr> resolve_blocking(const std::string& host, uint16_t port, Family family,
                                       std::string& error);

}  // namespace rs::net
