// SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929).
// Server side: parse what a client sends, build the answers. Client side
// (dialing an upstream socks5:// hop): the reverse.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proto/address.hpp"
#include "proto/parse.hpp"

namespace rs::proto {

namespace socks5 {
inline constexpr uint8_t kVersion = 5;
inline constexpr uint8_t kAuthVersion = 1;  // RFC 1929 sub-negotiation
// Longest RFC 1929 user name or password (a one-byte length).
inline constexpr size_t kMaxCredential = 255;

// METHOD
inline constexpr uint8_t kMethodNoAuth = 0x00;
inline constexpr uint8_t kMethodGssapi = 0x01;
inline constexpr uint8_t kMethodPassword = 0x02;
inline constexpr uint8_t kMethodNoAcceptable = 0xff;

// CMD
inline constexpr uint8_t kConnect = 0x01;
inline constexpr uint8_t kBind = 0x02;
inline constexpr uint8_t kUdpAssociate = 0x03;

// ATYP
inline constexpr uint8_t kAtypIpv4 = 0x01;
inline constexpr uint8_t kAtypDomain = 0x03;
inline constexpr uint8_t kAtypIpv6 = 0x04;

// REP
inline constexpr uint8_t kSucceeded = 0x00;
inline constexpr uint8_t kGeneralFailure = 0x01;
inline constexpr uint8_t kNotAllowed = 0x02;
inline constexpr uint8_t kNetworkUnreachable = 0x03;
inline constexpr uint8_t kHostUnreachable = 0x04;
inline constexpr uint8_t kConnectionRefused = 0x05;
inline constexpr uint8_t kTtlExpired = 0x06;
inline constexpr uint8_t kCommandNotSupported = 0x07;
inline constexpr uint8_t kAddressTypeNotSupported = 0x08;
}  // namespace socks5

// ---- Server side ----

// Greeting:
//   +----+----------+----------+
//   |VER | NMETHODS | METHODS  |
//   +----+----------+----------+
//   | 1  |    1     | 1 to 255 |
//   +----+----------+----------+
struct Socks5Greeting {
  std::vector<uint8_t> methods;  // in the client's order
  bool offers(uint8_t method) const;
  bool operator==(const Socks5Greeting&) const = default;
};
Parsed<Socks5Greeting> parse_socks5_greeting(Bytes in);

// Method selection:
//   +----+--------+
//   |VER | METHOD |
//   +----+--------+
//   | 1  |   1    |
//   +----+--------+
std::array<uint8_t, 2> method_reply(uint8_t method);

// Username/password request (RFC 1929):
//   +----+------+----------+------+----------+
//   |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
//   +----+------+----------+------+----------+
//   | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
//   +----+------+----------+------+----------+
// An empty password (PLEN 0) is accepted, as many clients send one.
struct Socks5Auth {
  std::string username;
  std::string password;
  bool operator==(const Socks5Auth&) const = default;
};
Parsed<Socks5Auth> parse_socks5_auth(Bytes in);

// Username/password status:
//   +----+--------+
//   |VER | STATUS |
//   +----+--------+
//   | 1  |   1    |
//   +----+--------+
// STATUS 0 is success, anything else failure.
std::array<uint8_t, 2> auth_reply(bool ok);

// Request:
//   +----+-----+-------+------+----------+----------+
//   |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
//   +----+-----+-------+------+----------+----------+
//   | 1  |  1  | X'00' |  1   | Variable |    2     |
//   +----+-----+-------+------+----------+----------+
// DST.ADDR is 4 bytes for IPv4, 16 for IPv6, or a length byte and that many
// bytes of host name.
struct Socks5Request {
  uint8_t command = 0;  // kConnect, kBind or kUdpAssociate
  Address target;
  bool operator==(const Socks5Request&) const = default;
};
// On kError, `code` is the REP to answer with: kCommandNotSupported for an
// unknown CMD, kAddressTypeNotSupported for an unknown ATYP, kGeneralFailure
// otherwise. RSV is not checked, as most servers do not. A host name that is a
// numeric literal becomes an Ipv4/Ipv6 target; other names are validated by
// make_address() and must not be empty.
Parsed<Socks5Request> parse_socks5_request(Bytes in);

// Reply:
//   +----+-----+-------+------+----------+----------+
//   |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
//   +----+-----+-------+------+----------+----------+
//   | 1  |  1  | X'00' |  1   | Variable |    2     |
//   +----+-----+-------+------+----------+----------+
// `bound` defaults to 0.0.0.0:0 for when there is no address to report. A host
// name that does not fit (empty or over 255 bytes) is sent as 0.0.0.0 instead.
std::string socks5_reply(uint8_t rep, const Address& bound = {});

// ATYP DST.ADDR DST.PORT alone, shared by requests and replies (and by UDP
// datagram headers). On kError, `code` is as for parse_socks5_request().
Parsed<Address> parse_socks5_address(Bytes in);
// Appends ATYP ADDR PORT; false (appending nothing) when a host name is empty
// or longer than 255 bytes.
bool append_socks5_address(std::string& out, const Address& addr);

// ---- Client side ----

// Offers no authentication, plus username/password when we have credentials
// (the server picks; an open server may still choose no authentication).
std::string socks5_greeting(bool with_password);
// The server's method selection; the value is METHOD, kMethodNoAcceptable
// included (the caller decides what to do with it).
Parsed<uint8_t> parse_method_selection(Bytes in);
// RFC 1929 request. Fails (naming the field) when the username is empty or
// either field is longer than socks5::kMaxCredential bytes.
Built socks5_auth_request(std::string_view username, std::string_view password);
// The value is true when STATUS is 0. VER must be 1, though 5 is accepted
// too: some servers answer with the SOCKS version.
Parsed<bool> parse_auth_reply(Bytes in);
// Fails when the target host name is empty or longer than 255 bytes.
Built socks5_request(const Address& target, uint8_t command = socks5::kConnect);

struct Socks5Reply {
  uint8_t rep = 0;
  Address bound;
  bool operator==(const Socks5Reply&) const = default;
};
// kDone for any REP (the caller checks for kSucceeded); kError only for a
// malformed reply.
Parsed<Socks5Reply> parse_socks5_reply(Bytes in);

}  // namespace rs::proto
