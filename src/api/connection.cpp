#include "api/connection.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "core/log.hpp"
#include "proto/zlib_codec.hpp"

namespace rs::api {
namespace {

// Largest single read.
constexpr size_t kReadChunk = 64 * 1024;
// While an rpcall runs we read only to notice a hang-up; pipelined bytes are
// kept up to this much, then reading pauses.
constexpr size_t kBusyBuffer = 64 * 1024;
// Requests served back to back from buffered bytes before yielding to the loop.
constexpr int kPipelineBurst = 32;
// How long a closing connection drains input after its last response, so that
// unread request bytes do not turn our close into a reset that loses the
// response.
constexpr double kLinger = 2.0;

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

}  // namespace

ApiConnection::ApiConnection(ev::Loop* loop, net::Conn conn, net::SockAddr peer,
                             const ConnectionLimits& limits, Endpoints& endpoints, Access& access,
                             ev::Deferred& deferred, Closed closed)
    : loop_(loop),
      conn_(std::move(conn)),
      peer_(peer),
      limits_(limits),
      endpoints_(endpoints),
      access_(access),
      deferred_(deferred),
      closed_(std::move(closed)),
      io_(loop, [this](int revents) { on_io(revents); }),
      timer_(loop, [this](int) { on_timeout(); }),
      later_(deferred) {}

// Destroying pending_ cancels a running rpcall; the watchers stop themselves.
ApiConnection::~ApiConnection() = default;

void ApiConnection::start() {
  io_.set(conn_.fd(), EV_READ);
  io_.start();
  timer_.start(limits_.timeout);
}

void ApiConnection::close() {
  if (phase_ == Phase::kClosed) return;
  phase_ = Phase::kClosed;
  io_.stop();
  timer_.stop();
  later_.cancel();
  closed_(this);
}

void ApiConnection::on_io(int revents) {
  if (revents & EV_WRITE) flush();
  if ((revents & EV_READ) && phase_ != Phase::kClosed) receive();
  if (phase_ == Phase::kClosed) return;
  advance();
  update_watch();
}

void ApiConnection::on_timeout() {
  switch (phase_) {
    case Phase::kRead:
      if (!have_head_ && in_.empty()) {
        log::debug("api {}: idle for {} s, closing", peer_.to_string(), limits_.timeout);
        close();
        return;
      }
      log::debug("api {}: request incomplete after {} s", peer_.to_string(), limits_.timeout);
      respond_error(408, fmt::format("request not received within {} s", limits_.timeout), true);
      if (phase_ != Phase::kClosed) update_watch();
      return;
    case Phase::kWrite:
      log::debug("api {}: response stalled for {} s, closing", peer_.to_string(), limits_.timeout);
      close();
      return;
    case Phase::kLinger:
      close();
      return;
    case Phase::kBusy:
    case Phase::kClosed:
      return;
  }
}

void ApiConnection::receive() {
  char buf[kReadChunk];
  ssize_t n = conn_.read(buf, sizeof buf);
  if (n > 0) {
    // Bytes TLS already decrypted come with no socket event: take them too.
    while (conn_.pending()) {
      if (phase_ != Phase::kLinger) in_.append(buf, static_cast<size_t>(n));
      n = conn_.read(buf, sizeof buf);
      if (n <= 0) return;
    }
    if (phase_ == Phase::kLinger) return;  // discarded
    in_.append(buf, static_cast<size_t>(n));
    need_more_ = false;
    return;
  }
  if (n == 0) {
    peer_eof_ = true;
    // A hang-up while an rpcall runs cancels it (pending_ goes with us).
    if (phase_ == Phase::kLinger || phase_ == Phase::kBusy) close();
    return;
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
  log::debug("api {}: recv: {}", peer_.to_string(), conn_.error_text());
  close();
}

void ApiConnection::flush() {
  bool progress = false;
  while (out_pos_ < out_.size()) {
    ssize_t n = conn_.write(out_.data() + out_pos_, out_.size() - out_pos_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      log::debug("api {}: send: {}", peer_.to_string(), conn_.error_text());
      close();
      return;
    }
    out_pos_ += static_cast<size_t>(n);
    progress = true;
  }
  if (out_pos_ < out_.size()) {
    // A stalled reader gets the timeout from its last progress.
    if (progress && phase_ == Phase::kWrite) timer_.start(limits_.timeout);
    return;
  }
  out_.clear();
  out_pos_ = 0;
  if (phase_ == Phase::kWrite) response_done();
}

void ApiConnection::response_done() {
  if (close_after_) {
    conn_.shutdown_write();
    phase_ = Phase::kLinger;
    in_.clear();
    if (peer_eof_) {
      close();
      return;
    }
    timer_.start(std::min(limits_.timeout, kLinger));
    return;
  }
  reset_request();
  phase_ = Phase::kRead;
  need_more_ = false;  // the next request may be buffered already
  timer_.start(limits_.timeout);
}

void ApiConnection::reset_request() {
  have_head_ = false;
  head_ = {};
  body_mode_ = BodyMode::kNone;
  body_length_ = 0;
  chunked_.reset();
  body_.clear();
  keep_alive_ = false;
  head_only_ = false;
  accept_deflate_ = false;
  close_after_ = false;
}

void ApiConnection::advance() {
  int budget = kPipelineBurst;
  while (phase_ == Phase::kRead && !need_more_) {
    if (budget-- == 0) {
      // The rest after other connections have had their turn.
      later_.post([this] {
        advance();
        update_watch();
      });
      return;
    }
    if (!step()) need_more_ = true;
  }
  if (phase_ == Phase::kRead && need_more_ && peer_eof_) {
    if (have_head_ || !in_.empty())
      log::debug("api {}: connection closed mid-request", peer_.to_string());
    close();
  }
}

// Moves the current request forward with the bytes at hand. Returns false
// when it needs more bytes; true when it answered (or started answering).
bool ApiConnection::step() {
  if (!have_head_) {
    if (in_.empty()) return false;
    auto parsed = proto::parse_http_request(proto::to_bytes(in_));
    if (parsed.need_more()) return false;
    endpoints_.count_request();
    if (parsed.failed()) {
      log::debug("api {}: bad request: {}", peer_.to_string(), parsed.error);
      respond_error(parsed.code != 0 ? parsed.code : 400, parsed.error, true);
      return true;
    }
    have_head_ = true;
    head_ = std::move(parsed.value);
    in_.erase(0, parsed.consumed);
    // Before the body: a refused client's body is never read (the
    // connection closes after the answer).
    if (auto refused =
            access_.check(peer_, head_.method, split_target(head_.target).path, head_.headers)) {
      head_only_ = head_.method == "HEAD";
      respond(std::move(*refused), true);
      return true;
    }
    if (!begin_body()) return true;
  }
  switch (body_mode_) {
    case BodyMode::kNone:
      break;
    case BodyMode::kLength:
      if (in_.size() < body_length_) return false;
      body_.assign(in_, 0, body_length_);
      in_.erase(0, body_length_);
      break;
    case BodyMode::kChunked: {
      size_t used = 0;
      auto status = chunked_.feed(in_, used, body_, limits_.max_body);
      in_.erase(0, used);
      switch (status) {
        case ChunkedDecoder::Status::kNeedMore:
          return false;
        case ChunkedDecoder::Status::kError:
          respond_error(400, "malformed chunked body: " + chunked_.error(), true);
          return true;
        case ChunkedDecoder::Status::kTooLarge:
          respond_error(413, fmt::format("request body exceeds {} bytes", limits_.max_body), true);
          return true;
        case ChunkedDecoder::Status::kDone:
          break;
      }
      break;
    }
  }
  dispatch();
  return true;
}

// Reads the head's framing. Returns false after answering an error.
bool ApiConnection::begin_body() {
  const auto& h = head_.headers;
  keep_alive_ = head_.minor_version >= 1 ? !has_token(h, "Connection", "close")
                                         : has_token(h, "Connection", "keep-alive");
  head_only_ = head_.method == "HEAD";
  accept_deflate_ = accepts_encoding(h, "deflate");

  auto length = proto::content_length(h);
  auto codings = header_list(h, "Transfer-Encoding");
  if (!length.valid) {
    respond_error(400, "malformed Content-Length", true);
    return false;
  }
  if (!codings.empty()) {
    // Both framings at once is how requests get smuggled: refuse.
    if (length.length) {
      respond_error(400, "both Transfer-Encoding and Content-Length", true);
      return false;
    }
    if (codings.size() != 1 || codings[0] != "chunked") {
      respond_error(501, "unsupported Transfer-Encoding", true);
      return false;
    }
    body_mode_ = BodyMode::kChunked;
  } else if (length.length) {
    if (*length.length > limits_.max_body) {
      respond_error(413, fmt::format("request body exceeds {} bytes", limits_.max_body), true);
      return false;
    }
    body_mode_ = BodyMode::kLength;
    body_length_ = static_cast<size_t>(*length.length);
  } else {
    body_mode_ = BodyMode::kNone;
    if (head_.method == "POST" && Endpoints::requires_body(split_target(head_.target).path)) {
      respond_error(411, "Content-Length required", true);
      return false;
    }
  }
  // Clients that ask for it wait for our go-ahead before sending a body.
  const bool body_expected =
      body_mode_ == BodyMode::kChunked || (body_mode_ == BodyMode::kLength && body_length_ > 0);
  if (body_expected && head_.minor_version >= 1 && in_.empty() &&
      has_token(h, "Expect", "100-continue")) {
    out_ += kContinue;
  }
  return true;
}

void ApiConnection::dispatch() {
  const auto target = split_target(head_.target);
  auto query = parse_query(target.query);
  if (!query) {
    respond_error(400, "malformed query string", false);
    return;
  }
  std::string body = std::move(body_);
  body_.clear();
  const ContentCoding coding = content_coding(head_.headers);
  if (coding.kind == ContentCoding::kUnsupported) {
    respond_error(415, "unsupported Content-Encoding (use deflate or gzip)", false);
    return;
  }
  if (coding.kind == ContentCoding::kCompressed) {
    proto::Inflated decoded;
    try {
      decoded = proto::inflate_body(body, coding.format, limits_.max_body);
    } catch (const std::bad_alloc&) {
      respond_error(500, "out of memory", false);
      return;
    }
    switch (decoded.error) {
      case proto::Inflated::Error::kNone:
        body = std::move(decoded.data);
        break;
      case proto::Inflated::Error::kTooLarge:
        respond_error(413, fmt::format("decoded request body exceeds {} bytes", limits_.max_body),
                      false);
        return;
      case proto::Inflated::Error::kCorrupt:
        respond_error(400, fmt::format("corrupt {} body: {}", coding.name, decoded.message), false);
        return;
    }
  }

  ApiRequest req{head_.method, target.path, *query, head_.headers, std::move(body), target.query};
  Endpoints::Outcome outcome;
  try {
    outcome = endpoints_.handle(req, [this](ApiResponse r) { on_reply(std::move(r)); });
  } catch (const std::bad_alloc&) {
    respond_error(500, "out of memory", false);
    return;
  } catch (const std::exception& e) {
    respond_error(500, e.what(), false);
    return;
  }
  if (outcome.response) {
    respond(std::move(*outcome.response));
    return;
  }
  pending_ = std::move(outcome.handle);
  phase_ = Phase::kBusy;
  timer_.stop();
}

void ApiConnection::on_reply(ApiResponse r) {
  if (phase_ != Phase::kBusy) return;
  // We are inside the operation's callback: its handle dies later.
  deferred_.dispose(std::move(pending_));
  respond(std::move(r));
  if (phase_ == Phase::kClosed) return;
  advance();
  if (phase_ != Phase::kClosed) update_watch();
}

void ApiConnection::respond_error(int status, std::string_view message, bool close) {
  respond(text_response(status, message), close);
}

void ApiConnection::respond(ApiResponse r, bool close) {
  proto::HttpHeaders h;
  h.emplace_back("Content-Type", std::move(r.content_type));
  h.emplace_back("X-Content-Type-Options", "nosniff");
  if (r.no_cache) h.emplace_back("Cache-Control", "no-store");
  std::string body = std::move(r.body);
  if (accept_deflate_ && body.size() >= limits_.compress_min) {
    try {
      std::string z = proto::deflate_body(body, proto::Compression::kZlib);
      if (z.size() < body.size()) {
        body = std::move(z);
        h.emplace_back("Content-Encoding", "deflate");
      }
    } catch (const std::exception& e) {
      log::warning("api {}: deflate: {}", peer_.to_string(), e.what());
    }
  }
  for (auto& field : r.headers) h.push_back(std::move(field));
  close_after_ = close || !keep_alive_ || peer_eof_;
  if (close_after_) {
    h.emplace_back("Connection", "close");
  } else if (head_.minor_version == 0) {
    h.emplace_back("Connection", "keep-alive");
  }
  if (head_only_) {
    h.emplace_back("Content-Length", std::to_string(body.size()));
    body.clear();
  }
  log::debug("api {}: {} {} -> {}", peer_.to_string(), have_head_ ? head_.method : "-",
             have_head_ ? head_.target : "-", r.status);
  if (r.status >= 200 && r.status < 300) endpoints_.count_success();
  out_ += proto::http_response(r.status, {}, h, body);
  phase_ = Phase::kWrite;
  timer_.start(limits_.timeout);
  flush();
}

void ApiConnection::update_watch() {
  int events = 0;
  switch (phase_) {
    case Phase::kRead:
      if (need_more_ && !peer_eof_) events |= EV_READ;
      if (out_pos_ < out_.size()) events |= EV_WRITE;
      break;
    case Phase::kBusy:
      if (!peer_eof_ && in_.size() < kBusyBuffer) events |= EV_READ;
      break;
    case Phase::kWrite:
      events |= EV_WRITE;
      break;
    case Phase::kLinger:
      events |= EV_READ;
      break;
    case Phase::kClosed:
      break;
  }
  io_.modify(events);
}

}  // namespace rs::api
