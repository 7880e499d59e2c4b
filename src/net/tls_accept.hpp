// The server side of one TLS handshake on an accepted socket, for owners that
// start speaking only once it is done (the API). It never blocks: the
// handshake advances on socket events and gives up after `timeout` seconds,
// so a slow or silent client holds nothing but its own socket.
//
// Lifecycle: construct (takes the socket) -> start() -> `done` runs exactly
// once, from a loop callback, with the connection (TLS established) or an
// empty Conn and the reason. `done` must not destroy the TlsAccept (defer
// it); destroying it earlier cancels silently.
#pragma once

#include <functional>
#include <string>

#include "core/loop.hpp"
#include "net/conn.hpp"

namespace rs::net {

class TlsAccept {
 public:
  using Done = std::function<void(Conn conn, const std::string& error)>;

  // `ctx` is referenced by the SSL made from it, so it may be replaced afterwards.
  TlsAccept(ev::Loop* loop, UniqueFd fd, SSL_CTX* ctx, double timeout, Done done);
  TlsAccept(const TlsAccept&) = delete;
  TlsAccept& operator=(const TlsAccept&) = delete;

  // For owners that need the object's address in `done`.
  void set_done(Done done) { done_ = std::move(done); }
  void start();

 private:
  void step();
  void finish(std::string error);

  Conn conn_;
  double timeout_;
  Done done_;
  ev::Io io_;
  ev::Timer timer_;
};

}  // namespace rs::net
