// Route decisions and the ways a ruleset can fail them.
#include <string>

#include "engine_fixture.hpp"

namespace rs::ruleset::testing {
namespace {

using Kind = Request::Kind;

TEST_F(EngineTest, RoutesToAddressOnly) {
  make();
  load(R"(return { resolve = function(addr) return "example.org:443" end })");
  auto r = route("example.com:80");
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "example.org:443");
  EXPECT_TRUE(r.decision->chain.empty());
}

TEST_F(EngineTest, ChainIsReversedToDialOrder) {
  make();
  load(R"(return { route = function(addr)
    return addr, "socks5://10.0.0.3:1080", "http://10.0.0.2:8080", "socks4a://10.0.0.1:1080"
  end })");
  auto r = route("1.2.3.4:80", Kind::kRoute);
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "1.2.3.4:80");
  const std::vector<std::string> want{"socks4a://10.0.0.1:1080", "http://10.0.0.2:8080",
                                      "socks5://10.0.0.3:1080"};
  EXPECT_EQ(r.decision->chain, want);
  // Parsed once, by the engine: the session dials these values as they are.
  ASSERT_TRUE(r.typed);
  EXPECT_TRUE(r.typed->target.is_ipv4());
  EXPECT_EQ(r.typed->target.port, 80);
  ASSERT_EQ(r.typed->chain.size(), 3u);
  EXPECT_EQ(r.typed->chain[0].scheme, proto::ProxyUri::Scheme::kSocks4a);
  EXPECT_EQ(r.typed->chain[0].host, "10.0.0.1");
  EXPECT_EQ(r.typed->chain[2].port, 1080);
}

TEST_F(EngineTest, DecisionKeepsHopCredentials) {
  make();
  load(R"(return { resolve = function(addr)
    return "example.org:443", "socks5://al%40ice:p%3Ass@[2001:db8::1]:1080"
  end })");
  auto r = route("example.com:80");
  ASSERT_TRUE(r.typed) << r.error;
  EXPECT_TRUE(r.typed->target.is_domain());
  ASSERT_EQ(r.typed->chain.size(), 1u);
  const auto& hop = r.typed->chain[0];
  EXPECT_EQ(hop.host, "2001:db8::1");
  EXPECT_EQ(hop.username, "al@ice");
  EXPECT_EQ(hop.password, "p:ss");
}

TEST_F(EngineTest, PassesAddressAndCredentials) {
  make();
  load(R"(return { route6 = function(addr, user, pass)
    if addr == "[::1]:80" and user == "alice" and pass == "secret" then return "[::1]:81" end
  end })");
  RouteResult r;
  auto h = start_route(r, "[::1]:80", Kind::kRoute6, "alice", "secret");
  ASSERT_TRUE(run_until([&] { return r.called; }));
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "[::1]:81");
}

// The client address is the fourth argument; without one it is nil.
TEST_F(EngineTest, PassesClientAddress) {
  make();
  load(R"(return { route = function(addr, user, pass, client)
    if client == "192.0.2.7:56324" then
      return "127.0.0.1:1"
    end
    if client == nil then return "127.0.0.1:2" end
  end })");
  RouteResult r;
  auto h =
      start_route(r, "10.0.0.1:80", Kind::kRoute, std::nullopt, std::nullopt, "192.0.2.7:56324");
  ASSERT_TRUE(run_until([&] { return r.called; }));
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "127.0.0.1:1");
  RouteResult anon;
  auto h2 = start_route(anon, "10.0.0.1:80", Kind::kRoute);
  ASSERT_TRUE(run_until([&] { return anon.called; }));
  ASSERT_TRUE(anon.decision) << anon.error;
  EXPECT_EQ(anon.decision->addr, "127.0.0.1:2");
}

TEST_F(EngineTest, NilRejects) {
  make();
  load(R"(return { resolve = function() return nil end })");
  auto r = route("example.com:80");
  EXPECT_FALSE(r.decision);
  EXPECT_EQ(r.error, "rejected by the ruleset");
}

TEST_F(EngineTest, RaiseRejectsAndEngineKeepsWorking) {
  make();
  load(R"(return { resolve = function(addr)
    if addr == "bad:1" then error("boom") end
    return addr
  end })");
  auto r = route("bad:1");
  EXPECT_FALSE(r.decision);
  EXPECT_NE(r.error.find("boom"), std::string::npos) << r.error;
  auto ok = route("good:1");
  ASSERT_TRUE(ok.decision) << ok.error;
  EXPECT_EQ(ok.decision->addr, "good:1");
}

TEST_F(EngineTest, GarbageReturnsReject) {
  make();
  load(R"(return { resolve = function(addr)
    if addr == "t:1" then return {} end
    if addr == "n:1" then return 42 end
    if addr == "p:1" then return "x:1", 7 end
    if addr == "a:1" then return "not an address" end
    if addr == "u:1" then return "x:1", "ftp://proxy:21" end
    if addr == "h:1" then return "x:1", nil end
    return addr
  end })");
  for (const char* a : {"t:1", "n:1", "p:1", "a:1", "u:1", "h:1"}) {
    auto r = route(a);
    EXPECT_FALSE(r.decision) << a;
    EXPECT_NE(r.error.find("bad ruleset result"), std::string::npos) << a << ": " << r.error;
  }
  EXPECT_TRUE(route("ok:1").decision);
}

// A proxy URI the ruleset got wrong is named by its position: its text may
// carry credentials, and the reason ends up in the logs.
TEST_F(EngineTest, BadProxyIsNamedWithoutItsCredentials) {
  make();
  load(R"(return { resolve = function(addr)
    return "x:1", "socks5://alice:s3cret@127.0.0.1:99999", "http://127.0.0.1:3128"
  end })");
  auto r = route("any:1");
  ASSERT_FALSE(r.decision);
  EXPECT_NE(r.error.find("value #2"), std::string::npos) << r.error;
  EXPECT_EQ(r.error.find("s3cret"), std::string::npos) << r.error;
}

TEST_F(EngineTest, MissingCallbackOrRulesetRejects) {
  make();
  auto none = route("a:1");
  EXPECT_FALSE(none.decision);
  EXPECT_EQ(none.error, "no ruleset is loaded");
  load("return {}");
  auto r = route("a:1", Kind::kRoute);
  EXPECT_FALSE(r.decision);
  EXPECT_NE(r.error.find("ruleset.route is not defined"), std::string::npos) << r.error;
}

TEST_F(EngineTest, TracebackOption) {
  EngineOptions opts;
  opts.traceback = true;
  make(opts);
  load(R"(return { resolve = function() error("deep") end })");
  auto r = route("a:1");
  EXPECT_NE(r.error.find("deep"), std::string::npos);
  EXPECT_NE(r.error.find("stack traceback"), std::string::npos) << r.error;
}

TEST_F(EngineTest, InfiniteLoopHitsInstructionLimit) {
  EngineOptions opts;
  opts.instruction_limit = 1'000'000;
  make(opts);
  load(R"(return { resolve = function(addr)
    if addr == "loop:1" then while true do end end
    return addr
  end })");
  auto r = route("loop:1");
  EXPECT_FALSE(r.decision);
  EXPECT_NE(r.error.find("instruction limit exceeded"), std::string::npos) << r.error;
  EXPECT_TRUE(route("next:1").decision);
  EXPECT_EQ(engine_->routines_alive(), 0u);
}

TEST_F(EngineTest, CatchingTheLimitErrorDoesNotHelp) {
  EngineOptions opts;
  opts.instruction_limit = 1'000'000;
  make(opts);
  load(R"(return { resolve = function(addr)
    if addr == "stubborn:1" then
      while true do pcall(function() while true do end end) end
    end
    return addr
  end })");
  auto r = route("stubborn:1");
  EXPECT_FALSE(r.decision);
  EXPECT_NE(r.error.find("instruction limit exceeded"), std::string::npos) << r.error;
  EXPECT_TRUE(route("next:1").decision);
  EXPECT_EQ(engine_->routines_alive(), 0u);
}

TEST_F(EngineTest, BudgetResetsAtEachResume) {
  EngineOptions opts;
  opts.instruction_limit = 200'000;
  make(opts);
  // ~100k instructions per slice, 10 slices: fine only if each resume starts afresh.
  load(R"(return { resolve = function(addr)
    for _ = 1, 10 do
      local x = 0
      for i = 1, 25000 do x = x + i end
      await.sleep(0)
    end
    return addr
  end })");
  auto r = route("a:1");
  EXPECT_TRUE(r.decision) << r.error;
}

TEST_F(EngineTest, MemoryLimitRejectsAndEngineKeepsWorking) {
  EngineOptions opts;
  opts.memlimit_bytes = 4 << 20;
  make(opts);
  load(R"(return { resolve = function(addr)
    if addr == "hog:1" then
      local t = {}
      for i = 1, 1e9 do t[i] = string.rep("x", 64) .. i end
    end
    return addr
  end })");
  auto r = route("hog:1");
  EXPECT_FALSE(r.decision);
  EXPECT_NE(r.error.find("not enough memory"), std::string::npos) << r.error;
  engine_->gc();
  EXPECT_LT(engine_->memory_bytes(), size_t(4 << 20));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(route("next:1").decision);
}

TEST_F(EngineTest, CallbackIsNeverSynchronous) {
  make();
  load(R"(return { resolve = function(addr) return addr end })");
  RouteResult r;
  auto h = start_route(r, "a:1");
  EXPECT_FALSE(r.called);
  ASSERT_TRUE(run_until([&] { return r.called; }));
  EXPECT_TRUE(r.decision);
}

TEST_F(EngineTest, DroppedHandleBeforeDeliveryMeansNoCallback) {
  make();
  load(R"(return { resolve = function(addr) return addr end })");
  RouteResult r;
  start_route(r, "a:1").reset();
  run_for(0.05);
  EXPECT_FALSE(r.called);
}

}  // namespace
}  // namespace rs::ruleset::testing
