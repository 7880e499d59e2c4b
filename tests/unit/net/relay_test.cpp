#include "net/relay.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace rs::net {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kWatchdog = 30;  // seconds; no test may hang longer
constexpr size_t kMiB = 1024 * 1024;

enum class Transport { kUnix, kTcp };

struct Param {
  Transport transport;
  bool splice;
};

std::string param_name(const testing::TestParamInfo<Param>& info) {
  std::string name = info.param.transport == Transport::kUnix ? "unix" : "tcp";
  return name + (info.param.splice ? "_splice" : "_copy");
}

// A connected pair of blocking stream sockets.
std::pair<UniqueFd, UniqueFd> make_pair(Transport transport) {
  if (transport == Transport::kUnix) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return {};
    return {UniqueFd(fds[0]), UniqueFd(fds[1])};
  }
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  auto* addr = reinterpret_cast<sockaddr*>(&sa);
  if (::bind(listener.get(), addr, len) != 0 || ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), addr, &len) != 0) {
    return {};
  }
  UniqueFd a(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (::connect(a.get(), addr, len) != 0) return {};
  UniqueFd b(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  return {std::move(a), std::move(b)};
}

void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// Guards blocking peer threads against a relay that stops moving bytes.
void set_io_timeout(int fd) {
  timeval tv{.tv_sec = 20, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Byte count and FNV-1a hash of a stream.
struct Digest {
  uint64_t bytes = 0;
  uint64_t hash = 0xcbf29ce484222325;
  void add(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) hash = (hash ^ static_cast<uint8_t>(p[i])) * 0x100000001b3;
    bytes += n;
  }
  bool operator==(const Digest&) const = default;
};

// Random split sizes: mostly large, sometimes tiny.
size_t random_split(std::mt19937& rng) {
  return 1 + rng() % (rng() % 4 == 0 ? 64 : 200000);
}

// Blocking writer: `total` pseudo-random bytes in random splits, then
// shutdown(SHUT_WR) unless `hold` says to wait first.
Digest write_stream(int fd, size_t total, unsigned seed, std::shared_future<void> hold = {}) {
  std::mt19937 rng(seed);
  std::string pattern(kMiB + 4099, '\0');
  for (auto& c : pattern) c = static_cast<char>(rng());
  Digest sent;
  for (size_t pos = 0; pos < total;) {
    if (hold.valid() && pos >= total / 2) hold.wait();
    size_t off = pos % kMiB;
    size_t n = std::min({random_split(rng), total - pos, pattern.size() - off});
    ssize_t w = ::send(fd, pattern.data() + off, n, MSG_NOSIGNAL);
    if (w <= 0) break;
    sent.add(pattern.data() + off, static_cast<size_t>(w));
    pos += static_cast<size_t>(w);
  }
  ::shutdown(fd, SHUT_WR);
  return sent;
}

// Blocking reader: everything until EOF (or an error), in random splits.
Digest read_stream(int fd, unsigned seed) {
  std::mt19937 rng(seed);
  std::string buf(200000, '\0');
  Digest got;
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), random_split(rng), 0);
    if (n <= 0) break;
    got.add(buf.data(), static_cast<size_t>(n));
  }
  return got;
}

class RelayTest : public testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);  // splice(2) cannot suppress it per call
    ASSERT_EQ(pool_counters().buffers_in_use, 0u);
    ASSERT_EQ(pool_counters().pipes_in_use, 0u);
    loop_ = ev_loop_new(EVFLAG_AUTO);
    ASSERT_NE(loop_, nullptr);
    watchdog_ = std::make_unique<ev::Timer>(loop_, [this](int) {
      timed_out_ = true;
      ev_break(loop_, EVBREAK_ALL);
    });
    watchdog_->start(kWatchdog);
  }

  void TearDown() override {
    relays_.clear();
    relay_.reset();
    client_.reset();
    upstream_.reset();
    watchdog_.reset();
    ev_loop_destroy(loop_);
    EXPECT_EQ(pool_counters().buffers_in_use, 0u);
    EXPECT_EQ(pool_counters().pipes_in_use, 0u);
  }

  // Builds relay_ between two fresh pairs; client_ and upstream_ are the peers.
  void make_relay(RelayOptions opts = {}) {
    opts.use_splice = GetParam().splice;
    auto [client_side, client_peer] = make_pair(GetParam().transport);
    auto [upstream_side, upstream_peer] = make_pair(GetParam().transport);
    ASSERT_TRUE(client_side && client_peer && upstream_side && upstream_peer);
    set_nonblocking(client_side.get());
    set_nonblocking(upstream_side.get());
    ev_now_update(loop_);  // timers count from start(), not from SetUp
    client_ = std::move(client_peer);
    upstream_ = std::move(upstream_peer);
    relay_ =
        std::make_unique<Relay>(loop_, Conn(std::move(client_side)), Conn(std::move(upstream_side)),
                                opts, [this](const RelayStats& stats, std::string_view reason) {
                                  EXPECT_FALSE(done_) << "done called twice";
                                  done_ = true;
                                  done_at_ = Clock::now();
                                  final_ = stats;
                                  reason_ = reason;
                                });
  }

  // Runs the loop until `pred` holds; false if the watchdog fired first.
  template <class Pred>
  bool run_until(Pred pred) {
    while (!pred()) {
      if (timed_out_) return false;
      ev_run(loop_, EVRUN_ONCE);
    }
    return true;
  }
  bool run_until_done() {
    return run_until([this] { return done_; });
  }

  // Non-blocking peer helpers for the small tests.
  void send_str(int fd, std::string_view s) {
    ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
  }
  // Reads from a non-blocking peer until `n` bytes have arrived.
  std::string read_n(int fd, size_t n) {
    std::string got;
    run_until([&] {
      char buf[65536];
      ssize_t r;
      while (got.size() < n &&
             (r = ::recv(fd, buf, std::min(sizeof(buf), n - got.size()), MSG_DONTWAIT)) > 0) {
        got.append(buf, static_cast<size_t>(r));
      }
      return got.size() >= n;
    });
    return got;
  }
  // True once recv() on the peer returns 0.
  bool wait_eof(int fd) {
    return run_until([&] {
      char c;
      return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
    });
  }

  ev::Loop* loop_ = nullptr;
  std::unique_ptr<ev::Timer> watchdog_;
  bool timed_out_ = false;
  UniqueFd client_;    // peer of the relay's client socket
  UniqueFd upstream_;  // peer of the relay's upstream socket
  std::unique_ptr<Relay> relay_;
  std::vector<std::unique_ptr<Relay>> relays_;
  bool done_ = false;
  Clock::time_point done_at_;
  RelayStats final_;
  std::string reason_;
};

TEST_P(RelayTest, EchoBothWays) {
  make_relay();
  relay_->start();
  send_str(client_.get(), "ping");
  EXPECT_EQ(read_n(upstream_.get(), 4), "ping");
  send_str(upstream_.get(), "pong!");
  EXPECT_EQ(read_n(client_.get(), 5), "pong!");

  ::shutdown(client_.get(), SHUT_WR);
  EXPECT_TRUE(wait_eof(upstream_.get()));
  EXPECT_FALSE(done_);  // the other direction is still open
  send_str(upstream_.get(), "late");
  EXPECT_EQ(read_n(client_.get(), 4), "late");
  ::shutdown(upstream_.get(), SHUT_WR);
  EXPECT_TRUE(wait_eof(client_.get()));

  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kFinished);
  EXPECT_EQ(final_.up, 4u);
  EXPECT_EQ(final_.down, 9u);
  EXPECT_TRUE(relay_->closed());
}

TEST_P(RelayTest, Bulk32MiBEachWayWithChecksums) {
  constexpr size_t kTotal = 32 * kMiB;
  make_relay();
  for (int fd : {client_.get(), upstream_.get()}) set_io_timeout(fd);
  RelayStats totals_before = Relay::totals();
  int c = client_.get(), u = upstream_.get();
  auto up_sent = std::async(std::launch::async, [c] { return write_stream(c, kTotal, 1); });
  auto up_got = std::async(std::launch::async, [u] { return read_stream(u, 2); });
  auto down_sent = std::async(std::launch::async, [u] { return write_stream(u, kTotal, 3); });
  auto down_got = std::async(std::launch::async, [c] { return read_stream(c, 4); });

  auto t0 = Clock::now();
  relay_->start();
  ASSERT_TRUE(run_until_done());
  double secs = std::chrono::duration<double>(done_at_ - t0).count();
  EXPECT_EQ(reason_, Relay::kFinished);

  Digest us = up_sent.get(), ug = up_got.get();
  Digest ds = down_sent.get(), dg = down_got.get();
  EXPECT_EQ(us.bytes, kTotal);
  EXPECT_EQ(ds.bytes, kTotal);
  EXPECT_EQ(us, ug);
  EXPECT_EQ(ds, dg);
  EXPECT_EQ(final_.up, kTotal);
  EXPECT_EQ(final_.down, kTotal);
  EXPECT_EQ(Relay::totals().up - totals_before.up, kTotal);
  EXPECT_EQ(Relay::totals().down - totals_before.down, kTotal);
  std::printf("[ relay    ] %s: 2 x 32 MiB in %.3f s, %.0f MiB/s total\n",
              param_name({GetParam(), 0}).c_str(), secs, 64 / secs);
}

// The client stops sending early; its EOF must reach upstream while the
// downstream direction is still streaming, and every byte of that must arrive.
TEST_P(RelayTest, HalfCloseWhileOtherDirectionStreams) {
  constexpr size_t kDown = 8 * kMiB;
  make_relay();
  for (int fd : {client_.get(), upstream_.get()}) set_io_timeout(fd);
  int c = client_.get(), u = upstream_.get();
  std::promise<void> upstream_saw_eof;
  std::shared_future<void> hold = upstream_saw_eof.get_future().share();
  auto up_got = std::async(std::launch::async, [&upstream_saw_eof, u] {
    Digest got = read_stream(u, 5);
    upstream_saw_eof.set_value();
    return got;
  });
  // Upstream sends half, then waits until it has seen the client's EOF.
  auto down_sent =
      std::async(std::launch::async, [u, hold] { return write_stream(u, kDown, 6, hold); });
  auto down_got = std::async(std::launch::async, [c] { return read_stream(c, 7); });

  relay_->start();
  send_str(client_.get(), std::string(1024, 'q'));
  ::shutdown(client_.get(), SHUT_WR);
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kFinished);

  Digest ug = up_got.get();
  Digest ds = down_sent.get(), dg = down_got.get();
  EXPECT_EQ(ug.bytes, 1024u);
  EXPECT_EQ(ds.bytes, kDown);
  EXPECT_EQ(ds, dg);
  EXPECT_EQ(final_.up, 1024u);
  EXPECT_EQ(final_.down, kDown);
}

TEST_P(RelayTest, ResetMidTransferFinishesWithReason) {
  make_relay();
  set_io_timeout(client_.get());
  int c = client_.get();
  // Writes until the relay goes away.
  auto writer = std::async(std::launch::async, [c] { write_stream(c, 1024 * kMiB, 8); });
  relay_->start();
  set_nonblocking(upstream_.get());
  EXPECT_EQ(read_n(upstream_.get(), 256 * 1024).size(), 256u * 1024);

  // Close with unread data (and for TCP, linger 0): the relay sees a reset.
  linger lg{.l_onoff = 1, .l_linger = 0};
  ::setsockopt(upstream_.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  upstream_.reset();
  ASSERT_TRUE(run_until_done());
  EXPECT_NE(reason_, Relay::kFinished);
  EXPECT_EQ(reason_.rfind("upstream ", 0), 0u) << reason_;
  EXPECT_GE(final_.up, 256u * 1024);
  relay_.reset();  // lets the writer thread fail and finish
}

TEST_P(RelayTest, IdleTimeoutFires) {
  make_relay({.idle_timeout = 0.2});
  auto t0 = Clock::now();
  relay_->start();
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kIdleTimeout);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(190));
  EXPECT_LT(done_at_ - t0, std::chrono::seconds(2));
}

// Sends one byte from `fd` every 0.1 s, `count` times.
class Ticker {
 public:
  Ticker(ev::Loop* loop, int fd, int count)
      : timer_(loop,
               [this, fd](int) {
                 ::send(fd, "x", 1, MSG_NOSIGNAL);
                 if (--left_ == 0) timer_.stop();
               }),
        left_(count) {
    timer_.start(0.1, 0.1);
  }
  bool running() const { return left_ > 0; }

 private:
  ev::Timer timer_;
  int left_;
};

TEST_P(RelayTest, HalfClosedRelayIdleIsClosedAfterLinger) {
  make_relay({.linger_timeout = 0.3});
  relay_->start();
  send_str(client_.get(), "request");
  ::shutdown(client_.get(), SHUT_WR);
  EXPECT_EQ(read_n(upstream_.get(), 7), "request");
  ASSERT_TRUE(wait_eof(upstream_.get()));
  // The upstream never answers nor closes: the relay gives up after the linger.
  auto t0 = Clock::now();
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kLingerTimeout);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(250));
  EXPECT_LT(done_at_ - t0, std::chrono::seconds(2));
}

TEST_P(RelayTest, TrafficAfterHalfCloseKeepsTheRelayAlive) {
  make_relay({.linger_timeout = 0.3});
  relay_->start();
  ::shutdown(client_.get(), SHUT_WR);
  ASSERT_TRUE(wait_eof(upstream_.get()));
  auto t0 = Clock::now();
  Ticker ticker(loop_, upstream_.get(), 8);
  ASSERT_TRUE(run_until([&] { return done_ || !ticker.running(); }));
  EXPECT_FALSE(done_) << reason_;
  ::shutdown(upstream_.get(), SHUT_WR);
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kFinished);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(750));
  EXPECT_EQ(final_.down, 8u);
}

TEST_P(RelayTest, OneWayTrafficKeepsIdleTimerAlive) {
  make_relay({.idle_timeout = 0.3});
  auto t0 = Clock::now();
  relay_->start();
  Ticker ticker(loop_, client_.get(), 9);
  ASSERT_TRUE(run_until([&] { return done_ || !ticker.running(); }));
  EXPECT_FALSE(done_);
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kIdleTimeout);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(1150));
  EXPECT_EQ(final_.up, 9u);
}

TEST_P(RelayTest, BidirTimeoutIgnoresOneWayTraffic) {
  make_relay({.idle_timeout = 0.3, .bidir_timeout = true});
  auto t0 = Clock::now();
  relay_->start();
  Ticker ticker(loop_, client_.get(), 9);
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kBidirTimeout);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(290));
  EXPECT_LT(done_at_ - t0, std::chrono::milliseconds(850));
  EXPECT_GT(final_.up, 0u);
  EXPECT_EQ(final_.down, 0u);
}

TEST_P(RelayTest, BidirTimeoutActsAsIdleTimeoutOnceBothWaysTalked) {
  make_relay({.idle_timeout = 0.3, .bidir_timeout = true});
  relay_->start();
  send_str(client_.get(), "a");
  send_str(upstream_.get(), "b");
  EXPECT_EQ(read_n(upstream_.get(), 1), "a");
  EXPECT_EQ(read_n(client_.get(), 1), "b");
  auto t0 = Clock::now();
  Ticker ticker(loop_, client_.get(), 9);
  ASSERT_TRUE(run_until([&] { return done_ || !ticker.running(); }));
  EXPECT_FALSE(done_);
  ASSERT_TRUE(run_until_done());
  EXPECT_EQ(reason_, Relay::kIdleTimeout);
  EXPECT_GE(done_at_ - t0, std::chrono::milliseconds(1150));
}

TEST_P(RelayTest, InitialUpBytesGoFirst) {
  make_relay();
  send_str(client_.get(), "BODY");  // already waiting on the client socket
  relay_->start("HEAD ");
  EXPECT_FALSE(done_);
  EXPECT_EQ(read_n(upstream_.get(), 9), "HEAD BODY");
  EXPECT_EQ(relay_->stats().up, 9u);
}

// A large preamble to an upstream that does not read yet must wait, not fail.
TEST_P(RelayTest, LargeInitialUpWaitsForUpstream) {
  make_relay();
  std::string big(4 * kMiB, 'h');
  relay_->start(big);
  EXPECT_EQ(read_n(upstream_.get(), big.size()), big);
  ::shutdown(client_.get(), SHUT_WR);
  EXPECT_TRUE(wait_eof(upstream_.get()));
}

TEST_P(RelayTest, IdleRelaysHoldNoBuffers) {
  constexpr int kRelays = 50;
  std::vector<std::pair<UniqueFd, UniqueFd>> peers;
  for (int i = 0; i < kRelays; ++i) {
    auto [cs, cp] = make_pair(GetParam().transport);
    auto [us, up] = make_pair(GetParam().transport);
    RelayOptions opts{.use_splice = GetParam().splice};
    relays_.push_back(std::make_unique<Relay>(loop_, Conn(std::move(cs)), Conn(std::move(us)), opts,
                                              [](const RelayStats&, std::string_view) {}));
    relays_.back()->start();
    peers.emplace_back(std::move(cp), std::move(up));
  }
  for (auto& [client, upstream] : peers) {
    send_str(client.get(), "hello");
    send_str(upstream.get(), "world");
  }
  for (auto& [client, upstream] : peers) {
    EXPECT_EQ(read_n(upstream.get(), 5), "hello");
    EXPECT_EQ(read_n(client.get(), 5), "world");
  }
  EXPECT_EQ(pool_counters().buffers_in_use, 0u);
  EXPECT_EQ(pool_counters().pipes_in_use, 0u);
  std::printf("[ relay    ] sizeof(Relay) = %zu bytes\n", sizeof(Relay));
  EXPECT_LE(sizeof(Relay), 1024u);
}

// Backpressure: a stalled upstream parks exactly one chunk in the relay; once
// upstream reads again the chunk goes back to the pool.
TEST_P(RelayTest, StalledDirectionHoldsOneChunk) {
  make_relay();
  relay_->start();
  set_nonblocking(client_.get());
  std::string junk(kChunkSize, 'j');
  size_t sent = 0;
  auto in_use = [] { return pool_counters().buffers_in_use + pool_counters().pipes_in_use; };
  ASSERT_TRUE(run_until([&] {
    ssize_t n;
    while ((n = ::send(client_.get(), junk.data(), junk.size(), MSG_NOSIGNAL)) > 0) {
      sent += static_cast<size_t>(n);
    }
    // Still filling socket buffers: the relay keeps reading and writing.
    return in_use() == 1 && n < 0 && errno == EAGAIN;
  }));
  ev_run(loop_, EVRUN_NOWAIT);
  EXPECT_EQ(in_use(), 1u);
  EXPECT_EQ(read_n(upstream_.get(), sent).size(), sent);
  EXPECT_EQ(in_use(), 0u);
}

TEST_P(RelayTest, DestroyedBeforeDoneStaysSilent) {
  make_relay({.idle_timeout = 0.05});
  relay_->start();
  send_str(client_.get(), "x");
  ev_run(loop_, EVRUN_NOWAIT);
  relay_.reset();
  bool later = false;
  ev::Timer after_timeout(loop_, [&](int) { later = true; });
  after_timeout.start(0.15);
  ASSERT_TRUE(run_until([&] { return later; }));
  EXPECT_FALSE(done_);
  char c;
  EXPECT_EQ(::recv(upstream_.get(), &c, 1, MSG_DONTWAIT), 1);  // "x" made it
  EXPECT_EQ(::recv(upstream_.get(), &c, 1, MSG_DONTWAIT), 0);  // then the close
}

TEST_P(RelayTest, ClientGoneWhileDownstreamWritesIsAnError) {
  make_relay();
  relay_->start();
  client_.reset();  // full close: EOF upstream, then writes to the client fail
  EXPECT_TRUE(wait_eof(upstream_.get()));
  set_nonblocking(upstream_.get());
  std::string data(64 * 1024, 'd');
  ASSERT_TRUE(run_until([&] {
    ::send(upstream_.get(), data.data(), data.size(), MSG_NOSIGNAL);
    return done_;
  }));
  EXPECT_EQ(reason_.rfind("client write: ", 0), 0u) << reason_;
}

// splice(2) refuses an eventfd as its source (EINVAL): that direction must
// fall back to read(2) and still deliver. The eventfd stands in for the client;
// nothing is ever written to it, so it only needs to be readable.
TEST_P(RelayTest, SourceThatCannotSpliceFallsBackToCopying) {
  auto [upstream_side, upstream_peer] = make_pair(GetParam().transport);
  upstream_ = std::move(upstream_peer);
  UniqueFd events(::eventfd(0, EFD_CLOEXEC));
  int efd = events.get();
  relay_ = std::make_unique<Relay>(loop_, Conn(std::move(events)), Conn(std::move(upstream_side)),
                                   RelayOptions{.use_splice = GetParam().splice},
                                   [](const RelayStats&, std::string_view) {});
  relay_->start();
  for (uint64_t value : {5, 7}) {
    ASSERT_EQ(::write(efd, &value, sizeof(value)), 8);
    std::string got = read_n(upstream_.get(), 8);
    ASSERT_EQ(got.size(), 8u);
    uint64_t relayed;
    std::memcpy(&relayed, got.data(), 8);
    EXPECT_EQ(relayed, value);
  }
  EXPECT_EQ(relay_->stats().up, 16u);
  EXPECT_FALSE(relay_->closed());
}

INSTANTIATE_TEST_SUITE_P(Relay, RelayTest,
                         testing::Values(Param{Transport::kUnix, false},
                                         Param{Transport::kUnix, true},
                                         Param{Transport::kTcp, false},
                                         Param{Transport::kTcp, true}),
                         param_name);

}  // namespace
}  // namespace rs::net
