#include "proto/zlib_codec.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <new>
#include <stdexcept>

namespace rs::proto {
namespace {

// Output is produced through a fixed buffer: inflated sizes are unknown in advance, and this
// bounds the overshoot past the size limit to one chunk.
constexpr size_t kChunk = 16 * 1024;

bool is_gzip_magic(std::string_view in) {
  return in.size() >= 2 && static_cast<uint8_t>(in[0]) == 0x1f &&
         static_cast<uint8_t>(in[1]) == 0x8b;
}

// A zlib header: deflate method, window of at most 32 KiB, and a check value making the first
// two bytes a multiple of 31. Raw deflate data passes this test only by rare accident.
bool is_zlib_header(std::string_view in) {
  if (in.size() < 2) return false;
  const unsigned cmf = static_cast<uint8_t>(in[0]), flg = static_cast<uint8_t>(in[1]);
  return (cmf & 0x0f) == Z_DEFLATED && (cmf >> 4) <= 7 && (cmf << 8 | flg) % 31 == 0;
}

int window_bits(Compression format) {
  switch (format) {
    case Compression::kRawDeflate:
      return -MAX_WBITS;
    case Compression::kGzip:
      return MAX_WBITS + 16;
    default:
      return MAX_WBITS;
  }
}

// zlib counts in uInt; feeding a larger input piecewise keeps 4 GiB+ inputs correct.
class Input {
 public:
  explicit Input(std::string_view in) : rest_(in) {}
  void refill(z_stream& zs) {
    if (zs.avail_in != 0 || rest_.empty()) return;
    const size_t n = std::min<size_t>(rest_.size(), UINT_MAX);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(rest_.data()));
    zs.avail_in = static_cast<uInt>(n);
    rest_.remove_prefix(n);
  }
  // Everything zlib has not consumed yet.
  std::string_view unread(const z_stream& zs) const {
    return {reinterpret_cast<const char*>(zs.next_in), zs.avail_in + rest_.size()};
  }
  bool exhausted(const z_stream& zs) const { return zs.avail_in == 0 && rest_.empty(); }
  bool all_given() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

struct Inflater {
  z_stream zs{};
  explicit Inflater(int bits) {
    if (inflateInit2(&zs, bits) != Z_OK) throw std::bad_alloc();
  }
  ~Inflater() { inflateEnd(&zs); }
};

struct Deflater {
  z_stream zs{};
  Deflater(int level, int bits) {
    const int rc = deflateInit2(&zs, level, Z_DEFLATED, bits, 8, Z_DEFAULT_STRATEGY);
    if (rc == Z_MEM_ERROR) throw std::bad_alloc();
    if (rc != Z_OK) throw std::invalid_argument("deflateInit2 failed");
  }
  ~Deflater() { deflateEnd(&zs); }
};

Inflated fail(Inflated::Error error, std::string message) {
  return {error, {}, std::move(message)};
}

Inflated corrupt(std::string message) {
  return fail(Inflated::Error::kCorrupt, std::move(message));
}

}  // namespace

Inflated inflate_body(std::string_view in, Compression format, size_t limit) {
  if (format == Compression::kAuto) {
    format = is_gzip_magic(in)    ? Compression::kGzip
             : is_zlib_header(in) ? Compression::kZlib
                                  : Compression::kRawDeflate;
  }
  Inflater inf(window_bits(format));
  z_stream& zs = inf.zs;
  Input input(in);
  std::string out;
  char buf[kChunk];
  for (;;) {
    input.refill(zs);
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const size_t produced = sizeof buf - zs.avail_out;
    if (produced > limit - out.size()) {
      return fail(Inflated::Error::kTooLarge,
                  "output exceeds the limit of " + std::to_string(limit) + " bytes");
    }
    out.append(buf, produced);
    switch (rc) {
      case Z_OK:
        continue;
      case Z_STREAM_END:
        if (input.exhausted(zs)) return {Inflated::Error::kNone, std::move(out), {}};
        // RFC 1952 allows a gzip file to be several members in a row.
        if (format == Compression::kGzip && is_gzip_magic(input.unread(zs))) {
          inflateReset(&zs);
          continue;
        }
        return corrupt("trailing data after the end of the stream");
      case Z_BUF_ERROR:
        // The output buffer is always fresh, so no progress means the input ran out.
        if (zs.avail_in != 0) return corrupt("corrupt input");
        if (input.exhausted(zs)) return corrupt("truncated input");
        continue;
      case Z_NEED_DICT:
        return corrupt("a preset dictionary is required");
      case Z_MEM_ERROR:
        throw std::bad_alloc();
      default:
        return corrupt(zs.msg ? zs.msg : "corrupt input");
    }
  }
}

std::string deflate_body(std::string_view in, Compression format, int level) {
  if (level < -1 || level > 9) throw std::invalid_argument("compression level must be -1..9");
  Deflater def(level, window_bits(format));
  z_stream& zs = def.zs;
  Input input(in);
  std::string out;
  out.reserve(deflateBound(&zs, in.size()));
  char buf[kChunk];
  for (;;) {
    input.refill(zs);
    // Z_FINISH once the last piece of input is in zlib's hands, and from then on.
    const int flush = input.all_given() ? Z_FINISH : Z_NO_FLUSH;
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    const int rc = deflate(&zs, flush);
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_STREAM_END) return out;
    if (rc != Z_OK && rc != Z_BUF_ERROR) throw std::runtime_error("deflate failed");
  }
}

}  // namespace rs::proto
