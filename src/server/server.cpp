#include "server/server.hpp"

#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>

#include "core/log.hpp"
#include "proto/text.hpp"
#include "server/control.hpp"
#include "server/session.hpp"
#include "server/udp_forward.hpp"

namespace rs::server {
namespace {

// Idle upstream connections kept for plain HTTP requests, all origins
// together: a few per busy origin, few enough to fit the fd headroom.
constexpr size_t kPooledUpstreams = 16;

}  // namespace

std::pair<std::string, bool> strip_tls(const std::string& text) {
  constexpr std::string_view kPrefix = "tls://";
  if (text.size() > kPrefix.size() && proto::iequals(text.substr(0, kPrefix.size()), kPrefix))
    return {text.substr(kPrefix.size()), true};
  return {text, false};
}

net::SockAddr parse_listen(const std::string& text) {
  if (auto sa = net::parse_sockaddr(text)) return *sa;
  // Host names ("localhost:1080") are resolved once, at start-up.
  auto hp = proto::split_host_port(text);
  auto port = hp ? proto::parse_port(hp->port) : std::nullopt;
  if (!port) throw std::runtime_error("bad listen address \"" + text + "\": expected HOST:PORT");
  std::string err;
  auto addrs = net::resolve_blocking(std::string(hp->host), *port, net::Family::kAny, err);
  if (addrs.empty()) throw std::runtime_error("cannot resolve listen address " + text + ": " + err);
  return addrs.front();
}

namespace {

size_t fd_limit_now() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return std::numeric_limits<size_t>::max();
  return sessions_for_fd_limit(rl.rlim_cur);
}

// IP_TRANSPARENT (IPV6_TRANSPARENT): the listener accepts connections the
// TPROXY target redirected to it, whatever their destination. Needs
// CAP_NET_ADMIN.
void set_transparent(int fd) {
  int on = 1;
  int domain = 0;
  socklen_t len = sizeof domain;
  const bool v6 = ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_INET6;
  const int rc = v6 ? ::setsockopt(fd, IPPROTO_IPV6, IPV6_TRANSPARENT, &on, sizeof on)
                    : ::setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &on, sizeof on);
  if (rc != 0)
    throw std::runtime_error(
        fmt::format("--tproxy: {}: {}{}", v6 ? "IPV6_TRANSPARENT" : "IP_TRANSPARENT",
                    std::strerror(errno), errno == EPERM ? " (needs CAP_NET_ADMIN)" : ""));
}

}  // namespace

bool Server::redirected(int fd, size_t listener) const {
  const net::SockAddr local = net::local_of(fd);
  const net::SockAddr& own = listeners_[listener]->address();
  if (local.port() != own.port()) return true;
  // Same port: redirected only if the listener is not bound to that address
  // (or to every address).
  return !net::is_wildcard(own) && local.to_string() != own.to_string();
}

net::Family resolve_family(const Config& cfg) {
  return cfg.family == 4   ? net::Family::kOnlyV4
         : cfg.family == 6 ? net::Family::kOnlyV6
                           : net::Family::kAny;
}

size_t sessions_for_fd_limit(uint64_t nofile) {
  if (nofile >= std::numeric_limits<size_t>::max() / 2) return std::numeric_limits<size_t>::max();
  const uint64_t headroom = std::clamp<uint64_t>(nofile / 16, 16, 256);
  if (nofile < headroom + 2) return 1;
  return static_cast<size_t>((nofile - headroom) / 2);
}

Server::Server(ev::Loop* loop, const Config& cfg)
    : loop_(loop),
      cfg_(cfg),
      deferred_(loop),
      fd_sessions_(fd_limit_now()),
      start_time_(ev_now(loop)) {
  if (fd_sessions_ != std::numeric_limits<size_t>::max())
    log::info("RLIMIT_NOFILE allows {} concurrent sessions", fd_sessions_);
  resolver_ = std::make_unique<net::Resolver>(
      loop, net::ResolverOptions{resolve_family(cfg), cfg.nameserver, std::min(cfg.timeout, 10.0)});
  dial_.timeout = cfg.timeout;
  dial_.netdev = cfg.netdev;
  dial_.sndbuf = cfg.tcp_sndbuf;
  dial_.rcvbuf = cfg.tcp_rcvbuf;
  dial_.nodelay = cfg.tcp_nodelay;
  dial_.keepalive = cfg.tcp_keepalive;
  dial_.blocked_classes = cfg.block_outbound;
  dial_.self = &self_;
  tls_client_ = std::make_unique<net::TlsClient>(cfg.tls_ca);
  dial_.tls = tls_client_.get();
  if (!cfg.tls_cert.empty())
    tls_server_ = net::make_server_context({cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca});
  relay_.use_splice = cfg.pipe;
  relay_.bidir_timeout = cfg.bidir_timeout;
  relay_.idle_timeout = cfg.bidir_timeout ? cfg.timeout : 0;
  relay_.linger_timeout = cfg.timeout;
  // Idle upstream connections live as long as idle client ones (-t).
  pool_ = std::make_unique<UpstreamPool>(loop, kPooledUpstreams, cfg.timeout);
  frontend_.auth_required = cfg.auth_required;
  frontend_.udp_associate = cfg.udp.enable;
  frontend_.bind = cfg.socks5_bind;
  udp_admission_.set_limits(cfg.udp.max_associations, cfg.udp.max_per_client);
  frontend_.want_credentials = cfg.auth_required || !cfg.ruleset.empty();

  if (!cfg.proxy.empty()) {
    auto list = proto::parse_proxy_list(cfg.proxy);
    // The message names the entry by position: the text may hold credentials.
    if (!list.ok()) throw std::runtime_error("-x: " + list.error);
    chain_ = std::move(list.proxies);
  }
  if (cfg.forward == ":") {
    // neosocksd reads ":" as the empty host name and port 0, and asks the
    // ruleset about that address for every connection.
    if (cfg.ruleset.empty())
      throw std::runtime_error("-f : needs a ruleset (-r) to pick each connection's target");
    forward_ = proto::Address{std::string(), 0};
    forward_by_ruleset_ = true;
  } else if (!cfg.forward.empty()) {
    forward_ = proto::parse_address(cfg.forward);
    if (!forward_) throw std::runtime_error("bad forward address \"" + cfg.forward + "\"");
  }
  std::optional<net::SockAddr> api;
  if (!cfg.api.empty()) {
    const auto [text, tls] = strip_tls(cfg.api);
    if (tls && !tls_server_)
      throw std::runtime_error("--api " + cfg.api + " needs --tls-cert and --tls-key");
    api_tls_ = tls;
    api = parse_listen(text);
  }
  control_ = std::make_unique<Control>(*this, api);
  if (auto bound = control_->api_address()) {
    protected_.push_back(*bound);
    self_.watch(*bound);
  }
  // A --workers worker: its supervisor's public API is just as off limits.
  if (!cfg.worker_public_api.empty()) protected_.push_back(parse_listen(cfg.worker_public_api));

  if (cfg.tproxy && forward_) throw std::runtime_error("--tproxy is incompatible with -f");
  if (cfg.tproxy && cfg.http_all)
    throw std::runtime_error("--tproxy is incompatible with a bare --http");
  const std::string forward_note =
      forward_by_ruleset_ ? "forward, the ruleset picks the target" : "forward to " + cfg.forward;
  auto add = [&](const std::string& given, ListenerKind kind) {
    const auto [text, tls] = strip_tls(given);
    if (tls && kind == ListenerKind::kForward)
      throw std::runtime_error("tls:// is for proxy listeners, not with -f: " + given);
    if (tls && !tls_server_)
      throw std::runtime_error("listener " + given + " needs --tls-cert and --tls-key");
    net::AcceptorOptions opts{.name = "listener",
                              .reuseport = cfg.reuseport,
                              .fastopen = cfg.tcp_fastopen,
                              .tune =
                                  [this, kind](int fd) {
                                    net::tune_socket(fd, dial_);
                                    if (kind == ListenerKind::kTransparent) set_transparent(fd);
                                  },
                              .refused =
                                  [this] {
                                    ++stats_.accepted;
                                    ++stats_.refused;
                                  }};
    const size_t index = listeners_.size();
    listeners_.push_back(std::make_unique<net::Acceptor>(
        loop, parse_listen(text), opts,
        [this, kind, index, tls = tls](UniqueFd fd, const net::SockAddr& peer) {
          if (kind == ListenerKind::kTransparent && !redirected(fd.get(), index)) {
            ++stats_.accepted;
            ++stats_.bad_requests;
            log::info("{}: connected to the --tproxy listener itself, not redirected: closed",
                      peer);
            return;
          }
          on_accept(std::move(fd), peer, kind, tls);
        }));
    log::notice("listening on {}{} ({})", tls ? "tls://" : "", listeners_.back()->address(),
                kind == ListenerKind::kHttp          ? tls ? "HTTPS proxy" : "HTTP CONNECT"
                : kind == ListenerKind::kForward     ? forward_note
                : kind == ListenerKind::kTransparent ? "transparent proxy, --tproxy"
                                                     : "SOCKS4/4A/5");
  };
  for (const auto& l : cfg.listen) {
    if (l.starts_with("udp://")) {
      add_udp_forwarder(l.substr(6));
      continue;
    }
    add(l, forward_       ? ListenerKind::kForward
           : cfg.tproxy   ? ListenerKind::kTransparent
           : cfg.http_all ? ListenerKind::kHttp
                          : ListenerKind::kSocks);
  }
  for (const auto& l : cfg.http_listen) add(l, ListenerKind::kHttp);
  for (auto& l : listeners_) l->start();
  for (auto& f : udp_forwarders_) f->start();
  check_exposure();
}

void Server::add_udp_forwarder(const std::string& listen) {
  // Datagrams go straight to the -f target: nothing else can carry them.
  if (!forward_ || forward_by_ruleset_)
    throw std::runtime_error("-l udp://" + listen + " needs -f HOST:PORT (the forward target)");
  if (!chain_.empty())
    throw std::runtime_error("-l udp://" + listen + ": -x cannot carry UDP forwarding");
  udp_forwarders_.push_back(
      std::make_unique<UdpForwarder>(*this, parse_listen(listen), parse_listen(cfg_.forward)));
  log::notice("listening on udp://{} (forward to {})", udp_forwarders_.back()->address(),
              cfg_.forward);
}

// Without an API key, the API is served through the proxy only while no
// client beyond this host can reach the proxy (see API.md "Security model").
void Server::check_exposure() {
  auto api = control_->api_address();
  if (!api) return;
  std::string exposed;
  for (const auto& l : listeners_) {
    if (net::is_loopback(l->address())) continue;
    if (!exposed.empty()) exposed += ", ";
    exposed += l->address().to_string();
  }
  control_->set_exposed_listeners(!exposed.empty());
  if (!cfg_.api_key.empty()) return;
  if (!exposed.empty())
    log::warning(
        "proxy listener {} not on loopback and no --api-key: API requests through the proxy "
        "are refused (403); set --api-key, or listen on loopback only",
        exposed);
  if (!net::is_loopback(*api))
    log::warning(
        "api: {} is not on loopback and no --api-key: whoever reaches it runs Lua "
        "on this host",
        *api);
}

Server::~Server() {
  shutdown();
  sessions_.clear();
  deferred_.drain();
}

void Server::shutdown() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& l : listeners_) l->stop();
  for (auto& f : udp_forwarders_) f->stop();
  control_->stop();
  // close() only queues the removal; drain runs it.
  for (auto& s : sessions_) s->close();
  pool_->clear();
  deferred_.drain();
}

void Server::reload_ruleset() {
  control_->reload_ruleset();
  if (tls_server_) reload_tls();
}

bool Server::reload_tls() {
  try {
    tls_server_ = net::make_server_context({cfg_.tls_cert, cfg_.tls_key, cfg_.tls_client_ca});
  } catch (const std::exception& e) {
    log::error("TLS reload failed, keeping the old certificate: {}", e.what());
    return false;
  }
  log::notice("TLS certificate reloaded from {}", cfg_.tls_cert);
  return true;
}

std::optional<net::SockAddr> Server::api_address() const {
  return control_->api_address();
}

ruleset::Engine* Server::engine() {
  return control_->engine();
}

bool Server::admit() {
  if (stopping_) return false;
  if (cfg_.max_sessions > 0 && stats_.sessions >= cfg_.max_sessions) return false;
  if (stats_.sessions >= fd_sessions_) {
    const double now = ev_now(loop_);
    if (now - last_fd_warning_ >= 10.0) {
      last_fd_warning_ = now;
      log::warning("{} sessions: the most RLIMIT_NOFILE allows; refusing new connections",
                   stats_.sessions);
    }
    return false;
  }
  const auto& m = cfg_.max_startups;
  if (!m.enabled() || stats_.halfopen < m.start) return true;
  if (stats_.halfopen >= m.full) return false;
  // Drop with probability rising linearly from rate% at start to 100% at full.
  static std::minstd_rand rng{std::random_device{}()};
  const double p = m.rate + (100.0 - m.rate) * (stats_.halfopen - m.start) / (m.full - m.start);
  return std::uniform_real_distribution<double>(0, 100)(rng) >= p;
}

void Server::on_accept(UniqueFd fd, const net::SockAddr& peer, ListenerKind kind, bool tls) {
  ++stats_.accepted;
  if (!admit()) {
    ++stats_.refused;
    log::debug("{}: refused (too many sessions)", peer);
    return;
  }
  sessions_.push_back(std::make_unique<Session>(*this, std::move(fd), peer, kind,
                                                tls ? tls_server_.get() : nullptr));
  sessions_.back()->start(std::prev(sessions_.end()));
}

void Server::remove_session(std::list<std::unique_ptr<Session>>::iterator it) {
  deferred_.post([this, it] { sessions_.erase(it); });
}

}  // namespace rs::server
