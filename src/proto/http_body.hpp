// A streaming reader of one HTTP/1.1 message body (RFC 9112 section 6): it
// tells which of the bytes that follow a head belong to the body, so that a
// proxy passes them on as they arrive and never holds a whole body. The bytes
// are not changed: a chunked body goes through with its chunk lines and
// trailers, which the reader checks strictly (CRLF line ends only, hex sizes
// that fit 64 bits, bounded chunk lines and trailer section), so that the
// next hop cannot read a different message from them.
//
// Unlike the head parsers it keeps state between calls (its position in the
// body): feed it each byte once, in order, and drop what it consumed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/http_forward.hpp"

namespace rs::proto {

class BodyReader {
 public:
  enum class Status {
    kNeedMore,  // every byte given belongs to the body; more to come
    kDone,      // the body ended; bytes after `consumed` are the next message
    kError,     // malformed chunked coding; see error()
  };
  static constexpr size_t kMaxChunkLine = 4096;
  static constexpr size_t kMaxTrailers = kMaxHttpHead;

  explicit BodyReader(const BodyFraming& framing = {});
  // Of `in`, `consumed` bytes belong to the body (all of them until it ends).
  // A close-delimited body never ends here: the caller ends it at EOF.
  Status feed(std::string_view in, size_t& consumed);
  bool done() const { return state_ == State::kDone; }
  // At EOF of the source: whether the body is complete (close-delimited ones
  // are, the others are truncated).
  bool complete_at_eof() const { return done() || kind_ == BodyFraming::kClose; }
  const std::string& error() const { return error_; }

 private:
  enum class State {
    kSize,       // chunk-size hex digits
    kExtension,  // after the size, up to CR
    kSizeLF,     // CR seen, LF due
    kData,       // `remaining_` data bytes
    kDataCR,     // CRLF after the data
    kDataLF,
    kTrailerStart,  // at the start of a trailer line (or the final CRLF)
    kTrailerLine,
    kTrailerLF,  // CR seen in a trailer line
    kEndLF,      // CR of the final empty line seen
    kRaw,        // Content-Length or close-delimited
    kDone,
    kError,
  };
  Status fail(std::string why);

  BodyFraming::Kind kind_;
  State state_;
  uint64_t remaining_ = 0;
  size_t digits_ = 0;      // of the current chunk size
  size_t line_bytes_ = 0;  // of the current chunk line
  size_t trailer_bytes_ = 0;
  std::string error_;
};

}  // namespace rs::proto
