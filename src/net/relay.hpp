// The relay: moves bytes between an accepted client socket and the dialled
// upstream socket until both directions are done.
//
// Two independent half-duplex pumps, "up" (client -> upstream) and "down"
// (upstream -> client), each moving CONNECTED -> LINGER -> FINISHED and never
// back: at EOF from its source a pump delivers what it still holds, then
// shutdown(dst, SHUT_WR) passes the EOF on, while the other direction goes on.
// A read or write error on either socket ends both directions. Backpressure is
// the choice of watcher: while its destination would block, a pump stops
// watching the source for EV_READ and watches the destination for EV_WRITE.
//
// An idle relay holds no buffer and no pipe: a pump borrows a chunk from the
// pools in buffer_pool.hpp for each read and returns it once written.
//
// Lifecycle: construct (takes both fds) -> start() -> `done` runs exactly once,
// from a loop callback, after both sockets are closed -> the owner destroys
// the Relay. `done` must not destroy
// the Relay (one of its watchers is on the stack): defer that with
// rs::ev::Deferred. Destroying a Relay before `done` runs is fine: it stops
// silently and `done` never runs.
//
// Either side may be TLS (net/conn.hpp): records are decrypted straight into
// the pooled chunk and encrypted from it; a direction with a TLS end copies
// even with use_splice. A TLS side's EOF is passed on as close_notify.
//
// With use_splice, writing into a socket whose peer is gone raises SIGPIPE
// (splice(2) has no MSG_NOSIGNAL), so the process must ignore SIGPIPE.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "core/loop.hpp"
#include "net/buffer_pool.hpp"
#include "net/conn.hpp"

namespace rs::net {

struct RelayOptions {
  // Move bytes with splice(2) through a pipe instead of copying them through a
  // buffer. A direction whose source cannot splice falls back to copying.
  bool use_splice = false;
  // Seconds without traffic in either direction before the relay is closed;
  // 0 = never.
  double idle_timeout = 0;
  // Traffic refreshes the idle timer only once both directions have carried
  // bytes (neosocksd --bidir-timeout): a session that only ever talks one way
  // is closed idle_timeout after start(). Needs idle_timeout > 0.
  bool bidir_timeout = false;
  // Seconds a half-closed relay (one direction finished) may go without
  // traffic before it is closed, so that a peer that never sends its EOF
  // cannot hold the session forever; 0 = never.
  double linger_timeout = 0;
};

struct RelayStats {
  uint64_t up = 0;    // bytes delivered client -> upstream
  uint64_t down = 0;  // bytes delivered upstream -> client
};

class Relay {
 public:
  using DoneCallback = std::function<void(const RelayStats& stats, std::string_view reason)>;

  // Reasons given to `done` other than an I/O error ("client read: ...",
  // "upstream write: ...").
  static constexpr std::string_view kFinished = "finished";  // EOF both ways
  static constexpr std::string_view kIdleTimeout = "idle timeout";
  static constexpr std::string_view kBidirTimeout = "timeout before traffic both ways";
  static constexpr std::string_view kLingerTimeout = "idle after half-close";

  // Takes ownership of both connections, whose sockets must be non-blocking
  // (accept4 and the dialer make them so: no fcntl per session here).
  Relay(ev::Loop* loop, Conn client, Conn upstream, RelayOptions opts, DoneCallback done);
  // Stops the watchers, returns chunks to the pools and closes both fds
  // (unless `done` has run: they are closed then).
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Starts both directions; call once. `initial_up`: bytes already read from
  // the client beyond the handshake, sent upstream before anything else. No
  // I/O happens here, so `done` never runs inside start().
  // `client_watched`: a watcher of the caller is watching the client fd and
  // stops only after this returns, so the relay takes libev's registration
  // of the fd over instead of making it anew (ev::Io::adopt).
  void start(std::string_view initial_up = {}, bool client_watched = false);

  const RelayStats& stats() const { return stats_; }
  // True once `done` has run; the relay then holds nothing.
  bool closed() const { return closed_; }
  // Sums over every relay of the process (for /stats).
  static const RelayStats& totals() { return totals_; }

 private:
  enum class Dir : uint8_t { kUp, kDown };

  // One direction: reads `src`, writes `dst`. A pump only says which events
  // it waits for on each of its two fds (src_events_, dst_events_); the relay
  // owns one watcher per fd, watching for what both pumps wait for on it, and
  // hands each event to the pump that waits for it. That keeps the pumps
  // independent (a pump switches between reading and writing without knowing
  // what the other waits for) at one libev watcher per fd.
  class Pump {
   public:
    Pump(Relay* relay, Dir dir, Conn& src, Conn& dst);
    // `preamble` goes to dst before anything read from src.
    void start(std::string_view preamble);
    // Stops waiting and drops whatever is in flight.
    void stop();
    bool finished() const { return state_ == State::kFinished; }
    int src_events() const { return src_events_; }
    int dst_events() const { return dst_events_; }
    void on_readable();
    void on_writable();

   private:
    enum class State : uint8_t { kConnected, kLinger, kFinished };
    enum class Flush : uint8_t { kDone, kBlocked, kClosed };

    void on_eof();
    void finish();
    // Closes the relay, naming the side of `conn` in the reason.
    void fail(const Conn& conn, const char* op, int err);
    // Writes pending bytes until done, blocked (then waits for EV_WRITE) or
    // failed (then the relay is closed).
    Flush flush();
    ssize_t fill();
    ssize_t drain();
    size_t pending() const;
    void wait(int src_events, int dst_events);

    Relay* relay_;
    Dir dir_;
    State state_ = State::kConnected;
    bool splice_;
    Conn* src_;
    Conn* dst_;
    // The events this pump waits for on src and on dst (EV_READ, EV_WRITE:
    // a TLS read may wait for writability and a TLS write for readability).
    int src_events_ = 0;
    int dst_events_ = 0;
    std::string preamble_;
    size_t preamble_sent_ = 0;
    // At most one of these holds bytes at a time.
    SplicePipe pipe_;
    ChunkBuffer buf_;
  };

  // One fd's event: to the pump writing to it, then to the one reading it.
  void on_io(Conn& conn, int revents);
  // Points each fd's watcher at what the pumps wait for on it.
  void sync_watchers();
  // Bytes a TLS source already holds: no socket event will announce them.
  void feed(const Conn& src);
  void on_traffic(Dir dir, size_t n);
  void on_pump_finished();
  void on_timer();
  double timeout() const;  // the idle timer's period in the current state
  void close(std::string_view reason);

  ev::Loop* loop_;
  RelayOptions opts_;
  DoneCallback done_;
  RelayStats stats_;
  double last_active_ = 0;  // ev_now() of the last traffic that counts for the timer
  bool closed_ = false;
  bool lingering_ = false;  // one direction has finished
  // The fds are declared before the watchers so that the watchers stop
  // before the fds close.
  Conn client_;
  Conn upstream_;
  Pump up_;
  Pump down_;
  ev::Io client_io_;
  ev::Io upstream_io_;
  ev::Timer timer_;
  bool dispatching_ = false;  // inside on_io: it syncs the watchers at its end

  inline static RelayStats totals_;
};

}  // namespace rs::net
