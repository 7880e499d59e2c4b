// SOCKS5 UDP request header (RFC 1928 section 7): the input is one whole
// datagram. The parser never asks for more; what it accepts is rebuilt with
// put_socks5_udp_header() and must read back the same header, and the payload
// must be what follows it.
#include <cstring>

#include "fuzz_util.hpp"
#include "proto/socks5.hpp"
#include "proto/socks5_udp.hpp"

using namespace rs::proto;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  auto r = parse_socks5_udp_header(in);
  FUZZ_CHECK(!r.need_more());
  if (r.failed()) {
    FUZZ_CHECK(!r.error.empty());
    FUZZ_CHECK(r.code == 0 || r.code == socks5::kGeneralFailure ||
               r.code == socks5::kAddressTypeNotSupported);
    return 0;
  }
  FUZZ_CHECK(r.consumed >= 4 && r.consumed <= size && r.consumed <= socks5_udp::kMaxHeader);
  if (const auto* name = std::get_if<std::string>(&r.value.addr.host))
    FUZZ_CHECK(!name->empty() && name->size() <= 255 && !parse_ipv4(*name) && !parse_ipv6(*name));

  uint8_t head[socks5_udp::kMaxHeader];
  auto n = put_socks5_udp_header(head, r.value.addr);
  FUZZ_CHECK(n.has_value() && *n <= sizeof head);
  auto back = parse_socks5_udp_header(Bytes(head, *n));
  FUZZ_CHECK(back.done() && back.consumed == *n && back.value.addr == r.value.addr &&
             back.value.frag == 0);

  auto whole = socks5_udp_datagram(r.value.addr, in.subspan(r.consumed));
  FUZZ_CHECK(whole.has_value() && whole->size() == *n + (size - r.consumed));
  FUZZ_CHECK(std::memcmp(whole->data() + *n, data + r.consumed, size - r.consumed) == 0 ||
             size == r.consumed);
  return 0;
}
