// One client connection, from accept to close:
//   [TLS handshake] -> handshake (Frontend) -> routing (ruleset) -> dialing (Dialer)
//   -> relaying (Relay)
// or, when the first HTTP request is not CONNECT, handshake -> proxying: the
// Session hands the socket to an HttpProxy (server/http_proxy.hpp), which it
// owns until the connection ends.
// States only move forward; close() knows what each state holds.
#pragma once

#include <list>
#include <memory>
#include <optional>
#include <string>

#include "core/cancellable.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/dialer.hpp"
#include "net/relay.hpp"
#include "net/sockaddr.hpp"
#include "ruleset/engine.hpp"
#include "server/frontend.hpp"
#include "server/http_proxy.hpp"
#include "server/socks5_bind.hpp"
#include "server/udp_associate.hpp"

namespace rs::server {

class Server;
struct TargetLog;
enum class ListenerKind;

class Session : private ruleset::Forwarder {
 public:
  // Takes ownership of the accepted socket `fd`. With `tls` (a tls://
  // listener's context) the client speaks TLS; its handshake runs under the
  // same timeout (-t) as the proxy handshake and counts as half-open.
  Session(Server& server, UniqueFd fd, const net::SockAddr& peer, ListenerKind kind, SSL_CTX* tls);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start(std::list<std::unique_ptr<Session>>::iterator self);
  // Ends the session now (server shutdown). Idempotent.
  void close();

 private:
  enum class State {
    kTls,
    kHandshake,
    kRouting,
    kDialing,
    kRelaying,
    kLingering,
    kProxying,
    kClosed
  };

  // What start() does once the PROXY header (if the listener wants one) is in.
  void begin();
  // Reads the PROXY header from in_: true once taken (peer_ is then the
  // client it names); false while it needs more or after closing on a bad one.
  bool take_proxy_header();
  void on_readable();
  void on_tls();
  void on_timeout();
  void handle(Step step);
  void proxy_http();
  void associate_udp();
  void bind(proto::Address peer, std::vector<proto::ProxyUri> chain);
  void route();
  void on_routed(std::optional<ruleset::Decision> d, const std::string& why);
  void dial(proto::Address target, std::vector<proto::ProxyUri> chain, bool may_reach_api);
  void on_dialed(net::Conn upstream, net::DialError err, const std::string& msg);
  // await.forward (ruleset::Forwarder): dials while routing; on success the
  // session relays as if the dial had been its own.
  std::unique_ptr<Cancellable> forward_dial(const ruleset::Decision& d, DialCallback cb) override;
  void forward_commit(net::Conn conn, ruleset::Decision d) override;
  void relay(net::Conn upstream);
  void reject(net::DialError err, const std::string& why);
  // Sends `reply`, then closes the session after the client has read it.
  void fail(std::string reply, const std::string& why);
  bool send_all(std::string_view bytes);
  // --send-proxy-protocol: the header naming the client, first on `upstream`.
  bool send_proxy_header(net::Conn& upstream);
  void leave_halfopen();
  void teardown();
  TargetLog target() const;      // for log lines
  const char* protocol() const;  // "socks5", "http", "forward", "tproxy": for log lines

  Server& server_;
  net::Conn client_;
  net::SockAddr peer_;
  ListenerKind kind_;
  bool want_proxy_header_;  // --accept-proxy-protocol, until the header is read
  // The destination a received PROXY header named (for --send-proxy-protocol).
  std::optional<proto::Address> proxied_destination_;
  State state_ = State::kHandshake;
  bool halfopen_ = true;
  ev::Io io_;
  ev::Timer timer_;
  std::string in_;  // received, not yet consumed
  std::unique_ptr<Frontend> frontend_;
  ClientRequest request_;
  std::optional<proto::Address> routed_;  // where the ruleset sent it, when rewritten
  std::unique_ptr<Cancellable> routing_;
  std::unique_ptr<net::Dialer> dialer_;
  std::string dial_label_;  // the dial's chain, for metrics
  double dial_started_ = 0;
  std::unique_ptr<net::Relay> relay_;
  std::unique_ptr<HttpProxy> proxy_;      // kProxying: owns the client socket
  std::unique_ptr<UdpAssociation> udp_;   // kProxying: owns the control connection
  std::unique_ptr<BindListener> binder_;  // kDialing for a direct BIND
  // Sent instead of the frontend's success reply (BIND's second reply, or the
  // first reply of a BIND forwarded to a hop).
  std::string success_reply_;
  std::list<std::unique_ptr<Session>>::iterator self_;
};

}  // namespace rs::server
