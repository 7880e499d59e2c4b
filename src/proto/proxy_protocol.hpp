// PROXY protocol v1 (text) and v2 (binary), HAProxy's spec
// (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt): a load
// balancer in front of the proxy sends one header before the client's bytes,
// naming the client's address and the address it connected to. Pure functions
// over bytes: the reader answers need-more / done / error like the other
// codecs (proto/parse.hpp), the builders make the header a dialer sends.
#pragma once

#include <optional>
#include <string>

#include "proto/address.hpp"
#include "proto/parse.hpp"

namespace rs::proto {

namespace proxy_protocol {
// v1: "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n", at most 107 bytes.
inline constexpr size_t kMaxV1 = 107;
// v2 signature, then ver/cmd, fam/proto, length (network order), addresses, TLVs.
inline constexpr uint8_t kSignature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                           0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
inline constexpr size_t kV2Fixed = 16;
// Longest v2 header we take (addresses and TLVs): more than HAProxy sends
// with every TLV it knows, small enough to bound a handshake buffer.
inline constexpr size_t kMaxV2Payload = 4096;
}  // namespace proxy_protocol

struct ProxyHeader {
  int version = 0;  // 1 or 2
  // The addresses it names: source is the real client, destination the
  // address the client connected to. Absent for v1 "UNKNOWN" and v2 LOCAL
  // (health checks) and for v2 families other than TCP over IPv4/IPv6: the
  // connection's own addresses are then to be used, as the spec says.
  std::optional<Address> source, destination;
  bool operator==(const ProxyHeader&) const = default;
};

// Whether `in` may be the start of a PROXY header (v1 or v2): false as soon
// as one byte differs from both signatures. Needs at least one byte.
bool maybe_proxy_header(Bytes in);

// Reads one header (either version) from the start of the connection.
Parsed<ProxyHeader> parse_proxy_header(Bytes in);

// Builders for dialers: source and destination must be both IPv4 or both
// IPv6 (a mixed pair cannot be expressed: then v1 says UNKNOWN, v2 LOCAL, so
// that the receiver falls back to the connection's addresses).
std::string proxy_header_v1(const Address& source, const Address& destination);
std::string proxy_header_v2(const Address& source, const Address& destination);

}  // namespace rs::proto
