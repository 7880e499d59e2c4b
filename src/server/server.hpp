// The proxy server: listeners, sessions and what they share. Owns everything
// it creates; lives for the whole run on the loop's thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "core/loop.hpp"
#include "net/acceptor.hpp"
#include "net/dialer.hpp"
#include "net/relay.hpp"
#include "net/resolver.hpp"
#include "net/self_connections.hpp"
#include "net/sockaddr.hpp"
#include "net/tls.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"
#include "server/frontend.hpp"
#include "server/stats.hpp"
#include "server/udp_admission.hpp"
#include "server/upstream_pool.hpp"

namespace rs::ruleset {
class Engine;
}

namespace rs::server {

class Control;
class Session;
class UdpForwarder;

// kTransparent: --tproxy, the target is the connection's original destination.
// Stats::kListenerNames follows this order.
enum class ListenerKind { kSocks, kHttp, kForward, kTransparent };

// How many sessions a soft RLIMIT_NOFILE of `nofile` can carry: two fds each
// (client and upstream), after a headroom for everything else (listeners,
// resolver, API connections, pipes). Beyond it, admitting more clients would
// only let their sockets take the fds their dials need, so that every dial
// fails. At least 1; SIZE_MAX for RLIM_INFINITY.
size_t sessions_for_fd_limit(uint64_t nofile);

// "tls://ADDR" -> ADDR, true; anything else as it is.
std::pair<std::string, bool> strip_tls(const std::string& text);
// A listen address (host names resolved once, blocking); throws
// std::runtime_error naming it.
net::SockAddr parse_listen(const std::string& text);

// -4 / -6 as a resolver family.
net::Family resolve_family(const Config& cfg);

class Server {
 public:
  // Validates the configuration and binds every listener; throws
  // std::runtime_error with a message naming the problem.
  Server(ev::Loop* loop, const Config& cfg);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Stops accepting and closes every session (SIGINT/SIGTERM).
  void shutdown();
  // SIGHUP: see Control::reload_ruleset(); also reloads the TLS listeners'
  // certificate and key (reload_tls()).
  void reload_ruleset();
  // Loads --tls-cert/--tls-key/--tls-client-ca again: new handshakes use
  // them, established sessions keep theirs. A failure is logged and keeps
  // the old ones; returns whether it loaded.
  bool reload_tls();
  // The TLS listeners' context (null without --tls-cert).
  SSL_CTX* tls_server() const { return tls_server_.get(); }
  // The slot holding it, for the API, which reads it at each handshake.
  const net::SslCtxPtr& tls_server_context() const { return tls_server_; }
  // --api tls://ADDR: the API speaks HTTPS.
  bool api_tls() const { return api_tls_; }

  // Called by a session that has finished; destruction happens later, from
  // the loop, never inside the session's own callback.
  void remove_session(std::list<std::unique_ptr<Session>>::iterator it);
  ev::Loop* loop() const { return loop_; }
  const Config& config() const { return cfg_; }
  net::Resolver& resolver() { return *resolver_; }
  // The API's bound address, if there is an API.
  std::optional<net::SockAddr> api_address() const;
  // The ruleset engine, or nullptr without -r.
  ruleset::Engine* engine();
  ev::Deferred& deferred() { return deferred_; }
  Stats& stats() { return stats_; }
  // Idle upstream connections of plain HTTP requests.
  UpstreamPool& upstream_pool() { return *pool_; }
  const net::DialOptions& dial_options() const { return dial_; }
  const net::RelayOptions& relay_options() const { return relay_; }
  const FrontendOptions& frontend_options() const { return frontend_; }
  const std::vector<proto::ProxyUri>& proxy_chain() const { return chain_; }
  const std::optional<proto::Address>& forward_target() const { return forward_; }
  // -f ":": each forwarded connection asks the ruleset for its target
  // (ruleset.resolve(":0"), as neosocksd does for its empty forward address).
  bool forward_by_ruleset() const { return forward_by_ruleset_; }
  // Addresses the proxy must not dial on a client's behalf unless a ruleset
  // says so: the API's own listeners.
  const std::vector<net::SockAddr>& protected_addresses() const { return protected_; }
  double start_time() const { return start_time_; }
  // Our own connections to the API, recorded by every Dialer that uses
  // dial_options() and looked up by the API (see self_connections.hpp).
  net::SelfConnections& self_connections() { return self_; }
  // Live SOCKS5 UDP associations against --udp-max-associations / --udp-max-per-client.
  UdpAdmission& udp_admission() { return udp_admission_; }

 private:
  // An accepted client socket: admitted (then owned by a new session) or closed.
  // `tls`: the listener is a tls:// one.
  void on_accept(UniqueFd fd, const net::SockAddr& peer, ListenerKind kind, bool tls);
  // --tproxy: whether the connection on listeners_[listener] was redirected
  // to it (its destination is not the listener itself, which would loop).
  bool redirected(int fd, size_t listener) const;
  // Whether a new half-open connection may be accepted now (--max-sessions,
  // the fd limit, --max-startups).
  bool admit();
  // Tells the API whether any proxy listener is beyond loopback; warns.
  void check_exposure();
  // -l udp://ADDR with -f TARGET (server/udp_forward.hpp).
  void add_udp_forwarder(const std::string& listen);

  ev::Loop* loop_;
  const Config& cfg_;
  ev::Deferred deferred_;
  std::unique_ptr<net::Resolver> resolver_;
  // Before everything that holds an SSL made from them: an SSL keeps its
  // context alive, but a TLS hop's SSL points back at the TlsClient.
  net::SslCtxPtr tls_server_;
  std::unique_ptr<net::TlsClient> tls_client_;
  bool api_tls_ = false;
  net::DialOptions dial_;
  net::RelayOptions relay_;
  FrontendOptions frontend_;
  std::vector<proto::ProxyUri> chain_;
  std::optional<proto::Address> forward_;
  bool forward_by_ruleset_ = false;
  std::vector<net::SockAddr> protected_;
  net::SelfConnections self_;  // before control_ (the API) and the sessions that dial
  Stats stats_;
  UdpAdmission udp_admission_;  // before the sessions, whose associations hold tickets
  std::unique_ptr<UpstreamPool> pool_;
  size_t fd_sessions_;  // sessions_for_fd_limit() of RLIMIT_NOFILE at start-up
  double last_fd_warning_ = -1e9;
  double start_time_;
  std::unique_ptr<Control> control_;  // ruleset engine and API; before the sessions that use it
  std::vector<std::unique_ptr<net::Acceptor>> listeners_;
  std::vector<std::unique_ptr<UdpForwarder>> udp_forwarders_;
  std::list<std::unique_ptr<Session>> sessions_;
  bool stopping_ = false;
};

}  // namespace rs::server
