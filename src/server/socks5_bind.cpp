#include "server/socks5_bind.hpp"

#include <stdexcept>

#include "core/log.hpp"
#include "net/udp_socket.hpp"

namespace rs::server {

std::unique_ptr<BindListener> BindListener::open(ev::Loop* loop, const net::SockAddr& local,
                                                 std::optional<net::SockAddr> expect, Callback cb,
                                                 std::string* err) {
  std::unique_ptr<BindListener> b(new BindListener());
  b->expect_ = std::move(expect);
  b->cb_ = std::move(cb);
  net::SockAddr addr = local;
  addr.set_port(0);
  BindListener* self = b.get();
  net::AcceptorOptions opts;
  opts.name = "socks5 bind";
  opts.backlog = 8;
  try {
    b->acceptor_ = std::make_unique<net::Acceptor>(
        loop, addr, std::move(opts), [self](UniqueFd fd, const net::SockAddr& peer) {
          if (self->done_) return;
          if (self->expect_ && !net::same_ip(net::unmapped(peer), net::unmapped(*self->expect_))) {
            ++self->refused_;
            log::info("socks5 bind {}: connection from {} refused: expected {}",
                      self->acceptor_->address(), peer, *self->expect_);
            return;  // closes fd; go on waiting for the expected peer
          }
          self->done_ = true;
          self->acceptor_->stop();
          self->cb_(std::move(fd), peer);
        });
  } catch (const std::exception& e) {
    *err = e.what();
    return nullptr;
  }
  return b;
}

}  // namespace rs::server
