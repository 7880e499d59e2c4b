#include "server/session.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>

#include "core/log.hpp"
#include "net/udp_socket.hpp"
#include "proto/proxy_protocol.hpp"
#include "proto/socks5.hpp"
#include "ruleset/engine.hpp"
#include "server/forward_dial.hpp"
#include "server/routing.hpp"
#include "server/server.hpp"

namespace rs::server {

// A session's target for log lines, with the ruleset's rewrite if any;
// formatted only when a line is written (the hot path logs nothing).
struct TargetLog {
  const proto::Address& asked;
  const std::optional<proto::Address>& routed;
};

}  // namespace rs::server

template <>
struct fmt::formatter<rs::server::TargetLog> : fmt::formatter<std::string_view> {
  auto format(const rs::server::TargetLog& t, format_context& ctx) const {
    if (!t.routed) return fmt::format_to(ctx.out(), "{}", t.asked);
    return fmt::format_to(ctx.out(), "{} via {}", t.asked, *t.routed);
  }
};

namespace rs::server {
namespace {
constexpr size_t kMaxHandshake = 64 * 1024;  // more than any valid handshake
constexpr double kLinger = 2.0;              // seconds to let a client read an error reply

// A PROXY header's numeric address (never a name).
net::SockAddr to_sockaddr(const proto::Address& a) {
  if (a.is_ipv4()) return net::SockAddr::from(std::get<proto::Ipv4>(a.host), a.port);
  return net::SockAddr::from(std::get<proto::Ipv6>(a.host), a.port);
}
}  // namespace

Session::Session(Server& server, UniqueFd fd, const net::SockAddr& peer, ListenerKind kind,
                 SSL_CTX* tls)
    : server_(server),
      client_(std::move(fd)),
      peer_(peer),
      kind_(kind),
      want_proxy_header_(server.config().accept_proxy_protocol),
      io_(server.loop(), [this](int) { on_readable(); }),
      timer_(server.loop(), [this](int) { on_timeout(); }) {
  auto& st = server_.stats();
  st.sessions_peak = std::max(st.sessions_peak, ++st.sessions);
  ++server_.stats().halfopen;
  if (tls != nullptr) {
    state_ = State::kTls;
    net::SslPtr ssl(SSL_new(tls));
    if (ssl && SSL_set_fd(ssl.get(), client_.fd()) == 1) {
      SSL_set_accept_state(ssl.get());
      client_.set_tls(std::move(ssl));
    }
  }
}

Session::~Session() {
  if (state_ != State::kClosed) teardown();
  --server_.stats().sessions;
}

void Session::start(std::list<std::unique_ptr<Session>>::iterator self) {
  self_ = self;
  timer_.start(server_.config().timeout);
  if (want_proxy_header_) {
    // The header comes first, within -t like any handshake; nothing else is
    // read (or, for -f, dialed) before it.
    io_.set(client_.fd(), EV_READ);
    io_.start();
    return;
  }
  begin();
}

void Session::begin() {
  if (kind_ == ListenerKind::kTransparent) {
    // --tproxy: the connection was sent to its target; the kernel redirected
    // it here keeping that address as ours. Literal, so route / route6 ask.
    request_.target = net::local_of(client_.fd()).to_address();
    ++server_.stats().requests;
    route();
    return;
  }
  if (kind_ == ListenerKind::kForward) {
    // Port forwarding has no handshake: the request is the forward target.
    request_.target = *server_.forward_target();
    ++server_.stats().requests;
    if (server_.forward_by_ruleset()) {
      route();
      return;
    }
    dial(request_.target, server_.proxy_chain(), false);
    return;
  }
  if (kind_ == ListenerKind::kHttp) frontend_ = make_http_frontend(server_.frontend_options());
  io_.set(client_.fd(), EV_READ);
  io_.start();
  if (state_ == State::kTls && !client_.tls()) {
    log::error("{}: cannot start TLS: {}", peer_, net::tls_error_text());
    close();
  }
}

void Session::on_tls() {
  if (client_.handshake() == 1) {
    state_ = State::kHandshake;
    io_.modify(EV_READ);
    // The client's first bytes may have come with its last handshake
    // message: OpenSSL holds them, the socket will not say so again.
    if (client_.pending()) on_readable();
    return;
  }
  if (errno == EAGAIN) {
    io_.modify(client_.wants());
    return;
  }
  // A plain-text client on a TLS port, a certificate refused (mTLS), a
  // protocol mismatch: this connection only.
  ++server_.stats().bad_requests;
  log::info("{}: TLS handshake failed: {}", peer_, client_.error_text());
  close();
}

bool Session::take_proxy_header() {
  auto r = proto::parse_proxy_header({reinterpret_cast<const uint8_t*>(in_.data()), in_.size()});
  if (r.need_more()) return false;  // the codec bounds the header's length
  if (r.failed()) {
    // Only this connection: no reply, since the peer is a load balancer or
    // someone who should not be talking to this port.
    ++server_.stats().bad_requests;
    log::info("{}: {}", peer_, r.error);
    close();
    return false;
  }
  want_proxy_header_ = false;
  in_.erase(0, r.consumed);
  if (r.value.source) {
    log::debug("{}: PROXY v{} header: client {}", peer_, r.value.version, *r.value.source);
    peer_ = to_sockaddr(*r.value.source);
    proxied_destination_ = r.value.destination;
  }
  begin();
  return true;
}

const char* Session::protocol() const {
  if (frontend_) return frontend_->name();
  return kind_ == ListenerKind::kTransparent ? "tproxy" : "forward";
}

TargetLog Session::target() const {
  return {request_.target, routed_};
}

void Session::on_readable() {
  if (state_ == State::kTls) {
    on_tls();
    return;
  }
  char buf[4096];
  ssize_t n = client_.read(buf, sizeof buf);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) {
      if (client_.tls()) io_.modify(client_.wants());
      return;
    }
    log::debug("{}: recv: {}", peer_, client_.error_text());
    close();
    return;
  }
  if (n == 0) {
    // A client that leaves before the reply cancels everything in flight.
    if (state_ != State::kLingering && state_ != State::kHandshake)
      log::info("{}: client closed while {} {}", peer_,
                state_ == State::kRouting ? "routing" : "dialing", target());
    close();
    return;
  }
  if (state_ == State::kLingering) return;  // discard: we only wait for EOF
  in_.append(buf, static_cast<size_t>(n));
  if (want_proxy_header_ && (!take_proxy_header() || in_.empty() || state_ != State::kHandshake))
    return;
  if (state_ != State::kHandshake) {
    // Early data sent before our reply: keep it for the upstream, bounded.
    if (in_.size() >= kMaxHandshake) io_.stop();
    return;
  }
  if (!frontend_) {
    frontend_ = sniff_frontend(static_cast<uint8_t>(in_[0]), server_.frontend_options());
    if (!frontend_) {
      ++server_.stats().bad_requests;
      log::info("{}: unknown protocol (first byte 0x{:02X})", peer_, static_cast<uint8_t>(in_[0]));
      close();
      return;
    }
  }
  // One read may hold several handshake messages (pipelined SOCKS5).
  while (state_ == State::kHandshake) {
    Step step = frontend_->feed({reinterpret_cast<const uint8_t*>(in_.data()), in_.size()});
    if (step.status == Step::kNeedMore) {
      if (in_.size() >= kMaxHandshake) {
        fail({}, "handshake too long");
        ++server_.stats().bad_requests;
      }
      return;
    }
    in_.erase(0, step.consumed);
    handle(std::move(step));
    if (in_.empty()) break;
  }
  // A TLS record may hold more than one read took.
  if (client_.pending() && (state_ == State::kHandshake || state_ == State::kLingering))
    io_.feed(EV_READ);
}

void Session::handle(Step step) {
  switch (step.status) {
    case Step::kNeedMore:
      return;
    case Step::kReply:
      if (!send_all(step.out)) close();
      return;
    case Step::kFail:
      ++server_.stats().bad_requests;
      fail(std::move(step.out), step.error);
      return;
    case Step::kForward:
      proxy_http();
      return;
    case Step::kRequest:
      request_ = std::move(step.request);
      ++server_.stats().requests;
      if (request_.udp_associate) {
        associate_udp();
        return;
      }
      route();
      return;
  }
}

void Session::proxy_http() {
  // Keep-alive connections idle between requests: not half-open any more.
  leave_halfopen();
  io_.stop();
  timer_.stop();
  state_ = State::kProxying;
  proxy_ = std::make_unique<HttpProxy>(server_, std::move(client_), peer_, std::move(in_),
                                       [this] { close(); });
  in_.clear();
  proxy_->start();
}

void Session::associate_udp() {
  uint8_t rep = 0;
  std::string why;
  udp_ = UdpAssociation::create(server_, client_.fd(), peer_, request_, &rep, &why);
  if (!udp_) {
    log::info("{}: socks5 udp associate: {}", peer_, why);
    fail(proto::socks5_reply(rep, proto::Address{proto::Ipv4{}, 0}), why);
    return;
  }
  leave_halfopen();
  io_.stop();
  timer_.stop();
  state_ = State::kProxying;
  if (!udp_->start(std::move(client_), [this] { close(); })) close();
}

void Session::route() {
  ruleset::Engine* engine = server_.engine();
  if (engine == nullptr) {
    dial(request_.target, server_.proxy_chain(), false);
    return;
  }
  state_ = State::kRouting;
  ruleset::Request req = routing_request(request_, peer_);
  req.forwarder = this;
  routing_ =
      engine->route(std::move(req), [this](std::optional<ruleset::Decision> d, std::string why) {
        on_routed(std::move(d), why);
      });
}

void Session::on_routed(std::optional<ruleset::Decision> d, const std::string& why) {
  server_.deferred().dispose(std::move(routing_));
  if (state_ != State::kRouting) return;
  if (!d) {
    reject(net::DialError::kNotAllowed, why);
    return;
  }
  std::vector<proto::ProxyUri> chain = decision_chain(server_.proxy_chain(), *d);
  // Only a target the ruleset rewrote may reach the API (neosocksd's
  // api.neosocksd.internal convention); one it passed through may not.
  const bool rewritten = d->target != request_.target;
  if (rewritten) routed_ = d->target;
  dial(std::move(d->target), std::move(chain), rewritten);
}

void Session::bind(proto::Address peer, std::vector<proto::ProxyUri> chain) {
  state_ = State::kDialing;
  if (!chain.empty()) {
    // Forwarded: the hop listens; its first reply goes to the client now, and
    // its second reply reaches the client through the relay.
    dialer_ =
        std::make_unique<net::Dialer>(server_.loop(), &server_.resolver(), server_.dial_options());
    dialer_->set_last_command(proto::socks5::kBind);
    dialer_->start(std::move(peer), std::move(chain), nullptr,
                   [this](net::Conn conn, net::DialError err, const std::string& msg) {
                     if (err == net::DialError::kOk)
                       success_reply_ = proto::socks5_reply(0, dialer_->last_bound());
                     on_dialed(std::move(conn), err, msg);
                   });
    return;
  }
  std::optional<net::SockAddr> expect;
  if (!server_.config().bind_any_peer) {
    if (peer.is_domain()) {
      reject(net::DialError::kAddressType, "socks5 bind: DST.ADDR must be an IP address");
      return;
    }
    auto sa = peer.is_ipv4() ? net::SockAddr::from(std::get<proto::Ipv4>(peer.host), 0)
                             : net::SockAddr::from(std::get<proto::Ipv6>(peer.host), 0);
    if (!net::is_wildcard(sa)) expect = sa;
  }
  std::string err;
  binder_ = BindListener::open(
      server_.loop(), net::unmapped(net::local_of(client_.fd())), expect,
      [this](UniqueFd conn, const net::SockAddr& from) {
        server_.deferred().dispose(std::move(binder_));
        success_reply_ = proto::socks5_reply(0, from.to_address());
        relay(net::Conn(std::move(conn)));
      },
      &err);
  if (!binder_) {
    reject(net::DialError::kGeneral, err);
    return;
  }
  log::debug("{}: socks5 bind listening on {}", peer_, binder_->address());
  if (!send_all(proto::socks5_reply(0, net::unmapped(binder_->address()).to_address()))) {
    close();
    return;
  }
  binder_->start();
}

void Session::dial(proto::Address target, std::vector<proto::ProxyUri> chain, bool may_reach_api) {
  if (request_.bind) {
    bind(std::move(target), std::move(chain));
    return;
  }
  state_ = State::kDialing;
  log::debug("{}: dialing {}", peer_, target);
  dialer_ =
      std::make_unique<net::Dialer>(server_.loop(), &server_.resolver(), server_.dial_options());
  dial_label_ = chain_label(chain);
  dial_started_ = ev_now(server_.loop());
  // The API runs arbitrary Lua: never let a client reach it through the proxy
  // unless a ruleset routes it there on purpose.
  const auto* deny = may_reach_api ? nullptr : &server_.protected_addresses();
  dialer_->start(std::move(target), std::move(chain), deny,
                 [this](net::Conn conn, net::DialError err, const std::string& msg) {
                   on_dialed(std::move(conn), err, msg);
                 });
}

void Session::on_dialed(net::Conn upstream, net::DialError err, const std::string& msg) {
  server_.deferred().dispose(std::move(dialer_));
  server_.stats().record_dial(dial_label_, err == net::DialError::kOk,
                              ev_now(server_.loop()) - dial_started_);
  if (err != net::DialError::kOk) {
    ++server_.stats().dial_failed;
    reject(err, msg);
    return;
  }
  relay(std::move(upstream));
}

std::unique_ptr<Cancellable> Session::forward_dial(const ruleset::Decision& d, DialCallback cb) {
  // Each attempt gets the whole -t, so that a ruleset can still try another
  // chain after one timed out; the client is never left without a bound.
  timer_.stop();
  timer_.start(server_.config().timeout);
  return std::make_unique<ForwardDial>(server_, request_.target, d, std::move(cb));
}

void Session::forward_commit(net::Conn conn, ruleset::Decision d) {
  // Called from the forward's dial callback, never from inside Lua: the
  // routine stays alive (forwarded), only this session's handle goes.
  server_.deferred().dispose(std::move(routing_));
  if (state_ != State::kRouting) return;  // `conn` closes here
  if (d.target != request_.target) routed_ = d.target;
  relay(std::move(conn));
}

void Session::relay(net::Conn upstream) {
  // A BIND's peer connected to us: it is no target to tell who the client is.
  if (!request_.bind && !send_proxy_header(upstream)) {
    ++server_.stats().dial_failed;
    reject(net::DialError::kGeneral, "cannot send the PROXY header to the target");
    return;
  }
  if (frontend_ &&
      !send_all(success_reply_.empty() ? frontend_->reply(net::DialError::kOk) : success_reply_)) {
    close();
    return;
  }
  ++server_.stats().success;
  log::info("{}: {} -> {}", peer_, protocol(), target());
  leave_halfopen();
  timer_.stop();
  state_ = State::kRelaying;
  relay_ = std::make_unique<net::Relay>(
      server_.loop(), std::move(client_), std::move(upstream), server_.relay_options(),
      [this](const net::RelayStats& st, std::string_view reason) {
        server_.stats().bytes_up += st.up;
        server_.stats().bytes_down += st.down;
        auto& by = server_.stats().listener_bytes[static_cast<size_t>(kind_)];
        by[0] += st.up;
        by[1] += st.down;
        log::verbose("{}: closed {} (up {} down {}): {}", peer_, target(), st.up, st.down, reason);
        close();
      });
  // Our watcher stops only once the relay's has started on the client fd, so
  // that the relay takes libev's registration of it over.
  relay_->start(in_, io_.active());
  io_.stop();
  in_.clear();
  in_.shrink_to_fit();
}

void Session::reject(net::DialError err, const std::string& why) {
  if (err == net::DialError::kNotAllowed) ++server_.stats().rejected;
  log::info("{}: {} {}: {}", peer_, protocol(), target(), why);
  fail(frontend_ ? frontend_->reply(err) : std::string(), why);
}

void Session::fail(std::string reply, const std::string& why) {
  if (!why.empty()) log::debug("{}: closing: {}", peer_, why);
  if (reply.empty() || !send_all(reply)) {
    close();
    return;
  }
  // Half-close and wait for the client to go, so that the reply is not lost
  // to a reset caused by unread input.
  client_.shutdown_write();
  leave_halfopen();
  state_ = State::kLingering;
  io_.set(client_.fd(), EV_READ);
  io_.start();
  timer_.start(kLinger);
}

bool Session::send_proxy_header(net::Conn& upstream) {
  const int version = server_.config().send_proxy_protocol;
  if (version == 0) return true;
  // The client and the address it connected to: this listener's, unless a
  // PROXY header in front of us named another.
  const proto::Address src = peer_.to_address();
  const proto::Address dst =
      proxied_destination_ ? *proxied_destination_ : net::local_of(client_.fd()).to_address();
  const std::string header =
      version == 1 ? proto::proxy_header_v1(src, dst) : proto::proxy_header_v2(src, dst);
  // Nothing was written on the new connection yet: its send buffer has room.
  return upstream.write(header.data(), header.size()) == static_cast<ssize_t>(header.size());
}

bool Session::send_all(std::string_view bytes) {
  // Handshake replies are tiny and the socket's send buffer is empty at this
  // point, so a short write means the client is gone or misbehaving.
  ssize_t n = client_.write(bytes.data(), bytes.size());
  return n == static_cast<ssize_t>(bytes.size());
}

void Session::on_timeout() {
  if (state_ == State::kRouting || state_ == State::kDialing) {
    // The client gets the protocol's timeout reply (SOCKS5 TTL expired,
    // HTTP 504), not a bare close.
    if (dialer_) dialer_->cancel();
    server_.deferred().dispose(std::move(dialer_));
    server_.deferred().dispose(std::move(routing_));
    if (binder_) binder_->stop();
    server_.deferred().dispose(std::move(binder_));
    ++server_.stats().timed_out;
    reject(net::DialError::kTimeout, "timed out");
    return;
  }
  if (state_ != State::kLingering) {
    ++server_.stats().bad_requests;
    log::info("{}: {}handshake timed out", peer_, state_ == State::kTls ? "TLS " : "");
  }
  close();
}

void Session::leave_halfopen() {
  if (halfopen_) {
    halfopen_ = false;
    --server_.stats().halfopen;
  }
}

void Session::close() {
  if (state_ == State::kClosed) return;
  teardown();
  server_.remove_session(self_);
}

void Session::teardown() {
  state_ = State::kClosed;
  leave_halfopen();
  io_.stop();
  timer_.stop();
  // Whatever is still running may be inside its own callback: stop it now,
  // destroy it later.
  if (dialer_) dialer_->cancel();
  // Cancelled now, not later: an await.forward dial finishing meanwhile
  // would otherwise hand its connection to this dying session (the engine
  // copes with a cancel from anywhere; this is never inside its callback).
  routing_.reset();
  server_.deferred().dispose(std::move(dialer_));
  server_.deferred().dispose(std::move(relay_));
  if (proxy_) proxy_->stop();
  server_.deferred().dispose(std::move(proxy_));
  if (udp_) udp_->stop();
  server_.deferred().dispose(std::move(udp_));
  if (binder_) binder_->stop();
  server_.deferred().dispose(std::move(binder_));
  client_.reset();
}

}  // namespace rs::server
