#include "server/frontend.hpp"

#include <cctype>

#include "proto/http.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"

namespace rs::server {
namespace {

using proto::ParseStatus;

template <size_t N>
std::string bytes(const std::array<uint8_t, N>& a) {
  return {reinterpret_cast<const char*>(a.data()), N};
}

Step fail(std::string out, std::string error) {
  Step s;
  s.status = Step::kFail;
  s.out = std::move(out);
  s.error = std::move(error);
  return s;
}

Step send_reply(size_t consumed, std::string out) {
  Step s;
  s.status = Step::kReply;
  s.consumed = consumed;
  s.out = std::move(out);
  return s;
}

Step request(size_t consumed, ClientRequest req) {
  Step s;
  s.status = Step::kRequest;
  s.consumed = consumed;
  s.request = std::move(req);
  return s;
}

// SOCKS4 and SOCKS4A (CONNECT only). The user id travels as the username.
class Socks4Frontend final : public Frontend {
 public:
  explicit Socks4Frontend(const FrontendOptions& opts) : opts_(opts) {}
  const char* name() const override { return is_4a_ ? "socks4a" : "socks4"; }

  Step feed(std::span<const uint8_t> in) override {
    auto r = proto::parse_socks4_request(in);
    if (r.need_more()) return {};
    const std::string rejected = bytes(proto::socks4_reply(proto::socks4::kRejected));
    // The parsers' messages already name the protocol ("socks4a: ...").
    if (r.failed()) return fail(rejected, r.error);
    is_4a_ = r.value.is_4a;
    if (r.value.command != proto::socks4::kConnect)
      return fail(rejected, "socks4: command not supported");
    if (opts_.auth_required && r.value.userid.empty())
      return fail(rejected, "socks4: authentication required");
    ClientRequest req{std::move(r.value.target), std::nullopt, std::nullopt};
    if (!r.value.userid.empty()) req.username = std::move(r.value.userid);
    return request(r.consumed, std::move(req));
  }

  std::string reply(net::DialError err) override {
    return bytes(proto::socks4_reply(err == net::DialError::kOk ? proto::socks4::kGranted
                                                                : proto::socks4::kRejected));
  }

 private:
  FrontendOptions opts_;
  bool is_4a_ = false;
};

// SOCKS5 (RFC 1928) with username/password authentication (RFC 1929).
class Socks5Frontend final : public Frontend {
 public:
  explicit Socks5Frontend(const FrontendOptions& opts) : opts_(opts) {}
  const char* name() const override { return "socks5"; }

  Step feed(std::span<const uint8_t> in) override {
    switch (stage_) {
      case Stage::kGreeting:
        return greeting(in);
      case Stage::kAuth:
        return auth(in);
      case Stage::kRequest:
        return request_(in);
    }
    return fail({}, "socks5: bad state");
  }

  std::string reply(net::DialError err) override {
    return proto::socks5_reply(net::socks5_rep(err), proto::Address{proto::Ipv4{}, 0});
  }

 private:
  enum class Stage { kGreeting, kAuth, kRequest };

  Step greeting(std::span<const uint8_t> in) {
    auto r = proto::parse_socks5_greeting(in);
    if (r.need_more()) return {};
    if (r.failed()) return fail({}, r.error);
    using namespace proto::socks5;
    // Credentials are asked for when something will look at them, and taken
    // from a client that offers nothing else.
    const bool password = r.value.offers(kMethodPassword);
    const bool noauth = r.value.offers(kMethodNoAuth) && !opts_.auth_required;
    uint8_t method = kMethodNoAcceptable;
    if (password && (opts_.auth_required || opts_.want_credentials || !noauth))
      method = kMethodPassword;
    else if (noauth)
      method = kMethodNoAuth;
    if (method == kMethodNoAcceptable)
      return fail(bytes(proto::method_reply(method)), "socks5: no acceptable method");
    stage_ = method == kMethodPassword ? Stage::kAuth : Stage::kRequest;
    return send_reply(r.consumed, bytes(proto::method_reply(method)));
  }

  Step auth(std::span<const uint8_t> in) {
    auto r = proto::parse_socks5_auth(in);
    if (r.need_more()) return {};
    if (r.failed()) return fail(bytes(proto::auth_reply(false)), r.error);
    // Until a ruleset decides, any non-empty username is accepted.
    if (r.value.username.empty())
      return fail(bytes(proto::auth_reply(false)), "socks5: empty username");
    username_ = std::move(r.value.username);
    password_ = std::move(r.value.password);
    stage_ = Stage::kRequest;
    return send_reply(r.consumed, bytes(proto::auth_reply(true)));
  }

  Step request_(std::span<const uint8_t> in) {
    auto r = proto::parse_socks5_request(in);
    if (r.need_more()) return {};
    const proto::Address none{proto::Ipv4{}, 0};
    if (r.failed()) {
      uint8_t rep = r.code ? static_cast<uint8_t>(r.code) : proto::socks5::kGeneralFailure;
      return fail(proto::socks5_reply(rep, none), r.error);
    }
    const bool udp = r.value.command == proto::socks5::kUdpAssociate && opts_.udp_associate;
    const bool bind = r.value.command == proto::socks5::kBind && opts_.bind;
    if (r.value.command != proto::socks5::kConnect && !udp && !bind)
      return fail(proto::socks5_reply(proto::socks5::kCommandNotSupported, none),
                  "socks5: command not supported");
    return request(r.consumed, {std::move(r.value.target), username_, password_, udp, bind});
  }

  FrontendOptions opts_;
  Stage stage_ = Stage::kGreeting;
  std::optional<std::string> username_, password_;
};

// HTTP/1.1 CONNECT (RFC 9110 section 9.3.6), Proxy-Authorization: Basic.
// Any other method is plain proxying: handed over as kForward, unconsumed.
class HttpFrontend final : public Frontend {
 public:
  explicit HttpFrontend(const FrontendOptions& opts) : opts_(opts) {}
  const char* name() const override { return "http"; }

  Step feed(std::span<const uint8_t> in) override {
    // A method is a token of letters: anything else (a SOCKS client on an
    // HTTP-only port, say) is refused now rather than after the timeout.
    if (!in.empty() && !std::isalpha(in[0]))
      return fail(error_response(400, "not an HTTP request"), "http: not an HTTP request");
    auto r = proto::parse_http_request(in);
    if (r.need_more()) return {};
    if (r.failed()) {
      int status = r.code ? r.code : 400;
      return fail(error_response(status, r.error), r.error);
    }
    const auto& head = r.value;
    if (head.method != "CONNECT") {
      // Plain proxying reads the head again itself (server/http_proxy.hpp).
      Step s;
      s.status = Step::kForward;
      return s;
    }
    auto target = proto::parse_address(head.target);
    if (!target)
      return fail(error_response(400, "bad CONNECT target \"" + head.target + "\""),
                  "http: bad CONNECT target");
    ClientRequest req{std::move(*target), std::nullopt, std::nullopt};
    if (auto value = head.header("Proxy-Authorization")) {
      auto creds = proto::parse_basic_auth(*value);
      if (!creds)
        return fail(error_response(400, "bad Proxy-Authorization"), "http: bad credentials");
      req.username = std::move(creds->first);
      req.password = std::move(creds->second);
    }
    if (opts_.auth_required && (!req.username || req.username->empty())) {
      return fail(proto::http_response(407, {},
                                       {{"Proxy-Authenticate", "Basic realm=\"rulesocks\""},
                                        {"Connection", "close"},
                                        {"Content-Type", "text/plain"}},
                                       "rulesocks: proxy authentication required\n"),
                  "http: authentication required");
    }
    return request(r.consumed, std::move(req));
  }

  std::string reply(net::DialError err) override {
    if (err == net::DialError::kOk) return proto::http_connect_established();
    return error_response(net::http_status(err), net::to_string(err));
  }

 private:
  static std::string error_response(int status, std::string_view why) {
    return proto::http_response(status, {},
                                {{"Connection", "close"}, {"Content-Type", "text/plain"}},
                                "rulesocks: " + std::string(why) + "\n");
  }
  FrontendOptions opts_;
};

}  // namespace

std::unique_ptr<Frontend> make_socks4_frontend(const FrontendOptions& o) {
  return std::make_unique<Socks4Frontend>(o);
}
std::unique_ptr<Frontend> make_socks5_frontend(const FrontendOptions& o) {
  return std::make_unique<Socks5Frontend>(o);
}
std::unique_ptr<Frontend> make_http_frontend(const FrontendOptions& o) {
  return std::make_unique<HttpFrontend>(o);
}

std::unique_ptr<Frontend> sniff_frontend(uint8_t first, const FrontendOptions& o) {
  if (first == proto::socks4::kVersion) return make_socks4_frontend(o);
  if (first == proto::socks5::kVersion) return make_socks5_frontend(o);
  if (std::isupper(first)) return make_http_frontend(o);
  return nullptr;
}

}  // namespace rs::server
