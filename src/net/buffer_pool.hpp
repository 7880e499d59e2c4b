// Staging for relayed bytes that holds memory (or a pipe) only while bytes are in flight.
//
// Thousands of established sessions sit idle at any time, so an idle relay
// must cost next to nothing. Neither class below owns anything while it is
// empty: fill() takes a chunk (a buffer, or a pipe for splice(2)) from a
// process-wide free list, and the drain() that empties it gives it back. Both
// free lists are bounded; surplus chunks are freed, pipes closed.
//
// Everything here runs on the loop thread; the pools are not thread-safe.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace rs::net {

class Conn;

// One chunk: a buffer's capacity.
inline constexpr size_t kChunkSize = 64 * 1024;
// What a pipe is asked to hold (F_SETPIPE_SZ; fs.pipe-max-size's default, so
// any user may ask) and the most one splice(2) moves into it. Large pipes
// halve the CPU per byte of a bulk transfer against 64 KiB ones; the kernel
// allocates their pages only as bytes arrive, and where it refuses the size a
// pipe keeps its default capacity, which splice(2) simply fills.
inline constexpr size_t kPipeSize = 1024 * 1024;

struct PoolCounters {
  size_t buffers_in_use = 0;  // held by a ChunkBuffer with pending bytes
  size_t buffers_idle = 0;    // on the free list
  size_t pipes_in_use = 0;
  size_t pipes_idle = 0;
};
const PoolCounters& pool_counters();
// Frees every idle buffer and closes every idle pipe.
void trim_pools();

// Up to kChunkSize bytes read from one fd and not yet written to another.
class ChunkBuffer {
 public:
  ChunkBuffer() = default;
  ChunkBuffer(const ChunkBuffer&) = delete;
  ChunkBuffer& operator=(const ChunkBuffer&) = delete;
  ~ChunkBuffer() { release(); }

  size_t pending() const { return len_ - off_; }
  // One read(2) from `fd` into a chunk taken from the pool; requires
  // pending() == 0. Returns the byte count, 0 at EOF, or -1 with errno. The
  // chunk goes straight back unless bytes arrived.
  ssize_t fill(int fd);
  // One send(2) of pending bytes to the socket `fd` (MSG_NOSIGNAL). Returns the
  // byte count or -1 with errno. The chunk goes back once empty.
  ssize_t drain(int fd);
  // The same through a Conn: a TLS one fills the chunk from as many records
  // as it holds (the decrypted bytes land in the chunk, no copy between);
  // EAGAIN then means "wait for conn.wants()".
  ssize_t fill(Conn& conn);
  ssize_t drain(Conn& conn);
  // Drops pending bytes and returns the chunk.
  void release();

 private:
  std::byte* data_ = nullptr;
  uint32_t off_ = 0;
  uint32_t len_ = 0;
};

// Bytes spliced from one fd into a pipe and not yet spliced out to another.
class SplicePipe {
 public:
  SplicePipe() = default;
  SplicePipe(const SplicePipe&) = delete;
  SplicePipe& operator=(const SplicePipe&) = delete;
  ~SplicePipe() { release(); }

  size_t pending() const { return pending_; }
  // One splice(2) of up to kPipeSize bytes from `fd` into a pipe taken from
  // the pool; requires pending() == 0. Returns like ChunkBuffer::fill; when no
  // pipe can be made, -1 with pipe2's errno (EMFILE, ENFILE).
  ssize_t fill(int fd);
  // One splice(2) of pending bytes into `fd`. Returns the byte count or -1
  // with errno. The pipe goes back once empty.
  ssize_t drain(int fd);
  // Moves all pending bytes into the empty `buf` (for a destination that
  // refuses splice). Returns false, errno set, if they could not all be moved,
  // e.g. more than one chunk's worth (EIO): stream sockets never refuse splice,
  // so this fallback is for exotic destinations only.
  bool spill(ChunkBuffer& buf);
  // Returns an empty pipe to the pool; one with bytes left in it is closed.
  void release();

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
  size_t pending_ = 0;
};

}  // namespace rs::net
