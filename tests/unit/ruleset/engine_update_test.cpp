// Loading and replacing rulesets and modules, /ruleset/invoke, /ruleset/rpcall,
// ruleset.tick and ruleset.stats.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine_fixture.hpp"
#include "proto/zlib_codec.hpp"

namespace rs::ruleset::testing {
namespace {

constexpr char kEcho[] = R"(return { resolve = function(a) return "old:1" end })";

// Loads an rpcall reply body in a fresh state and returns its values marshalled
// by tostring, e.g. {"true", "7", "x"}.
std::vector<std::string> eval_reply(const std::string& body) {
  std::vector<std::string> out;
  lua_State* L = luaL_newstate();
  if (luaL_loadstring(L, body.c_str()) != LUA_OK || lua_pcall(L, 0, LUA_MULTRET, 0) != LUA_OK) {
    out.push_back("error: " + std::string(lua_tostring(L, -1)));
  } else {
    const int n = lua_gettop(L);
    for (int i = 1; i <= n; ++i) {
      out.emplace_back(luaL_tolstring(L, i, nullptr));
      lua_pop(L, 1);
    }
  }
  lua_close(L);
  return out;
}

TEST_F(EngineTest, FailedUpdateKeepsTheOldRuleset) {
  EngineOptions opts;
  opts.instruction_limit = 1'000'000;
  make(opts);
  load(kEcho);
  std::string err;
  EXPECT_FALSE(engine_->update("return {", "=broken", &err));
  EXPECT_NE(err.find("broken"), std::string::npos) << err;
  EXPECT_FALSE(engine_->update("error('nope')", "=raises", &err));
  EXPECT_NE(err.find("nope"), std::string::npos) << err;
  EXPECT_FALSE(engine_->update("ruleset = nil return 42", "=notatable", &err));
  EXPECT_NE(err.find("must return a table"), std::string::npos) << err;
  EXPECT_FALSE(engine_->update("while true do end", "=loops", &err));
  auto r = route("a:1");
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "old:1");
}

TEST_F(EngineTest, UpdateTakesGlobalRulesetWhenNothingReturned) {
  make();
  load(R"(ruleset = { resolve = function() return "global:1" end })");
  EXPECT_TRUE(engine_->has_ruleset());
  EXPECT_EQ(route("a:1").decision->addr, "global:1");
}

TEST_F(EngineTest, UpdateModuleReplacesLoadedAndGlobal) {
  make();
  load(R"(
    package.loaded.mylib = { answer = function() return "one:1" end }
    mylib = package.loaded.mylib
    other = package.loaded.mylib
    return { resolve = function() return require("mylib").answer() end }
  )");
  EXPECT_EQ(route("a:1").decision->addr, "one:1");
  std::string err;
  ASSERT_TRUE(engine_->update_module("mylib", R"(
    local name = ...
    assert(name == "mylib")
    return { answer = function() return "two:1" end }
  )",
                                     "@mylib.lua", &err))
      << err;
  EXPECT_EQ(route("a:1").decision->addr, "two:1");
  load(R"(
    assert(mylib == package.loaded.mylib, "_G.mylib follows the module")
    assert(other ~= package.loaded.mylib)
    return { resolve = function() return "ok:1" end }
  )");
  ASSERT_TRUE(engine_->update_module("flag", "x = 1", "", &err)) << err;
  load(R"(assert(package.loaded.flag == true) return {})");
  EXPECT_FALSE(engine_->update_module("bad", "error('bad module')", "", &err));
  EXPECT_NE(err.find("bad module"), std::string::npos);
}

TEST_F(EngineTest, RpcallReplyLoadsBack) {
  make();
  load("return {}");
  std::string body;
  auto h = engine_->rpcall(R"(
    local x = ...
    await.sleep(0.001)
    secret = "kept local"   -- the chunk's globals do not leak into _G
    return 7, "x", { a = 1 }
  )",
                           [&](std::string b) { body = std::move(b); });
  EXPECT_TRUE(body.empty());
  ASSERT_TRUE(run_until([&] { return !body.empty(); }));
  EXPECT_EQ(body.rfind("return true,", 0), 0u) << body;
  auto v = eval_reply(body);
  ASSERT_EQ(v.size(), 4u) << body;
  EXPECT_EQ(v[0], "true");
  EXPECT_EQ(v[1], "7");
  EXPECT_EQ(v[2], "x");
  load("assert(secret == nil) return {}");

  body.clear();
  auto h2 = engine_->rpcall("error('remote failure')", [&](std::string b) { body = std::move(b); });
  ASSERT_TRUE(run_until([&] { return !body.empty(); }));
  v = eval_reply(body);
  ASSERT_EQ(v.size(), 2u) << body;
  EXPECT_EQ(v[0], "false");
  EXPECT_NE(v[1].find("remote failure"), std::string::npos);

  body.clear();
  auto h3 = engine_->rpcall("return {", [&](std::string b) { body = std::move(b); });
  ASSERT_TRUE(run_until([&] { return !body.empty(); }));
  EXPECT_EQ(eval_reply(body)[0], "false") << body;

  body.clear();
  auto h4 = engine_->rpcall("return print", [&](std::string b) { body = std::move(b); });
  ASSERT_TRUE(run_until([&] { return !body.empty(); }));
  EXPECT_EQ(eval_reply(body)[0], "false") << body;  // marshal refuses functions
}

TEST_F(EngineTest, InvokeReportsEarlyErrorsOnly) {
  make();
  load("return {}");
  std::string err;
  EXPECT_TRUE(engine_->invoke("invoked = 1", &err)) << err;
  EXPECT_FALSE(engine_->invoke("error('early')", &err));
  EXPECT_NE(err.find("early"), std::string::npos);
  EXPECT_FALSE(engine_->invoke("syntax error here", &err));
  EXPECT_TRUE(engine_->invoke("await.sleep(0.01) invoked = 2 error('late')", &err)) << err;
  run_for(0.05);
  load("assert(invoked == 2) return {}");
}

TEST_F(EngineTest, TickRunsAndStops) {
  make();
  load(R"(
    ticks = 0
    neosocksd.setinterval(0.01)
    return { tick = function(now)
      assert(type(now) == "number")
      ticks = ticks + 1
      if ticks == 3 then error("tick errors are only logged") end
      if ticks == 5 then neosocksd.setinterval(0) end
    end }
  )");
  run_for(0.2);
  std::string body;
  auto h = engine_->rpcall("return ticks", [&](std::string b) { body = std::move(b); });
  ASSERT_TRUE(run_until([&] { return !body.empty(); }));
  EXPECT_EQ(eval_reply(body), (std::vector<std::string>{"true", "5"}));
}

TEST_F(EngineTest, StatsCallsRulesetStats) {
  make();
  EXPECT_EQ(engine_->stats(1, "q"), "");
  load(R"(return { stats = function(dt, q) return string.format("dt=%g q=%s", dt, q) end })");
  EXPECT_EQ(engine_->stats(1.5, "hello"), "dt=1.5 q=hello");
  load(R"(return { stats = function() error("x") end })");
  EXPECT_EQ(engine_->stats(1, ""), "");
}

TEST_F(EngineTest, GcFreesGarbage) {
  make();
  load(R"(junk = {} for i = 1, 10000 do junk[i] = tostring(i) .. "padding" end return {})");
  const size_t before = engine_->memory_bytes();
  load("junk = nil return {}");
  EXPECT_GT(engine_->gc(), 0u);
  EXPECT_LT(engine_->memory_bytes(), before);
}

TEST_F(EngineTest, LoadFilePlainAndGzipWithPackagePath) {
  make();
  const auto dir =
      std::filesystem::temp_directory_path() / ("rs_engine_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "helper.lua") << R"(return { target = "from-helper:1" })";
  const std::string ruleset =
      R"(local h = require("helper") return { resolve = function() return h.target end })";
  std::ofstream(dir / "plain.lua") << ruleset;
  std::ofstream(dir / "packed.lua.gz", std::ios::binary)
      << proto::deflate_body(ruleset, proto::Compression::kGzip);

  std::string err;
  ASSERT_TRUE(engine_->load_file((dir / "plain.lua").string(), &err)) << err;
  EXPECT_EQ(route("a:1").decision->addr, "from-helper:1");
  make();
  ASSERT_TRUE(engine_->load_file((dir / "packed.lua.gz").string(), &err)) << err;
  EXPECT_EQ(route("a:1").decision->addr, "from-helper:1");
  EXPECT_FALSE(engine_->load_file((dir / "missing.lua").string(), &err));
  std::filesystem::remove_all(dir);
}

TEST_F(EngineTest, LuaPathDirsOption) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("rs_engine_path_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "extra.lua") << "return 'extra'";
  EngineOptions opts;
  opts.lua_path_dirs = {dir.string()};
  make(opts);
  load(R"(assert(require("extra") == "extra") return {})");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace rs::ruleset::testing
