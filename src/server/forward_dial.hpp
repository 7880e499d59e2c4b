// The server's side of await.forward: one dial a ruleset asked for while it
// routes a request (see ruleset::Forwarder). Shared by the Session (SOCKS,
// CONNECT, -f forwarding) and the plain HTTP proxy.
#pragma once

#include <memory>

#include "core/cancellable.hpp"
#include "net/dialer.hpp"
#include "proto/address.hpp"
#include "ruleset/engine.hpp"

namespace rs::server {

class Server;

// Dials `d` behind the node's own -x chain, bounded by -t. Owns its Dialer:
// destroying the handle cancels it (no callback after that) and the Dialer
// itself goes later, from the loop, since the handle's owner may be inside
// some other callback. `asked` is the client's target: only a target the
// ruleset rewrote may reach the API, as for a returned decision.
class ForwardDial : public Cancellable {
 public:
  // `record`: count the dial in the per-chain stats and the connect latency
  // (client traffic; a health probe is not).
  ForwardDial(Server& server, const proto::Address& asked, const ruleset::Decision& d,
              ruleset::Forwarder::DialCallback cb, bool record = true);
  ~ForwardDial() override;
  ForwardDial(const ForwardDial&) = delete;
  ForwardDial& operator=(const ForwardDial&) = delete;

 private:
  Server& server_;
  std::unique_ptr<net::Dialer> dialer_;
};

}  // namespace rs::server
