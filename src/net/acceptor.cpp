#include "net/acceptor.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "core/log.hpp"

namespace rs::net {
namespace {

constexpr int kBatch = 64;        // connections per wakeup
constexpr double kBackoff = 0.5;  // seconds paused when nothing else helps

// The spare descriptor: any cheap fd will do.
UniqueFd open_spare() {
  return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

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
  if (opts.fastopen &&
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_FASTOPEN, &opts.backlog, sizeof opts.backlog) != 0)
    log::warning("{} {}: TCP_FASTOPEN: {}", opts.name, addr, std::strerror(errno));
  if (::listen(fd.get(), opts.backlog) != 0) fail("listen");
  return fd;
}

}  // namespace

Acceptor::Acceptor(ev::Loop* loop, const SockAddr& addr, AcceptorOptions opts, Callback cb)
    : opts_(std::move(opts)),
      fd_(listen_tcp(addr, opts_)),
      cb_(std::move(cb)),
      spare_(open_spare()),
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
          if (refuse_pending()) return;
          [[fallthrough]];
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

bool Acceptor::refuse_pending() {
  if (!spare_) spare_ = open_spare();
  if (!spare_) return false;
  for (int i = 0; i < kBatch; ++i) {
    spare_.reset();
    const int fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    const int err = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);  // refused: closed unanswered
    spare_ = open_spare();
    if (err != 0) return err == EAGAIN || err == EINTR || err == ECONNABORTED;
    if (opts_.refused) opts_.refused();
    const double now = ev_now(io_.loop());
    if (now - last_refusal_log_ >= 1.0) {
      last_refusal_log_ = now;
      log::warning("{} on {}: out of file descriptors; refusing new connections", opts_.name,
                   addr_);
    }
  }
  return true;
}

}  // namespace rs::net
