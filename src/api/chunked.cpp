#include "api/chunked.hpp"

#include <algorithm>

#include "proto/text.hpp"

namespace rs::api {
namespace {

using proto::hex_value;

// Longest chunk-size line (with extensions) or trailer line we wait for.
constexpr size_t kMaxLine = 4096;
// Longest trailer section.
constexpr size_t kMaxTrailer = 16384;

enum class Line { kFound, kNeedMore, kTooLong };

// Finds the line at the front of `in`: its text without CRLF/LF, and its
// length with the line end.
Line take_line(std::string_view in, std::string_view& text, size_t& length) {
  size_t lf = in.find('\n');
  if (lf == std::string_view::npos) return in.size() > kMaxLine ? Line::kTooLong : Line::kNeedMore;
  if (lf > kMaxLine) return Line::kTooLong;
  text = in.substr(0, lf);
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  length = lf + 1;
  return Line::kFound;
}

}  // namespace

ChunkedDecoder::Status ChunkedDecoder::feed(std::string_view in, size_t& consumed, std::string& out,
                                            size_t limit) {
  consumed = 0;
  auto fail = [&](std::string msg) {
    error_ = std::move(msg);
    return Status::kError;
  };
  for (;;) {
    std::string_view rest = in.substr(consumed);
    std::string_view text;
    size_t length = 0;
    switch (state_) {
      case State::kSize: {
        Line l = take_line(rest, text, length);
        if (l == Line::kNeedMore) return Status::kNeedMore;
        if (l == Line::kTooLong) return fail("chunk size line too long");
        uint64_t size = 0;
        size_t i = 0;
        for (; i < text.size() && hex_value(text[i]) >= 0; ++i) {
          if (size >> 60) return fail("chunk size too large");
          size = size << 4 | static_cast<uint64_t>(hex_value(text[i]));
        }
        if (i == 0) return fail("malformed chunk size");
        // Only a chunk extension may follow: BWS ";" ...
        size_t j = i;
        while (j < text.size() && proto::is_ows(text[j])) ++j;
        if (j < text.size() && text[j] != ';') return fail("malformed chunk size");
        for (; j < text.size(); ++j) {
          if (!proto::is_text_char(text[j])) return fail("control character in chunk extension");
        }
        consumed += length;
        if (size == 0) {
          state_ = State::kTrailer;
        } else {
          if (size > limit - std::min(limit, out.size())) return Status::kTooLarge;
          remaining_ = size;
          state_ = State::kData;
        }
        break;
      }
      case State::kData: {
        if (rest.empty()) return Status::kNeedMore;
        size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, rest.size()));
        out.append(rest.data(), n);
        consumed += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::kDataEnd;
        break;
      }
      case State::kDataEnd: {
        Line l = take_line(rest, text, length);
        if (l == Line::kNeedMore) return Status::kNeedMore;
        if (l == Line::kTooLong || !text.empty()) return fail("chunk data not followed by CRLF");
        consumed += length;
        state_ = State::kSize;
        break;
      }
      case State::kTrailer: {
        Line l = take_line(rest, text, length);
        if (l == Line::kNeedMore) return Status::kNeedMore;
        if (l == Line::kTooLong) return fail("trailer line too long");
        trailer_bytes_ += length;
        if (trailer_bytes_ > kMaxTrailer) return fail("trailer section too long");
        consumed += length;
        if (text.empty()) {
          state_ = State::kDone;
          return Status::kDone;
        }
        if (text.find(':') == std::string_view::npos) return fail("malformed trailer field");
        break;
      }
      case State::kDone:
        return Status::kDone;
    }
  }
}

}  // namespace rs::api
