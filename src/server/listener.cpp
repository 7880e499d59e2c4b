#include "server/listener.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "core/log.hpp"
#include "server/server.hpp"

namespace rs::server {

namespace {

// The spare descriptor: any cheap fd will do.
UniqueFd open_spare() {
  return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

}  // namespace

UniqueFd listen_tcp(const net::SockAddr& addr, bool reuseport) {
  UniqueFd fd(socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
  auto fail = [&](const char* what) {
    throw std::runtime_error(
        fmt::format("listen {}: {}: {}", addr.to_string(), what, std::strerror(errno)));
  };
  if (!fd) fail("socket");
  int on = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (reuseport && setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
    fail("SO_REUSEPORT");
  if (addr.family() == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
  if (bind(fd.get(), addr.get(), addr.len) != 0) fail("bind");
  if (listen(fd.get(), 4096) != 0) fail("listen");
  return fd;
}

Listener::Listener(Server& server, const net::SockAddr& addr, ListenerKind kind, bool reuseport)
    : server_(server),
      addr_(addr),
      kind_(kind),
      fd_(listen_tcp(addr, reuseport)),
      spare_(open_spare()),
      io_(server.loop(), [this](int) { on_accept(); }),
      backoff_(server.loop(), [this](int) { io_.start(); }) {
  // Port 0 asks the kernel for a port: record which one we got.
  addr_ = net::local_of(fd_.get());
  io_.set(fd_.get(), EV_READ);
}

void Listener::start() {
  io_.start();
}

void Listener::stop() {
  io_.stop();
  backoff_.stop();
}

void Listener::on_accept() {
  // Bounded so that one busy listener cannot starve the loop.
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd =
        accept4(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
          log::warning("accept on {}: {}; pausing for 0.5 s", addr_.to_string(),
                       std::strerror(errno));
          ++server_.stats().refused;
          io_.stop();
          backoff_.start(0.5);
          return;
        default:
          log::error("accept on {}: {}", addr_.to_string(), std::strerror(errno));
          return;
      }
    }
    UniqueFd client(fd);
    auto peer = net::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    if (!peer) continue;
    ++server_.stats().accepted;
    if (!server_.admit()) {
      ++server_.stats().refused;
      log::debug("{}: refused (too many sessions)", peer->to_string());
      continue;
    }
    server_.add_session(std::move(client), *peer, kind_);
  }
}

// Out of descriptors, a pending client would wait in the backlog, unanswered,
// until some session ends. Instead the spare descriptor makes room to accept
// each pending client and close it at once, so it learns promptly that it is
// refused (libev's "the special problem of accept()ing when you can't").
// Returns true when the backlog is drained; false when the spare is gone or
// accept fails otherwise (then the caller pauses instead).
bool Listener::refuse_pending() {
  if (!spare_) spare_ = open_spare();
  if (!spare_) return false;
  auto& st = server_.stats();
  for (int i = 0; i < 64; ++i) {
    spare_.reset();
    int err = 0;
    {
      UniqueFd client(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client) err = errno;
    }  // a refused client is closed unanswered
    spare_ = open_spare();
    if (err != 0) {
      errno = err;
      // Drained; anything else (still EMFILE?) makes the caller pause.
      return err == EAGAIN || err == EINTR || err == ECONNABORTED;
    }
    ++st.accepted;
    ++st.refused;
    const double now = ev_now(server_.loop());
    if (now - last_refusal_log_ >= 1.0) {
      last_refusal_log_ = now;
      log::warning("accept on {}: out of file descriptors; refusing new connections",
                   addr_.to_string());
    }
  }
  return true;
}

}  // namespace rs::server
