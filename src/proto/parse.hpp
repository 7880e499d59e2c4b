// Result type and byte cursor shared by the wire codecs.
//
// Every parser is a pure function of ALL bytes received so far (the caller
// accumulates them): it answers kNeedMore until the message is complete, then
// kDone with the message length in `consumed`. Because the answer depends only
// on the bytes, any split of the input into reads gives the same outcome, and a
// parser never holds state between calls.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace rs::proto {

using Bytes = std::span<const uint8_t>;

// Views text as bytes (tests, and builders' output fed back to parsers).
inline Bytes to_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

enum class ParseStatus { kNeedMore, kDone, kError };

template <class T>
struct Parsed {
  ParseStatus status = ParseStatus::kNeedMore;
  // Length of this message; bytes after it belong to the next message or to
  // the relayed payload.
  size_t consumed = 0;
  T value{};
  // On kError: what went wrong, for the log.
  std::string error;
  // On kError: what a server should answer, where the protocol has a way to
  // say it (SOCKS4 CD, SOCKS5 REP, HTTP status); 0 when it has none.
  int code = 0;

  bool done() const { return status == ParseStatus::kDone; }
  bool need_more() const { return status == ParseStatus::kNeedMore; }
  bool failed() const { return status == ParseStatus::kError; }
};

template <class T>
Parsed<T> need_more() {
  return {};
}
template <class T>
Parsed<T> parse_error(std::string error, int code = 0) {
  return {ParseStatus::kError, 0, T{}, std::move(error), code};
}
template <class T>
Parsed<T> parse_done(size_t consumed, T value) {
  return {ParseStatus::kDone, consumed, std::move(value), {}, 0};
}

// What a client-side builder made: the message, or (bytes empty) why the
// target or the credentials cannot be put into one. A builder never returns
// an empty message on failure alone: the caller must look at `error`.
struct Built {
  std::string bytes;
  std::string error;  // empty when the message was built

  bool ok() const { return error.empty(); }
};

inline Built built(std::string bytes) {
  return {std::move(bytes), {}};
}
inline Built build_error(std::string why) {
  return {{}, std::move(why)};
}

// Forward-only cursor for binary messages. Each read fails (consuming
// nothing) when the bytes have not arrived yet, so a parser can stop at the
// first missing byte and report kNeedMore.
class ByteReader {
 public:
  explicit ByteReader(Bytes in) : in_(in) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return in_.size() - pos_; }

  bool u8(uint8_t& out) {
    if (remaining() < 1) return false;
    out = in_[pos_++];
    return true;
  }
  // Network byte order.
  bool u16(uint16_t& out) {
    if (remaining() < 2) return false;
    out = static_cast<uint16_t>(in_[pos_] << 8 | in_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  template <size_t N>
  bool array(std::array<uint8_t, N>& out) {
    if (remaining() < N) return false;
    std::memcpy(out.data(), in_.data() + pos_, N);
    pos_ += N;
    return true;
  }
  bool text(size_t n, std::string& out) {
    if (remaining() < n) return false;
    out.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }

  enum class Scan { kFound, kNeedMore, kTooLong };
  // Reads a NUL-terminated string of at most `max` bytes (the NUL excluded),
  // giving up as soon as more than `max` bytes arrived without a NUL.
  Scan cstring(size_t max, std::string& out) {
    size_t window = std::min(remaining(), max + 1);
    const auto* start = in_.data() + pos_;
    // memchr() must not see a null pointer, even with a zero length.
    const auto* nul =
        window == 0 ? nullptr : static_cast<const uint8_t*>(std::memchr(start, 0, window));
    if (nul == nullptr) return remaining() > max ? Scan::kTooLong : Scan::kNeedMore;
    out.assign(reinterpret_cast<const char*>(start), static_cast<size_t>(nul - start));
    pos_ += out.size() + 1;
    return Scan::kFound;
  }

 private:
  Bytes in_;
  size_t pos_ = 0;
};

// Appends a 16-bit value in network byte order.
inline void put_u16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}

}  // namespace rs::proto
