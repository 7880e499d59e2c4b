// The API server's pure HTTP helpers (api/http_util.hpp) on a parsed request
// head, as ApiConnection and Endpoints apply them: request target and query
// string, Content-Type (and the RPC media type check), Connection/Expect tokens,
// Accept-Encoding and Transfer-/Content-Encoding lists. The raw input is also
// tried as a target, a query and a media type. Whatever parses is printed
// again and must parse equal.
#include <algorithm>

#include "api/http_util.hpp"
#include "fuzz_util.hpp"
#include "proto/http.hpp"
#include "proto/text.hpp"

using namespace rs;
using namespace rs::api;
using rs::proto::percent_decode;

namespace {

bool is_lower(std::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

std::string encode_component(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

void check_decode(std::string_view s) {
  for (bool plus : {false, true}) {
    auto d = percent_decode(s, plus);
    if (!d) continue;
    FUZZ_CHECK(d->size() <= s.size());
    auto again = percent_decode(encode_component(*d), plus);
    FUZZ_CHECK(again && *again == *d);
  }
}

void check_target(std::string_view target) {
  Target t = split_target(target);
  FUZZ_CHECK(!t.path.empty());
  FUZZ_CHECK(t.path.find_first_of("?#") == std::string_view::npos);
  FUZZ_CHECK(t.query.find('#') == std::string_view::npos);
  check_decode(t.path);
  auto q = parse_query(t.query);
  if (!q) return;
  std::string printed;
  for (const auto& [k, v] : *q) {
    FUZZ_CHECK(query_get(*q, k).has_value());
    parse_flag(v);
    printed += (printed.empty() ? "" : "&") + encode_component(k) + "=" + encode_component(v);
  }
  auto back = parse_query(printed);
  FUZZ_CHECK(back && *back == *q);
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

void check_media_type(std::string_view value) {
  auto mt = parse_media_type(value);
  check_rpc_media_type(value);
  if (!mt) return;
  FUZZ_CHECK(!mt->type.empty() && !mt->subtype.empty());
  FUZZ_CHECK(is_lower(mt->type) && is_lower(mt->subtype));
  std::string printed = mt->type + "/" + mt->subtype;
  for (const auto& [k, v] : mt->params) {
    FUZZ_CHECK(!k.empty() && is_lower(k));
    FUZZ_CHECK(mt->param(k).has_value());
    printed += "; " + k + "=" + quote(v);
  }
  auto back = parse_media_type(printed);
  FUZZ_CHECK(back && back->type == mt->type && back->subtype == mt->subtype &&
             back->params == mt->params);
  if (!check_rpc_media_type(value)) FUZZ_CHECK(!check_rpc_media_type(printed));
}

void check_head(const proto::HttpRequestHead& head) {
  check_target(head.target);
  check_rpc_media_type(head.header("Content-Type"));
  const auto& h = head.headers;
  for (const auto& [name, value] : h) {
    check_media_type(value);
    for (const auto& elem : header_list(h, name)) {
      FUZZ_CHECK(!elem.empty() && is_lower(elem));
      FUZZ_CHECK(elem.find(',') == std::string::npos);
      FUZZ_CHECK(elem.front() != ' ' && elem.front() != '\t');
      FUZZ_CHECK(elem.back() != ' ' && elem.back() != '\t');
      // An element without parameters is a token of its own field.
      if (elem.find(';') == std::string::npos) FUZZ_CHECK(has_token(h, name, elem));
    }
  }
  has_token(h, "Connection", "close");
  has_token(h, "Expect", "100-continue");
  bool deflate = accepts_encoding(h, "deflate");
  if (!proto::find_header(h, "Accept-Encoding")) FUZZ_CHECK(!deflate);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  proto::Bytes in(data, size);
  auto head = proto::parse_http_request(in);
  if (head.done()) check_head(head.value);

  std::string_view text = fuzz::as_text(in);
  check_decode(text);
  check_target(text);
  check_media_type(text);
  return 0;
}
