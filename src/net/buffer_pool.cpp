#include "net/buffer_pool.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <tuple>
#include <utility>
#include <vector>

#include "net/conn.hpp"

namespace rs::net {
namespace {

// Enough to absorb the churn of busy sessions without keeping much around:
// 1 MiB of buffers; idle pipes cost no user memory, only two fds each.
constexpr size_t kMaxIdleBuffers = 16;
constexpr size_t kMaxIdlePipes = 64;

constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

// Keeps errno across cleanup, so that a caller sees the error of the I/O call.
class SaveErrno {
 public:
  SaveErrno() : saved_(errno) {}
  ~SaveErrno() { errno = saved_; }

 private:
  int saved_;
};

class Pools {
 public:
  ~Pools() { trim(); }

  std::byte* take_buffer() {
    ++counters.buffers_in_use;
    if (buffers_.empty()) return new std::byte[kChunkSize];
    std::byte* p = buffers_.back();
    buffers_.pop_back();
    counters.buffers_idle = buffers_.size();
    return p;
  }
  void give_buffer(std::byte* p) {
    --counters.buffers_in_use;
    if (buffers_.size() >= kMaxIdleBuffers) {
      delete[] p;
      return;
    }
    buffers_.push_back(p);
    counters.buffers_idle = buffers_.size();
  }

  bool take_pipe(int& read_fd, int& write_fd) {
    if (pipes_.empty()) {
      int fds[2];
      if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
      ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(kPipeSize));  // best effort
      read_fd = fds[0];
      write_fd = fds[1];
    } else {
      std::tie(read_fd, write_fd) = pipes_.back();
      pipes_.pop_back();
      counters.pipes_idle = pipes_.size();
    }
    ++counters.pipes_in_use;
    return true;
  }
  // `clean`: the pipe is known to be empty, so it can serve another session.
  void give_pipe(int read_fd, int write_fd, bool clean) {
    --counters.pipes_in_use;
    if (!clean || pipes_.size() >= kMaxIdlePipes) {
      ::close(read_fd);
      ::close(write_fd);
      return;
    }
    pipes_.emplace_back(read_fd, write_fd);
    counters.pipes_idle = pipes_.size();
  }

  void trim() {
    for (std::byte* p : buffers_) delete[] p;
    buffers_.clear();
    for (auto [r, w] : pipes_) {
      ::close(r);
      ::close(w);
    }
    pipes_.clear();
    counters.buffers_idle = counters.pipes_idle = 0;
  }

  PoolCounters counters;

 private:
  std::vector<std::byte*> buffers_;
  std::vector<std::pair<int, int>> pipes_;
};

Pools& pools() {
  static Pools instance;
  return instance;
}

}  // namespace

const PoolCounters& pool_counters() {
  return pools().counters;
}

void trim_pools() {
  pools().trim();
}

ssize_t ChunkBuffer::fill(int fd) {
  if (data_ == nullptr) data_ = pools().take_buffer();
  ssize_t n = ::read(fd, data_, kChunkSize);
  if (n > 0) {
    off_ = 0;
    len_ = static_cast<uint32_t>(n);
  } else {
    SaveErrno keep;
    release();
  }
  return n;
}

ssize_t ChunkBuffer::drain(int fd) {
  ssize_t n = ::send(fd, data_ + off_, pending(), MSG_NOSIGNAL);
  if (n > 0) {
    off_ += static_cast<uint32_t>(n);
    if (pending() == 0) release();
  }
  return n;
}

ssize_t ChunkBuffer::fill(Conn& conn) {
  if (!conn.tls()) return fill(conn.fd());
  if (data_ == nullptr) data_ = pools().take_buffer();
  // A TLS read yields one record (16 KiB at most): fill the whole chunk from
  // as many as are there, so that a chunk costs one write downstream.
  size_t got = 0;
  ssize_t n = 0;
  while (got < kChunkSize) {
    n = conn.read(data_ + got, kChunkSize - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got > 0) {
    off_ = 0;
    len_ = static_cast<uint32_t>(got);
    return static_cast<ssize_t>(got);
  }
  SaveErrno keep;
  release();
  return n;
}

ssize_t ChunkBuffer::drain(Conn& conn) {
  if (!conn.tls()) return drain(conn.fd());
  ssize_t n = conn.write(data_ + off_, pending());
  if (n > 0) {
    off_ += static_cast<uint32_t>(n);
    if (pending() == 0) release();
  }
  return n;
}

void ChunkBuffer::release() {
  if (data_ != nullptr) pools().give_buffer(std::exchange(data_, nullptr));
  off_ = len_ = 0;
}

ssize_t SplicePipe::fill(int fd) {
  if (read_fd_ < 0 && !pools().take_pipe(read_fd_, write_fd_)) return -1;
  ssize_t n = ::splice(fd, nullptr, write_fd_, nullptr, kPipeSize, kSpliceFlags);
  if (n > 0) {
    pending_ = static_cast<size_t>(n);
  } else {
    SaveErrno keep;
    release();
  }
  return n;
}

ssize_t SplicePipe::drain(int fd) {
  ssize_t n = ::splice(read_fd_, nullptr, fd, nullptr, pending_, kSpliceFlags);
  if (n > 0) {
    pending_ -= static_cast<size_t>(n);
    if (pending_ == 0) release();
  }
  return n;
}

bool SplicePipe::spill(ChunkBuffer& buf) {
  // A read(2) from a pipe returns all it holds up to the size asked, so one
  // read into an empty chunk moves up to a chunk's worth.
  if (pending_ > kChunkSize) {
    errno = EIO;
    return false;
  }
  ssize_t n = buf.fill(read_fd_);
  if (n != static_cast<ssize_t>(pending_)) {
    if (n >= 0) errno = EIO;
    return false;
  }
  pending_ = 0;
  release();
  return true;
}

void SplicePipe::release() {
  if (read_fd_ >= 0) pools().give_pipe(read_fd_, write_fd_, pending_ == 0);
  read_fd_ = write_fd_ = -1;
  pending_ = 0;
}

}  // namespace rs::net
