// Inbound protocol state machines. A Frontend turns the bytes a client sends
// into a proxy request and produces the replies; it never touches a socket,
// so each protocol's whole conversation is testable on byte buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "net/dial_error.hpp"
#include "proto/address.hpp"

namespace rs::server {

struct ClientRequest {
  proto::Address target;
  std::optional<std::string> username, password;
  // SOCKS5 UDP ASSOCIATE (with --enable-socks5-udp): `target` is where the
  // client says it will send from (0.0.0.0:0 when it does not know).
  bool udp_associate = false;
  // SOCKS5 BIND (with --enable-socks5-bind): `target` is the peer expected
  // to connect.
  bool bind = false;
};

struct Step {
  enum Status {
    kNeedMore,  // feed again when more bytes arrive
    kReply,     // send `out`, keep reading
    kRequest,   // handshake done: `request` is ready (out is empty)
    kFail,      // send `out` (may be empty), then close; `error` says why
    kForward,   // a plain HTTP request (not CONNECT): hand the connection,
                // with its unconsumed bytes (consumed is 0), to HttpProxy
  } status = kNeedMore;
  size_t consumed = 0;  // input bytes used by this step
  std::string out;
  ClientRequest request;
  // Names the protocol once, as the proto parsers' messages do ("socks5: empty username").
  std::string error;
};

struct FrontendOptions {
  bool auth_required = false;     // refuse clients that offer no credentials
  bool want_credentials = false;  // ask for credentials when the client offers them
  bool udp_associate = false;     // accept SOCKS5 UDP ASSOCIATE (--enable-socks5-udp)
  bool bind = false;              // accept SOCKS5 BIND (--enable-socks5-bind)
};

class Frontend {
 public:
  virtual ~Frontend() = default;
  virtual const char* name() const = 0;
  // `in` holds every byte received and not yet consumed.
  virtual Step feed(std::span<const uint8_t> in) = 0;
  // The reply that ends the handshake: success (err == kOk) or failure.
  virtual std::string reply(net::DialError err) = 0;
};

std::unique_ptr<Frontend> make_socks4_frontend(const FrontendOptions& opts);
std::unique_ptr<Frontend> make_socks5_frontend(const FrontendOptions& opts);
std::unique_ptr<Frontend> make_http_frontend(const FrontendOptions& opts);

// Picks the protocol from the first byte: 4 SOCKS4/4A, 5 SOCKS5, an ASCII
// letter HTTP. Returns nullptr for anything else.
std::unique_ptr<Frontend> sniff_frontend(uint8_t first, const FrontendOptions& opts);

}  // namespace rs::server
