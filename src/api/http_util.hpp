// Small pure helpers for the API's HTTP handling: request targets and query
// strings, media types, header token lists. No I/O, no state.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proto/http.hpp"
#include "proto/zlib_codec.hpp"

namespace rs::api {

// The request body limit, before and after Content-Encoding is undone.
inline constexpr size_t kMaxBody = size_t{4} << 20;

// The media type of /ruleset/rpcall requests and replies.
inline constexpr std::string_view kRpcMediaType = "application/x-neosocksd-rpc; version=1";

// "/path?query#fragment" -> path and query (without '?'); the fragment is
// dropped. The absolute form "http://host/path?q" gives "/path" and "q".
struct Target {
  std::string_view path;
  std::string_view query;
};
Target split_target(std::string_view target);

// "a=1&b=x%20y&c" -> {a,1} {b,"x y"} {c,""}; keys and values are decoded.
// Empty components are skipped. nullopt on a malformed escape.
using Query = std::vector<std::pair<std::string, std::string>>;
std::optional<Query> parse_query(std::string_view query);
// The value of the first component named `key`.
std::optional<std::string_view> query_get(const Query& query, std::string_view key);
// neosocksd's reading of a flag: 1, y, yes, on, t, true (any case) are true.
bool parse_flag(std::string_view value);

//   media-type = type "/" subtype *( OWS ";" OWS parameter )
//   parameter  = token "=" ( token / quoted-string )      (RFC 9110 section 8.3.1)
// Type, subtype and parameter names are lower-cased; quoted values unquoted.
struct MediaType {
  std::string type, subtype;
  std::vector<std::pair<std::string, std::string>> params;
  std::optional<std::string_view> param(std::string_view name) const;
};
std::optional<MediaType> parse_media_type(std::string_view value);

// Checks a /ruleset/rpcall Content-Type: nullopt when it is
// application/x-neosocksd-rpc with version=1, else what is wrong with it.
std::optional<std::string> check_rpc_media_type(std::optional<std::string_view> content_type);

// Whether any field named `name` lists `token` (comma-separated, any case,
// parameters after ';' ignored), e.g. has_token(h, "Connection", "close").
bool has_token(const proto::HttpHeaders& headers, std::string_view name, std::string_view token);

// Whether Accept-Encoding allows `coding`: listed with a non-zero q-value, or
// covered by "*" when not listed.
bool accepts_encoding(const proto::HttpHeaders& headers, std::string_view coding);

// Every comma-separated element of every field named `name`, trimmed and
// lower-cased, empty elements skipped ("gzip, chunked" -> {gzip, chunked}).
std::vector<std::string> header_list(const proto::HttpHeaders& headers, std::string_view name);

// How a message body is compressed, from its Content-Encoding: nothing (or
// identity), one of deflate (zlib or raw), gzip and x-gzip, or something else.
struct ContentCoding {
  enum Kind { kIdentity, kCompressed, kUnsupported } kind = kIdentity;
  proto::Compression format = proto::Compression::kAuto;  // for kCompressed
  std::string name;                                       // as sent, for messages
};
ContentCoding content_coding(const proto::HttpHeaders& headers);

}  // namespace rs::api
