// Client side of one proxy-chain hop, as a pure state machine (no sockets):
// the dialer sends what it says and feeds back what the hop answers.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "net/dial_error.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"

namespace rs::net {

class HopHandshake {
 public:
  // Asks the proxy `hop` to connect to `next` (the following hop or the target).
  // A SOCKS5 hop may be given another command (BIND, UDP ASSOCIATE) instead.
  HopHandshake(const proto::ProxyUri& hop, proto::Address next, uint8_t socks5_command = 1);

  struct Step {
    enum Status { kNeedMore, kSend, kDone, kError } status = kNeedMore;
    size_t consumed = 0;   // bytes of the input that belong to the handshake
    std::string out = {};  // kSend: bytes to write before reading again
    DialError error = DialError::kOk;
    std::string message = {};  // kError: what went wrong, for the log
  };

  // The first bytes to send (every supported scheme speaks first): kSend, or
  // kError (DialError::kGeneral) when `next` or the hop's credentials cannot
  // be put into this scheme's request. feed() fails the same way when a later
  // message cannot be built, so a hop that cannot be spoken to fails at once
  // rather than waiting for a reply to nothing.
  Step start();
  // Feeds everything received since the last consumed byte.
  Step feed(std::span<const uint8_t> in);
  // After kDone from a SOCKS5 hop: BND.ADDR/BND.PORT of its reply (for BIND
  // and UDP ASSOCIATE, where the hop listens or relays).
  const proto::Address& bound() const { return bound_; }

 private:
  enum class Stage { kSocks4Reply, kSocks5Method, kSocks5Auth, kSocks5Reply, kHttpReply };
  proto::ProxyUri hop_;
  proto::Address next_;
  uint8_t command_;
  proto::Address bound_;
  Stage stage_{};
};

}  // namespace rs::net
