// The API's pure HTTP helpers and the chunked decoder.
#include "api/http_util.hpp"

#include <gtest/gtest.h>

#include <string>

#include "api/chunked.hpp"

namespace rs::api {
namespace {

proto::HttpHeaders headers(std::initializer_list<std::pair<const char*, const char*>> fields) {
  proto::HttpHeaders h;
  for (const auto& [k, v] : fields) h.emplace_back(k, v);
  return h;
}

TEST(SplitTarget, OriginAndAbsoluteForms) {
  auto t = split_target("/stats?nobanner=1#frag");
  EXPECT_EQ(t.path, "/stats");
  EXPECT_EQ(t.query, "nobanner=1");
  t = split_target("http://api.neosocksd.internal/ruleset/update?module=x");
  EXPECT_EQ(t.path, "/ruleset/update");
  EXPECT_EQ(t.query, "module=x");
  t = split_target("http://host:80?q=1");
  EXPECT_EQ(t.path, "/");
  EXPECT_EQ(t.query, "q=1");
  t = split_target("http://host");
  EXPECT_EQ(t.path, "/");
  t = split_target("/a?b?c");
  EXPECT_EQ(t.path, "/a");
  EXPECT_EQ(t.query, "b?c");
  // "://" later in the path is not a scheme.
  t = split_target("/x?u=http://y/z");
  EXPECT_EQ(t.path, "/x");
  EXPECT_EQ(t.query, "u=http://y/z");
}

TEST(ParseQuery, Components) {
  auto q = parse_query("module=lib%2Eruleset&chunkname=%40lib.lua&&flag&x=a=b&sp=a+b");
  ASSERT_TRUE(q);
  EXPECT_EQ(query_get(*q, "module"), "lib.ruleset");
  EXPECT_EQ(query_get(*q, "chunkname"), "@lib.lua");
  EXPECT_EQ(query_get(*q, "flag"), "");
  EXPECT_EQ(query_get(*q, "x"), "a=b");
  EXPECT_EQ(query_get(*q, "sp"), "a b");
  EXPECT_FALSE(query_get(*q, "missing"));
  EXPECT_FALSE(parse_query("a=%zz"));
  EXPECT_FALSE(parse_query("%zz=1"));
  auto first = parse_query("q=1&q=2");
  ASSERT_TRUE(first);
  EXPECT_EQ(query_get(*first, "q"), "1");
}

TEST(ParseFlag, NeosocksdSpellings) {
  for (const char* yes : {"1", "y", "Yes", "ON", "t", "true", "TRUE"}) EXPECT_TRUE(parse_flag(yes));
  for (const char* no : {"", "0", "n", "no", "off", "false", "2", "yess"})
    EXPECT_FALSE(parse_flag(no));
}

TEST(RpcMediaType, AcceptsVersionOneOnly) {
  EXPECT_EQ(check_rpc_media_type(kRpcMediaType), std::nullopt);
  EXPECT_EQ(check_rpc_media_type("application/x-neosocksd-rpc;version=1"), std::nullopt);
  EXPECT_EQ(check_rpc_media_type("Application/X-Neosocksd-RPC ; Version=\"1\""), std::nullopt);
  EXPECT_EQ(check_rpc_media_type("application/x-neosocksd-rpc; charset=utf-8; version=1"),
            std::nullopt);
  EXPECT_NE(check_rpc_media_type(std::nullopt), std::nullopt);
  EXPECT_NE(check_rpc_media_type("application/x-neosocksd-rpc"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("application/x-neosocksd-rpc; version=2"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("application/x-neosocksd-rpc; version=10"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("text/plain; version=1"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("application/x-neosocksd-rpc; version"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("application/x-neosocksd-rpc; version=\"1"), std::nullopt);
  EXPECT_NE(check_rpc_media_type("garbage"), std::nullopt);
  // What is wrong is said, for the 400 answer.
  EXPECT_EQ(check_rpc_media_type("application/x-neosocksd-rpc; version=2"),
            "unsupported RPC version \"2\"");
}

TEST(AcceptsEncoding, QValuesAndWildcard) {
  EXPECT_TRUE(accepts_encoding(headers({{"Accept-Encoding", "deflate"}}), "deflate"));
  EXPECT_TRUE(accepts_encoding(headers({{"Accept-Encoding", "gzip, DEFLATE;q=0.5"}}), "deflate"));
  EXPECT_TRUE(accepts_encoding(headers({{"Accept-Encoding", "*"}}), "deflate"));
  EXPECT_TRUE(accepts_encoding(headers({{"Accept-Encoding", "deflate;q=0.001"}}), "deflate"));
  EXPECT_TRUE(accepts_encoding(
      headers({{"Accept-Encoding", "gzip"}, {"accept-encoding", "deflate"}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", ""}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "gzip, br"}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "deflate;q=0"}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "deflate; q=0.000"}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "deflate;Q=0."}}), "deflate"));
  // The exact coding wins over the wildcard, either way.
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "*, deflate;q=0"}}), "deflate"));
  EXPECT_TRUE(accepts_encoding(headers({{"Accept-Encoding", "*;q=0, deflate"}}), "deflate"));
  EXPECT_FALSE(accepts_encoding(headers({{"Accept-Encoding", "*;q=0"}}), "deflate"));
}

TEST(HeaderTokens, ListsAcrossFields) {
  auto h = headers({{"Connection", "keep-alive, Upgrade"}, {"connection", " close "}});
  EXPECT_TRUE(has_token(h, "Connection", "close"));
  EXPECT_TRUE(has_token(h, "connection", "UPGRADE"));
  EXPECT_FALSE(has_token(h, "Connection", "clos"));
  EXPECT_EQ(header_list(headers({{"Content-Encoding", "gzip, , Identity"}}), "content-encoding"),
            (std::vector<std::string>{"gzip", "identity"}));
}

// ---- ChunkedDecoder

struct Fed {
  ChunkedDecoder::Status status;
  std::string body;
  size_t consumed;  // of the last call
};

// Feeds `in` in pieces of `step` bytes, keeping unconsumed bytes as a caller does.
Fed feed_all(std::string_view in, size_t step, size_t limit = 1 << 20) {
  ChunkedDecoder d;
  std::string buf, body;
  size_t pos = 0, used = 0;
  ChunkedDecoder::Status st = ChunkedDecoder::Status::kNeedMore;
  while (pos < in.size()) {
    buf.append(in.substr(pos, step));
    pos += step;
    st = d.feed(buf, used, body, limit);
    buf.erase(0, used);
    if (st != ChunkedDecoder::Status::kNeedMore) break;
  }
  return {st, body, used};
}

TEST(ContentCoding, KnownUnknownAndIdentity) {
  EXPECT_EQ(content_coding(headers({})).kind, ContentCoding::kIdentity);
  EXPECT_EQ(content_coding(headers({{"Content-Encoding", "identity"}})).kind,
            ContentCoding::kIdentity);
  auto deflate = content_coding(headers({{"Content-Encoding", "Deflate"}}));
  EXPECT_EQ(deflate.kind, ContentCoding::kCompressed);
  EXPECT_EQ(deflate.format, proto::Compression::kAuto);  // zlib or raw
  for (const char* gz : {"gzip", "x-gzip", "identity, gzip"}) {
    auto c = content_coding(headers({{"Content-Encoding", gz}}));
    EXPECT_EQ(c.kind, ContentCoding::kCompressed) << gz;
    EXPECT_EQ(c.format, proto::Compression::kGzip) << gz;
  }
  auto br = content_coding(headers({{"Content-Encoding", "br"}}));
  EXPECT_EQ(br.kind, ContentCoding::kUnsupported);
  EXPECT_EQ(br.name, "br");
  // Two codings stacked are not supported either.
  EXPECT_EQ(
      content_coding(headers({{"Content-Encoding", "gzip"}, {"Content-Encoding", "deflate"}})).kind,
      ContentCoding::kUnsupported);
}

TEST(Chunked, DecodesInAnyPieces) {
  const std::string in = "5\r\nhello\r\n7;ext=\"v\"\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
  for (size_t step : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, in.size()}) {
    auto r = feed_all(in, step);
    EXPECT_EQ(r.status, ChunkedDecoder::Status::kDone) << step;
    EXPECT_EQ(r.body, "hello, world") << step;
  }
}

TEST(Chunked, StopsAtTheEndOfTheBody) {
  ChunkedDecoder d;
  std::string body;
  size_t used = 0;
  const std::string in = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
  EXPECT_EQ(d.feed(in, used, body, 100), ChunkedDecoder::Status::kDone);
  EXPECT_EQ(body, "abc");
  EXPECT_EQ(in.substr(used), "GET / HTTP/1.1\r\n");
}

TEST(Chunked, BareLineFeedsAndUpperCaseHex) {
  auto r = feed_all("A\nabcdefghij\n0\n\n", 4);
  EXPECT_EQ(r.status, ChunkedDecoder::Status::kDone);
  EXPECT_EQ(r.body, "abcdefghij");
  r = feed_all("00000\r\n\r\n", 1);
  EXPECT_EQ(r.status, ChunkedDecoder::Status::kDone);
  EXPECT_EQ(r.body, "");
}

TEST(Chunked, Malformed) {
  for (const char* bad :
       {"zz\r\n", "\r\n", "-1\r\nx\r\n", "5\r\nhelloX\r\n", "3 x\r\nabc\r\n",
        "3\r\nabc\r\n0\r\nno colon\r\n\r\n", "11111111111111111\r\n", "3;\x01\r\nabc\r\n"}) {
    auto r = feed_all(bad, 1);
    EXPECT_EQ(r.status, ChunkedDecoder::Status::kError) << bad;
  }
  // A size line that never ends.
  auto r = feed_all(std::string(5000, '1'), 100);
  EXPECT_EQ(r.status, ChunkedDecoder::Status::kError);
}

TEST(Chunked, Limit) {
  EXPECT_EQ(feed_all("5\r\nhello\r\n0\r\n\r\n", 3, 5).status, ChunkedDecoder::Status::kDone);
  EXPECT_EQ(feed_all("5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", 3, 5).status,
            ChunkedDecoder::Status::kTooLarge);
  // A huge declared size is refused before any data.
  EXPECT_EQ(feed_all("ffffffffffffffff\r\n", 64, 4 << 20).status,
            ChunkedDecoder::Status::kTooLarge);
}

}  // namespace
}  // namespace rs::api
