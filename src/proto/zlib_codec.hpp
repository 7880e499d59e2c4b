// Whole-buffer zlib codecs, shared by the ruleset (the Lua zlib library, gzipped ruleset files)
// and the HTTP API (Content-Encoding: deflate / gzip). They live in proto so that both layers
// reach them downwards.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace rs::proto {

enum class Compression {
  kZlib,        // RFC 1950: deflate in a zlib wrapper (also what HTTP calls "deflate")
  kRawDeflate,  // RFC 1951: bare deflate, as sent by some HTTP clients for "deflate"
  kGzip,        // RFC 1952; concatenated members are decoded as one stream
  kAuto,        // inflate only: gzip or zlib by their headers, raw deflate otherwise
};

// The default bound on inflated output, against decompression bombs.
inline constexpr size_t kInflateLimit = size_t{64} << 20;

// What inflate_body() gives: the output, or the kind of failure and a message for people.
struct Inflated {
  enum class Error {
    kNone,
    kTooLarge,  // the output would exceed the limit (an HTTP server answers 413)
    kCorrupt,   // corrupt, truncated or trailing input, or a preset dictionary is needed
  };
  Error error = Error::kNone;
  std::string data;     // the whole output when ok(), else empty
  std::string message;  // when !ok(): e.g. "truncated input"
  bool ok() const { return error == Error::kNone; }
};

// Decompresses `in`, which must hold exactly one complete stream (or, for gzip, members in a
// row), producing at most `limit` bytes. Throws std::bad_alloc when out of memory.
Inflated inflate_body(std::string_view in, Compression format, size_t limit = kInflateLimit);

// Compresses `in`; kAuto means kZlib. `level` is a zlib level: 0 (store) to 9, or -1 for the
// default. Throws std::invalid_argument for a bad level, std::bad_alloc when out of memory.
std::string deflate_body(std::string_view in, Compression format, int level = -1);

}  // namespace rs::proto
