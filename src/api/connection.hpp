// One client connection of the API server: HTTP/1.1 framing, keep-alive and
// pipelining, body decoding, timeouts, and writing responses. What a request
// means is the Endpoints' business.
//
// Requests are served strictly one at a time: bytes of the next request stay
// buffered until the response to the current one has been written in full
// (and, for /ruleset/rpcall, until its routine has finished).
//
// Lifecycle: created by the ApiServer on accept -> start() -> serves requests
// -> close() hands it back through `closed`, which must destroy it later, from
// the loop (never inside its own callbacks).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "api/access.hpp"
#include "api/chunked.hpp"
#include "api/endpoints.hpp"
#include "core/cancellable.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/sockaddr.hpp"
#include "proto/http.hpp"

namespace rs::api {

struct ConnectionLimits {
  double timeout = 30.0;       // idle, request (head + body) and stalled-write timeout
  size_t max_body = kMaxBody;  // before and after Content-Encoding
  size_t compress_min = 1024;  // smallest response body worth deflating
};

class ApiConnection {
 public:
  using Closed = std::function<void(ApiConnection*)>;
  // Takes ownership of `conn` (connected, non-blocking; TLS established
  // when the API listens on tls://). `limits`, `endpoints`,
  // `access` (checked with each request head) and `deferred` must outlive the
  // connection; `deferred` destroys finished
  // rpcall handles outside their own callbacks and resumes long pipelines.
  ApiConnection(ev::Loop* loop, net::Conn conn, net::SockAddr peer, const ConnectionLimits& limits,
                Endpoints& endpoints, Access& access, ev::Deferred& deferred, Closed closed);
  ~ApiConnection();
  ApiConnection(const ApiConnection&) = delete;
  ApiConnection& operator=(const ApiConnection&) = delete;

  void start();
  // Stops everything and reports `closed` (once). Safe inside callbacks.
  void close();
  const net::SockAddr& peer() const { return peer_; }

 private:
  // One-way per request; kRead follows kWrite again on keep-alive.
  enum class Phase {
    kRead,    // receiving a request (or waiting for one)
    kBusy,    // an rpcall routine is running; watching only for hang-up
    kWrite,   // sending the response
    kLinger,  // response sent on a closing connection: draining input
    kClosed,
  };

  void on_io(int revents);
  void on_timeout();
  void receive();
  void flush();
  void advance();
  bool step();
  bool begin_body();
  void dispatch();
  void on_reply(ApiResponse r);
  void respond(ApiResponse r, bool close = false);
  void respond_error(int status, std::string_view message, bool close);
  void response_done();
  void reset_request();
  void update_watch();

  ev::Loop* loop_;
  net::Conn conn_;
  net::SockAddr peer_;
  const ConnectionLimits& limits_;
  Endpoints& endpoints_;
  Access& access_;
  ev::Deferred& deferred_;
  Closed closed_;
  ev::Io io_;
  ev::Timer timer_;
  // Continues a long pipeline on a later loop iteration, through `deferred`;
  // cancelled by close() and by the destructor.
  ev::Deferred::Scope later_;

  Phase phase_ = Phase::kRead;
  std::string in_;         // received and not yet consumed
  bool need_more_ = true;  // the current request cannot progress without more bytes
  bool peer_eof_ = false;

  // The request being read.
  bool have_head_ = false;
  proto::HttpRequestHead head_;
  enum class BodyMode { kNone, kLength, kChunked } body_mode_ = BodyMode::kNone;
  size_t body_length_ = 0;
  ChunkedDecoder chunked_;
  std::string body_;
  bool keep_alive_ = false;
  bool head_only_ = false;  // HEAD: send the head of the response alone

  std::string out_;  // response bytes not yet sent, from out_pos_
  size_t out_pos_ = 0;
  bool close_after_ = false;
  std::unique_ptr<Cancellable> pending_;  // the rpcall in progress
  bool accept_deflate_ = false;
};

}  // namespace rs::api
