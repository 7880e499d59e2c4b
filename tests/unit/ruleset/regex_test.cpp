// The same cases run on whichever engine is built in; build with -DRULESOCKS_REGEX=POSIX for the
// other one. Lua's string functions serve as the reference where the two pattern languages agree.
#include <gtest/gtest.h>

#include <string>

#include "ruleset/lib/libs.hpp"

namespace {

constexpr char kPrelude[] = R"lua(
-- Collects every tuple an iterator yields, joined as "a,b|c,d" (nil shows as "nil").
function collect(...)
  local out = {}
  for a, b, c in ... do
    out[#out + 1] = table.concat({tostring(a), tostring(b), tostring(c)}, ","):gsub(",nil$", ""):gsub(",nil$", "")
  end
  return table.concat(out, "|")
end
function pack(...) return table.pack(...) end
)lua";

class RegexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    L = luaL_newstate();
    luaL_openlibs(L);
    rs::ruleset::open_libs(L);
    ASSERT_EQ(Run(kPrelude), "");
  }
  void TearDown() override { lua_close(L); }

  std::string Run(const std::string& code) {
    lua_settop(L, 0);
    if (luaL_dostring(L, code.c_str()) == LUA_OK) return "";
    const char* msg = lua_tostring(L, -1);
    return msg ? msg : "(error object is not a string)";
  }
  // Runs `return <expr>` and gives back its results joined with ",", nil shown as "nil".
  std::string Eval(const std::string& expr) {
    const std::string err =
        Run("local r = table.pack(" + expr + ") for i = 1, r.n do r[i] = tostring(r[i]) end " +
            "return table.concat(r, ',', 1, r.n)");
    if (!err.empty()) return "error: " + err;
    return lua_tostring(L, 1);
  }
  bool pcre2() const { return std::string(rs::ruleset::regex_backend()) == "pcre2"; }

  lua_State* L = nullptr;
};

TEST_F(RegexTest, BackendIsNamed) {
  const std::string name = rs::ruleset::regex_backend();
  EXPECT_TRUE(name == "pcre2" || name == "posix") << name;
}

TEST_F(RegexTest, SeedExample) {
  constexpr char kPattern[] = "regex.compile([[\\.example\\.(com|org)$]])";
  EXPECT_EQ(Eval(std::string(kPattern) + ":find('www.example.com')"), "4,15");
  EXPECT_EQ(Eval(std::string(kPattern) + ":find('a.example.org')"), "2,13");
  EXPECT_EQ(Eval(std::string(kPattern) + ":find('example.com')"), "nil");
  EXPECT_EQ(Eval(std::string(kPattern) + ":find('www.example.com.cn')"), "nil");
  EXPECT_EQ(Eval(std::string(kPattern) + ":match('www.example.org')"), ".example.org,org");
  EXPECT_EQ(Eval(std::string(kPattern) + ":match('www.example.net')"), "nil");
}

TEST_F(RegexTest, FindIsLikeStringFind) {
  EXPECT_EQ(Eval("regex.compile('[0-9]+'):find('ab123cd45')"), "3,5");
  EXPECT_EQ(Eval("string.find('ab123cd45', '[0-9]+')"), "3,5");
  EXPECT_EQ(Eval("regex.compile('[0-9]+'):find('abc')"), "nil");
  // An empty match reports end = start - 1, as string.find does.
  EXPECT_EQ(Eval("regex.compile('x*'):find('abc')"), "1,0");
  EXPECT_EQ(Eval("string.find('abc', 'x*')"), "1,0");
  EXPECT_EQ(Eval("regex.compile('[[:digit:]]+'):find('ab123')"), "3,5");
}

TEST_F(RegexTest, InitOffsets) {
  // string.find is the reference for every kind of init: inside, at the end, past the end,
  // zero and negative.
  for (const std::string init : {"1", "2", "4", "6", "7", "8", "0", "-1", "-2", "-5", "-100"}) {
    EXPECT_EQ(Eval("regex.compile('[0-9]+'):find('a1b22c', " + init + ")"),
              Eval("string.find('a1b22c', '[0-9]+', " + init + ")"))
        << "init " << init;
    EXPECT_EQ(Eval("regex.compile('x*'):find('abc', " + init + ")"),
              Eval("string.find('abc', 'x*', " + init + ")"))
        << "init " << init;
  }
  EXPECT_EQ(Eval("regex.compile('[a-z]+'):match('ab12cd', 3)"), "cd");
  EXPECT_EQ(Eval("regex.compile('[a-z]+'):match('ab12cd', -1)"), "d");
  EXPECT_EQ(Eval("regex.compile('[a-z]+'):match('ab12cd', 8)"), "nil");
}

TEST_F(RegexTest, CaretMatchesOnlyAtTheRealStart) {
  EXPECT_EQ(Eval("regex.compile('^b'):find('ab', 2)"), "nil");
  EXPECT_EQ(Eval("regex.compile('^a'):find('ab', 1)"), "1,1");
  EXPECT_EQ(Eval("regex.compile('b$'):find('ab', 2)"), "2,2");
}

TEST_F(RegexTest, MatchReturnsWholeMatchThenCaptures) {
  EXPECT_EQ(Eval("regex.compile('^(a+)(b*)$'):match('aab')"), "aab,aa,b");
  EXPECT_EQ(Eval("regex.compile('^(a+)(b*)$'):match('aaa')"), "aaa,aaa,");
  EXPECT_EQ(Eval("regex.compile('^(a+)(b*)$'):match('aaba')"), "nil");
  // A capture that takes no part in the match is nil, and still counted.
  EXPECT_EQ(Eval("select('#', regex.compile('(a)|(b)'):match('b'))"), "3");
  EXPECT_EQ(Eval("regex.compile('(a)|(b)'):match('b')"), "b,nil,b");
  EXPECT_EQ(Eval("regex.compile('(a)|(b)'):match('a')"), "a,a,nil");
  EXPECT_EQ(Eval("regex.compile('x(y)?z'):match('xz')"), "xz,nil");
  EXPECT_EQ(Eval("regex.compile('([a-z]+)@([a-z]+)\\\\.com'):match('mail: joe@example.com!')"),
            "joe@example.com,joe,example");
}

TEST_F(RegexTest, Gmatch) {
  EXPECT_EQ(Eval("collect(regex.compile('[0-9]+'):gmatch('a1b22c333'))"), "1|22|333");
  EXPECT_EQ(Eval("collect(regex.compile('([a-z])([0-9])'):gmatch('a1b2-c3'))"),
            "a1,a,1|b2,b,2|c3,c,3");
  EXPECT_EQ(Eval("collect(regex.compile('[0-9]+'):gmatch('none'))"), "");
  EXPECT_EQ(Eval("collect(regex.compile('[0-9]+'):gmatch(''))"), "");
  EXPECT_EQ(Eval("collect(regex.compile('[0-9]+'):gmatch('1a22b333', 3))"), "22|333");
  // Unset captures come through as nil.
  EXPECT_EQ(Eval("collect(regex.compile('(a)|(b)'):gmatch('ab'))"), "a,a|b,nil,b");
}

TEST_F(RegexTest, GmatchStepsOverEmptyMatchesLikeStringGmatch) {
  for (const char* s : {"", "a", "abc", "xx", "axxb", "xaxx", "aaxxbbx"}) {
    const std::string subject = std::string("'") + s + "'";
    EXPECT_EQ(Eval("collect(regex.compile('x*'):gmatch(" + subject + "))"),
              Eval("collect(string.gmatch(" + subject + ", 'x*'))"))
        << s;
    EXPECT_EQ(Eval("collect(regex.compile('a?'):gmatch(" + subject + "))"),
              Eval("collect(string.gmatch(" + subject + ", 'a?'))"))
        << s;
  }
  EXPECT_EQ(Eval("collect(regex.compile('x*'):gmatch('axxb'))"), "|xx|");
}

TEST_F(RegexTest, GmatchIteratorStaysExhausted) {
  EXPECT_EQ(Run("local it = regex.compile('a'):gmatch('aa')\n"
                "assert(it() == 'a') assert(it() == 'a')\n"
                "assert(it() == nil) assert(it() == nil)"),
            "");
}

TEST_F(RegexTest, SubjectsAreBytes) {
  EXPECT_EQ(Eval("regex.compile('b'):find('a\\0b')"), "3,3");
  EXPECT_EQ(Eval("regex.compile('c$'):find('a\\0b\\0c')"), "5,5");
  EXPECT_EQ(Eval("regex.compile('\\255+'):find('a\\255\\255b')"), "2,3");
  EXPECT_EQ(Eval("select(2, regex.compile('a(.*)b'):match('xa\\x80\\x81by'))"), "\x80\x81");
}

TEST_F(RegexTest, EreNewlineSemantics) {
  // Without flags "." matches a newline and "$" only the very end, as in POSIX ERE.
  EXPECT_EQ(Eval("regex.compile('a.b'):find('a\\nb')"), "1,3");
  EXPECT_EQ(Eval("regex.compile('a$'):find('a\\n')"), "nil");
  EXPECT_EQ(Eval("regex.compile('^b$'):find('a\\nb\\nc')"), "nil");
  EXPECT_EQ(Eval("regex.compile('^b$', 'm'):find('a\\nb\\nc')"), "3,3");
  EXPECT_EQ(Eval("regex.compile('a.b', 'm'):find('a\\nb')"), "nil");
}

TEST_F(RegexTest, IgnoreCase) {
  EXPECT_EQ(Eval("regex.compile('abc', 'i'):find('xABC')"), "2,4");
  EXPECT_EQ(Eval("regex.compile('abc'):find('xABC')"), "nil");
  EXPECT_EQ(Eval("regex.compile('^b$', 'mi'):find('a\\nB')"), "3,3");
}

TEST_F(RegexTest, Errors) {
  const std::string err = Run("regex.compile('(')");
  EXPECT_NE(err.find("regex.compile: "), std::string::npos) << err;
  if (pcre2()) {
    EXPECT_NE(err.find("at offset 1"), std::string::npos) << err;
  }
  EXPECT_NE(Run("regex.compile('a[b')").find("regex.compile: "), std::string::npos);
  EXPECT_NE(Run("regex.compile('a', 'q')").find("unknown flag"), std::string::npos);
  EXPECT_NE(Run("regex.compile()").find("bad argument #1"), std::string::npos);
  EXPECT_NE(Run("regex.compile('a'):find()").find("bad argument"), std::string::npos);
  EXPECT_NE(Run("regex.compile('a').find({}, 'a')").find("bad argument"), std::string::npos);
  EXPECT_NE(Run("regex.compile('a'):match('a', 'x')").find("bad argument"), std::string::npos);
}

TEST_F(RegexTest, EngineDifferences) {
  // Alternation: PCRE2 takes the first alternative that matches, POSIX the longest match.
  EXPECT_EQ(Eval("regex.compile('a|ab'):match('ab')"), pcre2() ? "a" : "ab");
  // A NUL in a pattern only works with PCRE2.
  EXPECT_EQ(Eval("(pcall(regex.compile, 'a\\0b'))"), pcre2() ? "true" : "false");
}

TEST_F(RegexTest, ObjectsAreCollected) {
  EXPECT_EQ(Run("for i = 1, 2000 do regex.compile('(a+)' .. i):match('aa' .. i) end\n"
                "collectgarbage() collectgarbage()\n"
                "assert(tostring(regex.compile('a')):find('^regex %('))"),
            "");
}

}  // namespace
