// SOCKS5 BIND (RFC 1928, --enable-socks5-bind), served directly: a listener
// on the local address the client came in on (port 0), which takes one
// connection from the expected peer (DST.ADDR of the request, unless it is
// 0.0.0.0 / :: or --socks5-bind-any-peer is given). Connections from anyone
// else are closed and counted while it goes on waiting; the Session's -t timer
// bounds the wait. (Through a socks5:// upstream the BIND is forwarded by the
// Dialer instead: see Dialer::set_last_command.)
//
// Ownership: owns the listening socket and its watcher. The callback runs from
// the listener's own callback: the owner defers destroying it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/acceptor.hpp"
#include "net/sockaddr.hpp"

namespace rs::server {

class BindListener {
 public:
  using Callback = std::function<void(UniqueFd conn, const net::SockAddr& peer)>;
  // Listens on `local`'s IP, port 0; nullptr and `*err` on failure. Without
  // `expect`, any peer is taken.
  static std::unique_ptr<BindListener> open(ev::Loop* loop, const net::SockAddr& local,
                                            std::optional<net::SockAddr> expect, Callback cb,
                                            std::string* err);
  // The address to give the client in the first reply.
  net::SockAddr address() const { return acceptor_->address(); }
  void start() { acceptor_->start(); }
  void stop() { acceptor_->stop(); }
  // Connections refused for coming from someone other than the expected peer.
  uint64_t refused() const { return refused_; }

 private:
  BindListener() = default;
  std::unique_ptr<net::Acceptor> acceptor_;
  std::optional<net::SockAddr> expect_;
  Callback cb_;
  bool done_ = false;
  uint64_t refused_ = 0;
};

}  // namespace rs::server
