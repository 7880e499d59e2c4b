// HTTP/1.x heads (proto/http.hpp): the request reader (CONNECT port and API
// server) and the response reader (HTTP hops, RPC client), each with the
// default head limit and a small one, under the codec contract; what they
// accept is printed again and must read back equal. Also Content-Length over
// the parsed fields, base64 and Basic credentials.
#include <algorithm>

#include "fuzz_util.hpp"
#include "proto/http.hpp"

using namespace rs::proto;
using rs::fuzz::as_text;
using rs::fuzz::check_codec;

namespace {

std::string print_headers(const HttpHeaders& headers) {
  std::string out;
  for (const auto& [name, value] : headers) out += name + ": " + value + "\r\n";
  return out + "\r\n";
}

// Basic credentials: what parses is re-encoded and parses the same.
void check_credentials(std::string_view value) {
  auto creds = parse_basic_auth(value);
  if (!creds) return;
  FUZZ_CHECK(creds->first.find(':') == std::string::npos);
  auto again = parse_basic_auth("Basic " + base64_encode(creds->first + ":" + creds->second));
  FUZZ_CHECK(again && *again == *creds);
}

void check_fields(const HttpHeaders& headers) {
  for (const auto& [name, value] : headers) {
    FUZZ_CHECK(!name.empty());
    FUZZ_CHECK(name.find_first_of(" \t:\r\n") == std::string::npos);
    FUZZ_CHECK(value.find_first_of("\r\n") == std::string::npos);
    FUZZ_CHECK(value.empty() || (value.front() != ' ' && value.front() != '\t' &&
                                 value.back() != ' ' && value.back() != '\t'));
    FUZZ_CHECK(find_header(headers, name).has_value());
    check_credentials(value);
  }
  auto cl = content_length(headers);
  if (cl.length) FUZZ_CHECK(cl.valid && find_header(headers, "content-length"));
  if (!cl.valid) FUZZ_CHECK(!cl.length);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const size_t small = 16 + size % 200;

  for (size_t limit : {kMaxHttpHead, small}) {
    auto req = check_codec([limit](Bytes b) { return parse_http_request(b, limit); }, in);
    if (req.failed()) {
      FUZZ_CHECK(req.code == 400 || req.code == 414 || req.code == 431 || req.code == 505);
    }
    if (req.done()) {
      const auto& h = req.value;
      FUZZ_CHECK(req.consumed <= limit);
      FUZZ_CHECK(h.minor_version == 0 || h.minor_version == 1);
      check_fields(h.headers);
      std::string again = h.method + " " + h.target + " HTTP/1." + std::to_string(h.minor_version) +
                          "\r\n" + print_headers(h.headers);
      auto back = parse_http_request(to_bytes(again), again.size());
      FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == h);
    }

    auto resp = check_codec([limit](Bytes b) { return parse_http_response(b, limit); }, in);
    if (resp.failed()) FUZZ_CHECK(resp.code == 502);
    if (resp.done()) {
      const auto& h = resp.value;
      FUZZ_CHECK(resp.consumed <= limit);
      FUZZ_CHECK(h.status >= 100 && h.status <= 599);
      check_fields(h.headers);
      std::string again = "HTTP/1." + std::to_string(h.minor_version) + " " +
                          std::to_string(h.status) + " " + h.reason + "\r\n" +
                          print_headers(h.headers);
      auto back = parse_http_response(to_bytes(again), again.size());
      FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == h);
    }
  }

  std::string_view text = as_text(in);
  if (auto n = parse_content_length(text)) {
    // 1*DIGIT: leading zeros are allowed, so the text may be any length.
    FUZZ_CHECK(!text.empty());
    FUZZ_CHECK(std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }));
    size_t first = text.find_first_not_of('0');
    auto digits = first == std::string_view::npos ? std::string_view("0") : text.substr(first);
    FUZZ_CHECK(std::to_string(*n) == digits);
  }

  if (auto decoded = base64_decode(text)) FUZZ_CHECK(base64_encode(*decoded) == text);
  auto encoded = base64_encode(text);
  FUZZ_CHECK(encoded.size() == (text.size() + 2) / 3 * 4);
  auto decoded = base64_decode(encoded);
  FUZZ_CHECK(decoded && *decoded == text);

  check_credentials(text);
  return 0;
}
