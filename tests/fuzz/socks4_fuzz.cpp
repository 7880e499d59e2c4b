// SOCKS4/4A codecs: the server's request reader and the client's reply reader
// (both run on every input), with the codec contract on prefixes and a round
// trip through the client's request builder.
#include "fuzz_util.hpp"
#include "proto/socks4.hpp"

using namespace rs::proto;
using rs::fuzz::check_codec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);

  auto req = check_codec(parse_socks4_request, in);
  if (req.failed()) FUZZ_CHECK(req.code == socks4::kRejected);
  if (req.done()) {
    const auto& r = req.value;
    FUZZ_CHECK(r.command == socks4::kConnect || r.command == socks4::kBind);
    FUZZ_CHECK(r.userid.size() <= socks4::kMaxString);
    FUZZ_CHECK(r.userid.find('\0') == std::string::npos);
    if (!r.is_4a) FUZZ_CHECK(r.target.is_ipv4());
    // What the client side would send for this target reads back the same:
    // every target a server accepted can be sent on (0.0.0.x and IPv6 as
    // SOCKS4A names).
    auto built = socks4a_request(r.target, r.userid);
    FUZZ_CHECK(built.ok() && !built.bytes.empty());
    const std::string& again = built.bytes;
    {
      auto back = parse_socks4_request(to_bytes(again));
      FUZZ_CHECK(back.done());
      FUZZ_CHECK(back.consumed == again.size());
      FUZZ_CHECK(back.value.command == socks4::kConnect);
      FUZZ_CHECK(back.value.target == r.target);
      FUZZ_CHECK(back.value.userid == r.userid);
    }
  }

  auto reply = check_codec(parse_socks4_reply, in);
  if (reply.done()) {
    FUZZ_CHECK(reply.consumed == 8);
    // The reply builder's output reads back as the same code.
    auto built = socks4_reply(reply.value, Ipv4{in[4], in[5], in[6], in[7]},
                              static_cast<uint16_t>(in[2] << 8 | in[3]));
    auto back = parse_socks4_reply(Bytes(built));
    FUZZ_CHECK(back.done() && back.value == reply.value);
    FUZZ_CHECK(std::equal(built.begin() + 1, built.end(), in.begin() + 1));
  }
  return 0;
}
