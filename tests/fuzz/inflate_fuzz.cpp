// Whole-body zlib codecs (proto/zlib_codec.hpp): Content-Encoding deflate and
// gzip bodies of API requests and RPC replies, and the Lua zlib library.
//
// Input: one option byte (bits 0-3: compression level - 1, i.e. -1..9 as
// 0..10 with larger values as -1), then the data. The data is inflated in
// every format under a 1 MiB limit; then it is compressed in every format and
// must inflate back exactly, fail as corrupt when truncated or followed by
// garbage, and fail as too large (only) when the limit is one byte short.
#include "fuzz_util.hpp"
#include "proto/zlib_codec.hpp"

using rs::proto::Compression;
using rs::proto::deflate_body;
using rs::proto::inflate_body;
using Error = rs::proto::Inflated::Error;

namespace {

constexpr size_t kLimit = size_t{1} << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rs::fuzz::Reader r(rs::fuzz::Bytes(data, size));
  const uint8_t opt = r.byte();
  const int level = (opt & 15) <= 10 ? (opt & 15) - 1 : -1;
  const std::string_view in = rs::fuzz::as_text(r.rest());

  for (Compression f :
       {Compression::kZlib, Compression::kRawDeflate, Compression::kGzip, Compression::kAuto}) {
    auto out = inflate_body(in, f, kLimit);
    FUZZ_CHECK(out.ok() == out.message.empty());
    if (out.ok()) {
      FUZZ_CHECK(out.data.size() <= kLimit);
      // The same stream with a tight limit: fits exactly, not one byte less.
      auto exact = inflate_body(in, f, out.data.size());
      FUZZ_CHECK(exact.ok() && exact.data == out.data);
      if (!out.data.empty())
        FUZZ_CHECK(inflate_body(in, f, out.data.size() - 1).error == Error::kTooLarge);
    } else {
      FUZZ_CHECK(out.data.empty());
    }
  }

  for (Compression f : {Compression::kZlib, Compression::kRawDeflate, Compression::kGzip}) {
    std::string z = deflate_body(in, f, level);
    FUZZ_CHECK(!z.empty());
    auto back = inflate_body(z, f, in.size());
    FUZZ_CHECK(back.ok() && back.data == in);
    if (f != Compression::kRawDeflate) {
      auto detected = inflate_body(z, Compression::kAuto, in.size());
      FUZZ_CHECK(detected.ok() && detected.data == in);
    }
    if (!in.empty()) FUZZ_CHECK(inflate_body(z, f, in.size() - 1).error == Error::kTooLarge);
    FUZZ_CHECK(inflate_body(std::string_view(z).substr(0, z.size() - 1), f).error ==
               Error::kCorrupt);
    FUZZ_CHECK(inflate_body(z + "x", f).error == Error::kCorrupt);
    if (f == Compression::kGzip) {
      // Concatenated members are one body.
      auto twice = inflate_body(z + z, f);
      FUZZ_CHECK(twice.ok() && twice.data == std::string(in) + std::string(in));
    }
  }
  return 0;
}
