// A listening socket that hands accepted connections to the Server.
#pragma once

#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/sockaddr.hpp"

namespace rs::server {

class Server;
enum class ListenerKind;

class Listener {
 public:
  // Binds and listens; throws std::runtime_error naming the address and the
  // system error.
  Listener(Server& server, const net::SockAddr& addr, ListenerKind kind, bool reuseport);
  void start();
  void stop();
  const net::SockAddr& address() const { return addr_; }

 private:
  void on_accept();
  // Out of fds: accepts and closes pending clients using spare_.
  bool refuse_pending();

  Server& server_;
  net::SockAddr addr_;
  ListenerKind kind_;
  UniqueFd fd_;
  // Held open so that, out of file descriptors, pending clients can still be
  // accepted and closed rather than left waiting (see refuse_pending()).
  UniqueFd spare_;
  ev::Io io_;
  double last_refusal_log_ = -1e9;
  // Out of memory, or no spare fd: pause accepting instead of spinning.
  ev::Timer backoff_;
};

// Creates a bound, listening, non-blocking TCP socket; throws on failure.
UniqueFd listen_tcp(const net::SockAddr& addr, bool reuseport);

}  // namespace rs::server
