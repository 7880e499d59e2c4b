#include <gtest/gtest.h>

#include <string>

#include "ruleset/lib/libs.hpp"

namespace {

class TimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    L = luaL_newstate();
    luaL_openlibs(L);
    rs::ruleset::open_libs(L);
  }
  void TearDown() override { lua_close(L); }

  std::string Run(const char* code) {
    lua_settop(L, 0);
    if (luaL_dostring(L, code) == LUA_OK) return "";
    const char* msg = lua_tostring(L, -1);
    return msg ? msg : "(error object is not a string)";
  }

  lua_State* L = nullptr;
};

TEST_F(TimeTest, OpenLibsSetsGlobals) {
  EXPECT_EQ(Run("assert(type(regex) == 'table' and type(regex.compile) == 'function')\n"
                "assert(type(time) == 'table' and type(zlib) == 'table')\n"
                "assert(type(marshal) == 'function')\n"
                "assert(package.loaded.regex == regex and package.loaded.marshal == marshal)"),
            "");
}

TEST_F(TimeTest, ClocksAreFloatSeconds) {
  EXPECT_EQ(Run("for _, f in ipairs({time.monotonic, time.process, time.thread, time.wall}) do\n"
                "  local t = f() assert(math.type(t) == 'float' and t >= 0)\n"
                "end\n"
                "assert(math.abs(time.wall() - os.time()) < 2)"),
            "");
}

// neosocksd's time.unix(): wall-clock seconds since the epoch, with a fraction.
TEST_F(TimeTest, UnixIsWallClockSecondsAsFloat) {
  EXPECT_EQ(Run("local t = time.unix()\n"
                "assert(math.type(t) == 'float', math.type(t))\n"
                "assert(math.abs(t - os.time()) < 2, t)\n"
                "assert(math.abs(t - time.wall()) < 1)\n"
                "local t1 repeat t1 = time.unix() until t1 ~= t or os.clock() > 1\n"
                "assert(t1 > t and t1 - t < 1, 'sub-second resolution')"),
            "");
}

TEST_F(TimeTest, ClocksAdvance) {
  EXPECT_EQ(Run("local m0, p0, t0 = time.monotonic(), time.process(), time.thread()\n"
                "local m = m0\n"
                "while m - m0 < 0.02 do\n"
                "  local m1 = time.monotonic() assert(m1 >= m, 'monotonic went back') m = m1\n"
                "end\n"
                "assert(time.process() > p0 and time.thread() > t0)"),
            "");
}

TEST_F(TimeTest, MeasureReturnsElapsedAndResults) {
  EXPECT_EQ(Run("local t, a, b = time.measure(function(x, y) return x + y, 'z' end, 1, 2)\n"
                "assert(math.type(t) == 'float' and t >= 0 and t < 1)\n"
                "assert(a == 3 and b == 'z')\n"
                "assert(select('#', time.measure(function() end)) == 1)\n"
                "assert(select('#', time.measure(function() return nil, nil end)) == 3)\n"
                "local spin = time.measure(function()\n"
                "  local s = time.monotonic() repeat until time.monotonic() - s >= 0.01\n"
                "end)\n"
                "assert(spin >= 0.01 and spin < 1, spin)"),
            "");
}

TEST_F(TimeTest, MeasurePropagatesErrors) {
  EXPECT_EQ(Run("local ok, err = pcall(time.measure, function() error('boom') end)\n"
                "assert(not ok and err:find('boom'))\n"
                "local ok2, obj = pcall(time.measure, function() error({code = 7}) end)\n"
                "assert(not ok2 and obj.code == 7)"),
            "");
  EXPECT_NE(Run("time.measure(42)").find("bad argument #1"), std::string::npos);
}

}  // namespace
