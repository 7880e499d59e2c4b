// Whole-buffer zlib codecs without Lua, shared by the Lua zlib library and the HTTP API
// (Content-Encoding: deflate / gzip).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace rs::ruleset {

enum class Format {
  kZlib,        // RFC 1950: deflate in a zlib wrapper (also what HTTP calls "deflate")
  kRawDeflate,  // RFC 1951: bare deflate, as sent by some HTTP clients for "deflate"
  kGzip,        // RFC 1952; concatenated members are decoded as one stream
  kAuto,        // inflate only: gzip or zlib by their headers, raw deflate otherwise
};

// The default bound on inflated output, against decompression bombs.
inline constexpr size_t kInflateLimit = size_t{64} << 20;

// Decompresses `in`, which must hold exactly one complete stream. Returns nullopt and sets *err
// (if given) on corrupt, truncated or trailing input, or when the output would exceed `limit`
// bytes. Throws std::bad_alloc when out of memory.
std::optional<std::string> inflate_body(std::string_view in, Format format,
                                        size_t limit = kInflateLimit, std::string* err = nullptr);

// Compresses `in`; kAuto means kZlib. `level` is a zlib level: 0 (store) to 9, or -1 for the
// default. Throws std::invalid_argument for a bad level, std::bad_alloc when out of memory.
std::string deflate_body(std::string_view in, Format format, int level = -1);

}  // namespace rs::ruleset
