#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>

#include "ruleset/lib/libs.hpp"

namespace {

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

}  // namespace
