// Plain HTTP proxying codecs: absolute-form targets, body framing (with every
// smuggling shape refused), head rewriting and the streaming body reader fed
// at every split point.
#include "proto/http_forward.hpp"

#include <gtest/gtest.h>

#include <random>

#include "codec_test_util.hpp"
#include "proto/http_body.hpp"

namespace rs::proto {
namespace {

HttpRequestHead request(std::string_view text) {
  auto r = parse_http_request(to_bytes(text));
  EXPECT_TRUE(r.done()) << r.error;
  return r.value;
}

HttpResponseHead response(std::string_view text) {
  auto r = parse_http_response(to_bytes(text));
  EXPECT_TRUE(r.done()) << r.error;
  return r.value;
}

// ---- Absolute-form targets ----

TEST(AbsoluteTarget, Forms) {
  auto t = parse_absolute_target("http://example.org/a/b?q=1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->origin, *parse_address("example.org:80"));
  EXPECT_EQ(t->authority, "example.org");
  EXPECT_EQ(t->origin_form, "/a/b?q=1");

  t = parse_absolute_target("HTTP://127.0.0.1:8000");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->origin, *parse_address("127.0.0.1:8000"));
  EXPECT_EQ(t->origin_form, "/");

  t = parse_absolute_target("http://[::1]:81?x");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->origin, *parse_address("[::1]:81"));
  EXPECT_EQ(t->authority, "[::1]:81");
  EXPECT_EQ(t->origin_form, "/?x");

  t = parse_absolute_target("http://[::1]/");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->origin.port, 80);
}

TEST(AbsoluteTarget, Refused) {
  for (const char* bad :
       {"/", "/index.html", "*", "example.org:80", "https://example.org/", "ftp://x/", "http://",
        "http:///path", "http://user:pw@example.org/", "http://example.org:0/",
        "http://example.org:65536/", "http://example.org:x/", "http://a:1:2/", "http://[::1/",
        "http://[::1]x/", "http://[nothex]/", "http://example.org/#frag", "http://:80/"}) {
    EXPECT_FALSE(parse_absolute_target(bad)) << bad;
  }
}

// ---- Framing ----

TEST(Framing, Requests) {
  auto f = request_framing(request("GET http://a/ HTTP/1.1\r\n\r\n"));
  EXPECT_TRUE(f.ok());
  EXPECT_EQ(f.kind, BodyFraming::kNone);
  f = request_framing(request("POST http://a/ HTTP/1.1\r\nContent-Length: 42\r\n\r\n"));
  EXPECT_EQ(f.kind, BodyFraming::kLength);
  EXPECT_EQ(f.length, 42u);
  f = request_framing(request("POST http://a/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"));
  EXPECT_EQ(f.kind, BodyFraming::kChunked);
  f = request_framing(request(
      "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"));
  EXPECT_EQ(f.kind, BodyFraming::kChunked);
}

// Every ambiguous framing is refused, never guessed (RFC 9112 section 6.3).
TEST(Framing, SmugglingShapesRefused) {
  for (const char* fields : {
           "Content-Length: 1\r\nContent-Length: 2\r\n",  // conflicting
           "Content-Length: 5\r\nContent-Length: 5\r\n",  // duplicate
           "Content-Length: 5, 5\r\n",                    // list
           "Content-Length: -1\r\n",
           "Content-Length: 1x\r\n",
           "Content-Length: \r\n",
           "Content-Length: 99999999999999999999999\r\n",          // overflow
           "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",  // TE + CL (CL.TE / TE.CL)
           "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
           "Transfer-Encoding: chunked, identity\r\n",                      // chunked not final
           "Transfer-Encoding: gzip\r\n",                                   // no chunked
           "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",  // twice
           "Transfer-Encoding: xchunked\r\n",
           "Transfer-Encoding: \r\n",
       }) {
    auto f = request_framing(request(std::string("POST http://a/ HTTP/1.1\r\n") + fields + "\r\n"));
    EXPECT_FALSE(f.ok()) << fields;
  }
  auto f =
      request_framing(request("POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"));
  EXPECT_FALSE(f.ok()) << "Transfer-Encoding in HTTP/1.0";
  // Obsolete line folding never reaches framing: the head parser refuses it.
  EXPECT_TRUE(parse_http_request(to_bytes("POST http://a/ HTTP/1.1\r\nTransfer-Encoding:\r\n"
                                          " chunked\r\n\r\n"))
                  .failed());
}

TEST(Framing, Responses) {
  auto ok = response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
  EXPECT_EQ(response_framing(ok, "GET").kind, BodyFraming::kLength);
  EXPECT_EQ(response_framing(ok, "HEAD").kind, BodyFraming::kNone);
  for (int status : {100, 101, 204, 304}) {
    auto h = response("HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: 3\r\n\r\n");
    EXPECT_EQ(response_framing(h, "GET").kind, BodyFraming::kNone) << status;
  }
  EXPECT_EQ(response_framing(response("HTTP/1.1 200 OK\r\n\r\n"), "GET").kind, BodyFraming::kClose);
  EXPECT_EQ(
      response_framing(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), "GET").kind,
      BodyFraming::kClose);
  EXPECT_EQ(
      response_framing(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), "GET")
          .kind,
      BodyFraming::kChunked);
  EXPECT_FALSE(response_framing(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                         "Content-Length: 3\r\n\r\n"),
                                "GET")
                   .ok());
  EXPECT_FALSE(response_framing(response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                         "Content-Length: 4\r\n\r\n"),
                                "GET")
                   .ok());
}

// ---- Rewriting ----

TEST(Rewrite, RequestHead) {
  auto head = request(
      "GET http://example.org:8080/p?q HTTP/1.1\r\n"
      "Host: wrong.example\r\n"
      "Proxy-Connection: keep-alive\r\n"
      "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
      "Connection: keep-alive, X-Secret\r\n"
      "Keep-Alive: timeout=5\r\n"
      "X-Secret: 1\r\n"
      "TE: trailers\r\n"
      "Trailer: X-T\r\n"
      "Upgrade: websocket\r\n"
      "Via: 1.1 other\r\n"
      "Accept: */*\r\n\r\n");
  auto target = parse_absolute_target(head.target);
  ASSERT_TRUE(target);
  EXPECT_EQ(forward_request_head(head, *target),
            "GET /p?q HTTP/1.1\r\n"
            "Host: example.org:8080\r\n"
            "Via: 1.1 other\r\n"
            "Accept: */*\r\n"
            "Via: 1.1 rulesocks\r\n"
            "Connection: close\r\n\r\n");
  EXPECT_TRUE(wants_keep_alive(head));
  EXPECT_FALSE(is_upgrade(head));
  // Kept for the upstream pool: HTTP/1.1 persistence needs no field.
  EXPECT_EQ(forward_request_head(head, *target, true),
            "GET /p?q HTTP/1.1\r\nHost: example.org:8080\r\nVia: 1.1 other\r\n"
            "Accept: */*\r\nVia: 1.1 rulesocks\r\n\r\n");
}

TEST(Rewrite, UpgradeKeepsUpgrade) {
  auto head = request(
      "GET http://a/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      "Sec-WebSocket-Key: k\r\n\r\n");
  EXPECT_TRUE(is_upgrade(head));
  EXPECT_EQ(forward_request_head(head, *parse_absolute_target(head.target)),
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n"
            "Via: 1.1 rulesocks\r\nConnection: upgrade\r\n\r\n");
  auto resp = response(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  EXPECT_EQ(forward_response_head(resp, true),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            "Via: 1.1 rulesocks\r\nConnection: upgrade\r\n\r\n");
}

TEST(Rewrite, KeepAliveAndClose) {
  EXPECT_FALSE(wants_keep_alive(request("GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n")));
  EXPECT_FALSE(
      wants_keep_alive(request("GET http://a/ HTTP/1.1\r\nProxy-Connection: Close\r\n\r\n")));
  EXPECT_FALSE(wants_keep_alive(request("GET http://a/ HTTP/1.0\r\n\r\n")));
  auto resp = response(
      "HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
      "Transfer-Encoding: chunked\r\nKeep-Alive: 1\r\nUpgrade: h2c\r\n\r\n");
  EXPECT_EQ(forward_response_head(resp, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.0 rulesocks\r\n\r\n");
  EXPECT_EQ(forward_response_head(resp, false),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.0 rulesocks\r\n"
            "Connection: close\r\n\r\n");
  // An interim response says nothing about the connection.
  EXPECT_EQ(forward_response_head(response("HTTP/1.1 100 Continue\r\n\r\n"), false),
            "HTTP/1.1 100 Continue\r\nVia: 1.1 rulesocks\r\n\r\n");
}

// ---- The body reader ----

struct BodyResult {
  BodyReader::Status status = BodyReader::Status::kNeedMore;
  std::string body;  // the bytes it passed on
  std::string error;
};

// Feeds `in` in the pieces cut at `cuts`, dropping what was consumed, as a
// proxy does; stops at the end of the body or an error.
BodyResult read_body(const BodyFraming& framing, std::string_view in,
                     const std::vector<size_t>& cuts) {
  BodyReader reader(framing);
  BodyResult out;
  std::string pending;
  size_t pos = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(in.size());
  for (size_t end : ends) {
    pending.append(in.substr(pos, end - pos));
    pos = end;
    size_t used = 0;
    out.status = reader.feed(pending, used);
    EXPECT_LE(used, pending.size());
    out.body.append(pending, 0, used);
    pending.erase(0, used);
    if (out.status == BodyReader::Status::kError) {
      out.error = reader.error();
      EXPECT_FALSE(out.error.empty());
      return out;
    }
    if (out.status == BodyReader::Status::kDone) {
      EXPECT_TRUE(reader.done());
      return out;
    }
    EXPECT_TRUE(pending.empty()) << "need-more left bytes unconsumed";
  }
  return out;
}

// The same outcome for the whole input and for every split point (one cut,
// then every pair of cuts for short inputs).
BodyResult expect_body(const BodyFraming& framing, std::string_view in) {
  BodyResult whole = read_body(framing, in, {});
  for (size_t k = 0; k <= in.size(); ++k) {
    BodyResult r = read_body(framing, in, {k});
    EXPECT_EQ(r.status, whole.status) << "cut at " << k;
    // After an error the bytes passed on before it depend on the split: a
    // proxy has sent them already and closes the connection.
    if (whole.status != BodyReader::Status::kError) {
      EXPECT_EQ(r.body, whole.body) << "cut at " << k;
    }
    EXPECT_EQ(r.error, whole.error) << "cut at " << k;
    if (in.size() <= 64) {
      for (size_t j = k; j <= in.size(); ++j) {
        BodyResult r2 = read_body(framing, in, {k, j});
        EXPECT_EQ(r2.status, whole.status) << "cuts at " << k << ", " << j;
        if (whole.status != BodyReader::Status::kError) {
          EXPECT_EQ(r2.body, whole.body);
        }
      }
    }
    if (::testing::Test::HasFailure()) break;
  }
  return whole;
}

const BodyFraming kChunked{BodyFraming::kChunked, 0, {}};

TEST(BodyReader, ContentLength) {
  auto r = expect_body({BodyFraming::kLength, 5, {}}, "hello GET / HTTP/1.1\r\n");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
  EXPECT_EQ(r.body, "hello");
  r = expect_body({BodyFraming::kLength, 5, {}}, "hel");
  EXPECT_EQ(r.status, BodyReader::Status::kNeedMore);
  EXPECT_EQ(r.body, "hel");
  r = expect_body({BodyFraming::kLength, 0, {}}, "next");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
  EXPECT_EQ(r.body, "");
}

TEST(BodyReader, NoneAndClose) {
  auto r = expect_body({BodyFraming::kNone, 0, {}}, "GET http://a/ HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
  EXPECT_EQ(r.body, "");
  BodyReader close({BodyFraming::kClose, 0, {}});
  size_t used = 0;
  EXPECT_EQ(close.feed("anything at all", used), BodyReader::Status::kNeedMore);
  EXPECT_EQ(used, 15u);
  EXPECT_TRUE(close.complete_at_eof());
  EXPECT_FALSE(BodyReader({BodyFraming::kLength, 3, {}}).complete_at_eof());
}

TEST(BodyReader, ChunkedPassesThrough) {
  const std::string body =
      "5\r\nhello\r\n"
      "1A;name=value; x\r\nabcdefghijklmnopqrstuvwxyz\r\n"
      "000\r\n"
      "X-Trailer: yes\r\nX-Other: 2\r\n\r\n";
  auto r = expect_body(kChunked, body + "GET http://next/ HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
  EXPECT_EQ(r.body, body);
  r = expect_body(kChunked, "0\r\n\r\n");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
  EXPECT_EQ(r.body, "0\r\n\r\n");
  r = expect_body(kChunked, "ffffffffffffffff\r\nabc");
  EXPECT_EQ(r.status, BodyReader::Status::kNeedMore);
  r = expect_body(kChunked, "00000000000000000000001\r\nx\r\n0\r\n\r\n");
  EXPECT_EQ(r.status, BodyReader::Status::kDone);
}

// Chunked bodies another reader could see differently are refused.
TEST(BodyReader, ChunkedSmugglingShapesRefused) {
  for (const char* bad : {
           "5\nhello\r\n0\r\n\r\n",     // bare LF after the size
           "5\r\nhello\n0\r\n\r\n",     // bare LF after the data
           "5\r\nhelloX\r\n0\r\n\r\n",  // data longer than its size
           "0\r\n\n",                   // bare LF ending the body
           "0\r\nX: 1\n\r\n",           // bare LF in a trailer
           "0\r\n folded\r\n\r\n",      // obs-fold in trailers
           "0\r\nX: \x01\r\n\r\n",      // control character in trailers
           "x\r\n",                     // not hex
           "\r\n",                      // no size
           "-1\r\n",                    // sign
           "0x5\r\n",                   // prefix
           "10000000000000000\r\nx",    // 17 significant digits: over 64 bits
           "5;\x01\r\n",                // control character in an extension
           "5\rx",                      // CR not followed by LF
       }) {
    auto r = expect_body(kChunked, bad);
    EXPECT_EQ(r.status, BodyReader::Status::kError) << bad;
  }
  std::string long_line = "5;" + std::string(BodyReader::kMaxChunkLine, 'a') + "\r\n";
  EXPECT_EQ(read_body(kChunked, long_line, {}).status, BodyReader::Status::kError);
  std::string big_trailers = "0\r\n";
  while (big_trailers.size() < BodyReader::kMaxTrailers + 10) big_trailers += "X-Pad: aaaaaaaa\r\n";
  EXPECT_EQ(read_body(kChunked, big_trailers, {}).status, BodyReader::Status::kError);
}

// Seeded mutations of valid bodies: the outcome never depends on the split.
TEST(BodyReader, RandomSplitsAgree) {
  std::mt19937 rng(11);
  const std::vector<std::string> samples = {"5\r\nhello\r\n0\r\n\r\n",
                                            "3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\nrest", "0\r\n\r\n"};
  for (int i = 0; i < 2000; ++i) {
    std::string in = test::mutate(rng, samples[rng() % samples.size()]);
    BodyResult whole = read_body(kChunked, in, {});
    size_t a = in.empty() ? 0 : rng() % (in.size() + 1);
    size_t b = a + (in.size() - a == 0 ? 0 : rng() % (in.size() - a + 1));
    BodyResult split = read_body(kChunked, in, {a, b});
    ASSERT_EQ(split.status, whole.status) << i;
    if (whole.status != BodyReader::Status::kError) {
      ASSERT_EQ(split.body, whole.body) << i;
    }
    // What it passed on is a prefix of the input: bytes go through unchanged.
    ASSERT_EQ(in.compare(0, whole.body.size(), whole.body), 0);
  }
}

}  // namespace
}  // namespace rs::proto
