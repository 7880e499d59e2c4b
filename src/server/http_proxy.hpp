// Plain HTTP proxying (RFC 9110 section 7.6, RFC 9112): one client
// connection whose first request is not CONNECT, handed over by its Session.
// Per request, one at a time (pipelined requests wait in the input and are
// answered in order):
//   head -> routing (ruleset, with Proxy-Authorization: Basic)
//        -> dialing (Dialer, through the decision's chain: a tunnel to the origin)
//        -> exchange (request head and body up, response heads and body down,
//           both streamed through bounded buffers, both at once so that a
//           100 Continue or an early answer gets through)
//        -> the next request (keep-alive) or close.
// An HTTP/1.1 request's upstream connection goes back to the Server's
// UpstreamPool after a complete exchange that leaves it clean, for the next
// request to the same origin through the same chain (from any client); a
// request without a body that finds its pooled connection closed by the
// origin is sent once more on a fresh one. After a 101 the two sockets become
// a net::Relay, as for CONNECT.
// Errors before a response has begun get a short text answer (400, 403, 407,
// 431, 502, 504), then the connection closes; later ones just close it.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/cancellable.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/dialer.hpp"
#include "net/relay.hpp"
#include "net/sockaddr.hpp"
#include "proto/http_body.hpp"
#include "proto/http_forward.hpp"
#include "ruleset/engine.hpp"
#include "server/frontend.hpp"

namespace rs::server {

class Server;

class HttpProxy : private ruleset::Forwarder {
 public:
  // Runs once, from a loop callback, when the connection is over. It must not
  // destroy the HttpProxy (defer that).
  using Done = std::function<void()>;

  // Takes ownership of the client socket; `in` is what was read from it so
  // far (the start of the first request). `server` outlives the HttpProxy.
  HttpProxy(Server& server, net::Conn client, const net::SockAddr& peer, std::string in, Done done);
  // Stops everything and closes both sockets; `done` does not run.
  ~HttpProxy();
  HttpProxy(const HttpProxy&) = delete;
  HttpProxy& operator=(const HttpProxy&) = delete;

  // Starts serving; no I/O happens inside, so `done` never runs from here.
  void start();
  // Stops every watcher and operation now (for an owner that must defer the
  // destruction); `done` does not run.
  void stop();

 private:
  enum class Phase { kHead, kRouting, kDialing, kExchange, kUpgrade, kRelaying, kLinger, kDone };
  enum class Io { kMoved, kBlocked, kEof, kFailed };

  void run();  // makes every step it can, then sets the watchers
  bool step_head();
  bool step_request_body();
  bool step_response();
  void start_request(proto::HttpRequestHead head, size_t consumed);
  void route();
  void on_routed(std::optional<ruleset::Decision> d, const std::string& why);
  void dial(proto::Address target, std::vector<proto::ProxyUri> chain, bool may_reach_api);
  // The exchange's upstream (and its pool key), dialled or handed over.
  void set_upstream(proto::Address target, std::vector<proto::ProxyUri> chain, bool may_reach_api);
  // Dials dial_target_ through dial_chain_, or takes a pooled connection.
  void connect_upstream(bool use_pool);
  void on_dialed(net::Conn conn, net::DialError err, const std::string& msg);
  // await.forward (ruleset::Forwarder): on success the exchange goes on over
  // the ruleset's connection as over one of its own dials.
  std::unique_ptr<Cancellable> forward_dial(const ruleset::Decision& d, DialCallback cb) override;
  void forward_commit(net::Conn conn, ruleset::Decision d) override;
  // For a bodyless request whose pooled upstream failed before answering:
  // redials and returns true.
  bool retry_on_fresh_connection();
  void end_exchange();
  void start_relay();
  void on_timer();
  // Answers `status` with a text body, then closes after the client has read it.
  void error(int status, std::string_view why, proto::HttpHeaders extra = {});
  // Half-closes, then waits (bounded) for the client to leave.
  void linger();
  void finish(std::string_view why);
  void drop_upstream();

  // Appends what one recv() brings to `into`, or discards it when null.
  Io read_some(net::Conn& conn, std::string* into);
  // Moves the first `n` body bytes of `from` (as the body reader accepted
  // them) to `to`, counting them in `counter`.
  void pass_body(std::string& from, std::string& to, size_t n, uint64_t& counter);
  Io write_some(net::Conn& conn, std::string& buf);

  Server& server_;
  net::Conn client_;  // plain, or TLS from a tls:// listener
  net::Conn upstream_;
  net::SockAddr peer_;
  Done done_;
  Phase phase_ = Phase::kHead;
  ev::Io client_io_;
  ev::Io upstream_io_;
  ev::Timer timer_;
  ev::Deferred::Scope later_;  // run() from the loop, never inside start() or a callee
  int client_events_ = 0, upstream_events_ = 0;  // what run() waits for
  bool moved_ = false;                           // run() moved body bytes

  std::string in_;        // from the client, not yet consumed
  std::string up_out_;    // to the upstream, not yet written
  std::string resp_in_;   // from the upstream, not yet consumed
  std::string down_out_;  // to the client, not yet written
  bool client_eof_ = false;
  bool half_closed_ = false;  // lingering: our side is shut

  // The request being served.
  ClientRequest request_;
  std::string method_;
  int client_minor_ = 1;             // the request's HTTP/1.x version
  bool keep_alive_ = false;          // the client connection outlives this exchange
  bool keep_alive_initial_ = false;  // what the request asked for
  bool upgrade_ = false;             // the client asked for a protocol switch
  bool response_begun_ = false;
  bool request_done_ = false;
  bool response_done_ = false;
  proto::BodyReader request_body_;
  proto::BodyReader response_body_;
  std::optional<proto::Address> routed_;
  std::string request_head_;  // as sent upstream, for a retry
  bool has_body_ = false;
  bool pool_ok_ = false;  // the upstream may be reused after this exchange
  bool reused_ = false;   // the upstream came from the pool
  std::string pool_key_;  // origin, chain and API permission
  proto::Address dial_target_;
  std::vector<proto::ProxyUri> dial_chain_;
  bool may_reach_api_ = false;

  std::unique_ptr<Cancellable> routing_;
  std::unique_ptr<net::Dialer> dialer_;
  std::unique_ptr<net::Relay> relay_;
};

}  // namespace rs::server
