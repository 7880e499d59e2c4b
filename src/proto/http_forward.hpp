// What a forward HTTP proxy does to a message head (RFC 9110 section 7.6,
// RFC 9112 sections 3.2 and 6): read the absolute-form request target, decide
// how each body is framed (refusing every ambiguous framing, the ground of
// request smuggling) and rewrite the heads for the next hop. Pure functions
// over parsed heads (proto/http.hpp); the bodies themselves are read by
// proto/http_body.hpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proto/address.hpp"
#include "proto/http.hpp"

namespace rs::proto {

//   absolute-form = "http://" authority path-abempty [ "?" query ]
// with authority = host [ ":" port ] (no userinfo, RFC 9110 section 4.2.4).
struct AbsoluteTarget {
  Address origin;           // port 80 when the URI names none
  std::string authority;    // as written, for the Host field
  std::string origin_form;  // path and query, "/" when the path is empty
  bool operator==(const AbsoluteTarget&) const = default;
};
// nullopt for origin-form, authority-form, "*", another scheme, userinfo, a
// fragment or a malformed authority.
std::optional<AbsoluteTarget> parse_absolute_target(std::string_view target);

// How a body is delimited (RFC 9112 section 6.3).
struct BodyFraming {
  enum Kind { kNone, kLength, kChunked, kClose } kind = kNone;
  uint64_t length = 0;  // kLength
  std::string error;    // not empty: the framing is ambiguous or malformed
  bool ok() const { return error.empty(); }
};

// A request: Content-Length or chunked or nothing. Refused: Transfer-Encoding
// with Content-Length, any Transfer-Encoding but a final "chunked" (once),
// Transfer-Encoding in HTTP/1.0, more than one Content-Length (even equal
// ones, or a list) and a malformed one.
BodyFraming request_framing(const HttpRequestHead& head);
// A response to `method`: nothing for HEAD and for 1xx, 204 and 304;
// otherwise as for a request, except that a message with neither field, or a
// Transfer-Encoding not ending in chunked, runs until the connection closes.
BodyFraming response_framing(const HttpResponseHead& head, std::string_view method);

// Whether the field value (a comma-separated list, as Connection's) holds
// `token` in any case.
bool has_token(const HttpHeaders& headers, std::string_view name, std::string_view token);

// The client wants the connection kept after this exchange: HTTP/1.1 without
// "close" in Connection or Proxy-Connection.
bool wants_keep_alive(const HttpRequestHead& head);
// The request asks for a protocol switch: Upgrade, named in Connection.
bool is_upgrade(const HttpRequestHead& head);

inline constexpr std::string_view kVia = "1.1 rulesocks";

// The request as the origin gets it: origin-form target, the client's HTTP
// version, Host from the target, hop-by-hop fields dropped (Connection and
// every field it names, Proxy-Connection, Proxy-Authorization, Keep-Alive,
// TE, Trailer, and Upgrade unless upgrading), Via appended, and
// "Connection: close" unless `keep_upstream` ("upgrade" when upgrading).
std::string forward_request_head(const HttpRequestHead& head, const AbsoluteTarget& target,
                                 bool keep_upstream = false);
// The response as the client gets it: the same hop-by-hop fields dropped
// (Upgrade kept on a 101), Via appended, and "Connection: close" unless
// `keep_alive` (or "upgrade" on a 101). Transfer-Encoding is kept: the body
// goes through as it came.
std::string forward_response_head(const HttpResponseHead& head, bool keep_alive);

}  // namespace rs::proto
