// One SOCKS5 UDP association (RFC 1928 section 7, --enable-socks5-udp), from
// the UDP ASSOCIATE reply to its end.
//
// The relay socket is bound to the local address the client reached on its
// control connection (never the wildcard) and only takes datagrams from the
// client's IP (and from its declared port, or else the first port it sends
// from). Each new destination is decided once, like a TCP request, by the
// ruleset (ruleset.resolve/route/route6 with a fourth argument "udp") or the
// -x chain; names are resolved with the server's c-ares Resolver and the
// answer is kept for the association's life. Datagrams go out from one
// unconnected socket per address family; replies are only taken from
// destinations the client sent to. A destination the ruleset sends through
// one socks5:// hop goes through an association of our own with that hop (one
// per hop, opened on first use, ended with ours); any other chain cannot carry
// UDP and is refused. Nothing is queued except datagrams whose
// destination is still being decided (--udp-max-pending bytes): a datagram
// that cannot be sent at once is dropped and counted, as UDP may.
//
// The association ends when its control connection closes or after
// --udp-timeout seconds without a datagram either way.
//
// Ownership: the association owns the control connection, the relay and the
// outbound sockets, their watchers, and every routing and resolving handle;
// the Server (and its resolver, engine and Deferred) outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/cancellable.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/dialer.hpp"
#include "net/resolver.hpp"
#include "net/sockaddr.hpp"
#include "proto/address.hpp"
#include "proto/parse.hpp"
#include "proto/proxy_uri.hpp"
#include "ruleset/engine.hpp"
#include "server/frontend.hpp"
#include "server/udp_admission.hpp"

namespace rs::server {

class Server;

class UdpAssociation {
 public:
  // Admits the association and opens its relay socket for the client `peer`
  // of the control connection `control_fd` (not taken). On failure returns
  // nullptr with the SOCKS5 REP to answer in `*rep` and why in `*why`.
  static std::unique_ptr<UdpAssociation> create(Server& server, int control_fd,
                                                const net::SockAddr& peer,
                                                const ClientRequest& request, uint8_t* rep,
                                                std::string* why);
  ~UdpAssociation();
  UdpAssociation(const UdpAssociation&) = delete;
  UdpAssociation& operator=(const UdpAssociation&) = delete;

  // Takes the control connection and sends the success reply (the relay's
  // address). `on_end` runs once, from one of the association's callbacks,
  // when it ends: the owner must defer destroying it. False when the reply
  // could not be sent (the owner closes).
  bool start(net::Conn control, std::function<void()> on_end);
  // Stops every watcher and cancels what is in flight (idempotent).
  void stop();

 private:
  struct Dest;
  struct Upstream;
  UdpAssociation(Server& server, const net::SockAddr& peer, const ClientRequest& request,
                 UdpAdmission::Ticket ticket);

  void on_control();
  void on_timer();
  void on_client_readable();
  void on_upstream_readable(int family);
  void end(const std::string& why);
  void touch();

  void from_client(proto::Bytes datagram);
  void route(Dest& d);
  void on_routed(Dest& d, std::optional<ruleset::Decision> decision, const std::string& why);
  void decide(Dest& d, proto::Address target, const std::vector<proto::ProxyUri>& chain);
  void ready(Dest& d, const net::SockAddr& addr);
  void reject(Dest& d, const std::string& why);
  void send_up(Dest& d, proto::Bytes payload);
  void via_upstream(Dest& d, proto::Address target, const proto::ProxyUri& hop);
  void on_upstream_dialed(Upstream& up, net::Conn conn, const std::string& error);
  void upstream_failed(Upstream& up, const std::string& why);
  void on_upstream_udp(Upstream& up);
  void to_client(uint8_t* payload, size_t n, const proto::Address& from);
  // The outbound socket of `family`, opened on first use; -1 on failure.
  int upstream_fd(int family);

  Server& server_;
  net::SockAddr peer_;    // the control connection's client
  net::SockAddr client_;  // where replies go: peer_'s IP and the client's UDP port
  bool client_port_known_ = false;
  std::optional<std::string> username_, password_;
  UdpAdmission::Ticket ticket_;
  net::Conn control_;  // the client's TCP connection, plain or TLS
  UniqueFd relay_, out4_, out6_;
  ev::Io control_io_, relay_io_, out4_io_, out6_io_;
  ev::Timer timer_;
  double last_active_ = 0;
  bool ended_ = false;
  std::function<void()> on_end_;
  // Looked up by a string_view without building a std::string per datagram.
  struct KeyHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Destinations by the header bytes that name them (ATYP DST.ADDR DST.PORT),
  // as the client wrote them.
  std::unordered_map<std::string, std::unique_ptr<Dest>, KeyHash, std::equal_to<>> dests_;
  // What a reply from an endpoint (net::endpoint_key) is reported as: the
  // destination the client wrote, so that a rewrite or a name stays hidden.
  std::unordered_map<std::string, proto::Address> replies_;
  // Our own associations with socks5:// hops, by hop URI.
  std::unordered_map<std::string, std::unique_ptr<Upstream>> upstreams_;
  size_t pending_bytes_ = 0;
};

}  // namespace rs::server
