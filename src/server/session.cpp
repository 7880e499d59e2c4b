#include "server/session.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>

#include "core/log.hpp"
#include "net/udp_socket.hpp"
#include "proto/socks5.hpp"
#include "ruleset/engine.hpp"
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
}  // namespace

Session::Session(Server& server, UniqueFd fd, const net::SockAddr& peer, ListenerKind kind)
    : server_(server),
      client_(std::move(fd)),
      peer_(peer),
      kind_(kind),
      io_(server.loop(), [this](int) { on_readable(); }),
      timer_(server.loop(), [this](int) { on_timeout(); }) {
  auto& st = server_.stats();
  st.sessions_peak = std::max(st.sessions_peak, ++st.sessions);
  ++server_.stats().halfopen;
}

Session::~Session() {
  if (state_ != State::kClosed) teardown();
  --server_.stats().sessions;
}

void Session::start(std::list<std::unique_ptr<Session>>::iterator self) {
  self_ = self;
  timer_.start(server_.config().timeout);
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
  io_.set(client_.get(), EV_READ);
  io_.start();
}

TargetLog Session::target() const {
  return {request_.target, routed_};
}

void Session::on_readable() {
  char buf[4096];
  ssize_t n = recv(client_.get(), buf, sizeof buf, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    log::debug("{}: recv: {}", peer_, std::strerror(errno));
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
    if (in_.empty()) return;
  }
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
  udp_ = UdpAssociation::create(server_, client_.get(), peer_, request_, &rep, &why);
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
  ruleset::Request req = routing_request(request_);
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
                   [this](UniqueFd fd, net::DialError err, const std::string& msg) {
                     if (err == net::DialError::kOk)
                       success_reply_ = proto::socks5_reply(0, dialer_->last_bound());
                     on_dialed(std::move(fd), err, msg);
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
      server_.loop(), net::unmapped(net::local_of(client_.get())), expect,
      [this](UniqueFd conn, const net::SockAddr& from) {
        server_.deferred().dispose(std::move(binder_));
        success_reply_ = proto::socks5_reply(0, from.to_address());
        on_dialed(std::move(conn), net::DialError::kOk, {});
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
  // The API runs arbitrary Lua: never let a client reach it through the proxy
  // unless a ruleset routes it there on purpose.
  const auto* deny = may_reach_api ? nullptr : &server_.protected_addresses();
  dialer_->start(std::move(target), std::move(chain), deny,
                 [this](UniqueFd fd, net::DialError err, const std::string& msg) {
                   on_dialed(std::move(fd), err, msg);
                 });
}

void Session::on_dialed(UniqueFd upstream, net::DialError err, const std::string& msg) {
  server_.deferred().dispose(std::move(dialer_));
  if (err != net::DialError::kOk) {
    ++server_.stats().dial_failed;
    reject(err, msg);
    return;
  }
  if (frontend_ &&
      !send_all(success_reply_.empty() ? frontend_->reply(net::DialError::kOk) : success_reply_)) {
    close();
    return;
  }
  ++server_.stats().success;
  log::info("{}: {} -> {}", peer_, frontend_ ? frontend_->name() : "forward", target());
  leave_halfopen();
  timer_.stop();
  io_.stop();
  state_ = State::kRelaying;
  relay_ = std::make_unique<net::Relay>(
      server_.loop(), std::move(client_), std::move(upstream), server_.relay_options(),
      [this](const net::RelayStats& st, std::string_view reason) {
        server_.stats().bytes_up += st.up;
        server_.stats().bytes_down += st.down;
        log::verbose("{}: closed {} (up {} down {}): {}", peer_, target(), st.up, st.down, reason);
        close();
      });
  relay_->start(in_);
  in_.clear();
  in_.shrink_to_fit();
}

void Session::reject(net::DialError err, const std::string& why) {
  if (err == net::DialError::kNotAllowed) ++server_.stats().rejected;
  log::info("{}: {} {}: {}", peer_, frontend_ ? frontend_->name() : "forward", target(), why);
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
  shutdown(client_.get(), SHUT_WR);
  leave_halfopen();
  state_ = State::kLingering;
  io_.set(client_.get(), EV_READ);
  io_.start();
  timer_.start(kLinger);
}

bool Session::send_all(std::string_view bytes) {
  // Handshake replies are tiny and the socket's send buffer is empty at this
  // point, so a short write means the client is gone or misbehaving.
  ssize_t n = send(client_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
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
    log::info("{}: handshake timed out", peer_);
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
  server_.deferred().dispose(std::move(routing_));
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
