// The chunked transfer coding decoder (api/chunked.hpp), used for API request
// bodies and RPC replies, fed the way ApiConnection and the RPC client feed it:
// whatever arrived, dropping what it consumed.
//
// Input: one byte choosing the body limit (2^(b % 23) bytes), then the coded
// body. Checks: consumed never exceeds the input, the body never exceeds the
// limit, and the outcome (status, body, error, bytes used) does not depend on
// how the input was split. A decoded body, coded again in random chunk sizes
// with an extension and a trailer field, decodes to the same body.
#include "api/chunked.hpp"
#include "fuzz_util.hpp"

using rs::api::ChunkedDecoder;
using rs::fuzz::Rng;
using Status = ChunkedDecoder::Status;

namespace {

struct Outcome {
  Status status = Status::kNeedMore;
  std::string body;
  std::string error;
  size_t used = 0;  // bytes of the input the decoder took
  bool operator==(const Outcome&) const = default;
};

Outcome decode(std::string_view coded, const std::vector<size_t>& chunks, size_t limit) {
  ChunkedDecoder dec;
  Outcome o;
  std::string in;
  size_t pos = 0;
  for (size_t n : chunks) {
    in.append(coded.substr(pos, n));
    pos += n;
    size_t consumed = 12345;
    o.status = dec.feed(in, consumed, o.body, limit);
    FUZZ_CHECK(consumed <= in.size());
    FUZZ_CHECK(o.body.size() <= limit);
    in.erase(0, consumed);
    o.used += consumed;
    if (o.status != Status::kNeedMore) break;
  }
  if (o.status == Status::kError) {
    FUZZ_CHECK(!dec.error().empty());
    o.error = dec.error();
  }
  // Once finished, more input changes nothing.
  if (o.status != Status::kNeedMore) {
    size_t consumed = 0;
    std::string body = o.body;
    Status again = dec.feed("0\r\n\r\n", consumed, body, limit);
    if (o.status == Status::kDone) FUZZ_CHECK(again == Status::kDone && consumed == 0);
    FUZZ_CHECK(body.size() <= limit);
  }
  return o;
}

std::string encode(std::string_view body, Rng& rng) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t pos = 0; pos < body.size();) {
    size_t n = 1 + rng.upto(std::min<size_t>(body.size() - pos, 300) - 1);
    std::string size;
    for (size_t v = n; v > 0; v >>= 4) size.insert(size.begin(), kHex[v & 15]);
    out += size + (rng.upto(1) ? ";ext=\"1\"" : "") + "\r\n";
    out.append(body.substr(pos, n));
    out += "\r\n";
    pos += n;
  }
  out += "0\r\nTrailer-Field: x\r\n\r\n";
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rs::fuzz::Reader r(rs::fuzz::Bytes(data, size));
  const size_t limit = size_t{1} << (r.byte() % 23);
  const std::string_view coded = rs::fuzz::as_text(r.rest());
  Rng rng = Rng::of(r.rest());

  const Outcome whole = decode(coded, rs::fuzz::split_sizes(coded.size(), 0, rng), limit);
  FUZZ_CHECK(whole.used <= coded.size());
  if (whole.status == Status::kNeedMore) FUZZ_CHECK(whole.used <= coded.size());
  const int first_mode = coded.size() <= 2048 ? 1 : 2;
  for (int mode = first_mode; mode <= 2; ++mode) {
    Outcome split = decode(coded, rs::fuzz::split_sizes(coded.size(), mode, rng), limit);
    FUZZ_CHECK(split == whole);
  }

  if (whole.status == Status::kDone) {
    std::string again = encode(whole.body, rng);
    Outcome back = decode(again, {again.size()}, limit);
    FUZZ_CHECK(back.status == Status::kDone);
    FUZZ_CHECK(back.body == whole.body);
    FUZZ_CHECK(back.used == again.size());
  }
  return 0;
}
