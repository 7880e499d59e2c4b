#include "proto/http.hpp"

#include <gtest/gtest.h>

#include <random>

#include "codec_test_util.hpp"

namespace rs::proto {
namespace {

using test::expect_error;
using test::expect_message;

auto parse_request = [](Bytes in) { return parse_http_request(in); };
auto parse_response = [](Bytes in) { return parse_http_response(in); };

auto parse_request_max = [](size_t max_head) {
  return [max_head](Bytes in) { return parse_http_request(in, max_head); };
};

// ---- Requests ----

TEST(HttpRequest, Get) {
  auto head = expect_message(parse_request,
                             "GET /index.html?q=1 HTTP/1.1\r\n"
                             "Host: example.org\r\n"
                             "Accept: */*\r\n"
                             "X-Dup: first\r\n"
                             "x-dup: second\r\n"
                             "\r\n");
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.target, "/index.html?q=1");
  EXPECT_EQ(head.minor_version, 1);
  ASSERT_EQ(head.headers.size(), 4u);
  EXPECT_EQ(head.headers[0], (std::pair<std::string, std::string>{"Host", "example.org"}));
  EXPECT_EQ(head.headers[3].first, "x-dup");  // names as sent, order kept
  EXPECT_EQ(head.header("HOST"), "example.org");
  EXPECT_EQ(head.header("x-DUP"), "first");
  EXPECT_FALSE(head.header("Missing"));
}

TEST(HttpRequest, Connect) {
  auto head = expect_message(parse_request, "CONNECT example.org:443 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(head.method, "CONNECT");
  EXPECT_EQ(head.target, "example.org:443");
}

TEST(HttpRequest, Http10WithoutHeaders) {
  auto head = expect_message(parse_request, "GET / HTTP/1.0\r\n\r\n");
  EXPECT_EQ(head.minor_version, 0);
  EXPECT_TRUE(head.headers.empty());
}

TEST(HttpRequest, BareLineFeeds) {
  auto head = expect_message(parse_request, "POST /rpc HTTP/1.1\nA: 1\r\nB: 2\n\n");
  EXPECT_EQ(head.method, "POST");
  EXPECT_EQ(head.header("a"), "1");
  EXPECT_EQ(head.header("b"), "2");
  expect_message(parse_request, "GET / HTTP/1.1\r\nA: 1\n\r\n");
}

TEST(HttpRequest, LeadingEmptyLinesSkipped) {
  auto msg = "\r\n\nGET / HTTP/1.1\r\n\r\n";
  auto head = expect_message(parse_request, msg);
  EXPECT_EQ(head.target, "/");
}

TEST(HttpRequest, FieldValues) {
  auto head = expect_message(parse_request,
                             "GET / HTTP/1.1\r\n"
                             "Spaces: \t  padded value \t\r\n"
                             "Empty:\r\n"
                             "NoSpace:x\r\n"
                             "Colon: a:b\r\n"
                             "Obs-Text: caf\xc3\xa9\r\n"
                             "Token!#$%&'*+-.^_`|~: ok\r\n"
                             "\r\n");
  EXPECT_EQ(head.header("Spaces"), "padded value");
  EXPECT_EQ(head.header("Empty"), "");
  EXPECT_EQ(head.header("NoSpace"), "x");
  EXPECT_EQ(head.header("Colon"), "a:b");
  EXPECT_EQ(head.header("obs-text"), "caf\xc3\xa9");
  EXPECT_EQ(head.header("token!#$%&'*+-.^_`|~"), "ok");
}

TEST(HttpRequest, BodyIsNotConsumed) {
  std::string msg = "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  auto r = parse_http_request(to_bytes(msg));
  ASSERT_TRUE(r.done());
  EXPECT_EQ(msg.substr(r.consumed), "hello");
}

TEST(HttpRequest, MalformedRequestLine) {
  for (const char* line : {
           "GET /\r\n",               // no version
           "GET\r\n",                 // method only
           "GET  / HTTP/1.1\r\n",     // double space
           "GET / HTTP/1.1 \r\n",     // trailing space
           " GET / HTTP/1.1\r\n",     // leading space
           "GET\t/\tHTTP/1.1\r\n",    // tabs
           "GE(T / HTTP/1.1\r\n",     // not a token
           "GET /a b HTTP/1.1\r\n",   // space in target
           "GET /\x01 HTTP/1.1\r\n",  // control in target
           "GET /\xff HTTP/1.1\r\n",  // 8-bit in target
           "GET / http/1.1\r\n",      // lower-case version
           "GET / HTTP/1.x\r\n",      // not a digit
           "GET / HTTP/11\r\n",       // no dot
           "GET / HTTP/1.1.1\r\n",    // too long
           "GET / HTTP/1.1\r\r\n",    // stray CR
           "\x05\x01\x02\n",          // SOCKS bytes
       }) {
    expect_error(parse_request, line, 400);
    expect_error(parse_request, std::string(line) + "\r\n", 400);
  }
}

TEST(HttpRequest, UnsupportedVersion) {
  for (const char* v : {"HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.1"}) {
    auto r = expect_error(parse_request, std::string("GET / ") + v + "\r\n\r\n", 505);
    EXPECT_NE(r.error.find(v), std::string::npos);
  }
}

TEST(HttpRequest, BadHeaderLines) {
  for (const char* line : {
           " folded\r\n",        // obs-fold
           "\tfolded\r\n",       // obs-fold
           "NoColon\r\n",        // missing colon
           ": value\r\n",        // empty name
           "Name : value\r\n",   // space before colon
           "Na me: value\r\n",   // space in name
           "N\x01: value\r\n",   // control in name
           "Name: a\x01z\r\n",   // control in value
           "Name: a\x7fz\r\n",   // DEL in value
           "Name: a\rz\r\n",     // bare CR in value
           "Name: value\r\r\n",  // stray CR before CRLF
       }) {
    std::string msg = std::string("GET / HTTP/1.1\r\nHost: x\r\n") + line + "\r\n";
    expect_error(parse_request, msg, 400);
  }
  std::string with_nul = std::string("GET / HTTP/1.1\r\nName: a") + '\0' + "z\r\n\r\n";
  expect_error(parse_request, with_nul, 400);
  auto folded = expect_error(parse_request, "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400);
  EXPECT_NE(folded.error.find("folding"), std::string::npos);
}

TEST(HttpRequest, ErrorsComeBeforeTheEndOfTheHead) {
  // A bad request line is refused as soon as its line ends.
  auto r = parse_http_request(to_bytes("GET / SPDY/3\r\nHost: x\r\n"));
  EXPECT_TRUE(r.failed());
  // But an unfinished line is never judged.
  EXPECT_TRUE(parse_http_request(to_bytes("GET / SPDY/3")).need_more());
}

TEST(HttpRequest, HeadLimit) {
  std::string head = "GET / HTTP/1.1\r\nX: " + std::string(40, 'v') + "\r\n\r\n";
  // A head of exactly max_head bytes is fine; one byte less is not.
  expect_message(parse_request_max(head.size()), head);
  auto r = expect_error(parse_request_max(head.size() - 1), head, 431);
  EXPECT_NE(r.error.find("too large"), std::string::npos);
  // Refused without waiting for the end once the limit is passed.
  EXPECT_TRUE(parse_http_request(to_bytes(head.substr(0, 30)), 20).failed());
  EXPECT_TRUE(parse_http_request(to_bytes(head.substr(0, 20)), 20).need_more());
}

TEST(HttpRequest, HeadLimitDefault) {
  std::string big = "GET / HTTP/1.1\r\nX: " + std::string(kMaxHttpHead, 'v');
  EXPECT_EQ(parse_http_request(to_bytes(big)).code, 431);
  std::string fits = "GET / HTTP/1.1\r\nX: " + std::string(kMaxHttpHead - 100, 'v') + "\r\n\r\n";
  EXPECT_TRUE(parse_http_request(to_bytes(fits)).done());
}

TEST(HttpRequest, RequestLineTooLong) {
  std::string line = "GET /" + std::string(100, 'a') + " HTTP/1.1\r\n\r\n";
  expect_error(parse_request_max(50), line, 414);
  // Leading empty lines count towards the limit too.
  expect_error(parse_request_max(10), std::string(11, '\n'), 414);
}

TEST(HttpRequest, EmptyInput) {
  EXPECT_TRUE(parse_http_request(Bytes{}).need_more());
  EXPECT_TRUE(parse_http_request(Bytes{}, 0).need_more());
  EXPECT_EQ(parse_http_request(to_bytes("G"), 0).code, 414);
}

// ---- Responses ----

TEST(HttpResponse, ConnectEstablished) {
  auto head = expect_message(parse_response, http_connect_established());
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.reason, "Connection established");
  EXPECT_EQ(head.minor_version, 1);
  EXPECT_FALSE(head.header("Content-Length"));
}

TEST(HttpResponse, WithHeaders) {
  auto head = expect_message(parse_response,
                             "HTTP/1.0 407 Proxy Authentication Required\r\n"
                             "Proxy-Authenticate: Basic realm=\"proxy\"\r\n"
                             "Content-Length: 0\r\n"
                             "\r\n");
  EXPECT_EQ(head.minor_version, 0);
  EXPECT_EQ(head.status, 407);
  EXPECT_EQ(head.reason, "Proxy Authentication Required");
  EXPECT_EQ(head.header("proxy-authenticate"), "Basic realm=\"proxy\"");
}

TEST(HttpResponse, ReasonOptional) {
  EXPECT_EQ(expect_message(parse_response, "HTTP/1.1 204\r\n\r\n").reason, "");
  EXPECT_EQ(expect_message(parse_response, "HTTP/1.1 204 \r\n\r\n").reason, "");
  EXPECT_EQ(expect_message(parse_response, "HTTP/1.1 599 x y\tz\n\n").reason, "x y\tz");
  EXPECT_EQ(expect_message(parse_response, "HTTP/1.1 100 Continue\r\n\r\n").status, 100);
}

TEST(HttpResponse, Errors) {
  for (const char* line : {
           "HTTP/1.1 20 OK",
           "HTTP/1.1 2000 OK",
           "HTTP/1.1 099 X",
           "HTTP/1.1 600 X",
           "HTTP/2 200 OK",
           "HTTP/1.1  200 OK",
           "HTTP/1.1 200OK",
           "HTTP/1.1 2x0 OK",
           "HTTP/1.1 200 O\x01K",
           "HTTP/1.2 200 OK",
           "http/1.1 200 OK",
           "SSH-2.0-OpenSSH",
           "HTTP/1.1",
       }) {
    expect_error(parse_response, std::string(line) + "\r\n\r\n", 502);
  }
  expect_error(parse_response, "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", 502);
  std::string big = "HTTP/1.1 200 OK\r\nX: " + std::string(100, 'v') + "\r\n\r\n";
  expect_error([](Bytes in) { return parse_http_response(in, 64); }, big, 502);
}

// ---- Builders ----

TEST(HttpBuild, Response) {
  EXPECT_EQ(http_response(404), "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(http_response(200, "Fine", {{"Content-Type", "text/plain"}}, "hi"),
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
  // A caller's own Content-Length is not doubled.
  EXPECT_EQ(http_response(200, {}, {{"content-length", "2"}}, "hi"),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi");
}

TEST(HttpBuild, ResponseParsesBack) {
  std::string msg = http_response(503, {}, {{"Retry-After", "5"}}, "busy");
  auto r = parse_http_response(to_bytes(msg));
  ASSERT_TRUE(r.done());
  EXPECT_EQ(r.value.status, 503);
  EXPECT_EQ(r.value.reason, "Service Unavailable");
  EXPECT_EQ(r.value.header("retry-after"), "5");
  EXPECT_EQ(content_length(r.value.headers).length, 4u);
  EXPECT_EQ(msg.substr(r.consumed), "busy");
}

TEST(HttpBuild, StatusReasons) {
  for (int status : {200, 400, 401, 403, 404, 405, 407, 408, 411, 413, 414, 415, 431, 500, 501, 502,
                     503, 504, 505}) {
    EXPECT_FALSE(status_reason(status).empty()) << status;
  }
  EXPECT_EQ(status_reason(407), "Proxy Authentication Required");
  EXPECT_EQ(status_reason(431), "Request Header Fields Too Large");
  EXPECT_EQ(status_reason(299), "");
  EXPECT_EQ(http_response(299), "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n");
}

TEST(HttpBuild, ConnectRequest) {
  EXPECT_EQ(http_connect_request(Address{std::string("example.org"), 443}, "", "ignored").bytes,
            "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n");
  auto head = expect_message(
      parse_request, http_connect_request(*parse_address("[::1]:8443"), "user", "p:w").bytes);
  EXPECT_EQ(head.method, "CONNECT");
  EXPECT_EQ(head.target, "[::1]:8443");
  EXPECT_EQ(head.header("Host"), "[::1]:8443");
  auto auth = parse_basic_auth(*head.header("Proxy-Authorization"));
  ASSERT_TRUE(auth);
  EXPECT_EQ(auth->first, "user");
  EXPECT_EQ(auth->second, "p:w");
  EXPECT_EQ(parse_address(head.target), parse_address("[::1]:8443"));
}

// Basic credentials end the user name at the first ':', so such a name would
// reach the proxy as a different user.
TEST(HttpBuild, ConnectRequestRefusesAUserWithAColon) {
  auto msg = http_connect_request(Address{std::string("example.org"), 443}, "a:b", "c");
  EXPECT_FALSE(msg.ok());
  EXPECT_EQ(msg.bytes, "");
  EXPECT_EQ(msg.error, "user name contains ':'");
}

// ---- Helpers ----

TEST(HttpHelpers, ParseContentLength) {
  EXPECT_EQ(parse_content_length("0"), 0u);
  EXPECT_EQ(parse_content_length("0042"), 42u);
  EXPECT_EQ(parse_content_length("18446744073709551615"), UINT64_MAX);
  for (const char* bad : {"", "-1", "+1", "1.0", " 1", "1 ", "0x10", "1 2", "18446744073709551616",
                          "99999999999999999999999"}) {
    EXPECT_FALSE(parse_content_length(bad)) << bad;
  }
}

TEST(HttpHelpers, ContentLengthOverHeaders) {
  auto none = content_length({{"Host", "x"}});
  EXPECT_TRUE(none.valid);
  EXPECT_FALSE(none.length);
  auto one = content_length({{"content-length", "12"}});
  EXPECT_TRUE(one.valid);
  EXPECT_EQ(one.length, 12u);
  EXPECT_EQ(content_length({{"Content-Length", "7"}, {"CONTENT-LENGTH", "7"}}).length, 7u);
  EXPECT_EQ(content_length({{"Content-Length", "7, 7,7"}}).length, 7u);
  for (const HttpHeaders& bad : std::vector<HttpHeaders>{
           {{"Content-Length", "7"}, {"Content-Length", "8"}},
           {{"Content-Length", "7, 8"}},
           {{"Content-Length", "7,"}},
           {{"Content-Length", ""}},
           {{"Content-Length", "-7"}},
           {{"Content-Length", "abc"}},
       }) {
    auto cl = content_length(bad);
    EXPECT_FALSE(cl.valid);
    EXPECT_FALSE(cl.length);
  }
}

TEST(HttpHelpers, Base64Vectors) {
  // RFC 4648 section 10.
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (auto [plain, encoded] : vectors) {
    EXPECT_EQ(base64_encode(plain), encoded);
    EXPECT_EQ(base64_decode(encoded), plain);
  }
  EXPECT_EQ(base64_encode("\xfb\xff"), "+/8=");
}

TEST(HttpHelpers, Base64RoundTrip) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(base64_decode(base64_encode(all)), all);
  std::mt19937 rng(64);
  for (int i = 0; i < 1000; ++i) {
    auto data = test::random_bytes(rng, 40);
    EXPECT_EQ(base64_decode(base64_encode(data)), data);
  }
}

TEST(HttpHelpers, Base64RejectsBadInput) {
  for (const char* bad : {"Zg=", "Zg", "Z", "Z===", "====", "=", "Zh==", "Zm9=", "Zm=v", "Zm9v!",
                          "Zm9v\n", " Zm9v", "Zm9v ", "Zg==Zg==", "-_8=", "Zm9vY==="}) {
    EXPECT_FALSE(base64_decode(bad)) << bad;
  }
}

TEST(HttpHelpers, Base64DecodeNeverCrashes) {
  std::mt19937 rng(65);
  const std::string alphabet = "ABCz09+/=";
  for (int i = 0; i < 10000; ++i) {
    std::string s(rng() % 12, 'A');
    for (auto& c : s) c = alphabet[rng() % alphabet.size()];
    if (auto decoded = base64_decode(s)) {
      EXPECT_EQ(base64_encode(*decoded), s);
    }
  }
}

TEST(HttpHelpers, BasicAuth) {
  auto a = parse_basic_auth("Basic dXNlcjpwYXNz");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->first, "user");
  EXPECT_EQ(a->second, "pass");
  EXPECT_TRUE(parse_basic_auth("basic dXNlcjpwYXNz"));
  EXPECT_TRUE(parse_basic_auth("BASIC  dXNlcjpwYXNz "));
  auto colon = parse_basic_auth("Basic " + base64_encode("u:p:w"));
  ASSERT_TRUE(colon);
  EXPECT_EQ(colon->first, "u");
  EXPECT_EQ(colon->second, "p:w");
  auto empty = parse_basic_auth("Basic " + base64_encode(":"));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->first, "");
  EXPECT_EQ(empty->second, "");
}

TEST(HttpHelpers, BasicAuthRejects) {
  for (std::string bad : {std::string("Bearer dXNlcjpwYXNz"), std::string("Basic"),
                          std::string("Basic "), std::string("Basicx dXNlcjpwYXNz"),
                          std::string("Basic !!!!"), std::string("Basic dXNlcg=="),  // no colon
                          std::string("dXNlcjpwYXNz"), std::string("")}) {
    EXPECT_FALSE(parse_basic_auth(bad)) << bad;
  }
}

// ---- Random input ----

const std::vector<std::string> kRequestSamples = {
    "GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n",
    "CONNECT [::1]:443 HTTP/1.1\nHost: [::1]:443\nProxy-Authorization: Basic dTpw\n\n",
    "\r\nPOST /rpc HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
};

TEST(HttpFuzz, Request) {
  test::fuzz(parse_request, kRequestSamples, 80, 10000, 100);
}

TEST(HttpFuzz, RequestSmallLimit) {
  test::fuzz(parse_request_max(48), kRequestSamples, 81, 10000, 100);
}

TEST(HttpFuzz, Response) {
  test::fuzz(
      parse_response,
      {http_connect_established(), http_response(407, {}, {{"A", "b"}}, "x"), "HTTP/1.0 200\n\n"},
      82, 10000, 100);
}

}  // namespace
}  // namespace rs::proto
