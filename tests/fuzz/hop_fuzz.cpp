// The client side of a proxy-chain hop (net/hop.hpp): what an upstream SOCKS4A,
// SOCKS5 or HTTP proxy answers, fed back the way the Dialer does it.
//
// Input: one option byte, then the proxy's bytes. Option bits 0-1: scheme
// socks4a, socks5, http, socks5; bit 2: with credentials; bits 5-6: which
// (user:password, both at the 255-byte limit, a 256-byte user, a user with
// ':' and NUL and a 256-byte password); bits 3-4 and 7: the next address
// (IPv4, IPv6, name, name; with bit 7: 0.0.0.5, IPv4-mapped IPv6, a 255-byte
// name, 0.0.0.255).
//
// A hop whose message cannot be built (credentials or a target its scheme
// cannot carry) must fail at once, kGeneral, never send an empty message; and
// exactly those the scheme's limits predict must fail.
//
// Everything the handshake sends must read back, with the server-side codec,
// as the intended request; a step's `consumed` must exceed what an earlier
// need-more step was shown (the Dialer relies on it to take the reply's bytes
// out of the socket); and the transcript must not depend on how the proxy's
// bytes were split.
#include <optional>

#include "fuzz_util.hpp"
#include "net/hop.hpp"
#include "proto/http.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"

using namespace rs;
using net::HopHandshake;
using rs::fuzz::Rng;
using Scheme = proto::ProxyUri::Scheme;

namespace {

struct Event {
  int status;
  size_t consumed;
  std::string out;
  net::DialError error;
  std::string message;
  bool operator==(const Event&) const = default;
};

struct Transcript {
  std::vector<Event> events;
  std::string left;
  bool operator==(const Transcript&) const = default;
};

void check_start(const proto::ProxyUri& hop, const proto::Address& next, const std::string& out) {
  auto bytes = proto::to_bytes(out);
  switch (hop.scheme) {
    case Scheme::kSocks4a: {
      auto r = proto::parse_socks4_request(bytes);
      FUZZ_CHECK(r.done() && r.consumed == out.size());
      FUZZ_CHECK(r.value.command == proto::socks4::kConnect);
      FUZZ_CHECK(r.value.target == next && r.value.userid == hop.username);
      break;
    }
    case Scheme::kSocks5: {
      auto r = proto::parse_socks5_greeting(bytes);
      FUZZ_CHECK(r.done() && r.consumed == out.size());
      FUZZ_CHECK(r.value.offers(proto::socks5::kMethodNoAuth));
      FUZZ_CHECK(r.value.offers(proto::socks5::kMethodPassword) == hop.has_auth);
      break;
    }
    case Scheme::kHttp: {
      auto r = proto::parse_http_request(bytes);
      FUZZ_CHECK(r.done() && r.consumed == out.size());
      FUZZ_CHECK(r.value.method == "CONNECT" && r.value.target == next.to_string());
      FUZZ_CHECK(proto::parse_address(r.value.target) == next);
      auto auth = r.value.header("Proxy-Authorization");
      FUZZ_CHECK(auth.has_value() == hop.has_auth);
      if (auth) {
        auto creds = proto::parse_basic_auth(*auth);
        FUZZ_CHECK(creds && creds->first == hop.username && creds->second == hop.password);
      }
      break;
    }
  }
}

// A kSend step's bytes: the RFC 1929 request or the SOCKS5 request.
void check_send(const proto::ProxyUri& hop, const proto::Address& next, const std::string& out) {
  FUZZ_CHECK(hop.scheme == Scheme::kSocks5);
  auto bytes = proto::to_bytes(out);
  if (out[0] == proto::socks5::kAuthVersion) {
    FUZZ_CHECK(hop.has_auth);
    auto r = proto::parse_socks5_auth(bytes);
    FUZZ_CHECK(r.done() && r.consumed == out.size());
    FUZZ_CHECK(r.value.username == hop.username && r.value.password == hop.password);
    return;
  }
  auto r = proto::parse_socks5_request(bytes);
  FUZZ_CHECK(r.done() && r.consumed == out.size());
  FUZZ_CHECK(r.value.command == proto::socks5::kConnect && r.value.target == next);
}

// The first message of the handshake fails, or the credentials once the
// proxy asks for them.
struct Unsendable {
  bool start = false;
  bool auth = false;
};

Transcript converse(const proto::ProxyUri& hop, const proto::Address& next, fuzz::Bytes server,
                    const std::vector<size_t>& chunks, Unsendable unsendable) {
  Transcript t;
  HopHandshake hs(hop, next);
  auto first = hs.start();
  FUZZ_CHECK(first.consumed == 0);
  if (first.status == HopHandshake::Step::kError) {
    FUZZ_CHECK(unsendable.start);
    FUZZ_CHECK(first.error == net::DialError::kGeneral && first.out.empty());
    FUZZ_CHECK(first.message.find(" cannot carry ") != std::string::npos);
    t.events.push_back({first.status, 0, {}, first.error, first.message});
    return t;
  }
  FUZZ_CHECK(!unsendable.start);
  FUZZ_CHECK(first.status == HopHandshake::Step::kSend && !first.out.empty());
  check_start(hop, next, first.out);
  std::string in;
  size_t held = 0;  // bytes shown to a need-more step, kept by the Dialer
  size_t pos = 0;
  for (size_t n : chunks) {
    in.append(reinterpret_cast<const char*>(server.data() + pos), n);
    pos += n;
    for (;;) {
      auto s = hs.feed(proto::to_bytes(in));
      FUZZ_CHECK(s.consumed <= in.size());
      if (s.status == HopHandshake::Step::kNeedMore) {
        FUZZ_CHECK(s.consumed == 0 && s.out.empty());
        held = in.size();
        break;
      }
      t.events.push_back({s.status, s.consumed, s.out, s.error, s.message});
      if (s.status == HopHandshake::Step::kError) {
        FUZZ_CHECK(s.error != net::DialError::kOk && !s.message.empty() && s.out.empty());
        const bool cannot_send =
            s.message.find(" cannot take the credentials: ") != std::string::npos;
        FUZZ_CHECK(!cannot_send || (unsendable.auth && s.error == net::DialError::kGeneral));
        t.left = in + std::string(reinterpret_cast<const char*>(server.data() + pos),
                                  server.size() - pos);
        return t;
      }
      FUZZ_CHECK(s.consumed > held);
      FUZZ_CHECK(s.error == net::DialError::kOk);
      in.erase(0, s.consumed);
      held = 0;
      if (s.status == HopHandshake::Step::kDone) {
        FUZZ_CHECK(s.out.empty());
        t.left = in + std::string(reinterpret_cast<const char*>(server.data() + pos),
                                  server.size() - pos);
        return t;
      }
      FUZZ_CHECK(!s.out.empty());
      // The credentials go only when they can.
      FUZZ_CHECK(!(unsendable.auth && s.out[0] == proto::socks5::kAuthVersion));
      check_send(hop, next, s.out);
      if (in.empty()) break;
    }
  }
  t.left = in;
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(fuzz::Bytes(data, size));
  const uint8_t flags = r.byte();
  const fuzz::Bytes server = r.rest();

  proto::ProxyUri hop;
  static constexpr Scheme kSchemes[] = {Scheme::kSocks4a, Scheme::kSocks5, Scheme::kHttp,
                                        Scheme::kSocks5};
  hop.scheme = kSchemes[flags & 3];
  hop.host = "192.0.2.1";
  hop.port = 1080;
  if (flags & 4) {
    hop.has_auth = true;
    switch (flags >> 5 & 3) {
      case 0:
        hop.username = "user";
        hop.password = "p@ss:word";
        break;
      case 1:  // both at RFC 1929's limit
        hop.username = std::string(255, 'u');
        hop.password = std::string(255, 'p');
        break;
      case 2:  // one byte over it
        hop.username = std::string(256, 'u');
        hop.password = "p";
        break;
      default:
        hop.username = std::string("a:b\0c", 5);
        hop.password = std::string(256, 'p');
        break;
    }
    // parse_proxy_uri never gives socks4a a password.
    if (hop.scheme == Scheme::kSocks4a) hop.password.clear();
  }
  proto::Address next;
  switch ((flags >> 3 & 3) | (flags >> 5 & 4)) {
    case 0:
      next = proto::Address{proto::Ipv4{10, 0, 0, 1}, 80};
      break;
    case 1:
      next = *proto::parse_address("[2001:db8::1]:443");
      break;
    case 4:  // the SOCKS4A marker's range
      next = proto::Address{proto::Ipv4{0, 0, 0, 5}, 8000};
      break;
    case 5:
      next = *proto::parse_address("[::ffff:1.2.3.4]:80");
      break;
    case 6:
      next = proto::Address{std::string(255, 'n'), 1};
      break;
    case 7:
      next = proto::Address{proto::Ipv4{0, 0, 0, 255}, 65535};
      break;
    default:
      next = proto::Address{std::string("example.org"), 8080};
      break;
  }

  // What each scheme's wire format cannot carry, worked out from its limits.
  Unsendable unsendable;
  const auto& user = hop.username;
  switch (hop.scheme) {
    case Scheme::kSocks4a:
      unsendable.start = user.size() > 255 || user.find('\0') != std::string::npos;
      break;
    case Scheme::kSocks5:
      unsendable.auth =
          hop.has_auth && (user.empty() || user.size() > 255 || hop.password.size() > 255);
      break;
    case Scheme::kHttp:
      unsendable.start = user.find(':') != std::string::npos;
      break;
  }

  Rng rng = Rng::of(server);
  const Transcript whole =
      converse(hop, next, server, fuzz::split_sizes(server.size(), 0, rng), unsendable);
  const int first_mode = server.size() <= 1024 ? 1 : 2;
  for (int mode = first_mode; mode <= 2; ++mode) {
    Transcript split =
        converse(hop, next, server, fuzz::split_sizes(server.size(), mode, rng), unsendable);
    FUZZ_CHECK(split == whole);
  }
  return 0;
}
