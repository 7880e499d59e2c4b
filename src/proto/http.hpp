// HTTP/1.x message heads (RFC 9112) for the HTTP CONNECT proxy, the RPC
// server and the HTTP client side of upstream hops, plus the small helpers
// around them (Basic auth, base64, Content-Length, canned responses).
//
// The head readers own no buffer: they are handed everything received so far
// and answer kNeedMore until the blank line ending the head has arrived.
// Bodies are the caller's business; `consumed` tells where the body starts.
// Chunked request bodies are not decoded here: a server that meets
// Transfer-Encoding on a request answers 411 or 501 itself.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/address.hpp"
#include "proto/parse.hpp"
#include "proto/text.hpp"  // iequals, for users of HttpHeaders

namespace rs::proto {

inline constexpr size_t kMaxHttpHead = 16384;

// Header fields in arrival order, names as sent; look them up with
// find_header(), which ignores case.
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// Value of the first field named `name` (any case).
std::optional<std::string_view> find_header(const HttpHeaders& headers, std::string_view name);

//   request-line = method SP request-target SP HTTP-version CRLF
//   *( field-name ":" OWS field-value OWS CRLF )
//   CRLF
struct HttpRequestHead {
  std::string method;
  std::string target;
  int minor_version = 1;  // HTTP/1.0 or HTTP/1.1
  HttpHeaders headers;

  std::optional<std::string_view> header(std::string_view name) const {
    return find_header(headers, name);
  }
  bool operator==(const HttpRequestHead&) const = default;
};

//   status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF
//   *( field-name ":" OWS field-value OWS CRLF )
//   CRLF
struct HttpResponseHead {
  int minor_version = 1;
  int status = 0;
  std::string reason;
  HttpHeaders headers;

  std::optional<std::string_view> header(std::string_view name) const {
    return find_header(headers, name);
  }
  bool operator==(const HttpResponseHead&) const = default;
};

// Reads a request head. Bare LF line endings are accepted, as are empty lines
// before the request line (RFC 9112 section 2.2). Rejected: obsolete line
// folding, whitespace before a field's colon, control characters, anything
// but HTTP/1.0 and HTTP/1.1, and heads longer than `max_head` bytes. On kError,
// `code` is the status to answer: 414 when the request line alone is too long,
// 431 when the head is, 505 for another HTTP version, 400 otherwise.
Parsed<HttpRequestHead> parse_http_request(Bytes in, size_t max_head = kMaxHttpHead);
// Reads a response head under the same rules (a missing reason phrase is
// fine); the status code must be 100..599. `code` is 502 on kError: what a
// proxy relaying this answer tells its own client.
Parsed<HttpResponseHead> parse_http_response(Bytes in, size_t max_head = kMaxHttpHead);

// Content-Length: one field value, digits only, must fit 64 bits.
std::optional<uint64_t> parse_content_length(std::string_view value);
// Content-Length over all of a message's fields. Duplicates, or a list such
// as "42, 42", are fine when every value agrees (RFC 9110 section 8.6);
// conflicting or malformed values make `valid` false (answer 400).
struct ContentLength {
  bool valid = true;
  std::optional<uint64_t> length;  // nullopt when there is no Content-Length
};
ContentLength content_length(const HttpHeaders& headers);

// Standard base64 with padding (RFC 4648 section 4). Decoding rejects other
// characters, missing or misplaced padding and non-zero padding bits.
std::string base64_encode(std::string_view data);
std::optional<std::string> base64_decode(std::string_view text);

// "Basic <base64 of user:pass>" (RFC 7617), scheme in any case. The password
// may contain ':', the user name may not.
std::optional<std::pair<std::string, std::string>> parse_basic_auth(std::string_view value);

// The reason phrase for the status codes we send; "" for others.
std::string_view status_reason(int status);

// A complete HTTP/1.1 response. `reason` defaults to status_reason(status);
// Content-Length is added unless `headers` has one.
std::string http_response(int status, std::string_view reason = {}, const HttpHeaders& headers = {},
                          std::string_view body = {});
// The 200 answer to CONNECT, which must not carry Content-Length (RFC 9110
// section 9.3.6): the tunnel starts right after it.
std::string http_connect_established();

// A CONNECT request for an upstream HTTP proxy hop, with Proxy-Authorization
// when `user` is not empty. Fails when `user` contains a ':', which Basic
// credentials cannot carry (RFC 7617 section 2: the first ':' ends the user).
Built http_connect_request(const Address& target, std::string_view user, std::string_view pass);

}  // namespace rs::proto
