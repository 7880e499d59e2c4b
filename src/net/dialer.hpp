// Outbound connections: resolve, connect (trying each resolved address in
// turn) and then one handshake per proxy hop, each asking its hop to connect
// to the next one and the last to the target.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/dial_error.hpp"
#include "net/hop.hpp"
#include "net/resolver.hpp"
#include "net/self_connections.hpp"
#include "net/sockaddr.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"

namespace rs::net {

struct DialOptions {
  double timeout = 60.0;  // for the whole dial: resolve, connect, every hop
  std::string netdev;     // SO_BINDTODEVICE when not empty
  int sndbuf = 0, rcvbuf = 0;
  bool nodelay = true, keepalive = true;
  // class_bit()s of the address classes never connected to (--block-outbound):
  // checked for every connection the Dialer makes, to a target or a first hop.
  unsigned blocked_classes = 0;
  // When set (it must outlive every Dialer using these options), each
  // connection to a watched address (the API) is recorded there once
  // connected, before any hop's handshake or the callback.
  SelfConnections* self = nullptr;
  // The client context for TLS hops (https://, socks5s://); null: such hops
  // fail. Must outlive every Dialer and every connection it made.
  TlsClient* tls = nullptr;
  // Speak TLS to the target itself once past the chain (RPC to an https://
  // API), verified against the target's name.
  bool tls_target = false;
};

// Applies DialOptions' socket options to a connected or accepted socket.
void tune_socket(int fd, const DialOptions& opts);

class Dialer {
 public:
  // On success conn is a connected, non-blocking socket past every hop's
  // handshake, TLS when a hop is (https://, socks5s://) or with
  // tls_target. TLS goes over whatever tunnel the hops before it made, but
  // only once: a second TLS layer (TLS inside TLS) is refused (kGeneral). Called once, from the
  // loop, never from inside start(). The owner must not destroy the Dialer inside the callback
  // (defer it).
  using Callback = std::function<void(Conn conn, DialError err, const std::string& msg)>;

  // `loop`, `resolver` and `opts` must outlive the Dialer (and so does the
  // loop's Deferred, which the loop owns).
  Dialer(ev::Loop* loop, Resolver* resolver, const DialOptions& opts);
  ~Dialer();  // cancels whatever is in progress; the callback is not called
  Dialer(const Dialer&) = delete;
  Dialer& operator=(const Dialer&) = delete;

  // `chain` is in dial order: chain[0] is the first hop. A direct connection
  // (empty chain) to an address in `deny` fails with kNotAllowed.
  void start(proto::Address target, std::vector<proto::ProxyUri> chain,
             const std::vector<SockAddr>* deny, Callback cb);
  // Before start(): the SOCKS5 command the last hop is sent instead of
  // CONNECT (BIND, UDP ASSOCIATE), its DST being the target; a last hop that
  // is not SOCKS5 then fails the dial.
  void set_last_command(uint8_t socks5_command) { last_command_ = socks5_command; }
  // In the callback, after success: the last hop's BND.ADDR/BND.PORT (SOCKS5).
  const proto::Address& last_bound() const { return last_bound_; }
  // Stops everything now; the callback is not called. For owners that must
  // defer the destruction but not the cancellation.
  void cancel();

 private:
  void connect_next();
  void on_connect();
  void begin_hop();
  void start_hop();
  // TLS with `host` over the connection as it is; `name` for messages.
  void start_tls(const std::string& host, uint16_t port, const std::string& name);
  void on_tls();
  void on_io(int revents);
  void finish(DialError err, std::string msg);

  ev::Loop* loop_;
  Resolver* resolver_;
  const DialOptions& opts_;
  proto::Address target_;
  std::vector<proto::ProxyUri> chain_;
  Callback cb_;
  const std::vector<SockAddr>* deny_ = nullptr;

  std::unique_ptr<Resolver::Query> query_;
  std::vector<SockAddr> addrs_;  // candidates for the first connection
  size_t next_addr_ = 0;
  DialError last_error_ = DialError::kHostUnreachable;
  std::string last_message_;
  Conn conn_;
  ev::Io io_;
  ev::Timer timer_;
  bool in_start_ = false;  // finish() must defer to later_

  uint8_t last_command_ = 1;  // SOCKS5 CONNECT
  proto::Address last_bound_;
  size_t hop_ = 0;           // index of the hop whose handshake is running
  bool target_tls_ = false;  // opts_.tls_target: the handshake with the target began
  std::string tls_peer_;     // whom the running TLS handshake is with
  std::unique_ptr<HopHandshake> hs_;
  std::string out_;          // handshake bytes not yet written
  std::vector<uint8_t> in_;  // reply bytes taken while incomplete
  enum class Stage {
    kIdle,
    kResolving,
    kConnecting,
    kTls,
    kHandshake,
    kDone
  } stage_ = Stage::kIdle;
  // Delivers a failure found inside start() from the loop (Deferred::of(loop),
  // which runs even while other I/O is pending); cancelled with the Dialer.
  ev::Deferred::Scope later_;
};

}  // namespace rs::net
