// Whole-buffer zlib codecs: formats, the output limit and the error kinds callers branch on.
#include "proto/zlib_codec.hpp"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>

namespace rs::proto {
namespace {

using Error = Inflated::Error;

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// The output of a successful inflate, or a marker that fails any comparison with real data.
std::string inflated(std::string_view in, Compression f, size_t limit = kInflateLimit) {
  Inflated r = inflate_body(in, f, limit);
  return r.ok() ? std::move(r.data) : "<error: " + r.message + ">";
}

TEST(ZlibCodec, RoundTripsEachFormat) {
  const std::string data = random_bytes(100000, 2) + std::string(100000, 'x');
  for (Compression f : {Compression::kZlib, Compression::kRawDeflate, Compression::kGzip}) {
    const std::string z = deflate_body(data, f);
    EXPECT_LT(z.size(), data.size());
    EXPECT_EQ(inflated(z, f), data);
    EXPECT_EQ(inflated(z, Compression::kAuto), data) << "auto-detect";
  }
  EXPECT_EQ(inflated(deflate_body("", Compression::kGzip), Compression::kGzip), "");
  EXPECT_EQ(inflated(deflate_body("abc", Compression::kAuto), Compression::kZlib), "abc");
}

TEST(ZlibCodec, FormatsAreTold) {
  EXPECT_EQ(deflate_body("abc", Compression::kZlib)[0], '\x78');
  EXPECT_EQ(deflate_body("abc", Compression::kGzip).substr(0, 2), "\x1f\x8b");
  Inflated r = inflate_body(deflate_body("abc", Compression::kRawDeflate), Compression::kZlib);
  EXPECT_EQ(r.error, Error::kCorrupt);
  EXPECT_FALSE(r.message.empty());
}

TEST(ZlibCodec, GzipMembersConcatenate) {
  const std::string z =
      deflate_body("hello, ", Compression::kGzip) + deflate_body("world", Compression::kGzip);
  EXPECT_EQ(inflated(z, Compression::kGzip), "hello, world");
  EXPECT_EQ(inflated(z, Compression::kAuto), "hello, world");
  Inflated r = inflate_body(z + "junk", Compression::kGzip, 1000);
  EXPECT_EQ(r.error, Error::kCorrupt);
  EXPECT_EQ(r.message, "trailing data after the end of the stream");
}

// The kind, not the wording, tells a breach of the limit (HTTP 413) from bad input (400).
TEST(ZlibCodec, LimitIsItsOwnErrorKind) {
  const std::string data(100000, 'a');
  const std::string z = deflate_body(data, Compression::kZlib);
  EXPECT_EQ(inflated(z, Compression::kZlib, data.size()), data);
  Inflated r = inflate_body(z, Compression::kZlib, data.size() - 1);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.error, Error::kTooLarge);
  EXPECT_EQ(r.message, "output exceeds the limit of 99999 bytes");
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(inflate_body(z, Compression::kZlib, 0).error, Error::kTooLarge);
  Inflated empty = inflate_body(deflate_body("", Compression::kZlib), Compression::kZlib, 0);
  EXPECT_TRUE(empty.ok());
  EXPECT_EQ(empty.error, Error::kNone);
}

TEST(ZlibCodec, BadInputIsCorrupt) {
  auto expect_corrupt = [](std::string_view in, Compression f, std::string_view message) {
    Inflated r = inflate_body(in, f, 1 << 20);
    EXPECT_EQ(r.error, Error::kCorrupt) << message;
    if (!message.empty()) {
      EXPECT_EQ(r.message, message);
    }
    EXPECT_FALSE(r.message.empty());
  };
  expect_corrupt("", Compression::kAuto, "truncated input");
  const std::string z = deflate_body(random_bytes(5000, 3), Compression::kGzip);
  expect_corrupt(z.substr(0, z.size() / 2), Compression::kGzip, "truncated input");
  std::string bad = z;
  bad[bad.size() - 6] ^= 1;  // inside the CRC-32
  expect_corrupt(bad, Compression::kGzip, "incorrect data check");
  expect_corrupt("\xff\xff\xff\xff", Compression::kRawDeflate, "");
  // Seeded random garbage: never a crash, usually an error, never output past the limit.
  std::mt19937 rng(4);
  for (int i = 0; i < 2000; ++i) {
    std::string g = z;
    for (int k = 0; k < 3; ++k) g[rng() % g.size()] = static_cast<char>(rng());
    const Inflated r = inflate_body(g, Compression::kAuto, 6000);
    if (r.ok()) {
      EXPECT_LE(r.data.size(), 6000u);
    } else {
      EXPECT_TRUE(r.data.empty());
    }
  }
}

TEST(ZlibCodec, BadLevelThrows) {
  EXPECT_THROW(deflate_body("x", Compression::kZlib, 10), std::invalid_argument);
  EXPECT_THROW(deflate_body("x", Compression::kZlib, -2), std::invalid_argument);
  EXPECT_NO_THROW(deflate_body("x", Compression::kZlib, 0));
}

}  // namespace
}  // namespace rs::proto
