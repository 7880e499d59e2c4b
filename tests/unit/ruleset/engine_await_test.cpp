// Routines that await: results, cancellation, concurrency.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "engine_fixture.hpp"

namespace rs::ruleset::testing {
namespace {

TEST_F(EngineTest, RouteAwaitsSleepResolveExecute) {
  make();
  load(R"(return { resolve = function(addr)
    local t0 = neosocksd.now()
    await.sleep(0.01)
    assert(neosocksd.now() - t0 >= 0.01, "slept too little")
    local ip = assert(await.resolve("localhost"))
    local ok, what, code = await.execute("exit 3")
    return string.format("%s:%d", ip:find(":") and "[" .. ip .. "]" or ip, 80 + code),
      "socks5://" .. what .. ":1080", "http://" .. tostring(ok) .. ":8080"
  end })");
  auto r = route("x:1");
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_TRUE(r.decision->addr == "127.0.0.1:83" || r.decision->addr == "[::1]:83")
      << r.decision->addr;
  const std::vector<std::string> chain{"http://nil:8080", "socks5://exit:1080"};
  EXPECT_EQ(r.decision->chain, chain);
  EXPECT_EQ(engine_->pending_awaits(), 0u);
  EXPECT_EQ(engine_->routines_alive(), 0u);
}

// Cancelling while the routine awaits `what`: no callback, nothing left behind.
class CancelTest : public EngineTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(CancelTest, DroppingTheHandleCancelsTheAwait) {
  make();
  load(std::string(R"(return { resolve = function(addr)
    _G.closed = false
    local guard <close> = setmetatable({}, { __close = function() _G.closed = true end })
    _G.started = true
    )") +
       GetParam() + R"(
    return addr
  end })");
  RouteResult r;
  auto h = start_route(r, "a:1");
  EXPECT_EQ(engine_->pending_awaits(), 1u);
  EXPECT_EQ(engine_->routines_alive(), 1u);
  run_for(0.02);
  h.reset();
  EXPECT_EQ(engine_->pending_awaits(), 0u);
  EXPECT_EQ(engine_->routines_alive(), 0u);
  run_for(0.1);
  EXPECT_FALSE(r.called) << r.error << (r.decision ? r.decision->addr : "-");
  // The routine's to-be-closed variables ran, and the engine still works.
  std::string err;
  EXPECT_TRUE(engine_->update(
      R"(assert(_G.closed == true) return { resolve = function(a) return a end })", "=check", &err))
      << err;
  EXPECT_TRUE(route("b:1").decision);
}

INSTANTIATE_TEST_SUITE_P(Awaits, CancelTest,
                         ::testing::Values("await.sleep(5)",
                                           "await.resolve('localhost') await.sleep(5)",
                                           "await.execute('sleep 5')",
                                           "await.idle() await.sleep(5)",
                                           "await.invoke('await.sleep(5)', 'loopback:1')"));

TEST_F(EngineTest, InvokeHandsTheHostAParsedTarget) {
  make();
  load(R"(return { resolve = function(addr)
    local ok, r = await.invoke("return 1", "peer.test:9080", "http://10.0.0.2:3128",
                               "socks5://u:p@10.0.0.1:1080")
    local bad, why = await.invoke("return 1", "peer.test:9080", " socks5://10.0.0.1:1")
    assert(bad == false and why:find("invalid proxy", 1, true), why)
    return addr
  end })");
  auto r = route("x:1");
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(host_.invokes, 1) << "a bad target never reaches the host";
  EXPECT_EQ(host_.last_addr, "peer.test:9080");
  ASSERT_EQ(host_.last_chain.size(), 2u);
  EXPECT_EQ(host_.last_chain[0].scheme, proto::ProxyUri::Scheme::kSocks5);
  EXPECT_EQ(host_.last_chain[0].username, "u");
  EXPECT_EQ(host_.last_chain[1].port, 3128);
}

TEST_F(EngineTest, CancelledChildIsKilledAndReaped) {
  make();
  char path[] = "/tmp/rs_engine_pid_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  load(std::string(R"(return { resolve = function(addr)
    await.execute("echo $$ > )") +
       path + R"(; sleep 30")
    return addr
  end })");
  RouteResult r;
  auto h = start_route(r, "a:1");
  pid_t pid = 0;
  ASSERT_TRUE(run_until([&] {
    std::ifstream in(path);
    return static_cast<bool>(in >> pid) && pid > 0;
  }));
  h.reset();
  // Killed, then reaped by the loop: the pid disappears (a zombie would not).
  EXPECT_TRUE(run_until([&] { return kill(pid, 0) != 0; }, 5));
  EXPECT_FALSE(r.called);
  std::remove(path);
}

TEST_F(EngineTest, ThousandConcurrentRoutes) {
  make();
  load(R"(return { resolve = function(addr)
    await.sleep(0.01 + math.random() * 0.02)
    return addr, "socks5://127.0.0.1:1080"
  end })");
  constexpr int kN = 1000;
  std::vector<RouteResult> results(kN);
  std::vector<std::unique_ptr<Cancellable>> handles;
  for (int i = 0; i < kN; ++i) {
    handles.push_back(start_route(results[i], "h" + std::to_string(i) + ":80"));
  }
  EXPECT_EQ(engine_->pending_awaits(), size_t(kN));
  int done = 0;
  ASSERT_TRUE(run_until([&] {
    done = 0;
    for (auto& r : results) done += r.called;
    return done == kN;
  }));
  for (int i = 0; i < kN; ++i) {
    ASSERT_TRUE(results[i].decision) << results[i].error;
    EXPECT_EQ(results[i].decision->addr, "h" + std::to_string(i) + ":80");
  }
  EXPECT_EQ(engine_->routines_alive(), 0u);
  EXPECT_GT(engine_->coroutine_pool_size(), 0u);
  // Threads are reused: another wave does not grow the pool past its cap.
  const size_t pool = engine_->coroutine_pool_size();
  EXPECT_TRUE(route("again:1").decision);
  EXPECT_EQ(engine_->coroutine_pool_size(), pool);
}

TEST_F(EngineTest, AwaitOutsideRoutineRaises) {
  make();
  std::string err;
  EXPECT_FALSE(engine_->update("await.sleep(1) return {}", "=t", &err));
  EXPECT_NE(err.find("await.sleep: not in an asynchronous routine"), std::string::npos) << err;
  load(R"(
    local names = {}
    for _, f in ipairs({"sleep", "idle", "resolve", "execute", "invoke"}) do
      local ok, e = pcall(await[f], 1, "x")
      assert(not ok and e:find("await." .. f .. ": not in an asynchronous routine", 1, true), e)
    end
    return { stats = function() await.sleep(0) end }
  )");
  // ruleset.stats is not an asynchronous routine either.
  EXPECT_EQ(engine_->stats(1, ""), "");
}

TEST_F(EngineTest, AwaitResolveWithoutResolverBlocks) {
  make({}, /*with_resolver=*/false);
  load(R"(return { resolve = function(addr)
    local ip, err = await.resolve("localhost")
    assert(ip, err)
    local none, why = await.resolve("nonexistent.invalid")
    assert(none == nil and type(why) == "string")
    return addr
  end })");
  auto r = route("a:1");
  EXPECT_TRUE(r.decision) << r.error;
}

TEST_F(EngineTest, DestroyingEngineWithPendingAwaits) {
  make();
  load(R"(return { resolve = function(addr) await.sleep(10) return addr end })");
  RouteResult r;
  auto h = start_route(r, "a:1");
  auto h2 = start_route(r, "b:1");
  engine_.reset();  // cancels everything, no callback
  h.reset();        // the handle outlives the engine: harmless
  run_for(0.02);
  EXPECT_FALSE(r.called);
}

}  // namespace
}  // namespace rs::ruleset::testing
