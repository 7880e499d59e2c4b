// Shared fixture for the Engine tests: a real default loop, a c-ares resolver,
// and a fake Host whose RPC loops back into the same Engine (through the loop,
// as a real network call would).
#pragma once

#include <ev.h>
#include <gtest/gtest.h>

#include <functional>
#include <lua.hpp>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/loop.hpp"
#include "net/resolver.hpp"
#include "ruleset/engine.hpp"

namespace rs::ruleset::testing {

class FakeHost : public Host {
 public:
  explicit FakeHost(ev::Loop* loop) : deferred_(loop) {}

  Engine* engine = nullptr;  // RPC target
  int invokes = 0;
  std::string last_addr;
  std::vector<proto::ProxyUri> last_chain;  // dial order
  bool last_tls = false;                    // the target was https://
  // test_done(ok, msg) from a Lua test script.
  bool done = false;
  bool done_ok = false;
  std::string done_msg;

  void on_open(lua_State* L) override {
    lua_pushlightuserdata(L, this);
    lua_pushcclosure(L, test_done, 1);
    lua_setglobal(L, "test_done");
    lua_pushcfunction(L, ballast);
    lua_setglobal(L, "ballast");
  }
  bool host_throws = false;  // config() and stats() throw
  HostConfig config() override {
    if (host_throws) throw std::runtime_error("config is unavailable");
    HostConfig c;
    c.loglevel = 4;
    c.api = "loopback:1";
    // Longer than any small-string buffer: a leak if an error skipped its destructor.
    c.listen = "[2001:db8::1]:1080";
    return c;
  }
  HostStats stats() override {
    if (host_throws) throw std::runtime_error("stats are unavailable");
    HostStats s;
    s.num_sessions = 42;
    return s;
  }

  // "fail:1" fails; anything else runs the code via engine->rpcall.
  std::unique_ptr<Cancellable> invoke(std::string code, proto::Address target,
                                      std::vector<proto::ProxyUri> chain, bool tls,
                                      std::function<void(bool, std::string)> cb) override {
    ++invokes;
    last_tls = tls;
    std::string addr = target.to_string();
    last_addr = addr;
    last_chain = std::move(chain);
    auto call = std::make_unique<Call>();
    auto alive = call->alive;
    Call* raw = call.get();
    deferred_.post([this, alive, raw, code = std::move(code), addr = std::move(addr),
                    cb = std::move(cb)]() mutable {
      if (!*alive) return;
      if (addr == "fail:1" || engine == nullptr) {
        cb(false, "connection refused");
        return;
      }
      raw->inner = engine->rpcall(code, [alive, cb](std::string body) {
        if (*alive) cb(true, std::move(body));
      });
    });
    return call;
  }

 private:
  struct Call : Cancellable {
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
    std::unique_ptr<Cancellable> inner;
    ~Call() override { *alive = false; }
  };
  // ballast(limit, room): after a full collection, a userdata of the size that
  // leaves about `room` bytes of the Lua heap below `limit` (one allocation, so
  // the heap can be placed to the byte; its header makes the exact offset vary).
  static int ballast(lua_State* L) {
    const auto limit = static_cast<size_t>(luaL_checkinteger(L, 1));
    const auto room = static_cast<size_t>(luaL_checkinteger(L, 2));
    lua_gc(L, LUA_GCCOLLECT);
    const size_t used = static_cast<size_t>(lua_gc(L, LUA_GCCOUNT)) * 1024 +
                        static_cast<size_t>(lua_gc(L, LUA_GCCOUNTB));
    constexpr size_t kHeader = 48;  // about sizeof(Udata0) plus the stack slot
    const size_t want = used + room + kHeader < limit ? limit - used - room - kHeader : 0;
    lua_newuserdatauv(L, want, 0);
    return 1;
  }
  static int test_done(lua_State* L) {
    auto* self = static_cast<FakeHost*>(lua_touserdata(L, lua_upvalueindex(1)));
    self->done = true;
    self->done_ok = lua_toboolean(L, 1);
    const char* msg = lua_tostring(L, 2);
    self->done_msg = msg != nullptr ? msg : "";
    return 0;
  }
  ev::Deferred deferred_;
};

// A Decision as text, for comparisons: the target's to_string() and each hop's
// scheme://host:port (credentials masked).
struct ShownDecision {
  std::string addr;
  std::vector<std::string> chain;
};

struct RouteResult {
  bool called = false;
  std::optional<Decision> typed;
  std::optional<ShownDecision> decision;  // `typed`, shown
  std::string error;
};

class EngineTest : public ::testing::Test {
 protected:
  EngineTest() : loop_(ev_default_loop(0)), host_(loop_) {}
  ~EngineTest() override {
    engine_.reset();
    resolver_.reset();
  }

  void make(EngineOptions opts = {}, bool with_resolver = true) {
    engine_.reset();
    // Timers count from ev_now(), stale after other suites ran without the loop.
    ev_now_update(loop_);
    if (with_resolver && !resolver_)
      resolver_ = std::make_unique<net::Resolver>(loop_, net::ResolverOptions{});
    engine_ = std::make_unique<Engine>(loop_, with_resolver ? resolver_.get() : nullptr, &host_,
                                       std::move(opts));
    host_.engine = engine_.get();
  }

  void load(const std::string& lua) {
    std::string err;
    ASSERT_TRUE(engine_->update(lua, "=test", &err)) << err;
  }

  // Runs the loop until pred() holds or `timeout` seconds pass (watchdog).
  bool run_until(const std::function<bool()>& pred, double timeout = 10) {
    ev::Timer wake(loop_, [](int) {});
    wake.start(0.005, 0.005);  // ev_run(ONCE) returns at least this often
    const double deadline = ev_time() + timeout;
    while (!pred()) {
      if (ev_time() > deadline) return false;
      ev_run(loop_, EVRUN_ONCE);
    }
    return true;
  }
  // Runs the loop for `seconds`.
  void run_for(double seconds) {
    const double until = ev_time() + seconds;
    run_until([&] { return ev_time() >= until; }, seconds + 1);
  }

  std::unique_ptr<Cancellable> start_route(RouteResult& r, std::string addr,
                                           Request::Kind kind = Request::Kind::kResolve,
                                           std::optional<std::string> user = std::nullopt,
                                           std::optional<std::string> pass = std::nullopt,
                                           std::string client = {}) {
    Request req{kind, std::move(addr), std::move(user), std::move(pass), std::move(client)};
    return engine_->route(std::move(req), [&r](std::optional<Decision> d, std::string err) {
      r.called = true;
      if (d) {
        ShownDecision shown{d->target.to_string(), {}};
        for (const auto& hop : d->chain) shown.chain.push_back(hop.to_string());
        r.decision = std::move(shown);
      }
      r.typed = std::move(d);
      r.error = std::move(err);
    });
  }
  RouteResult route(std::string addr, Request::Kind kind = Request::Kind::kResolve) {
    RouteResult r;
    auto handle = start_route(r, std::move(addr), kind);
    EXPECT_FALSE(r.called) << "callback ran inside route()";
    EXPECT_TRUE(run_until([&] { return r.called; }));
    return r;
  }

  ev::Loop* loop_;
  FakeHost host_;
  std::unique_ptr<net::Resolver> resolver_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace rs::ruleset::testing
