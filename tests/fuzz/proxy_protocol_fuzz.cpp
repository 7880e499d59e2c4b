// PROXY protocol v1/v2 reader: the codec contract on prefixes, and every
// header it accepts with TCP addresses is rebuilt by the builder of its
// version and reads back as the same addresses.
#include "fuzz_util.hpp"
#include "proto/proxy_protocol.hpp"

using namespace rs::proto;
using rs::fuzz::check_codec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  auto r = check_codec(parse_proxy_header, in);
  if (r.failed()) FUZZ_CHECK(!r.error.empty());
  if (!r.done()) return 0;
  const auto& h = r.value;
  FUZZ_CHECK(h.version == 1 || h.version == 2);
  FUZZ_CHECK(r.consumed <= (h.version == 1
                                ? proxy_protocol::kMaxV1
                                : proxy_protocol::kV2Fixed + proxy_protocol::kMaxV2Payload));
  FUZZ_CHECK(h.source.has_value() == h.destination.has_value());
  if (!h.source) return 0;
  FUZZ_CHECK(!h.source->is_domain() && h.source->is_ipv4() == h.destination->is_ipv4());
  const std::string again = h.version == 1 ? proxy_header_v1(*h.source, *h.destination)
                                           : proxy_header_v2(*h.source, *h.destination);
  auto back = parse_proxy_header(to_bytes(again));
  FUZZ_CHECK(back.done() && back.consumed == again.size());
  FUZZ_CHECK(back.value == h);
  return 0;
}
