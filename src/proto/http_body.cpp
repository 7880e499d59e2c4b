#include "proto/http_body.hpp"

#include <algorithm>

#include "proto/text.hpp"

namespace rs::proto {

BodyReader::BodyReader(const BodyFraming& framing) : kind_(framing.kind) {
  switch (framing.kind) {
    case BodyFraming::kNone:
      state_ = State::kDone;
      break;
    case BodyFraming::kLength:
      remaining_ = framing.length;
      state_ = remaining_ == 0 ? State::kDone : State::kRaw;
      break;
    case BodyFraming::kChunked:
      state_ = State::kSize;
      break;
    case BodyFraming::kClose:
      state_ = State::kRaw;
      break;
  }
}

BodyReader::Status BodyReader::fail(std::string why) {
  state_ = State::kError;
  error_ = "http: " + std::move(why);
  return Status::kError;
}

BodyReader::Status BodyReader::feed(std::string_view in, size_t& consumed) {
  consumed = 0;
  size_t i = 0;
  while (i < in.size()) {
    const char c = in[i];
    switch (state_) {
      case State::kDone:
        consumed = i;
        return Status::kDone;
      case State::kError:
        return Status::kError;
      case State::kRaw:
        if (kind_ == BodyFraming::kClose) {
          i = in.size();
        } else {
          size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size() - i));
          i += n;
          remaining_ -= n;
          if (remaining_ == 0) state_ = State::kDone;
        }
        continue;
      case State::kData: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size() - i));
        i += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::kDataCR;
        continue;
      }
      default:
        break;
    }
    // The line-oriented parts, a byte at a time.
    ++i;
    switch (state_) {
      case State::kSize:
        if (++line_bytes_ > kMaxChunkLine) return fail("chunk line too long");
        if (hex_value(c) >= 0) {
          // 16 hex digits fill 64 bits; leading zeros do not count.
          if (remaining_ != 0 || c != '0') ++digits_;
          if (digits_ > 16) return fail("chunk size too large");
          remaining_ = remaining_ << 4 | static_cast<uint64_t>(hex_value(c));
          break;
        }
        if (line_bytes_ == 1) return fail("invalid chunk size");
        if (c == '\r') {
          state_ = State::kSizeLF;
        } else if (c == ';' || is_ows(c)) {
          state_ = State::kExtension;
        } else {
          return fail("invalid chunk size");
        }
        break;
      case State::kExtension:
        if (++line_bytes_ > kMaxChunkLine) return fail("chunk line too long");
        if (c == '\r') {
          state_ = State::kSizeLF;
        } else if (!is_text_char(c)) {
          return fail("invalid chunk extension");
        }
        break;
      case State::kSizeLF:
        if (c != '\n') return fail("chunk line without CRLF");
        line_bytes_ = digits_ = 0;
        state_ = remaining_ == 0 ? State::kTrailerStart : State::kData;
        break;
      case State::kDataCR:
        if (c != '\r') return fail("chunk data without CRLF");
        state_ = State::kDataLF;
        break;
      case State::kDataLF:
        if (c != '\n') return fail("chunk data without CRLF");
        state_ = State::kSize;
        break;
      case State::kTrailerStart:
      case State::kTrailerLine:
        if (++trailer_bytes_ > kMaxTrailers) return fail("trailer section too large");
        if (c == '\r') {
          state_ = state_ == State::kTrailerStart ? State::kEndLF : State::kTrailerLF;
        } else if (state_ == State::kTrailerStart && is_ows(c)) {
          return fail("obsolete line folding in trailers");
        } else if (!is_text_char(c)) {
          return fail("invalid character in trailers");
        } else {
          state_ = State::kTrailerLine;
        }
        break;
      case State::kTrailerLF:
        if (++trailer_bytes_ > kMaxTrailers) return fail("trailer section too large");
        if (c != '\n') return fail("trailer line without CRLF");
        state_ = State::kTrailerStart;
        break;
      case State::kEndLF:
        if (c != '\n') return fail("chunked body without final CRLF");
        state_ = State::kDone;
        consumed = i;
        return Status::kDone;
      default:
        break;
    }
  }
  consumed = i;
  if (state_ == State::kDone) return Status::kDone;
  return state_ == State::kError ? Status::kError : Status::kNeedMore;
}

}  // namespace rs::proto
