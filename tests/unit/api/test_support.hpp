// Shared helpers for the api tests: a libev loop on its own thread, a
// watchdog, blocking raw HTTP clients and a Lua evaluator for RPC replies.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <lua.hpp>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/sockaddr.hpp"
#include "proto/http.hpp"
#include "proto/zlib_codec.hpp"

namespace rs::api::test {

// Aborts the process if a test hangs: every test must end well before this.
class Watchdog {
 public:
  explicit Watchdog(double seconds = 60)
      : thread_([this, seconds] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds),
                            [this] { return done_; })) {
            std::fprintf(stderr, "watchdog: test still running after %.0f s\n", seconds);
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// A loop running on a background thread. Objects living on the loop are made
// and destroyed through call(), which runs a function on the loop thread and
// waits for it.
class LoopThread {
 public:
  LoopThread() : loop_(ev_loop_new(EVFLAG_AUTO)) {
    ev_async_init(&async_, &LoopThread::on_async);
    async_.data = this;
    ev_async_start(loop_, &async_);
    thread_ = std::thread([this] { ev_run(loop_, 0); });
  }
  ~LoopThread() {
    call([this] { ev_break(loop_, EVBREAK_ALL); });
    thread_.join();
    ev_async_stop(loop_, &async_);
    ev_loop_destroy(loop_);
  }
  ev::Loop* loop() const { return loop_; }

  template <class F>
  auto call(F fn) -> decltype(fn()) {
    using R = decltype(fn());
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(fn));
    auto result = task->get_future();
    {
      std::lock_guard lock(mu_);
      queue_.push_back([task] { (*task)(); });
    }
    ev_async_send(loop_, &async_);
    if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      std::fprintf(stderr, "LoopThread::call: the loop did not answer\n");
      std::abort();
    }
    return result.get();
  }

 private:
  static void on_async(struct ev_loop*, ev_async* w, int) {
    auto* self = static_cast<LoopThread*>(w->data);
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard lock(self->mu_);
      batch.swap(self->queue_);
    }
    for (auto& fn : batch) fn();
  }

  ev::Loop* loop_;
  ev_async async_{};
  std::mutex mu_;
  std::vector<std::function<void()>> queue_;
  std::thread thread_;
};

inline net::SockAddr loopback(uint16_t port = 0) {
  return net::SockAddr::from(proto::Ipv4{127, 0, 0, 1}, port);
}

// Receive timeout on test sockets, so that a silent server fails the test
// instead of hanging it.
inline void set_timeouts(int fd, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

inline UniqueFd connect_to(const net::SockAddr& addr) {
  UniqueFd fd(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), addr.get(), addr.len) != 0) return {};
  set_timeouts(fd.get(), 10);
  return fd;
}

inline bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

struct Response {
  int status = 0;
  proto::HttpHeaders headers;
  std::string body;  // as received (still encoded)
  std::optional<std::string_view> header(std::string_view name) const {
    return proto::find_header(headers, name);
  }
  // The body with Content-Encoding: deflate undone.
  std::string text() const {
    auto enc = header("Content-Encoding");
    if (!enc || *enc != "deflate") return body;
    proto::Inflated r = proto::inflate_body(body, proto::Compression::kAuto);
    return r.ok() ? std::move(r.data) : "<corrupt deflate>";
  }
};

// Reads one response (Content-Length framing) from `fd`; bytes after it stay
// in `buf` for the next call. nullopt on EOF, error or timeout first.
inline std::optional<Response> read_response(int fd, std::string& buf) {
  for (;;) {
    auto parsed = proto::parse_http_response(proto::to_bytes(buf));
    if (parsed.failed()) return std::nullopt;
    if (parsed.done()) {
      auto length = proto::content_length(parsed.value.headers);
      size_t need = parsed.consumed + static_cast<size_t>(length.length.value_or(0));
      while (buf.size() < need) {
        char tmp[65536];
        ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0) return std::nullopt;
        buf.append(tmp, static_cast<size_t>(n));
      }
      Response r;
      r.status = parsed.value.status;
      r.headers = std::move(parsed.value.headers);
      r.body = buf.substr(parsed.consumed, need - parsed.consumed);
      buf.erase(0, need);
      return r;
    }
    char tmp[65536];
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return std::nullopt;
    buf.append(tmp, static_cast<size_t>(n));
  }
}

// Whether the peer closes the connection (EOF or reset) before `seconds`,
// discarding whatever arrives meanwhile.
inline bool closed_by_peer(int fd, double seconds = 10) {
  set_timeouts(fd, seconds);
  char tmp[65536];
  for (;;) {
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

// One request on a fresh connection.
inline std::optional<Response> exchange(const net::SockAddr& addr, std::string_view request) {
  UniqueFd fd = connect_to(addr);
  if (!fd || !send_all(fd.get(), request)) return std::nullopt;
  std::string buf;
  return read_response(fd.get(), buf);
}

inline std::string post(std::string_view target, std::string_view body,
                        std::string_view extra_headers = {}) {
  std::string out = "POST " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n";
  out += extra_headers;
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  out += body;
  return out;
}

inline std::string get(std::string_view target, std::string_view extra_headers = {}) {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n" + std::string(extra_headers) +
         "\r\n";
}

// Loads an RPC reply ("return true, ...") in a fresh Lua state and passes its
// values to `checker`, a chunk returning a function; returns what that
// function returns, converted with tostring(), or "error: ..." on failure.
inline std::string check_reply(const std::string& reply, const std::string& checker) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  static const char kProgram[] =
      "local reply, checker = ...\n"
      "local f = assert(load(reply, '=reply', 't'))\n"
      "local check = assert(load(checker, '=checker', 't'))()\n"
      "return tostring(check(f()))\n";
  std::string out;
  if (luaL_loadstring(L, kProgram) != LUA_OK) {
    out = "error: ";
  } else {
    lua_pushlstring(L, reply.data(), reply.size());
    lua_pushlstring(L, checker.data(), checker.size());
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) out = "error: ";
  }
  size_t len = 0;
  const char* s = lua_tolstring(L, -1, &len);
  if (s != nullptr) out.append(s, len);
  lua_close(L);
  return out;
}

// A port on loopback where nothing listens.
inline uint16_t dead_port() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  net::SockAddr sa = loopback();
  ::bind(fd.get(), sa.get(), sa.len);
  return net::local_of(fd.get()).port();
}

}  // namespace rs::api::test
