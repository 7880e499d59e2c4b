// Decoder for the chunked transfer coding (RFC 9112 section 7.1), fed with
// whatever bytes have arrived. It consumes from the front of its input and
// keeps only its position in the coding between calls, so the caller can drop
// consumed bytes as it goes.
//
//   chunked-body = *chunk last-chunk trailer-section CRLF
//   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//   last-chunk   = 1*("0") [ chunk-ext ] CRLF
//
// Chunk extensions and trailer fields are read and ignored; bare LF line ends
// are accepted as for heads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace rs::api {

class ChunkedDecoder {
 public:
  enum class Status {
    kNeedMore,  // everything usable was consumed; feed more bytes
    kDone,      // the body ended; bytes after `consumed` are the next message
    kError,     // malformed; see error()
    kTooLarge,  // the decoded body would exceed `limit`
  };

  // Decodes from the front of `in`, appending chunk data to `out` (which holds
  // the body so far) and setting `consumed` to how many bytes of `in` were used.
  Status feed(std::string_view in, size_t& consumed, std::string& out, size_t limit);
  const std::string& error() const { return error_; }
  void reset() { *this = ChunkedDecoder(); }

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone } state_ = State::kSize;
  uint64_t remaining_ = 0;    // bytes of chunk data still to come
  size_t trailer_bytes_ = 0;  // trailer section read so far
  std::string error_;
};

}  // namespace rs::api
