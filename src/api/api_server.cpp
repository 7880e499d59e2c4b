#include "api/api_server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "core/log.hpp"

namespace rs::api {
namespace {

UniqueFd listen_on(const net::SockAddr& addr) {
  UniqueFd fd(::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
  auto fail = [&](const char* what) {
    throw std::runtime_error(
        fmt::format("api listen {}: {}: {}", addr.to_string(), what, std::strerror(errno)));
  };
  if (!fd) fail("socket");
  int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (addr.family() == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
  if (::bind(fd.get(), addr.get(), addr.len) != 0) fail("bind");
  if (::listen(fd.get(), 128) != 0) fail("listen");
  return fd;
}

// Answered to connections beyond the limit, without reading their request.
const std::string& busy_response() {
  static const std::string response = proto::http_response(
      503, {}, {{"Content-Type", "text/plain; charset=utf-8"}, {"Connection", "close"}},
      "too many API connections, retry later\n");
  return response;
}

ConnectionLimits limits_of(const ApiOptions& opts) {
  ConnectionLimits l;
  l.timeout = opts.timeout;
  l.max_body = opts.max_body;
  l.compress_min = opts.compress_min;
  return l;
}

}  // namespace

ApiServer::ApiServer(ev::Loop* loop, const net::SockAddr& listen, ApiBackend& backend,
                     ApiOptions opts)
    : loop_(loop),
      opts_(opts),
      limits_(limits_of(opts)),
      addr_(listen),
      fd_(listen_on(listen)),
      deferred_(loop),
      endpoints_(loop, backend, opts.started > 0 ? opts.started : ev_now(loop)),
      io_(loop, [this](int) { on_accept(); }),
      backoff_(loop, [this](int) { io_.start(); }) {
  addr_ = net::local_of(fd_.get());
  io_.set(fd_.get(), EV_READ);
}

ApiServer::~ApiServer() {
  stop();
  deferred_.drain();
}

void ApiServer::start() {
  io_.start();
  log::notice("api: listening on {}", addr_.to_string());
}

void ApiServer::stop() {
  io_.stop();
  backoff_.stop();
  // close() reports back through closed(), which erases from conns_.
  while (!conns_.empty()) conns_.begin()->first->close();
}

void ApiServer::on_accept() {
  // Bounded so that a flood of connections cannot starve the loop.
  for (int i = 0; i < 64; ++i) {
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
          log::warning("api: accept on {}: {}; pausing for 0.5 s", addr_.to_string(),
                       std::strerror(errno));
          io_.stop();
          backoff_.start(0.5);
          return;
        default:
          log::error("api: accept on {}: {}", addr_.to_string(), std::strerror(errno));
          return;
      }
    }
    UniqueFd client(fd);
    auto peer = net::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    net::SockAddr from = peer ? *peer : net::SockAddr{};
    if (conns_.size() >= opts_.max_connections) {
      reject(std::move(client), from);
      continue;
    }
    int on = 1;
    ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    auto conn = std::make_unique<ApiConnection>(loop_, std::move(client), from, limits_, endpoints_,
                                                deferred_, [this](ApiConnection* c) { closed(c); });
    ApiConnection* raw = conn.get();
    conns_.emplace(raw, std::move(conn));
    raw->start();
  }
}

void ApiServer::reject(UniqueFd fd, const net::SockAddr& peer) {
  log::debug("api {}: refused (too many connections)", peer.to_string());
  // Best effort: a fresh socket's send buffer takes this at once.
  const std::string& busy = busy_response();
  [[maybe_unused]] ssize_t n = ::send(fd.get(), busy.data(), busy.size(), MSG_NOSIGNAL);
  ::shutdown(fd.get(), SHUT_WR);
}

void ApiServer::closed(ApiConnection* conn) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  deferred_.dispose(std::move(it->second));
  conns_.erase(it);
}

}  // namespace rs::api
