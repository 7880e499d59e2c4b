// Upstream proxy URIs as given to -x/--proxy, e.g.
//   socks5://user:p%40ss@[2001:db8::1]:1080
//   socks4a://proxy.lan:1080,http://10.0.0.1:3128
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "proto/address.hpp"

namespace rs::proto {

//   scheme "://" [ user [ ":" password ] "@" ] host ":" port [ "/" ]
// scheme: socks4a (socks4 is read as socks4a), socks5 (socks5h is the same:
// names are always resolved by the proxy), http; in any case. https (HTTP
// CONNECT) and socks5s (SOCKS5) are the same spoken over TLS to the hop.
// host: a name, an IPv4 address or a bracketed IPv6 address.
// port: required, 1..65535; there is no default.
// user, password: percent-decoded; socks4a takes a user (sent as USERID) but
// no password. Credentials the scheme's wire format cannot carry are refused:
// socks5 user or password over 255 bytes (RFC 1929), socks4a user id over 255
// bytes or with a NUL, an http user name with a ':' (RFC 7617).
struct ProxyUri {
  enum class Scheme { kSocks4a, kSocks5, kHttp };
  Scheme scheme = Scheme::kSocks5;
  std::string host;  // without brackets
  uint16_t port = 0;
  std::string username;
  std::string password;
  bool has_auth = false;  // a userinfo part was given, even if empty
  bool tls = false;       // https, socks5s: the hop is spoken to over TLS

  Address address() const;
  // The canonical form (https/socks5s for TLS) with credentials masked ("socks5://***@host:1080"),
  // safe for logs.
  std::string to_string() const;
  bool operator==(const ProxyUri&) const = default;
};

std::string_view scheme_name(ProxyUri::Scheme scheme);

struct ProxyUriResult {
  ProxyUri uri;
  std::string error;  // empty on success; otherwise names the problem
  bool ok() const { return error.empty(); }
};
ProxyUriResult parse_proxy_uri(std::string_view text);

// A comma-separated chain, first hop first. Spaces and tabs around entries are
// ignored; an empty entry is an error.
struct ProxyListResult {
  std::vector<ProxyUri> proxies;
  std::string error;
  bool ok() const { return error.empty(); }
};
ProxyListResult parse_proxy_list(std::string_view text);

}  // namespace rs::proto
