// Why an outbound connection failed; each front end maps it to its own reply
// (SOCKS5 REP code, SOCKS4 0x5B, HTTP status).
#pragma once

#include <cstdint>

namespace rs::net {

enum class DialError : uint8_t {
  kOk,
  kGeneral,     // anything else
  kNotAllowed,  // refused by a ruleset or an upstream proxy's policy
  kNetUnreachable,
  kHostUnreachable,  // includes names that do not resolve
  kRefused,
  kTimeout,      // reported as SOCKS5 "TTL expired", HTTP 504
  kAddressType,  // e.g. IPv6 target through a SOCKS4A hop
};

constexpr const char* to_string(DialError e) {
  switch (e) {
    case DialError::kOk:
      return "succeeded";
    case DialError::kGeneral:
      return "general failure";
    case DialError::kNotAllowed:
      return "not allowed";
    case DialError::kNetUnreachable:
      return "network unreachable";
    case DialError::kHostUnreachable:
      return "host unreachable";
    case DialError::kRefused:
      return "connection refused";
    case DialError::kTimeout:
      return "timed out";
    case DialError::kAddressType:
      return "address type not supported";
  }
  return "?";
}

// SOCKS5 REP code (RFC 1928 section 6).
constexpr uint8_t socks5_rep(DialError e) {
  switch (e) {
    case DialError::kOk:
      return 0x00;
    case DialError::kGeneral:
      return 0x01;
    case DialError::kNotAllowed:
      return 0x02;
    case DialError::kNetUnreachable:
      return 0x03;
    case DialError::kHostUnreachable:
      return 0x04;
    case DialError::kRefused:
      return 0x05;
    case DialError::kTimeout:
      return 0x06;
    case DialError::kAddressType:
      return 0x08;
  }
  return 0x01;
}

constexpr DialError from_socks5_rep(uint8_t rep) {
  switch (rep) {
    case 0x00:
      return DialError::kOk;
    case 0x02:
      return DialError::kNotAllowed;
    case 0x03:
      return DialError::kNetUnreachable;
    case 0x04:
      return DialError::kHostUnreachable;
    case 0x05:
      return DialError::kRefused;
    case 0x06:
      return DialError::kTimeout;
    case 0x08:
      return DialError::kAddressType;
    default:
      return DialError::kGeneral;
  }
}

// HTTP status for a CONNECT that failed.
constexpr int http_status(DialError e) {
  switch (e) {
    case DialError::kOk:
      return 200;
    case DialError::kNotAllowed:
      return 403;
    case DialError::kTimeout:
      return 504;
    default:
      return 502;
  }
}

// errno of a failed connect() -> DialError.
DialError from_errno(int err);

}  // namespace rs::net
