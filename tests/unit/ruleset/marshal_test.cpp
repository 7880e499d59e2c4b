#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "ruleset/lib/libs.hpp"

namespace {

// Lua helpers shared by the cases below: roundtrip() marshals and loads back, same() compares
// deeply and exactly (integer vs float, the sign of zero, NaN equal to NaN).
constexpr char kPrelude[] = R"lua(
function roundtrip(...)
  return load("return " .. marshal(...))()
end
function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    if a ~= a then return b ~= b end
    if a == 0 then return 1 / a == 1 / b end
    return a == b
  end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same(v, rawget(b, k)) then return false end
  end
  for k in pairs(b) do
    if rawget(a, k) == nil then return false end
  end
  return true
end
function check(v)
  local s = marshal(v)
  local u = load("return " .. s)()
  assert(same(v, u), "round trip changed " .. s)
  assert(marshal(u) == s, "not deterministic: " .. s)
end
)lua";

class MarshalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    L = luaL_newstate();
    luaL_openlibs(L);
    rs::ruleset::open_libs(L);
    ASSERT_EQ(Run(kPrelude), "");
  }
  void TearDown() override { lua_close(L); }

  // Runs a chunk; returns "" on success, otherwise the error message.
  std::string Run(const char* code) {
    lua_settop(L, 0);
    if (luaL_dostring(L, code) == LUA_OK) return "";
    const char* msg = lua_tostring(L, -1);
    return msg ? msg : "(error object is not a string)";
  }
  // Runs a chunk that returns a string and gives that string back.
  std::string Eval(const char* code) {
    EXPECT_EQ(Run(code), "");
    size_t len = 0;
    const char* s = lua_tolstring(L, 1, &len);
    return s ? std::string(s, len) : "(no string result)";
  }

  lua_State* L = nullptr;
};

TEST_F(MarshalTest, SeedExample) {
  EXPECT_EQ(Eval(R"(return marshal("a", {"b", ["c"] = "d"}))"), R"("a",{"b",["c"]="d"})");
}

TEST_F(MarshalTest, NoArgumentsGiveEmptyString) {
  EXPECT_EQ(Eval("return marshal()"), "");
}

TEST_F(MarshalTest, Scalars) {
  EXPECT_EQ(Eval("return marshal(nil, true, false, 0, -1, 42, 'x')"),
            R"(nil,true,false,0,-1,42,"x")");
  EXPECT_EQ(Run("local a, b, c = roundtrip(nil, true, false)\n"
                "assert(a == nil and b == true and c == false)"),
            "");
}

TEST_F(MarshalTest, IntegerExtremes) {
  EXPECT_EQ(Eval("return marshal(math.mininteger, math.maxinteger)"),
            "0x8000000000000000,9223372036854775807");
  EXPECT_EQ(Run("check(math.mininteger) check(math.maxinteger) check(-1) check(0)\n"
                "check(math.mininteger + 1)\n"
                "local v = roundtrip(math.mininteger)\n"
                "assert(math.type(v) == 'integer' and v == math.mininteger)"),
            "");
}

TEST_F(MarshalTest, FloatsStayExactFloats) {
  EXPECT_EQ(Eval("return marshal(1.0, -0.0, 0.1, 1e308, 1/0, -1/0, 0/0, 2^63, 5e-324)"),
            "1.0,-0.0,0.1,1e+308,1e+1000,-1e+1000,(0/0),9223372036854775808.0,5e-324");
  EXPECT_EQ(Run("for _, x in ipairs({1.0, -0.0, 0.0, 0.1, 1/3, 1e308, -1e308, 2.5e-308, 5e-324,\n"
                "    math.pi, 2^53, 2^53 + 1, -2^63, 2^63, 1e15, 1e16, 123456789.125}) do\n"
                "  check(x)\n"
                "end\n"
                "check(1/0) check(-1/0) check(0/0)\n"
                "assert(math.type(roundtrip(1.0)) == 'float')\n"
                "assert(math.type(roundtrip(1)) == 'integer')\n"
                "assert(1 / roundtrip(-0.0) == -1/0)\n"
                "local nan = roundtrip(0/0) assert(nan ~= nan)"),
            "");
}

TEST_F(MarshalTest, StringsWithEveryByte) {
  EXPECT_EQ(Run("local t = {} for i = 0, 255 do t[#t + 1] = string.char(i) end\n"
                "local all = table.concat(t)\n"
                "check(all) check('') check(string.rep(all, 100))\n"
                "check('\\0' .. '1') check('\\1' .. '23') check('\"quoted\" \\\\ back')\n"
                "local s = marshal(all)\n"
                "assert(not s:find('[^\\32-\\126]'), 'output is not printable ASCII')"),
            "");
  EXPECT_EQ(Eval(R"(return marshal("a\"b\\c\n\r\t\0\127\128\255"))"),
            R"("a\"b\\c\n\r\t\x00\x7f\x80\xff")");
}

TEST_F(MarshalTest, TablesListFirstThenSortedKeys) {
  EXPECT_EQ(Eval("return marshal({[3] = 1, x = 2, [true] = 3, [1.5] = 4, [-1] = 5, [1] = 6,\n"
                 "                a = 7, [false] = 8})"),
            R"({6,[false]=8,[true]=3,[-1]=5,[3]=1,[1.5]=4,["a"]=7,["x"]=2})");
  EXPECT_EQ(Eval("return marshal({}, {{}}, {1, 2, 3}, {n = {m = {}}})"),
            R"({},{{}},{1,2,3},{["n"]={["m"]={}}})");
  // A hole ends the list part; what follows it becomes [k]=v.
  EXPECT_EQ(Eval("return marshal({1, nil, 3})"), "{1,[3]=3}");
  EXPECT_EQ(Eval("return marshal({[2] = 'b', [10] = 'j', [0] = 'z'})"),
            R"({[0]="z",[2]="b",[10]="j"})");
  // Byte order of keys, and keys that are not identifiers.
  EXPECT_EQ(Eval("return marshal({b = 1, B = 2, ['end'] = 3, [''] = 4, ab = 5})"),
            R"({[""]=4,["B"]=2,["ab"]=5,["b"]=1,["end"]=3})");
}

TEST_F(MarshalTest, TableRoundTrips) {
  EXPECT_EQ(Run("check({}) check({1, 2, 3}) check({1, nil, 3}) check({[0] = 0, [-5] = 1})\n"
                "check({a = {b = {c = {1, 2, {}}}}})\n"
                "check({[true] = 1, [false] = 0, [1.5] = 'f', [1/0] = 'inf', [-1/0] = 0})\n"
                "check({'x', 'y', [3] = 'z', [5] = 'w', k = {1.0, 2}})\n"
                "check({[math.mininteger] = math.maxinteger, [math.maxinteger] = 1})"),
            "");
}

TEST_F(MarshalTest, TableKeysAreMarshalledToo) {
  EXPECT_EQ(Eval("return marshal({[{1}] = 2})"), "{[{1}]=2}");
}

TEST_F(MarshalTest, SharedTableIsWrittenTwice) {
  EXPECT_EQ(Eval("local t = {1} return marshal({t, t}, t)"), "{{1},{1}},{1}");
}

TEST_F(MarshalTest, RejectsUnsupportedTypes) {
  EXPECT_NE(Run("marshal(print)").find("marshal: function is not supported"), std::string::npos);
  EXPECT_NE(Run("marshal({f = function() end})").find("function"), std::string::npos);
  EXPECT_NE(Run("marshal(coroutine.create(print))").find("thread"), std::string::npos);
  EXPECT_NE(Run("marshal(1, io.stdout)").find("userdata"), std::string::npos);
  EXPECT_NE(Run("marshal({[print] = 1})").find("function"), std::string::npos);
}

TEST_F(MarshalTest, RejectsCycles) {
  EXPECT_NE(Run("local t = {} t.self = t marshal(t)").find("marshal: circular reference"),
            std::string::npos);
  EXPECT_NE(Run("local a, b = {}, {} a[1] = b b[1] = {a} marshal(a)").find("circular"),
            std::string::npos);
  EXPECT_NE(Run("local t = {} t[t] = 1 marshal(t)").find("circular"), std::string::npos);
  // The failed call leaves nothing behind: the same table marshals once the cycle is cut.
  EXPECT_EQ(Eval("local t = {} t.self = t pcall(marshal, t) t.self = nil return marshal(t)"), "{}");
}

TEST_F(MarshalTest, BoundsDepth) {
  constexpr char kNest[] =
      "local function nest(n) local t = {} for _ = 2, n do t = {t} end return t end\n";
  EXPECT_EQ(Run((std::string(kNest) + "check(nest(128))").c_str()), "");
  EXPECT_NE(Run((std::string(kNest) + "marshal(nest(129))").c_str()).find("marshal: nesting"),
            std::string::npos);
  EXPECT_NE(Run((std::string(kNest) + "marshal(nest(100000))").c_str()).find("marshal: nesting"),
            std::string::npos);
}

TEST_F(MarshalTest, ThousandRandomTables) {
  EXPECT_EQ(Run(R"lua(
    math.randomseed(20240611)
    local specials = {0, -0.0, 1.0, 0.1, 1e308, -1e308, 5e-324, 1/0, -1/0, 0/0,
                      math.maxinteger, math.mininteger, 2^53, 2^63, -2^63}
    local function rand_string()
      local t = {}
      for i = 1, math.random(0, 12) do t[i] = string.char(math.random(0, 255)) end
      return table.concat(t)
    end
    local function rand_scalar()
      local r = math.random(1, 6)
      if r == 1 then return math.random(2) == 1 end
      if r == 2 then return math.random(0) end
      if r == 3 then return math.random(-100, 100) end
      if r == 4 then return (math.random() - 0.5) * 10.0 ^ math.random(-300, 300) end
      if r == 5 then return specials[math.random(#specials)] end
      return rand_string()
    end
    local function rand_key()
      local r = math.random(1, 4)
      if r == 1 then return math.random(-3, 10) end
      if r == 2 then return math.random() * 100 end
      if r == 3 then return math.random(2) == 1 end
      return rand_string()
    end
    local rand_table
    local function rand_value(depth)
      if depth < 4 and math.random(3) == 1 then return rand_table(depth + 1) end
      return rand_scalar()
    end
    function rand_table(depth)
      local t = {}
      for i = 1, math.random(0, 5) do t[i] = rand_value(depth) end
      for _ = 1, math.random(0, 5) do t[rand_key()] = rand_value(depth) end
      return t
    end
    for _ = 1, 1000 do check(rand_table(0)) end
  )lua"),
            "");
}

// An allocator with a budget, to make every allocation in turn fail.
struct Budget {
  size_t used = 0;
  size_t limit = SIZE_MAX;
};

void* budget_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  auto* b = static_cast<Budget*>(ud);
  const size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    std::free(ptr);
    b->used -= old;
    return nullptr;
  }
  if (nsize > old && b->used - old + nsize > b->limit) return nullptr;
  void* p = std::realloc(ptr, nsize);
  if (p != nullptr) b->used = b->used - old + nsize;
  return p;
}

// Lua errors raised at any allocation inside the libraries must leave a usable state and leak
// nothing (the sanitizer build checks the latter).
TEST(OutOfMemoryTest, LibrariesFailCleanly) {
  Budget budget;
  lua_State* L = lua_newstate(budget_alloc, &budget);
  luaL_openlibs(L);
  rs::ruleset::open_libs(L);
  ASSERT_EQ(luaL_dostring(L, R"lua(
    local t = {}
    for i = 1, 50 do t[i] = {id = i, name = "n" .. i, [i + 0.5] = {true, false}, s = ("x"):rep(i * 40)} end
    local z = zlib.compress(("abc"):rep(1000))
    function work()
      local s = marshal(t, "tail", 1.5)
      local re = regex.compile("([a-z]+)([0-9]+)")
      local out = {}
      for m, a, b in re:gmatch("ab12 cd34 ef56") do out[#out + 1] = a .. b end
      local u = zlib.uncompress(z)
      local g = zlib.gunzip(zlib.gzip(s))
      local e, r = time.measure(marshal, out)
      return #s + #u + #g + #r
    end
    expected = work()
  )lua"),
            LUA_OK)
      << lua_tostring(L, -1);
  int failures = 0;
  for (size_t extra = 0; extra < 400000; extra += extra < 20000 ? 97 : 4999) {
    lua_gc(L, LUA_GCCOLLECT);
    lua_getglobal(L, "work");
    budget.limit = budget.used + extra;
    const int rc = lua_pcall(L, 0, 1, 0);
    budget.limit = SIZE_MAX;
    if (rc != LUA_OK) {
      ++failures;
      lua_pop(L, 1);
      continue;
    }
    lua_getglobal(L, "expected");
    EXPECT_TRUE(lua_rawequal(L, -1, -2)) << "extra " << extra;
    lua_pop(L, 2);
  }
  EXPECT_GT(failures, 10);
  // Still healthy afterwards.
  ASSERT_EQ(luaL_dostring(L, "assert(work() == expected)"), LUA_OK) << lua_tostring(L, -1);
  lua_close(L);
  EXPECT_EQ(budget.used, 0u);
}

// Found by the rpc_reply fuzzer: marshal's buffer comes from the allocator
// directly, where Lua's own emergency collection does not run; garbage that
// a collection would free must not make it fail.
TEST(OutOfMemoryTest, MarshalCollectsGarbageBeforeGivingUp) {
  Budget budget;
  lua_State* L = lua_newstate(budget_alloc, &budget);
  luaL_openlibs(L);
  rs::ruleset::open_libs(L);
  lua_gc(L, LUA_GCSTOP);  // garbage piles up, as it does between collector steps
  ASSERT_EQ(luaL_dostring(L, "big = ('x'):rep(200000)"), LUA_OK);
  budget.limit = budget.used + 2'000'000;
  // Garbage until less is left than marshal's 256 KiB buffer needs, without
  // failing an allocation (which would make Lua collect by itself).
  ASSERT_EQ(luaL_loadstring(L, "local g = ('y'):rep(8000)"), LUA_OK);
  while (budget.limit - budget.used > 150'000) {
    lua_pushvalue(L, -1);
    ASSERT_EQ(lua_pcall(L, 0, 0, 0), LUA_OK) << lua_tostring(L, -1);
  }
  lua_pop(L, 1);
  EXPECT_EQ(luaL_dostring(L, "assert(#marshal(big) == 200002)"), LUA_OK) << lua_tostring(L, -1);
  budget.limit = SIZE_MAX;
  lua_close(L);
  EXPECT_EQ(budget.used, 0u);
}

}  // namespace
