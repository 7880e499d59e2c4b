// SOCKS4 and SOCKS4A codecs: the server side parses requests and builds
// replies; the client side (dialing an upstream socks4a:// hop) does the reverse.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/address.hpp"
#include "proto/parse.hpp"

namespace rs::proto {

namespace socks4 {
inline constexpr uint8_t kVersion = 4;
inline constexpr uint8_t kReplyVersion = 0;
// CD in a request.
inline constexpr uint8_t kConnect = 1;
inline constexpr uint8_t kBind = 2;
// CD in a reply.
inline constexpr uint8_t kGranted = 0x5a;
inline constexpr uint8_t kRejected = 0x5b;
// Longest USERID / SOCKS4A host name we accept, NUL excluded.
inline constexpr size_t kMaxString = 255;
}  // namespace socks4

// Request (SOCKS4):
//   +----+----+----+----+----+----+----+----+----+----+....+----+
//   | VN | CD | DSTPORT |      DSTIP        | USERID       |NULL|
//   +----+----+----+----+----+----+----+----+----+----+....+----+
//      1    1      2              4           variable       1
// SOCKS4A: DSTIP is 0.0.0.x with x != 0, and the host name follows USERID:
//   ... | USERID |NULL| HOSTNAME |NULL|
struct Socks4Request {
  uint8_t command = 0;  // socks4::kConnect or socks4::kBind
  // Ipv4 for SOCKS4; for SOCKS4A the host name, or an Ipv4/Ipv6 when the name
  // is a numeric literal.
  Address target;
  std::string userid;
  bool is_4a = false;
  bool operator==(const Socks4Request&) const = default;
};

// Server side. On kError, `code` is socks4::kRejected.
Parsed<Socks4Request> parse_socks4_request(Bytes in);

// Reply:
//   +----+----+----+----+----+----+----+----+
//   | VN | CD | DSTPORT |      DSTIP        |
//   +----+----+----+----+----+----+----+----+
//      1    1      2              4
// VN is 0; CD is socks4::kGranted or socks4::kRejected.
std::array<uint8_t, 8> socks4_reply(uint8_t code, Ipv4 ip = {}, uint16_t port = 0);

// Client side: a CONNECT request. An Ipv4 target gives plain SOCKS4, a host
// name SOCKS4A. Targets SOCKS4 has no field for go as a SOCKS4A host name, in
// text, for the server to "resolve" (as neosocksd does): an Ipv6 address, and
// a 0.0.0.x address, which as DSTIP would read as the SOCKS4A marker. Fails
// (naming the field) when the userid or a host name is too long or contains a
// NUL, or the host name is empty.
Built socks4a_request(const Address& target, std::string_view userid);

// Client side: the 8-byte reply; the value is CD (socks4::kGranted on
// success). VN should be 0, but VN 4 is accepted too because some servers echo
// the request's version.
Parsed<uint8_t> parse_socks4_reply(Bytes in);

}  // namespace rs::proto
