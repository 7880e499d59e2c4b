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

// Answered to connections beyond the limit, without reading their request.
const std::string& busy_response() {
  static const std::string response = proto::http_response(
      503, {}, {{"Content-Type", "text/plain; charset=utf-8"}, {"Connection", "close"}},
      "too many API connections, retry later\n");
  return response;
}

// Replies go out whole: no Nagle delay (accepted sockets inherit it).
void nodelay(int fd) {
  int on = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
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
      deferred_(loop),
      endpoints_(loop, backend, opts.started > 0 ? opts.started : ev_now(loop)),
      access_(loop, backend, opts.self, opts.access),
      acceptor_(
          loop, listen,
          {.name = "api", .backlog = 128, .reuseport = false, .tune = nodelay, .refused = {}},
          [this](UniqueFd fd, const net::SockAddr& peer) { on_accept(std::move(fd), peer); }) {
  if (opts.forwarder != nullptr) endpoints_.set_forwarder(opts.forwarder);
}

ApiServer::~ApiServer() {
  stop();
  deferred_.drain();
}

void ApiServer::start() {
  acceptor_.start();
  log::notice("api: listening on {}", address());
}

void ApiServer::stop() {
  acceptor_.stop();
  // close() reports back through closed(), which erases from conns_.
  while (!conns_.empty()) conns_.begin()->first->close();
  handshakes_.clear();
}

void ApiServer::on_accept(UniqueFd client, const net::SockAddr& from) {
  if (conns_.size() + handshakes_.size() >= opts_.max_connections) {
    if (opts_.tls != nullptr) {
      // Not even a TLS alert: the client sees the connection closed.
      if (opts_.self != nullptr) opts_.self->forget(from);
      log::debug("api {}: refused (too many connections)", from);
      return;
    }
    reject(std::move(client), from);
    return;
  }
  if (opts_.tls == nullptr) {
    serve(net::Conn(std::move(client)), from);
    return;
  }
  auto hs = std::make_unique<net::TlsAccept>(loop_, std::move(client), opts_.tls->get(),
                                             opts_.timeout, nullptr);
  net::TlsAccept* raw = hs.get();
  hs->set_done([this, raw, from](net::Conn conn, const std::string& error) {
    auto it = handshakes_.find(raw);
    if (it == handshakes_.end()) return;
    deferred_.dispose(std::move(it->second));
    handshakes_.erase(it);
    if (!error.empty()) {
      if (opts_.self != nullptr) opts_.self->forget(from);
      log::info("api {}: {}", from, error);
      return;
    }
    serve(std::move(conn), from);
  });
  handshakes_.emplace(raw, std::move(hs));
  raw->start();
}

void ApiServer::serve(net::Conn client, const net::SockAddr& from) {
  auto conn =
      std::make_unique<ApiConnection>(loop_, std::move(client), from, limits_, endpoints_, access_,
                                      deferred_, [this](ApiConnection* c) { closed(c); });
  ApiConnection* raw = conn.get();
  conns_.emplace(raw, std::move(conn));
  raw->start();
}

void ApiServer::reject(UniqueFd fd, const net::SockAddr& peer) {
  if (opts_.self != nullptr) opts_.self->forget(peer);
  log::debug("api {}: refused (too many connections)", peer);
  // Best effort: a fresh socket's send buffer takes this at once.
  const std::string& busy = busy_response();
  [[maybe_unused]] ssize_t n = ::send(fd.get(), busy.data(), busy.size(), MSG_NOSIGNAL);
  ::shutdown(fd.get(), SHUT_WR);
}

void ApiServer::closed(ApiConnection* conn) {
  auto it = conns_.find(conn);
  if (it == conns_.end()) return;
  if (opts_.self != nullptr) opts_.self->forget(conn->peer());
  deferred_.dispose(std::move(it->second));
  conns_.erase(it);
}

}  // namespace rs::api
