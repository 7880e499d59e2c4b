#include "net/acceptor.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "core/log.hpp"

namespace rs::net {
namespace {

constexpr int kBatch = 64;        // connections per wakeup
constexpr double kBackoff = 0.5;  // seconds paused when out of descriptors

UniqueFd listen_tcp(const SockAddr& addr, const AcceptorOptions& opts) {
  UniqueFd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
  auto fail = [&](const char* what) {
    throw std::runtime_error(
        fmt::format("{} {}: {}: {}", opts.name, addr, what, std::strerror(errno)));
  };
  if (!fd) fail("socket");
  int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (opts.reuseport && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
    fail("SO_REUSEPORT");
  if (addr.family() == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
  if (opts.tune) opts.tune(fd.get());
  if (::bind(fd.get(), addr.get(), addr.len) != 0) fail("bind");
  if (::listen(fd.get(), opts.backlog) != 0) fail("listen");
  return fd;
}

}  // namespace

Acceptor::Acceptor(ev::Loop* loop, const SockAddr& addr, AcceptorOptions opts, Callback cb)
    : opts_(std::move(opts)),
      fd_(listen_tcp(addr, opts_)),
      cb_(std::move(cb)),
      io_(loop, [this](int) { on_readable(); }),
      backoff_(loop, [this](int) { io_.start(); }) {
  addr_ = local_of(fd_.get());
  io_.set(fd_.get(), EV_READ);
}

void Acceptor::start() {
  io_.start();
}

void Acceptor::stop() {
  io_.stop();
  backoff_.stop();
}

void Acceptor::on_readable() {
  for (int i = 0; i < kBatch && io_.active(); ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd =
        ::accept4(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      switch (errno) {
        case EAGAIN:
        case EINTR:
        case ECONNABORTED:
          return;
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
          // The connection stays in the backlog; try again a little later.
          log::warning("{} on {}: accept: {}; pausing for {} s", opts_.name, addr_,
                       std::strerror(errno), kBackoff);
          io_.stop();
          backoff_.start(kBackoff);
          return;
        default:
          log::error("{} on {}: accept: {}", opts_.name, addr_, std::strerror(errno));
          return;
      }
    }
    UniqueFd client(fd);
    auto peer = SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    if (peer) cb_(std::move(client), *peer);
  }
}

}  // namespace rs::net
