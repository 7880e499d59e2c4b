// Whole-body zlib codecs (ruleset/lib/codec.hpp): Content-Encoding deflate and
// gzip bodies of API requests and RPC replies, and the Lua zlib library.
//
// Input: one option byte (bits 0-3: compression level - 1, i.e. -1..9 as
// 0..10 with larger values as -1), then the data. The data is inflated in
// every format under a 1 MiB limit; then it is compressed in every format and
// must inflate back exactly, fail when truncated or followed by garbage, and
// fail (only) when the limit is one byte short.
#include "fuzz_util.hpp"
#include "ruleset/lib/codec.hpp"

using rs::ruleset::deflate_body;
using rs::ruleset::Format;
using rs::ruleset::inflate_body;

namespace {

constexpr size_t kLimit = size_t{1} << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rs::fuzz::Reader r(rs::fuzz::Bytes(data, size));
  const uint8_t opt = r.byte();
  const int level = (opt & 15) <= 10 ? (opt & 15) - 1 : -1;
  const std::string_view in = rs::fuzz::as_text(r.rest());

  for (Format f : {Format::kZlib, Format::kRawDeflate, Format::kGzip, Format::kAuto}) {
    std::string err;
    auto out = inflate_body(in, f, kLimit, &err);
    if (out) {
      FUZZ_CHECK(out->size() <= kLimit);
      FUZZ_CHECK(err.empty());
      // The same stream with a tight limit: fits exactly, not one byte less.
      FUZZ_CHECK(inflate_body(in, f, out->size()) == out);
      if (!out->empty()) FUZZ_CHECK(!inflate_body(in, f, out->size() - 1));
    } else {
      FUZZ_CHECK(!err.empty());
    }
  }

  for (Format f : {Format::kZlib, Format::kRawDeflate, Format::kGzip}) {
    std::string z = deflate_body(in, f, level);
    FUZZ_CHECK(!z.empty());
    std::string err;
    auto back = inflate_body(z, f, in.size(), &err);
    FUZZ_CHECK(back && *back == in);
    if (f != Format::kRawDeflate) FUZZ_CHECK(inflate_body(z, Format::kAuto, in.size()) == back);
    if (!in.empty()) FUZZ_CHECK(!inflate_body(z, f, in.size() - 1));
    FUZZ_CHECK(!inflate_body(std::string_view(z).substr(0, z.size() - 1), f));
    FUZZ_CHECK(!inflate_body(z + "x", f));
    if (f == Format::kGzip) {
      // Concatenated members are one body.
      auto twice = inflate_body(z + z, f);
      FUZZ_CHECK(twice && *twice == std::string(in) + std::string(in));
    }
  }
  return 0;
}
