// A whole API server connection (api/connection.hpp) as a peer reaches it: the
// input is written into a socketpair whose other end is served by a real
// ApiConnection and Endpoints (no ruleset engine, so /ruleset/* answers 500
// and no Lua runs), on a private libev loop run until it goes idle. This
// covers head parsing, framing (Content-Length, chunked, pipelining,
// keep-alive, Expect), Content-Encoding, query strings and routing.
//
// Input: one option byte (bit 0: half-close after sending; bit 1: send in
// random pieces), then the bytes the client sends.
//
// Checks: the server's output is a sequence of well-formed responses, each
// framed by its Content-Length, deflated bodies inflate, nothing follows a
// "Connection: close" response, no more final responses than request heads;
// and (without the half-close) the same statuses when the bytes arrive in one
// piece or in random pieces.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "api/connection.hpp"
#include "api/endpoints.hpp"
#include "api/http_util.hpp"
#include "core/log.hpp"
#include "fuzz_util.hpp"
#include "proto/http.hpp"
#include "proto/zlib_codec.hpp"

using namespace rs;

namespace {

struct Backend : api::ApiBackend {
  int requests = 0;
  int successes = 0;
  ruleset::Engine* engine() override { return nullptr; }
  std::string server_stats(bool) override { return "Fuzz                : 1\n"; }
  std::string server_metrics() override { return "fuzz_total 1\n"; }
  void count_api_request() override { ++requests; }
  void count_api_success() override { ++successes; }
};

struct World {
  ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
  ev::Deferred deferred{loop};
  Backend backend;
  api::Endpoints endpoints{loop, backend, ev_now(loop)};
  api::Access access{loop, backend, nullptr, {}};  // no key: every request is served
  api::ConnectionLimits limits;
  World() {
    limits.max_body = 64 * 1024;
    limits.compress_min = 64;
  }
};

World& world() {
  static World* w = new World;
  return *w;
}

void set_nonblocking_pair(int sv[2]) {
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

// Runs the loop until nothing happens for a few rounds, collecting output.
void pump(World& w, int fd, std::string& received) {
  int idle = 0;
  for (int round = 0; round < 1000 && idle < 3; ++round) {
    ev_run(w.loop, EVRUN_NOWAIT);
    bool progress = false;
    char buf[16384];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      received.append(buf, static_cast<size_t>(n));
      progress = true;
    }
    idle = progress ? 0 : idle + 1;
  }
}

struct Result {
  std::string received;
  int requests = 0;
};

Result serve(fuzz::Bytes client, const std::vector<size_t>& chunks, bool half_close) {
  World& w = world();
  int sv[2];
  set_nonblocking_pair(sv);
  bool closed = false;
  auto conn = std::make_unique<api::ApiConnection>(
      w.loop, net::Conn(UniqueFd(sv[0])), net::SockAddr{}, w.limits, w.endpoints, w.access,
      w.deferred, [&](api::ApiConnection*) { closed = true; });
  const int before = w.backend.requests;
  conn->start();
  Result r;
  size_t pos = 0;
  for (size_t n : chunks) {
    size_t sent = 0;
    while (sent < n) {
      ssize_t k = ::send(sv[1], client.data() + pos + sent, n - sent, MSG_NOSIGNAL);
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) break;  // the server closed
      if (k > 0) sent += static_cast<size_t>(k);
      pump(w, sv[1], r.received);
      if (k < 0 && closed) break;
    }
    pos += n;
    if (closed) break;
  }
  if (half_close) ::shutdown(sv[1], SHUT_WR);
  pump(w, sv[1], r.received);
  if (!closed) conn->close();
  conn.reset();
  w.deferred.drain();
  ::close(sv[1]);
  r.requests = w.backend.requests - before;
  return r;
}

// The statuses of the final (non-1xx) responses in `out`, checking framing.
std::vector<int> check_responses(std::string_view out, int requests) {
  std::vector<int> statuses;
  while (!out.empty()) {
    auto head = proto::parse_http_response(proto::to_bytes(out));
    FUZZ_CHECK(head.done());
    out.remove_prefix(head.consumed);
    const auto& h = head.value;
    if (h.status < 200) {
      FUZZ_CHECK(h.status == 100);
      continue;
    }
    statuses.push_back(h.status);
    auto length = proto::content_length(h.headers);
    FUZZ_CHECK(length.valid && length.length);
    // A response to HEAD announces the length of a body it does not carry.
    size_t n = static_cast<size_t>(*length.length);
    auto next_is_response = [&](size_t skip) {
      return out.size() == skip || out.substr(skip).starts_with("HTTP/1.1 ");
    };
    if (n > out.size() || !next_is_response(n)) n = 0;
    FUZZ_CHECK(next_is_response(n));
    std::string_view body = out.substr(0, n);
    out.remove_prefix(n);
    if (n > 0 && api::has_token(h.headers, "Content-Encoding", "deflate")) {
      FUZZ_CHECK(proto::inflate_body(body, proto::Compression::kZlib).ok());
    }
    if (api::has_token(h.headers, "Connection", "close")) FUZZ_CHECK(out.empty());
  }
  FUZZ_CHECK(static_cast<int>(statuses.size()) <= requests);
  return statuses;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::threshold = log::kFatal;
  world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader reader(fuzz::Bytes(data, size));
  const uint8_t flags = reader.byte();
  const fuzz::Bytes client = reader.rest();
  const bool half_close = flags & 1;
  fuzz::Rng rng = fuzz::Rng::of(client);

  Result whole = serve(client, {client.size()}, half_close);
  auto statuses = check_responses(whole.received, whole.requests);
  if (std::getenv("FUZZ_VERBOSE")) {
    std::fprintf(stderr, "%d requests, statuses:", whole.requests);
    for (int s : statuses) std::fprintf(stderr, " %d", s);
    std::fprintf(stderr, "\n");
  }
  if (flags & 2) {
    Result split = serve(client, fuzz::split_sizes(client.size(), 2, rng), half_close);
    auto split_statuses = check_responses(split.received, split.requests);
    // A half-close may overtake pipelined requests, depending on timing.
    if (!half_close) FUZZ_CHECK(split_statuses == statuses);
  }
  return 0;
}
