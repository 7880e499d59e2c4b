#include "net/hop.hpp"

#include <fmt/format.h>

#include <cerrno>

#include "proto/http.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"

namespace rs::net {

using Scheme = proto::ProxyUri::Scheme;
using proto::ParseStatus;

DialError from_errno(int err) {
  switch (err) {
    case ECONNREFUSED:
      return DialError::kRefused;
    case ENETUNREACH:
    case ENETDOWN:
      return DialError::kNetUnreachable;
    case EHOSTUNREACH:
    case EHOSTDOWN:
      return DialError::kHostUnreachable;
    case ETIMEDOUT:
      return DialError::kTimeout;
    case EACCES:
    case EPERM:
      return DialError::kNotAllowed;
    default:
      return DialError::kGeneral;
  }
}

HopHandshake::HopHandshake(const proto::ProxyUri& hop, proto::Address next, uint8_t socks5_command)
    : hop_(hop), next_(std::move(next)), command_(socks5_command) {}

namespace {
using Step = HopHandshake::Step;
Step fail(DialError e, std::string msg) {
  Step s{Step::kError};
  s.error = e;
  s.message = std::move(msg);
  return s;
}
Step need_more() {
  return Step{Step::kNeedMore};
}
Step done(size_t consumed) {
  Step s{Step::kDone};
  s.consumed = consumed;
  return s;
}
Step send(size_t consumed, std::string out) {
  Step s{Step::kSend};
  s.consumed = consumed;
  s.out = std::move(out);
  return s;
}
// "socks4a hop 127.0.0.1:1081": names the hop without its credentials.
std::string hop_name(const proto::ProxyUri& hop) {
  return fmt::format("{} hop {}", proto::scheme_name(hop.scheme), hop.address());
}
// Sends a message that asks the hop to connect to `next`.
Step send_request(const proto::ProxyUri& hop, const proto::Address& next, size_t consumed,
                  proto::Built msg) {
  if (!msg.ok())
    return fail(DialError::kGeneral,
                fmt::format("{} cannot carry {}: {}", hop_name(hop), next, msg.error));
  return send(consumed, std::move(msg.bytes));
}
}  // namespace

Step HopHandshake::start() {
  switch (hop_.scheme) {
    case Scheme::kSocks4a:
      stage_ = Stage::kSocks4Reply;
      return send_request(hop_, next_, 0, proto::socks4a_request(next_, hop_.username));
    case Scheme::kSocks5:
      stage_ = Stage::kSocks5Method;
      return send(0, proto::socks5_greeting(hop_.has_auth));
    case Scheme::kHttp:
      stage_ = Stage::kHttpReply;
      return send_request(hop_, next_, 0,
                          proto::http_connect_request(next_, hop_.username, hop_.password));
  }
  return fail(DialError::kGeneral, hop_.to_string() + ": bad scheme");
}

Step HopHandshake::feed(std::span<const uint8_t> in) {
  const std::string where = hop_.to_string();
  switch (stage_) {
    case Stage::kSocks4Reply: {
      auto r = proto::parse_socks4_reply(in);
      if (r.status == ParseStatus::kNeedMore) return need_more();
      if (r.status == ParseStatus::kError) return fail(DialError::kGeneral, where + ": " + r.error);
      if (r.value != proto::socks4::kGranted)
        return fail(DialError::kNotAllowed,
                    fmt::format("{}: request rejected (SOCKS4 reply 0x{:02X})", where, r.value));
      return done(r.consumed);
    }
    case Stage::kSocks5Method: {
      auto r = proto::parse_method_selection(in);
      if (r.status == ParseStatus::kNeedMore) return need_more();
      if (r.status == ParseStatus::kError) return fail(DialError::kGeneral, where + ": " + r.error);
      if (r.value == proto::socks5::kMethodNoAuth) {
        stage_ = Stage::kSocks5Reply;
        return send_request(hop_, next_, r.consumed, proto::socks5_request(next_, command_));
      }
      if (r.value == proto::socks5::kMethodPassword && hop_.has_auth) {
        stage_ = Stage::kSocks5Auth;
        auto auth = proto::socks5_auth_request(hop_.username, hop_.password);
        if (!auth.ok())
          return fail(DialError::kGeneral, fmt::format("{} cannot take the credentials: {}",
                                                       hop_name(hop_), auth.error));
        return send(r.consumed, std::move(auth.bytes));
      }
      return fail(DialError::kNotAllowed,
                  where + (hop_.has_auth ? ": no acceptable authentication method"
                                         : ": proxy requires authentication"));
    }
    case Stage::kSocks5Auth: {
      auto r = proto::parse_auth_reply(in);
      if (r.status == ParseStatus::kNeedMore) return need_more();
      if (r.status == ParseStatus::kError) return fail(DialError::kGeneral, where + ": " + r.error);
      if (!r.value) return fail(DialError::kNotAllowed, where + ": authentication failed");
      stage_ = Stage::kSocks5Reply;
      return send_request(hop_, next_, r.consumed, proto::socks5_request(next_, command_));
    }
    case Stage::kSocks5Reply: {
      auto r = proto::parse_socks5_reply(in);
      if (r.status == ParseStatus::kNeedMore) return need_more();
      if (r.status == ParseStatus::kError) return fail(DialError::kGeneral, where + ": " + r.error);
      if (r.value.rep != 0) {
        auto e = from_socks5_rep(r.value.rep);
        return fail(e, where + ": " + to_string(e));
      }
      bound_ = std::move(r.value.bound);
      return done(r.consumed);
    }
    case Stage::kHttpReply: {
      auto r = proto::parse_http_response(in);
      if (r.status == ParseStatus::kNeedMore) return need_more();
      if (r.status == ParseStatus::kError) return fail(DialError::kGeneral, where + ": " + r.error);
      int code = r.value.status;
      if (code / 100 == 2) return done(r.consumed);
      // 401 too: some proxies (tinyproxy) answer wrong credentials with it.
      auto e = code == 401 || code == 403 || code == 407 ? DialError::kNotAllowed
               : code == 504                             ? DialError::kTimeout
                                                         : DialError::kGeneral;
      return fail(e, where + ": HTTP " + std::to_string(code) + " " + r.value.reason);
    }
  }
  return fail(DialError::kGeneral, where + ": bad state");
}

}  // namespace rs::net
