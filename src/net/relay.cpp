#include "net/relay.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace rs::net {
namespace {

// Bytes one pump moves per wakeup before yielding to other sessions.
constexpr size_t kWakeupBudget = 1024 * 1024;

bool would_block(int err) {
  return err == EAGAIN || err == EWOULDBLOCK;
}

// splice(2) refuses file types it cannot handle with these.
bool splice_unsupported(int err) {
  return err == EINVAL || err == ENOSYS;
}

}  // namespace

Relay::Relay(ev::Loop* loop, Conn client, Conn upstream, RelayOptions opts, DoneCallback done)
    : loop_(loop),
      opts_(opts),
      done_(std::move(done)),
      client_(std::move(client)),
      upstream_(std::move(upstream)),
      up_(this, Dir::kUp, client_, upstream_),
      down_(this, Dir::kDown, upstream_, client_),
      client_io_(loop, [this](int revents) { on_io(client_, revents); }),
      upstream_io_(loop, [this](int revents) { on_io(upstream_, revents); }),
      timer_(loop, [this](int) { on_timer(); }) {}

Relay::~Relay() = default;

void Relay::start(std::string_view initial_up, bool client_watched) {
  last_active_ = ev_now(loop_);
  if (opts_.idle_timeout > 0) timer_.start(opts_.idle_timeout);
  if (client_watched) {
    client_io_.adopt(client_.fd(), 0);
  } else {
    client_io_.set(client_.fd(), 0);
  }
  upstream_io_.set(upstream_.fd(), 0);
  up_.start(initial_up);
  down_.start({});
  sync_watchers();
}

void Relay::on_io(Conn& conn, int revents) {
  const bool client = &conn == &client_;
  Pump& writer = client ? down_ : up_;  // writes to conn
  Pump& reader = client ? up_ : down_;  // reads from conn
  dispatching_ = true;
  if (revents & writer.dst_events()) writer.on_writable();
  if (!closed_ && (revents & reader.src_events())) reader.on_readable();
  dispatching_ = false;
  sync_watchers();
}

void Relay::sync_watchers() {
  if (dispatching_) return;
  if (closed_) {
    client_io_.stop();
    upstream_io_.stop();
    return;
  }
  client_io_.modify(up_.src_events() | down_.dst_events());
  upstream_io_.modify(down_.src_events() | up_.dst_events());
}

void Relay::feed(const Conn& src) {
  (&src == &client_ ? client_io_ : upstream_io_).feed(EV_READ);
}

void Relay::on_traffic(Dir dir, size_t n) {
  if (dir == Dir::kUp) {
    stats_.up += n;
    totals_.up += n;
  } else {
    stats_.down += n;
    totals_.down += n;
  }
  if (lingering_ || !opts_.bidir_timeout || (stats_.up > 0 && stats_.down > 0))
    last_active_ = ev_now(loop_);
}

void Relay::on_pump_finished() {
  if (up_.finished() && down_.finished()) {
    close(kFinished);
  } else if (opts_.linger_timeout > 0 && !lingering_) {
    // From now on the idle timer measures the remaining direction alone.
    lingering_ = true;
    last_active_ = ev_now(loop_);
    timer_.start(timeout());
  }
}

double Relay::timeout() const {
  if (!lingering_) return opts_.idle_timeout;
  if (opts_.idle_timeout <= 0) return opts_.linger_timeout;
  return std::min(opts_.idle_timeout, opts_.linger_timeout);
}

// The timer is not pushed back on every read: it only notes the time of the
// last traffic and, when it fires early, sleeps again for what is left.
void Relay::on_timer() {
  double left = last_active_ + timeout() - ev_now(loop_);
  if (left > 0) {
    timer_.start(left);
    return;
  }
  if (lingering_) {
    close(kLingerTimeout);
    return;
  }
  bool both_ways = stats_.up > 0 && stats_.down > 0;
  close(opts_.bidir_timeout && !both_ways ? kBidirTimeout : kIdleTimeout);
}

void Relay::close(std::string_view reason) {
  if (closed_) return;
  closed_ = true;
  up_.stop();
  down_.stop();
  client_io_.stop();
  upstream_io_.stop();
  timer_.stop();
  client_.reset();
  upstream_.reset();
  done_(stats_, reason);
}

Relay::Pump::Pump(Relay* relay, Dir dir, Conn& src, Conn& dst)
    : relay_(relay),
      dir_(dir),
      // splice(2) would move ciphertext: a TLS leg copies.
      splice_(relay->opts_.use_splice && !src.tls() && !dst.tls()),
      src_(&src),
      dst_(&dst) {}

void Relay::Pump::wait(int src_events, int dst_events) {
  src_events_ = src_events;
  dst_events_ = dst_events;
  relay_->sync_watchers();
}

void Relay::Pump::start(std::string_view preamble) {
  preamble_.assign(preamble);
  if (pending() > 0) {
    wait(0, EV_WRITE);
  } else {
    wait(EV_READ, 0);
    // A TLS handshake may have brought the first bytes along.
    if (src_->pending()) relay_->feed(*src_);
  }
}

void Relay::Pump::stop() {
  wait(0, 0);
  std::string().swap(preamble_);  // frees it; clear() would keep the capacity
  preamble_sent_ = 0;
  pipe_.release();
  buf_.release();
}

void Relay::Pump::on_readable() {
  for (size_t moved = 0; moved < kWakeupBudget;) {
    ssize_t n = fill();
    if (n == 0) {
      on_eof();
      return;
    }
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (!would_block(err)) {
        fail(*src_, "read", err);
      } else if (src_->tls()) {
        // A TLS read may wait for the socket to take bytes (a key update).
        wait(src_->wants(), 0);
      }
      return;
    }
    if (flush() != Flush::kDone) return;
    // A short read means the socket is drained; readiness is level-triggered,
    // so skipping the read that would say EAGAIN loses nothing.
    if (static_cast<size_t>(n) < (splice_ ? kPipeSize : kChunkSize)) return;
    moved += static_cast<size_t>(n);
  }
  // Out of budget with records already decrypted: no socket event will say
  // so, so come back after the other sessions had their turn.
  if (src_->pending()) relay_->feed(*src_);
}

void Relay::Pump::on_writable() {
  if (flush() != Flush::kDone) return;
  if (state_ == State::kLinger) {
    finish();
    return;
  }
  wait(EV_READ, 0);
  // The source most likely has more already: read now rather than next wakeup.
  on_readable();
}

void Relay::Pump::on_eof() {
  state_ = State::kLinger;
  if (flush() == Flush::kDone) finish();
}

void Relay::Pump::finish() {
  state_ = State::kFinished;
  stop();
  const Pump& other = dir_ == Dir::kUp ? relay_->down_ : relay_->up_;
  if (other.finished()) {
    // Both ways are done: the relay closes both sockets right away, and
    // close(2) sends the FIN that shutdown(2) would.
    dst_->close_notify();
  } else {
    // Failure (ENOTCONN after a reset) is left to the other pump to report.
    dst_->shutdown_write();
  }
  relay_->on_pump_finished();
}

void Relay::Pump::fail(const Conn& conn, const char* op, int err) {
  const char* side = &conn == &relay_->client_ ? "client" : "upstream";
  relay_->close(
      fmt::format("{} {}: {}", side, op, err == EPROTO ? conn.error_text() : std::strerror(err)));
}

Relay::Pump::Flush Relay::Pump::flush() {
  while (pending() > 0) {
    ssize_t n = drain();
    if (n > 0) {
      relay_->on_traffic(dir_, static_cast<size_t>(n));
      continue;
    }
    // A stream socket never accepts 0 bytes of a non-empty write; should it
    // happen, waiting for EV_WRITE is the harmless answer.
    int err = n == 0 ? EAGAIN : errno;
    if (err == EINTR) continue;
    if (would_block(err)) {
      // A TLS write may wait for the socket to bring bytes (a key update).
      wait(0, dst_->tls() ? dst_->wants() : EV_WRITE);
      return Flush::kBlocked;
    }
    // The destination refuses splice: copy what the pipe holds, and from now on.
    if (splice_unsupported(err) && pipe_.pending() > 0 && pipe_.spill(buf_)) {
      splice_ = false;
      continue;
    }
    fail(*dst_, "write", err);
    return Flush::kClosed;
  }
  return Flush::kDone;
}

ssize_t Relay::Pump::fill() {
  if (splice_) {
    ssize_t n = pipe_.fill(src_->fd());
    if (n >= 0) return n;
    int err = errno;
    if (splice_unsupported(err)) {
      splice_ = false;  // this source cannot splice: copy from now on
    } else if (err != EMFILE && err != ENFILE) {
      return n;  // EAGAIN or a read error
    }
    // Otherwise no pipe could be made: copy this one chunk.
  }
  return buf_.fill(*src_);
}

ssize_t Relay::Pump::drain() {
  if (preamble_sent_ < preamble_.size()) {
    ssize_t n = dst_->write(preamble_.data() + preamble_sent_, preamble_.size() - preamble_sent_);
    if (n > 0) {
      preamble_sent_ += static_cast<size_t>(n);
      if (preamble_sent_ == preamble_.size()) {
        std::string().swap(preamble_);
        preamble_sent_ = 0;
      }
    }
    return n;
  }
  if (pipe_.pending() > 0) return pipe_.drain(dst_->fd());
  return buf_.drain(*dst_);
}

size_t Relay::Pump::pending() const {
  return preamble_.size() - preamble_sent_ + pipe_.pending() + buf_.pending();
}

}  // namespace rs::net
