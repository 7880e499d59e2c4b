#include "server/http_proxy.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.hpp"
#include "proto/http.hpp"
#include "server/forward_dial.hpp"
#include "server/routing.hpp"
#include "server/server.hpp"

namespace rs::server {
namespace {
// A buffer is refilled only once it is below this: the backpressure that
// keeps a whole body out of memory.
constexpr size_t kLowWater = 64 * 1024;
constexpr size_t kReadChunk = 16 * 1024;
constexpr double kLinger = 2.0;  // seconds to let a client read an error reply
// Header fields per request: beyond it a 431, as for a head over 16 KiB.
constexpr size_t kMaxHeaderFields = 100;
}  // namespace

HttpProxy::HttpProxy(Server& server, net::Conn client, const net::SockAddr& peer, std::string in,
                     Done done)
    : server_(server),
      client_(std::move(client)),
      peer_(peer),
      done_(std::move(done)),
      client_io_(server.loop(), [this](int) { run(); }),
      upstream_io_(server.loop(), [this](int) { run(); }),
      timer_(server.loop(), [this](int) { on_timer(); }),
      later_(server.loop()),
      in_(std::move(in)) {}

HttpProxy::~HttpProxy() {
  stop();
}

void HttpProxy::stop() {
  phase_ = Phase::kDone;
  client_io_.stop();
  upstream_io_.stop();
  timer_.stop();
  later_.cancel();
  if (dialer_) dialer_->cancel();
  // The routing handle goes now: an await.forward dial ending later must not
  // reach this object (the engine copes with a cancel from anywhere, and
  // on_routed drops the handle before anything it calls could get here).
  routing_.reset();
  // Each may be inside its own callback: stopped now, destroyed later.
  server_.deferred().dispose(std::move(dialer_));
  server_.deferred().dispose(std::move(relay_));
}

void HttpProxy::start() {
  client_io_.set(client_.fd(), 0);
  timer_.start(server_.config().timeout);
  // The first head is already in `in_`: parse it from the loop, not here.
  later_.post([this] { run(); });
}

HttpProxy::Io HttpProxy::read_some(net::Conn& conn, std::string* into) {
  // Through the stack: growing the string by a whole chunk for every read
  // would zero-fill (and, when discarding, allocate) 16 KiB however little
  // arrives.
  char chunk[kReadChunk];
  ssize_t n = conn.read(chunk, sizeof chunk);
  if (n > 0) {
    if (into != nullptr) into->append(chunk, static_cast<size_t>(n));
    // What TLS already decrypted no socket event announces: take it now.
    while (conn.pending() && (n = conn.read(chunk, sizeof chunk)) > 0)
      if (into != nullptr) into->append(chunk, static_cast<size_t>(n));
    return Io::kMoved;
  }
  if (n == 0) return Io::kEof;
  return errno == EAGAIN || errno == EINTR ? Io::kBlocked : Io::kFailed;
}

HttpProxy::Io HttpProxy::write_some(net::Conn& conn, std::string& buf) {
  ssize_t n = conn.write(buf.data(), buf.size());
  if (n > 0) {
    buf.erase(0, static_cast<size_t>(n));
    return Io::kMoved;
  }
  return n < 0 && (errno == EAGAIN || errno == EINTR) ? Io::kBlocked : Io::kFailed;
}

void HttpProxy::run() {
  bool progress = true;
  moved_ = false;
  while (progress) {
    progress = false;
    client_events_ = upstream_events_ = 0;
    if (!down_out_.empty()) {
      switch (write_some(client_, down_out_)) {
        case Io::kMoved:
          progress = moved_ = true;
          break;
        case Io::kBlocked:
          client_events_ |= EV_WRITE;
          break;
        default:
          finish("client write failed");
          return;
      }
    }
    if (!up_out_.empty() && upstream_) {
      switch (write_some(upstream_, up_out_)) {
        case Io::kMoved:
          progress = moved_ = true;
          break;
        case Io::kBlocked:
          upstream_events_ |= EV_WRITE;
          break;
        default:
          // The origin may have answered and closed: read what it said.
          up_out_.clear();
          request_done_ = true;
          keep_alive_ = pool_ok_ = false;
          progress = true;
          break;
      }
    }
    switch (phase_) {
      case Phase::kHead:
        progress |= step_head();
        break;
      case Phase::kExchange:
        progress |= step_request_body();
        if (phase_ == Phase::kExchange) progress |= step_response();
        if (phase_ == Phase::kExchange && response_done_ && down_out_.empty()) {
          // An origin that answered before reading the whole request leaves
          // the rest of it in the client connection: close that after.
          if (!request_done_) keep_alive_ = false;
          end_exchange();
          progress = true;
        }
        break;
      case Phase::kUpgrade:
        if (down_out_.empty() && up_out_.empty()) {
          start_relay();
          return;
        }
        break;
      case Phase::kLinger:
        if (down_out_.empty()) {
          if (!half_closed_) {
            // The reply is out: tell the client, then wait for it to go, so
            // that unread input does not turn our close into a reset that
            // loses the reply.
            client_.shutdown_write();
            half_closed_ = true;
          }
          // Discard input until the client leaves.
          Io r = read_some(client_, nullptr);
          if (r == Io::kEof || r == Io::kFailed) {
            finish({});
            return;
          }
          if (r == Io::kMoved) progress = true;
          client_events_ = EV_READ;
        }
        break;
      case Phase::kDone:
        return;
      default:
        break;
    }
    if (phase_ == Phase::kDone || phase_ == Phase::kRelaying) return;
  }
  if (moved_ && phase_ == Phase::kExchange && server_.relay_options().idle_timeout > 0)
    timer_.again(server_.relay_options().idle_timeout);
  client_io_.modify(client_events_);
  if (upstream_) upstream_io_.modify(upstream_events_);
}

bool HttpProxy::step_head() {
  if (!in_.empty()) {
    auto r = proto::parse_http_request({reinterpret_cast<const uint8_t*>(in_.data()), in_.size()});
    if (r.done()) {
      start_request(std::move(r.value), r.consumed);
      return true;
    }
    if (r.failed()) {
      ++server_.stats().bad_requests;
      error(r.code ? r.code : 400, r.error);
      return true;
    }
  }
  if (client_eof_) {
    if (!in_.empty()) ++server_.stats().bad_requests;
    finish(in_.empty() ? "" : "client closed inside a request head");
    return false;
  }
  switch (read_some(client_, &in_)) {
    case Io::kMoved:
      return true;
    case Io::kBlocked:
      client_events_ |= EV_READ;
      return false;
    case Io::kEof:
      client_eof_ = true;
      return true;
    case Io::kFailed:
      finish("client read failed");
      return false;
  }
  return false;
}

void HttpProxy::start_request(proto::HttpRequestHead head, size_t consumed) {
  in_.erase(0, consumed);
  if (head.method == "CONNECT") {
    error(400, "CONNECT after a plain request on one connection");
    return;
  }
  if (head.headers.size() > kMaxHeaderFields) {
    ++server_.stats().bad_requests;
    error(431, "more than " + std::to_string(kMaxHeaderFields) + " header fields");
    return;
  }
  auto target = proto::parse_absolute_target(head.target);
  if (!target) {
    ++server_.stats().bad_requests;
    error(400, "a proxy request needs an absolute http:// target, not \"" + head.target + "\"");
    return;
  }
  auto framing = proto::request_framing(head);
  if (!framing.ok()) {
    ++server_.stats().bad_requests;
    error(400, framing.error);
    return;
  }
  request_ = {target->origin, std::nullopt, std::nullopt};
  if (auto value = head.header("Proxy-Authorization")) {
    auto creds = proto::parse_basic_auth(*value);
    if (!creds) {
      ++server_.stats().bad_requests;
      error(400, "bad Proxy-Authorization");
      return;
    }
    request_.username = std::move(creds->first);
    request_.password = std::move(creds->second);
  }
  if (server_.frontend_options().auth_required &&
      (!request_.username || request_.username->empty())) {
    ++server_.stats().rejected;
    error(407, "proxy authentication required",
          {{"Proxy-Authenticate", "Basic realm=\"rulesocks\""}});
    return;
  }
  ++server_.stats().requests;
  method_ = head.method;
  client_minor_ = head.minor_version;
  keep_alive_ = keep_alive_initial_ = proto::wants_keep_alive(head);
  upgrade_ = proto::is_upgrade(head);
  // Only HTTP/1.1 exchanges keep their upstream connection.
  pool_ok_ = head.minor_version == 1 && !upgrade_;
  request_head_ = proto::forward_request_head(head, *target, pool_ok_);
  up_out_ = request_head_;
  has_body_ = framing.kind != proto::BodyFraming::kNone;
  request_body_ = proto::BodyReader(framing);
  request_done_ = response_done_ = response_begun_ = false;
  routed_.reset();
  resp_in_.clear();
  // The next request waits in the socket until this one is answered.
  client_io_.stop();
  timer_.start(server_.config().timeout);
  route();
}

void HttpProxy::route() {
  ruleset::Engine* engine = server_.engine();
  if (engine == nullptr) {
    dial(request_.target, server_.proxy_chain(), false);
    return;
  }
  phase_ = Phase::kRouting;
  ruleset::Request req = routing_request(request_, peer_);
  req.forwarder = this;
  routing_ =
      engine->route(std::move(req), [this](std::optional<ruleset::Decision> d, std::string why) {
        on_routed(std::move(d), why);
      });
}

void HttpProxy::on_routed(std::optional<ruleset::Decision> d, const std::string& why) {
  server_.deferred().dispose(std::move(routing_));
  if (phase_ != Phase::kRouting) return;
  if (!d) {
    ++server_.stats().rejected;
    log::info("{}: http {}: {}", peer_, request_.target, why);
    error(403, why.empty() ? "rejected by the ruleset" : why);
    return;
  }
  auto chain = decision_chain(server_.proxy_chain(), *d);
  // As in Session::on_routed: only a rewritten target may reach the API.
  const bool rewritten = d->target != request_.target;
  if (rewritten) routed_ = d->target;
  dial(std::move(d->target), std::move(chain), rewritten);
}

std::unique_ptr<Cancellable> HttpProxy::forward_dial(const ruleset::Decision& d, DialCallback cb) {
  // As in Session::forward_dial: each attempt gets the whole -t.
  timer_.stop();
  timer_.start(server_.config().timeout);
  return std::make_unique<ForwardDial>(server_, request_.target, d, std::move(cb));
}

void HttpProxy::forward_commit(net::Conn conn, ruleset::Decision d) {
  server_.deferred().dispose(std::move(routing_));
  if (phase_ != Phase::kRouting) return;  // `conn` closes here
  const bool rewritten = d.target != request_.target;
  if (rewritten) routed_ = d.target;
  auto chain = decision_chain(server_.proxy_chain(), d);
  // A fresh connection the ruleset chose: it may go to the pool afterwards
  // under the same key a returned decision would use.
  set_upstream(std::move(d.target), std::move(chain), rewritten);
  phase_ = Phase::kDialing;
  reused_ = false;
  on_dialed(std::move(conn), net::DialError::kOk, {});
}

void HttpProxy::set_upstream(proto::Address target, std::vector<proto::ProxyUri> chain,
                             bool may_reach_api) {
  pool_key_ = target.to_string() + (may_reach_api ? " api" : "");
  for (const auto& hop : chain) pool_key_ += " " + hop.to_string();
  dial_target_ = std::move(target);
  dial_chain_ = std::move(chain);
  may_reach_api_ = may_reach_api;
}

void HttpProxy::dial(proto::Address target, std::vector<proto::ProxyUri> chain,
                     bool may_reach_api) {
  set_upstream(std::move(target), std::move(chain), may_reach_api);
  connect_upstream(true);
}

void HttpProxy::connect_upstream(bool use_pool) {
  phase_ = Phase::kDialing;
  reused_ = false;
  if (use_pool) {
    if (UniqueFd fd = server_.upstream_pool().take(pool_key_)) {
      reused_ = true;
      // As a dial would: the result comes from the loop.
      later_.post([this, fd = std::move(fd)]() mutable {
        on_dialed(net::Conn(std::move(fd)), net::DialError::kOk, {});
      });
      return;
    }
  }
  dialer_ =
      std::make_unique<net::Dialer>(server_.loop(), &server_.resolver(), server_.dial_options());
  const auto* deny = may_reach_api_ ? nullptr : &server_.protected_addresses();
  const double started = ev_now(server_.loop());
  dialer_->start(dial_target_, dial_chain_, deny,
                 [this, started](net::Conn conn, net::DialError err, const std::string& msg) {
                   server_.stats().record_dial(chain_label(dial_chain_), err == net::DialError::kOk,
                                               ev_now(server_.loop()) - started);
                   on_dialed(std::move(conn), err, msg);
                 });
}

void HttpProxy::on_dialed(net::Conn conn, net::DialError err, const std::string& msg) {
  server_.deferred().dispose(std::move(dialer_));
  if (phase_ != Phase::kDialing) return;
  if (err != net::DialError::kOk) {
    ++server_.stats().dial_failed;
    if (err == net::DialError::kNotAllowed) ++server_.stats().rejected;
    if (err == net::DialError::kTimeout) ++server_.stats().timed_out;
    log::info("{}: http {}: {}", peer_, request_.target, msg);
    error(net::http_status(err), msg);
    return;
  }
  log::info("{}: http {} {}{}{}{}", peer_, method_, request_.target, routed_ ? " via " : "",
            routed_ ? routed_->to_string() : "", reused_ ? " (reused)" : "");
  upstream_ = std::move(conn);
  upstream_io_.set(upstream_.fd(), 0);
  phase_ = Phase::kExchange;
  timer_.stop();
  if (server_.relay_options().idle_timeout > 0)
    timer_.start(server_.relay_options().idle_timeout, server_.relay_options().idle_timeout);
  run();
}

void HttpProxy::pass_body(std::string& from, std::string& to, size_t n, uint64_t& counter) {
  counter += n;
  to.append(from, 0, n);
  from.erase(0, n);
  moved_ = true;
}

bool HttpProxy::step_request_body() {
  if (request_done_ || up_out_.size() >= kLowWater) return false;
  bool progress = false;
  if (!in_.empty()) {
    size_t used = 0;
    auto st = request_body_.feed(in_, used);
    if (st == proto::BodyReader::Status::kError) {
      ++server_.stats().bad_requests;
      if (!response_begun_) {
        error(400, request_body_.error());
      } else {
        finish(request_body_.error());
      }
      return true;
    }
    if (used > 0) {
      pass_body(in_, up_out_, used, server_.stats().bytes_up);
      progress = true;
    }
    if (st == proto::BodyReader::Status::kDone) {
      request_done_ = true;
      return true;
    }
  }
  if (request_body_.done()) {
    request_done_ = true;
    return true;
  }
  if (!in_.empty()) return progress;
  switch (read_some(client_, &in_)) {
    case Io::kMoved:
      return true;
    case Io::kBlocked:
      client_events_ |= EV_READ;
      return progress;
    default:
      finish("client left inside a request body");
      return false;
  }
}

bool HttpProxy::step_response() {
  if (response_done_ || down_out_.size() >= kLowWater) return false;
  bool progress = false;
  if (!resp_in_.empty()) {
    if (!response_begun_ || phase_ != Phase::kExchange) {
      auto r = proto::parse_http_response(
          {reinterpret_cast<const uint8_t*>(resp_in_.data()), resp_in_.size()});
      if (r.failed()) {
        error(502, "bad response from the origin: " + r.error);
        return true;
      }
      if (r.done()) {
        const auto& head = r.value;
        resp_in_.erase(0, r.consumed);
        if (head.status == 101) {
          if (!upgrade_) {
            error(502, "101 from the origin without an Upgrade request");
            return true;
          }
          ++server_.stats().success;
          down_out_ += proto::forward_response_head(head, false);
          down_out_ += resp_in_;
          resp_in_.clear();
          phase_ = Phase::kUpgrade;
          return true;
        }
        if (head.status < 200) {
          // 100 Continue and friends pass through, but never to an HTTP/1.0
          // client, which cannot know them (RFC 9110 section 15.2).
          if (client_minor_ == 1) down_out_ += proto::forward_response_head(head, true);
          return true;
        }
        auto framing = proto::response_framing(head, method_);
        if (!framing.ok()) {
          error(502, "bad response from the origin: " + framing.error);
          return true;
        }
        if (framing.kind == proto::BodyFraming::kClose) keep_alive_ = pool_ok_ = false;
        if (head.minor_version != 1 || proto::has_token(head.headers, "Connection", "close"))
          pool_ok_ = false;
        down_out_ += proto::forward_response_head(head, keep_alive_);
        response_body_ = proto::BodyReader(framing);
        response_begun_ = true;
        ++server_.stats().success;
        return true;
      }
    }
    if (response_begun_) {
      size_t used = 0;
      auto st = response_body_.feed(resp_in_, used);
      if (st == proto::BodyReader::Status::kError) {
        finish("bad response body from the origin: " + response_body_.error());
        return false;
      }
      if (used > 0) {
        pass_body(resp_in_, down_out_, used, server_.stats().bytes_down);
        progress = true;
      }
      if (st == proto::BodyReader::Status::kDone) {
        response_done_ = true;
        return true;
      }
      if (!resp_in_.empty()) return progress;
    }
  }
  if (response_begun_ && response_body_.done()) {
    response_done_ = true;
    return true;
  }
  switch (read_some(upstream_, &resp_in_)) {
    case Io::kMoved:
      return true;
    case Io::kBlocked:
      upstream_events_ |= EV_READ;
      return progress;
    case Io::kEof:
      if (response_begun_ && response_body_.complete_at_eof()) {
        response_done_ = true;
        return true;
      }
      if (retry_on_fresh_connection()) return true;
      if (!response_begun_) {
        error(502, resp_in_.empty() ? "the origin closed without a response"
                                    : "the origin closed inside the response head");
      } else {
        finish("the origin closed inside the response body");
      }
      return true;
    case Io::kFailed:
      if (retry_on_fresh_connection()) return true;
      if (!response_begun_) {
        error(502, std::string("origin read: ") + std::strerror(errno));
      } else {
        finish("origin read failed");
      }
      return true;
  }
  return progress;
}

bool HttpProxy::retry_on_fresh_connection() {
  // The origin closed the pooled connection as we reused it: once more on a
  // fresh one, only for a request without a body (which would be gone).
  if (!reused_ || response_begun_ || !resp_in_.empty() || has_body_ || !down_out_.empty())
    return false;
  drop_upstream();
  up_out_ = request_head_;
  keep_alive_ = keep_alive_initial_;
  pool_ok_ = client_minor_ == 1 && !upgrade_;
  connect_upstream(false);
  return true;
}

void HttpProxy::end_exchange() {
  // The pool keeps plain sockets: a TLS hop's connection is not reused.
  if (pool_ok_ && request_done_ && up_out_.empty() && resp_in_.empty() && !upstream_.tls()) {
    upstream_io_.stop();
    server_.upstream_pool().put(pool_key_, upstream_.release_fd());
  }
  drop_upstream();
  if (!keep_alive_) {
    linger();
    return;
  }
  // Idle keep-alive lasts -t; the next request (maybe already in `in_`) starts now.
  phase_ = Phase::kHead;
  timer_.start(server_.config().timeout);
}

void HttpProxy::start_relay() {
  phase_ = Phase::kRelaying;
  timer_.stop();
  client_io_.stop();
  upstream_io_.stop();
  log::verbose("{}: http {} switched protocols", peer_, request_.target);
  relay_ = std::make_unique<net::Relay>(server_.loop(), std::move(client_), std::move(upstream_),
                                        server_.relay_options(),
                                        [this](const net::RelayStats& st, std::string_view reason) {
                                          server_.stats().bytes_up += st.up;
                                          server_.stats().bytes_down += st.down;
                                          finish(reason);
                                        });
  relay_->start(in_);
  in_.clear();
}

void HttpProxy::on_timer() {
  switch (phase_) {
    case Phase::kRouting:
    case Phase::kDialing:
      if (dialer_) dialer_->cancel();
      server_.deferred().dispose(std::move(dialer_));
      routing_.reset();  // as in stop()
      ++server_.stats().timed_out;
      error(504, "timed out");
      return;
    case Phase::kHead:
      // An idle keep-alive connection ends quietly; a head that never
      // completes is a bad request.
      if (!in_.empty()) ++server_.stats().bad_requests;
      finish(in_.empty() ? "" : "request head timed out");
      return;
    default:
      finish("timed out");
  }
}

void HttpProxy::error(int status, std::string_view why, proto::HttpHeaders extra) {
  log::debug("{}: http error {}: {}", peer_, status, why);
  drop_upstream();
  extra.emplace_back("Connection", "close");
  extra.emplace_back("Content-Type", "text/plain");
  down_out_ = proto::http_response(status, {}, extra, "rulesocks: " + std::string(why) + "\n");
  linger();
}

void HttpProxy::linger() {
  phase_ = Phase::kLinger;
  client_events_ = 0;
  timer_.start(kLinger);
  // run() flushes the reply, half-closes and waits for EOF; from the loop,
  // since this may be called inside a callback of the routing or the dialer.
  later_.post([this] { run(); });
}

void HttpProxy::drop_upstream() {
  upstream_io_.stop();
  upstream_.reset();
  up_out_.clear();
}

void HttpProxy::finish(std::string_view why) {
  if (!why.empty()) log::debug("{}: http closed: {}", peer_, why);
  stop();
  client_.reset();
  upstream_.reset();
  done_();
}

}  // namespace rs::server
