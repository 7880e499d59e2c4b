// The RESTful API server (neosocksd's --api): HTTP/1.1 with keep-alive on one
// listening address. Endpoints: /healthy, /stats, /ruleset/{invoke, update,
// gc, rpcall}; see endpoints.hpp and neosocksd's API reference.
//
// Request bodies: Content-Length or chunked, at most 4 MiB, optionally
// Content-Encoding deflate (zlib or raw) or gzip, 4 MiB decoded. Responses of
// 1 KiB or more are deflated for clients that accept it.
//
// Lifecycle: construct (binds and listens) -> start() -> ... -> stop() or
// destroy. Everything runs on the loop thread and never blocks it, except
// for the Lua the endpoints run.
#pragma once

#include <cstddef>
#include <memory>
#include <unordered_map>

#include "api/access.hpp"
#include "api/backend.hpp"
#include "api/connection.hpp"
#include "api/endpoints.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/acceptor.hpp"
#include "net/sockaddr.hpp"
#include "net/tls_accept.hpp"

namespace rs::api {

struct ApiOptions {
  // A connection idle, or stalled while sending its response, for this many
  // seconds is closed; a request's head and body must arrive within it.
  double timeout = 30.0;
  // Connections beyond this are answered 503 and closed.
  size_t max_connections = 256;
  // Request body limit, before and after Content-Encoding.
  size_t max_body = kMaxBody;
  // Smallest response body worth deflating.
  size_t compress_min = 1024;
  // ev_now() when the program started, for the uptime in /stats; 0 means when
  // the ApiServer was constructed.
  double started = 0;
  // The key and the proxy listeners' exposure (see access.hpp).
  AccessOptions access;
  // The Server's registry of its own connections to this API (may be null:
  // no request counts as proxied). It must outlive the ApiServer, which
  // forgets each peer when its connection closes.
  net::SelfConnections* self = nullptr;
  // Set: the API speaks HTTPS, with the context *tls holds when a client
  // connects (the owner may replace it: SIGHUP). It must outlive the server.
  const net::SslCtxPtr* tls = nullptr;
  // Set: requests are answered by it, not by the Endpoints (--workers).
  ApiForwarder* forwarder = nullptr;
};

class ApiServer {
 public:
  // Binds `listen` (SO_REUSEADDR, port 0 picks one) and listens; throws
  // std::runtime_error naming the address and the error. `loop` and `backend`
  // must outlive the server.
  ApiServer(ev::Loop* loop, const net::SockAddr& listen, ApiBackend& backend, ApiOptions opts);
  // Closes every connection; running rpcalls are cancelled.
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  void start();  // starts accepting
  // Stops accepting and closes every connection (start() resumes accepting).
  void stop();
  // The bound address, with the actual port.
  const net::SockAddr& address() const { return acceptor_.address(); }
  size_t connections() const { return conns_.size(); }
  // Whether some proxy listener is not on loopback (known once they are bound).
  void set_exposed_listeners(bool exposed) { access_.set_exposed_listeners(exposed); }

 private:
  void on_accept(UniqueFd fd, const net::SockAddr& peer);
  void serve(net::Conn conn, const net::SockAddr& peer);
  void reject(UniqueFd fd, const net::SockAddr& peer);
  void closed(ApiConnection* conn);

  ev::Loop* loop_;
  ApiOptions opts_;
  ConnectionLimits limits_;
  ev::Deferred deferred_;  // destroys closed connections outside their callbacks
  Endpoints endpoints_;
  Access access_;
  std::unordered_map<ApiConnection*, std::unique_ptr<ApiConnection>> conns_;
  // TLS handshakes in progress; they count against max_connections.
  std::unordered_map<net::TlsAccept*, std::unique_ptr<net::TlsAccept>> handshakes_;
  net::Acceptor acceptor_;  // last: it calls back into the members above
};

}  // namespace rs::api
