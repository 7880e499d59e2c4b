#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>

#include "ruleset/lib/codec.hpp"
#include "ruleset/lib/libs.hpp"

namespace {

using rs::ruleset::deflate_body;
using rs::ruleset::Format;
using rs::ruleset::inflate_body;

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class ZlibTest : public ::testing::Test {
 protected:
  void SetUp() override {
    L = luaL_newstate();
    luaL_openlibs(L);
    rs::ruleset::open_libs(L);
  }
  void TearDown() override { lua_close(L); }

  std::string Run(const std::string& code) {
    lua_settop(L, 0);
    if (luaL_dostring(L, code.c_str()) == LUA_OK) return "";
    const char* msg = lua_tostring(L, -1);
    return msg ? msg : "(error object is not a string)";
  }
  void SetGlobal(const char* name, const std::string& value) {
    lua_pushlstring(L, value.data(), value.size());
    lua_setglobal(L, name);
  }

  lua_State* L = nullptr;
};

TEST_F(ZlibTest, RoundTrips) {
  EXPECT_EQ(Run(R"lua(
    local t = {} for i = 0, 255 do t[#t + 1] = string.char(i) end
    local all = table.concat(t)
    for _, s in ipairs({"", "a", "hello, world", all, string.rep(all, 1000),
                        string.rep("abc", 100000)}) do
      local z = zlib.compress(s)
      assert(z:byte(1) == 0x78, "zlib header")
      assert(zlib.uncompress(z) == s)
      local g = zlib.gzip(s)
      assert(g:sub(1, 2) == "\x1f\x8b", "gzip magic")
      assert(zlib.gunzip(g) == s)
      for level = -1, 9 do
        assert(zlib.uncompress(zlib.compress(s, level)) == s)
        assert(zlib.gunzip(zlib.gzip(s, level)) == s)
      end
    end
    assert(#zlib.compress(string.rep("a", 100000)) < 1000, "compresses")
  )lua"),
            "");
}

TEST_F(ZlibTest, RandomMebibyte) {
  SetGlobal("data", random_bytes(1 << 20, 1));
  EXPECT_EQ(Run("assert(#data == 1048576)\n"
                "assert(zlib.uncompress(zlib.compress(data)) == data)\n"
                "assert(zlib.gunzip(zlib.gzip(data, 1)) == data)"),
            "");
}

TEST_F(ZlibTest, CorruptInput) {
  EXPECT_NE(Run("zlib.uncompress('garbage')").find("zlib: "), std::string::npos);
  EXPECT_NE(Run("zlib.uncompress('')").find("zlib: truncated input"), std::string::npos);
  EXPECT_NE(Run("zlib.uncompress(zlib.compress('hello world'):sub(1, -3))").find("zlib: truncated"),
            std::string::npos);
  EXPECT_NE(Run("zlib.uncompress(zlib.compress('hello') .. 'x')").find("zlib: trailing data"),
            std::string::npos);
  // A flipped bit in the Adler-32 trailer.
  EXPECT_NE(Run("local z = zlib.compress('hello')\n"
                "zlib.uncompress(z:sub(1, -2) .. string.char(z:byte(-1) ~ 1))")
                .find("zlib: incorrect data check"),
            std::string::npos);
  // The formats are not interchangeable.
  EXPECT_NE(Run("zlib.uncompress(zlib.gzip('hello'))").find("zlib: "), std::string::npos);
  EXPECT_NE(Run("zlib.gunzip(zlib.compress('hello'))").find("zlib: "), std::string::npos);
  EXPECT_NE(Run("zlib.compress('x', 10)").find("bad argument #2"), std::string::npos);
  EXPECT_NE(Run("zlib.compress()").find("bad argument #1"), std::string::npos);
}

TEST_F(ZlibTest, OutputIsBoundedAt64MiB) {
  EXPECT_NE(Run("zlib.uncompress(zlib.compress(string.rep('\\0', 64 * 1024 * 1024 + 1)))")
                .find("zlib: output exceeds the limit of 67108864 bytes"),
            std::string::npos);
}

TEST(CodecTest, RoundTripsEachFormat) {
  const std::string data = random_bytes(100000, 2) + std::string(100000, 'x');
  for (Format f : {Format::kZlib, Format::kRawDeflate, Format::kGzip}) {
    const std::string z = deflate_body(data, f);
    EXPECT_LT(z.size(), data.size());
    EXPECT_EQ(inflate_body(z, f), data);
    EXPECT_EQ(inflate_body(z, Format::kAuto), data) << "auto-detect";
  }
  EXPECT_EQ(inflate_body(deflate_body("", Format::kGzip), Format::kGzip), "");
  EXPECT_EQ(inflate_body(deflate_body("abc", Format::kAuto), Format::kZlib), "abc");
}

TEST(CodecTest, FormatsAreTold) {
  EXPECT_EQ(deflate_body("abc", Format::kZlib)[0], '\x78');
  EXPECT_EQ(deflate_body("abc", Format::kGzip).substr(0, 2), "\x1f\x8b");
  std::string err;
  EXPECT_FALSE(inflate_body(deflate_body("abc", Format::kRawDeflate), Format::kZlib,
                            rs::ruleset::kInflateLimit, &err));
  EXPECT_FALSE(err.empty());
}

TEST(CodecTest, GzipMembersConcatenate) {
  const std::string z =
      deflate_body("hello, ", Format::kGzip) + deflate_body("world", Format::kGzip);
  EXPECT_EQ(inflate_body(z, Format::kGzip), "hello, world");
  EXPECT_EQ(inflate_body(z, Format::kAuto), "hello, world");
  std::string err;
  EXPECT_FALSE(inflate_body(z + "junk", Format::kGzip, 1000, &err));
  EXPECT_EQ(err, "trailing data after the end of the stream");
}

TEST(CodecTest, Limit) {
  const std::string data(100000, 'a');
  const std::string z = deflate_body(data, Format::kZlib);
  EXPECT_EQ(inflate_body(z, Format::kZlib, data.size()), data);
  std::string err;
  EXPECT_FALSE(inflate_body(z, Format::kZlib, data.size() - 1, &err));
  EXPECT_EQ(err, "output exceeds the limit of 99999 bytes");
  EXPECT_FALSE(inflate_body(z, Format::kZlib, 0));
  EXPECT_EQ(inflate_body(deflate_body("", Format::kZlib), Format::kZlib, 0), "");
}

TEST(CodecTest, BadInput) {
  std::string err;
  EXPECT_FALSE(inflate_body("", Format::kAuto, 100, &err));
  EXPECT_EQ(err, "truncated input");
  const std::string z = deflate_body(random_bytes(5000, 3), Format::kGzip);
  EXPECT_FALSE(inflate_body(z.substr(0, z.size() / 2), Format::kGzip, 1 << 20, &err));
  EXPECT_EQ(err, "truncated input");
  std::string bad = z;
  bad[bad.size() - 6] ^= 1;  // inside the CRC-32
  EXPECT_FALSE(inflate_body(bad, Format::kGzip, 1 << 20, &err));
  EXPECT_EQ(err, "incorrect data check");
  EXPECT_FALSE(inflate_body("\xff\xff\xff\xff", Format::kRawDeflate, 100, &err));
  EXPECT_FALSE(err.empty());
  // Seeded random garbage: never a crash, usually an error, never output past the limit.
  std::mt19937 rng(4);
  for (int i = 0; i < 2000; ++i) {
    std::string g = z;
    for (int k = 0; k < 3; ++k) g[rng() % g.size()] = static_cast<char>(rng());
    const auto out = inflate_body(g, Format::kAuto, 6000);
    if (out) {
      EXPECT_LE(out->size(), 6000u);
    }
  }
}

TEST(CodecTest, BadLevelThrows) {
  EXPECT_THROW(deflate_body("x", Format::kZlib, 10), std::invalid_argument);
  EXPECT_THROW(deflate_body("x", Format::kZlib, -2), std::invalid_argument);
  EXPECT_NO_THROW(deflate_body("x", Format::kZlib, 0));
}

}  // namespace
