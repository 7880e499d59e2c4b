#include "api/rpc_client.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "api/chunked.hpp"
#include "api/http_util.hpp"
#include "core/log.hpp"
#include "proto/address.hpp"
#include "proto/http.hpp"
#include "proto/proxy_uri.hpp"
#include "proto/zlib_codec.hpp"

namespace rs::api {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
// Longest piece of an error reply quoted in the error message.
constexpr size_t kMaxErrorText = 512;

std::string summarize(std::string_view text, std::string_view fallback) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  if (text.empty()) return std::string(fallback);
  if (text.size() > kMaxErrorText) return std::string(text.substr(0, kMaxErrorText)) + "...";
  return std::string(text);
}

// One call, owned by the Handle given to the caller. The result is delivered
// by a task on the loop's Deferred, posted through the call's Scope; the
// caller may destroy the handle inside its callback, so the handle stops the
// call at once and has the loop's Deferred destroy it afterwards.
class RpcCall {
 public:
  RpcCall(ev::Loop* loop, net::Resolver* resolver, const net::DialOptions& opts, RpcCallback cb)
      : loop_(loop),
        resolver_(resolver),
        opts_(opts),
        cb_(std::move(cb)),
        io_(loop, [this](int revents) { on_io(revents); }),
        timer_(loop, [this](int) { finish(false, fmt::format("rpc {}: timed out", addr_)); }),
        later_(loop) {}
  RpcCall(const RpcCall&) = delete;
  RpcCall& operator=(const RpcCall&) = delete;

  void start(std::string code, proto::Address target, std::vector<proto::ProxyUri> chain,
             const std::string& api_key);
  // http_call(): `request` is the whole request; any status is a result.
  void start_raw(std::string request, proto::Address target, HttpCallback cb);
  // The handle is gone: nothing runs and no callback comes from now on.
  void cancel() {
    finished_ = true;
    cb_ = nullptr;
    raw_cb_ = nullptr;
    later_.cancel();
    io_.stop();
    timer_.stop();
    conn_.reset();
    if (!in_dial_callback_) dialer_.reset();
  }
  ev::Loop* loop() const { return loop_; }

 private:
  enum class BodyMode { kLength, kChunked, kEof };

  void dial(proto::Address target, std::vector<proto::ProxyUri> chain);
  void on_dialed(net::Conn conn, net::DialError err, const std::string& msg);
  void on_io(int revents);
  void send_some();
  void receive();
  void process(bool eof);
  bool read_head(bool eof);
  void complete();
  void finish(bool ok, std::string msg);
  void deliver();

  ev::Loop* loop_;
  net::Resolver* resolver_;
  net::DialOptions opts_;  // the Dialer keeps a reference to it
  RpcCallback cb_;
  std::unique_ptr<net::Dialer> dialer_;
  net::Conn conn_;  // TLS through an https:// first hop
  ev::Io io_;
  ev::Timer timer_;
  std::string addr_;

  std::string out_;
  size_t out_pos_ = 0;
  std::string in_;
  bool have_head_ = false;
  proto::HttpResponseHead head_;
  BodyMode mode_ = BodyMode::kEof;
  size_t length_ = 0;
  ChunkedDecoder chunked_;
  std::string body_;

  bool in_dial_callback_ = false;
  bool finished_ = false;  // the result is known (or the call cancelled)
  bool result_ok_ = false;
  std::string result_;
  ev::Deferred::Scope later_;  // deliver(); cancelled with the call
  // http_call(): set instead of cb_; the reply of any status is its result.
  HttpCallback raw_cb_;
  HttpReply raw_reply_;
};

class Handle final : public Cancellable {
 public:
  explicit Handle(std::unique_ptr<RpcCall> call) : call_(std::move(call)) {}
  // This may run inside the call's own callback (deliver()): stop the call
  // now, destroy it later from the loop.
  ~Handle() override {
    call_->cancel();
    ev::Deferred::of(call_->loop()).dispose(std::move(call_));
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  RpcCall& call() { return *call_; }

 private:
  std::unique_ptr<RpcCall> call_;
};

void RpcCall::start(std::string code, proto::Address target, std::vector<proto::ProxyUri> chain,
                    const std::string& api_key) {
  addr_ = target.to_string();
  timer_.start(opts_.timeout);
  const proto::Address first = chain.empty() ? target : chain.front().address();
  if (resolver_ == nullptr && first.is_domain()) {
    finish(false, fmt::format("rpc: cannot resolve {}: no resolver", first.host_string()));
    return;
  }

  std::string body = std::move(code);
  bool deflated = false;
  if (body.size() > kRpcCompressMin) {
    std::string z = proto::deflate_body(body, proto::Compression::kZlib);
    if (z.size() < body.size()) {
      body = std::move(z);
      deflated = true;
    }
  }
  out_ = fmt::format(
      "POST /ruleset/rpcall HTTP/1.1\r\n"
      "Host: {}\r\n"
      "Content-Type: {}\r\n"
      "Accept-Encoding: deflate\r\n"
      "{}{}{}{}"
      "Content-Length: {}\r\n"
      "Connection: close\r\n"
      "\r\n",
      addr_, kRpcMediaType, deflated ? "Content-Encoding: deflate\r\n" : "",
      api_key.empty() ? "" : "Authorization: Bearer ", api_key, api_key.empty() ? "" : "\r\n",
      body.size());
  out_ += body;

  dial(std::move(target), std::move(chain));
}

void RpcCall::start_raw(std::string request, proto::Address target, HttpCallback cb) {
  raw_cb_ = std::move(cb);
  addr_ = target.to_string();
  timer_.start(opts_.timeout);
  out_ = std::move(request);
  dial(std::move(target), {});
}

void RpcCall::dial(proto::Address target, std::vector<proto::ProxyUri> chain) {
  dialer_ = std::make_unique<net::Dialer>(loop_, resolver_, opts_);
  dialer_->start(std::move(target), std::move(chain), nullptr,
                 [this](net::Conn conn, net::DialError err, const std::string& msg) {
                   in_dial_callback_ = true;
                   on_dialed(std::move(conn), err, msg);
                   in_dial_callback_ = false;
                 });
}

void RpcCall::on_dialed(net::Conn conn, net::DialError err, const std::string& msg) {
  if (finished_) return;
  if (err != net::DialError::kOk) {
    finish(false, fmt::format("rpc: dial {}: {}", addr_, msg.empty() ? to_string(err) : msg));
    return;
  }
  conn_ = std::move(conn);
  io_.set(conn_.fd(), EV_WRITE);
  io_.start();
}

void RpcCall::on_io(int /*revents*/) {
  if (finished_) return;
  // The request is written whole before the response is read; a TLS socket
  // may wait for either event while doing either.
  if (!out_.empty()) {
    send_some();
    return;
  }
  receive();
}

void RpcCall::send_some() {
  while (out_pos_ < out_.size()) {
    ssize_t n = conn_.write(out_.data() + out_pos_, out_.size() - out_pos_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        io_.modify(conn_.wants());
        return;
      }
      finish(false, fmt::format("rpc {}: send: {}", addr_, conn_.error_text()));
      return;
    }
    out_pos_ += static_cast<size_t>(n);
  }
  out_.clear();
  out_.shrink_to_fit();
  io_.modify(EV_READ);
}

void RpcCall::receive() {
  char buf[kReadChunk];
  ssize_t n = conn_.read(buf, sizeof buf);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      io_.modify(conn_.wants());
      return;
    }
    finish(false, fmt::format("rpc {}: recv: {}", addr_, conn_.error_text()));
    return;
  }
  if (n > 0) in_.append(buf, static_cast<size_t>(n));
  // Decrypted bytes no socket event will announce.
  while (n > 0 && conn_.pending() && (n = conn_.read(buf, sizeof buf)) > 0)
    in_.append(buf, static_cast<size_t>(n));
  if (n < 0) n = 1;  // EAGAIN after some bytes: not the end
  process(n == 0);
}

// Reads the response head, skipping interim 1xx responses. Returns false
// while it is incomplete or after failing.
bool RpcCall::read_head(bool eof) {
  for (;;) {
    auto parsed = proto::parse_http_response(proto::to_bytes(in_));
    if (parsed.need_more()) {
      if (eof) {
        finish(false, in_.empty()
                          ? fmt::format("rpc {}: connection closed without a response", addr_)
                          : fmt::format("rpc {}: truncated response head", addr_));
      }
      return false;
    }
    if (parsed.failed()) {
      finish(false, fmt::format("rpc {}: malformed response: {}", addr_, parsed.error));
      return false;
    }
    in_.erase(0, parsed.consumed);
    if (parsed.value.status >= 100 && parsed.value.status < 200) continue;
    head_ = std::move(parsed.value);
    have_head_ = true;
    break;
  }
  auto length = proto::content_length(head_.headers);
  auto codings = header_list(head_.headers, "Transfer-Encoding");
  if (!codings.empty()) {
    if (codings.size() != 1 || codings[0] != "chunked") {
      finish(false, fmt::format("rpc {}: unsupported Transfer-Encoding", addr_));
      return false;
    }
    mode_ = BodyMode::kChunked;
  } else if (!length.valid) {
    finish(false, fmt::format("rpc {}: malformed Content-Length", addr_));
    return false;
  } else if (length.length) {
    if (*length.length > kMaxBody) {
      finish(false, fmt::format("rpc {}: response exceeds {} bytes", addr_, kMaxBody));
      return false;
    }
    mode_ = BodyMode::kLength;
    length_ = static_cast<size_t>(*length.length);
  } else {
    mode_ = BodyMode::kEof;
  }
  return true;
}

void RpcCall::process(bool eof) {
  if (!have_head_ && !read_head(eof)) return;
  switch (mode_) {
    case BodyMode::kLength:
      if (in_.size() >= length_) {
        body_.assign(in_, 0, length_);
        complete();
      } else if (eof) {
        finish(false, fmt::format("rpc {}: connection closed mid-response", addr_));
      }
      return;
    case BodyMode::kChunked: {
      size_t used = 0;
      auto status = chunked_.feed(in_, used, body_, kMaxBody);
      in_.erase(0, used);
      switch (status) {
        case ChunkedDecoder::Status::kDone:
          complete();
          return;
        case ChunkedDecoder::Status::kNeedMore:
          if (eof) finish(false, fmt::format("rpc {}: connection closed mid-response", addr_));
          return;
        case ChunkedDecoder::Status::kError:
          finish(false, fmt::format("rpc {}: {}", addr_, chunked_.error()));
          return;
        case ChunkedDecoder::Status::kTooLarge:
          finish(false, fmt::format("rpc {}: response exceeds {} bytes", addr_, kMaxBody));
          return;
      }
      return;
    }
    case BodyMode::kEof:
      if (in_.size() > kMaxBody) {
        finish(false, fmt::format("rpc {}: response exceeds {} bytes", addr_, kMaxBody));
      } else if (eof) {
        body_ = std::move(in_);
        in_.clear();
        complete();
      }
      return;
  }
}

void RpcCall::complete() {
  const ContentCoding coding = content_coding(head_.headers);
  if (coding.kind == ContentCoding::kUnsupported) {
    finish(false, fmt::format("rpc {}: unsupported Content-Encoding {}", addr_, coding.name));
    return;
  }
  if (coding.kind == ContentCoding::kCompressed) {
    proto::Inflated decoded = proto::inflate_body(body_, coding.format, kMaxBody);
    if (!decoded.ok()) {
      finish(false,
             fmt::format("rpc {}: corrupt {} response: {}", addr_, coding.name, decoded.message));
      return;
    }
    body_ = std::move(decoded.data);
  }
  if (raw_cb_) {
    raw_reply_.status = head_.status;
    if (auto ct = proto::find_header(head_.headers, "Content-Type")) raw_reply_.content_type = *ct;
    raw_reply_.body = std::move(body_);
    raw_reply_.headers = std::move(head_.headers);
    finish(true, {});
    return;
  }
  if (head_.status == 200) {
    finish(true, std::move(body_));
    return;
  }
  finish(false,
         fmt::format("HTTP {}: {}", head_.status,
                     summarize(body_, head_.reason.empty() ? "(no reason given)" : head_.reason)));
}

void RpcCall::finish(bool ok, std::string msg) {
  if (finished_) return;
  finished_ = true;
  io_.stop();
  timer_.stop();
  conn_.reset();
  // A dial still in progress (timeout) is cancelled now; a Dialer whose
  // callback is running is left for the destructor.
  if (!in_dial_callback_) dialer_.reset();
  if (!ok) log::debug("{}", msg);
  result_ok_ = ok;
  result_ = std::move(msg);
  later_.post([this] { deliver(); });
}

void RpcCall::deliver() {
  // Moved out: the callback may destroy the handle, which cancels the call
  // (and clears cb_) but leaves it alive until this task has returned.
  if (HttpCallback raw = std::exchange(raw_cb_, nullptr)) {
    raw(result_ok_, std::move(raw_reply_), std::move(result_));
    return;
  }
  RpcCallback cb = std::exchange(cb_, nullptr);
  if (cb) cb(result_ok_, std::move(result_));
}

}  // namespace

std::unique_ptr<Cancellable> rpc_call(ev::Loop* loop, net::Resolver* resolver,
                                      const net::DialOptions& opts, std::string code,
                                      proto::Address addr, std::vector<proto::ProxyUri> chain,
                                      RpcCallback cb, const std::string& api_key) {
  auto handle =
      std::make_unique<Handle>(std::make_unique<RpcCall>(loop, resolver, opts, std::move(cb)));
  handle->call().start(std::move(code), std::move(addr), std::move(chain), api_key);
  return handle;
}

std::unique_ptr<Cancellable> http_call(
    ev::Loop* loop, const net::DialOptions& opts, proto::Address addr, std::string_view method,
    std::string_view target, const std::vector<std::pair<std::string, std::string>>& headers,
    std::string_view body, HttpCallback cb) {
  std::string request =
      fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\n", method, target, addr.to_string());
  for (const auto& [name, value] : headers) request += fmt::format("{}: {}\r\n", name, value);
  request += fmt::format("Content-Length: {}\r\nConnection: close\r\n\r\n", body.size());
  request += body;
  auto handle =
      std::make_unique<Handle>(std::make_unique<RpcCall>(loop, nullptr, opts, RpcCallback{}));
  handle->call().start_raw(std::move(request), std::move(addr), std::move(cb));
  return handle;
}

}  // namespace rs::api
