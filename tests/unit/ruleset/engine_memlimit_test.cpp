// Every host function with the Lua heap a few bytes to a few KiB below
// --memlimit: each refused allocation fails that one call (a Lua error the
// ruleset can catch) or that one request, never the process, and the engine
// keeps working afterwards.
#include <string>

#include "engine_fixture.hpp"

namespace rs::ruleset::testing {
namespace {

constexpr size_t kLimit = 2 << 20;

// ruleset.resolve("stress:<room>"): calls each host function with `room` bytes
// of headroom, under pcall, and routes to "r<ok>-<failed>.test:1".
constexpr char kStress[] = R"lua(
local LIMIT = ...
local function calls()
  return {
    function() return neosocksd.config() end,
    function() return neosocksd.stats() end,
    function() return neosocksd.async(function() end, function() await.sleep(0) end) end,
    function() return neosocksd.async(function(ok) assert(ok) end, function() return 1 end) end,
    function()
      -- Many routines alive at once: the host's table of them has to grow.
      for _ = 1, 24 do neosocksd.async(function() end, function() await.sleep(0.001) end) end
    end,
    function() neosocksd.invoke("return 1", "peer:1", "socks5://10.0.0.1:1080") end,
    function() neosocksd.setinterval(0) end,
    function() return neosocksd.splithostport("example.com:80") end,
    function() return neosocksd.parse_ipv4("10.1.2.3"), neosocksd.parse_ipv6("::1") end,
    function() return neosocksd.resolve("localhost") end,
    function() return neosocksd.traceback("here") end,
    function() return neosocksd.now() end,
    function() await.sleep(0) end,
    function() await.idle() end,
    function() return await.resolve("localhost") end,
    function() return await.execute("true") end,
    function()
      local ok, r = await.invoke("return 1", "peer:1", "http://10.0.0.2:3128")
      if ok then return r() end
    end,
    function() return regex.compile("^a+(b|c)$"):match("aaab") end,
    function() return regex.compile("x"):gmatch("xx")() end,
    function() return zlib.uncompress(zlib.compress(string.rep("abc", 50))) end,
    function() return zlib.gunzip(zlib.gzip("hello")) end,
    function() return marshal({ 1, "two", { x = 3.5, [true] = false } }) end,
    function() return time.monotonic(), time.wall() end,
  }
end
local fns = calls()
return { resolve = function(addr)
  local room = tonumber(addr:match("^stress:(%d+)$"))
  if not room then return addr end
  local ok_n, fail_n = 0, 0
  for i = 1, #fns do
    local b = ballast(LIMIT, room)
    local ok = pcall(fns[i])
    b = nil
    if ok then ok_n = ok_n + 1 else fail_n = fail_n + 1 end
  end
  collectgarbage()
  return string.format("r%d-%d.test:1", ok_n, fail_n)
end }
)lua";

TEST_F(EngineTest, EveryHostFunctionSurvivesTheMemoryLimit) {
  EngineOptions opts;
  opts.memlimit_bytes = kLimit;
  make(opts);
  std::string err;
  // The chunk gets LIMIT as its vararg through a wrapper.
  ASSERT_TRUE(engine_->update("return assert(load(" + std::string("[==[") + kStress + "]==]))(" +
                                  std::to_string(kLimit) + ")",
                              "=stress", &err))
      << err;
  size_t some_failed = 0, some_passed = 0, rejected = 0;
  // Byte by byte over the first KiB (every allocation of every call meets the
  // limit somewhere in it), then coarser up to where everything passes.
  for (size_t room = 0; room < 6000; room += room < 1024 ? 1 : 61) {
    auto r = route("stress:" + std::to_string(room));
    ASSERT_TRUE(r.called) << "room " << room;
    if (!r.decision) {
      ++rejected;  // the limit hit the routine itself: that request fails, nothing else
      continue;
    }
    unsigned ok = 0, failed = 0;
    ASSERT_EQ(std::sscanf(r.decision->addr.c_str(), "r%u-%u.test:1", &ok, &failed), 2)
        << r.decision->addr;
    if (failed > 0) ++some_failed;
    if (ok > 0) ++some_passed;
  }
  EXPECT_GT(some_failed, 100u) << "the limit was never met";
  EXPECT_GT(some_passed, 100u);
  // Everything in flight finishes, and the engine serves as before.
  ASSERT_TRUE(run_until([&] { return engine_->pending_awaits() == 0; }));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(route("next:1").decision);
  auto r = route("stress:100000");
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "r23-0.test:1");
  engine_->gc();
  EXPECT_LT(engine_->memory_bytes(), kLimit / 2);
  RecordProperty("rejected", static_cast<int>(rejected));
}

TEST_F(EngineTest, HostDataBecomesTablesOrLuaErrors) {
  make();
  load(R"(return { resolve = function(addr)
    if addr == "data:1" then
      local c, s = neosocksd.config(), neosocksd.stats()
      assert(c.listen == "[2001:db8::1]:1080" and c.api == "loopback:1" and c.restapi == "loopback:1")
      assert(c.proxy == nil, "an empty option stays nil")
      assert(s.num_sessions == 42 and s.num_reject_timeout == 0 and s.num_dns_success == 0)
      assert(math.type(s.num_object) == "integer" and s.num_object > 100)
      assert(s.bytes_allocated > 0)
      return addr
    end
    local ok1, e1 = pcall(neosocksd.config)
    local ok2, e2 = pcall(neosocksd.stats)
    assert(not ok1 and e1:find("config is unavailable", 1, true), tostring(e1))
    assert(not ok2 and e2:find("stats are unavailable", 1, true), tostring(e2))
    return addr
  end })");
  auto r = route("data:1");
  EXPECT_TRUE(r.decision) << r.error;
  host_.host_throws = true;
  r = route("throws:1");
  EXPECT_TRUE(r.decision) << r.error;
}

}  // namespace
}  // namespace rs::ruleset::testing
