// A listening TCP socket on the loop. It accepts in bounded batches (one busy
// listener cannot starve the loop) and hands every connection to its owner.
// Out of file descriptors, it still accepts pending clients, with a spare fd
// kept for that, and closes them at once: they learn they are refused instead
// of waiting unanswered in the backlog, and the listener does not spin.
//
// Ownership: the Acceptor owns the listening fd and its watchers; each accepted
// fd (non-blocking, close-on-exec) is handed over to the callback.
#pragma once

#include <functional>
#include <string>

#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/sockaddr.hpp"

namespace rs::net {

struct AcceptorOptions {
  std::string name = "listener";  // for log lines: "<name> on <addr>: ..."
  int backlog = 4096;
  bool reuseport = false;  // SO_REUSEPORT: several processes share the port
  // TCP_FASTOPEN (RFC 7413): accept data in the SYN, with at most `backlog`
  // pending Fast Open requests. Best effort: a kernel that refuses it is
  // logged and the listener works without.
  bool fastopen = false;
  // Applied to the listening socket before listen(). Accepted sockets inherit
  // its options (TCP_NODELAY, SO_KEEPALIVE, buffer sizes), which saves
  // setting them on every connection.
  std::function<void(int fd)> tune;
  // Called for each client closed unserved because the process was out of
  // file descriptors (for counters).
  std::function<void()> refused;
};

class Acceptor {
 public:
  using Callback = std::function<void(UniqueFd fd, const SockAddr& peer)>;

  // Binds and listens (SO_REUSEADDR; IPv6 listeners are IPv6-only); throws
  // std::runtime_error naming the address, the call and the system error.
  // `loop` must outlive the Acceptor.
  Acceptor(ev::Loop* loop, const SockAddr& addr, AcceptorOptions opts, Callback cb);
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  void start();
  void stop();
  // The bound address, with the port the kernel chose for port 0.
  const SockAddr& address() const { return addr_; }

 private:
  void on_readable();
  // Out of fds: accepts and closes pending clients using spare_. False when
  // that did not drain the backlog (then the caller pauses instead).
  bool refuse_pending();

  AcceptorOptions opts_;
  SockAddr addr_;
  UniqueFd fd_;
  Callback cb_;
  UniqueFd spare_;  // given up for a moment to accept a client when out of fds
  double last_refusal_log_ = -1e9;
  ev::Io io_;
  ev::Timer backoff_;  // accepting paused after EMFILE and friends
};

}  // namespace rs::net
