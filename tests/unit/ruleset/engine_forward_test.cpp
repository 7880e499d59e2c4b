// await.forward: the ruleset dials from inside its request callback through
// a Forwarder, and the request is answered by the first dial that succeeds.
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "engine_fixture.hpp"

namespace rs::ruleset::testing {
namespace {

// Dials by target: "ok:*" connects (a socketpair end), "refused:*" and
// "timeout:*" fail so, "hang:*" never answers. Results come from the loop,
// as a real dial's would.
class FakeForwarder : public Forwarder {
 public:
  explicit FakeForwarder(ev::Loop* loop) : deferred_(loop) {}

  std::vector<std::string> dialed;  // target, then each hop, per attempt
  int handles_alive = 0;
  int committed = 0;
  std::string committed_to;
  UniqueFd committed_fd;
  int peer_fd = -1;  // the other end of the committed socketpair

  std::unique_ptr<Cancellable> forward_dial(const Decision& d, DialCallback cb) override {
    std::string shown = d.target.to_string();
    for (const auto& hop : d.chain) shown += " " + hop.to_string();
    dialed.push_back(shown);
    auto handle = std::make_unique<Handle>(*this);
    auto alive = handle->alive;
    const std::string host = d.target.host_string();
    if (host == "hang") return handle;
    deferred_.post([this, alive, host, cb = std::move(cb)] {
      if (!*alive) return;
      if (host == "ok") {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
          cb(net::Conn(), net::DialError::kGeneral, "socketpair failed");
          return;
        }
        peers_.emplace_back(sv[1]);
        peer_fd = sv[1];
        cb(net::Conn(UniqueFd(sv[0])), net::DialError::kOk, {});
      } else if (host == "timeout") {
        cb(net::Conn(), net::DialError::kTimeout, "timed out");
      } else {
        cb(net::Conn(), net::DialError::kRefused, "connect: Connection refused");
      }
    });
    return handle;
  }
  void forward_commit(net::Conn conn, Decision d) override {
    ++committed;
    committed_to = d.target.to_string();
    committed_fd = conn.release_fd();
  }

 private:
  struct Handle : Cancellable {
    explicit Handle(FakeForwarder& f) : owner(f) { ++owner.handles_alive; }
    ~Handle() override {
      *alive = false;
      --owner.handles_alive;
    }
    FakeForwarder& owner;
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  };
  ev::Deferred deferred_;
  std::vector<UniqueFd> peers_;
};

class ForwardTest : public EngineTest {
 protected:
  ForwardTest() : fwd_(loop_) {}

  std::unique_ptr<Cancellable> start(RouteResult& r, std::string addr, Forwarder* f) {
    Request req;
    req.kind = Request::Kind::kResolve;
    req.addr = std::move(addr);
    req.forwarder = f;
    return engine_->route(std::move(req), [&r](std::optional<Decision> d, std::string err) {
      r.called = true;
      if (d) r.decision = ShownDecision{d->target.to_string(), {}};
      r.typed = std::move(d);
      r.error = std::move(err);
    });
  }

  FakeForwarder fwd_;
};

TEST_F(ForwardTest, SuccessCommitsAndTheReturnValueIsIgnored) {
  make();
  load(R"(return { resolve = function(addr)
    local ok, err = await.forward("ok:443", "socks5://127.0.0.1:1081", "http://127.0.0.1:8080")
    test_done(ok == true and err == nil, tostring(err))
    return "ignored.example:1"
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_TRUE(host_.done_ok) << host_.done_msg;
  EXPECT_EQ(fwd_.committed, 1);
  EXPECT_EQ(fwd_.committed_to, "ok:443");
  EXPECT_TRUE(fwd_.committed_fd);
  // Last argument first: the chain arrives in dial order.
  ASSERT_EQ(fwd_.dialed.size(), 1u);
  EXPECT_EQ(fwd_.dialed[0], "ok:443 http://127.0.0.1:8080 socks5://127.0.0.1:1081");
  run_for(0.05);
  EXPECT_FALSE(r.called) << "a forwarded request got a route callback too";
  EXPECT_EQ(engine_->routines_alive(), 0u);
  EXPECT_EQ(engine_->pending_awaits(), 0u);
  EXPECT_EQ(fwd_.handles_alive, 0);
}

TEST_F(ForwardTest, FailureNamesTheErrorAndTheRequestStaysOpen) {
  make();
  load(R"(return { resolve = function(addr)
    local seen = {}
    for _, t in ipairs({ "refused:1", "timeout:1", "ok:2" }) do
      local ok, err, detail = await.forward(t)
      seen[#seen + 1] = tostring(ok) .. "/" .. tostring(err) .. "/" .. tostring(detail ~= nil)
      if ok then break end
    end
    test_done(true, table.concat(seen, ","))
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_EQ(host_.done_msg, "false/connection failed/true,false/timeout/true,true/nil/false");
  EXPECT_EQ(fwd_.committed, 1);
  EXPECT_EQ(fwd_.committed_to, "ok:2");
  run_for(0.02);
  EXPECT_FALSE(r.called);
}

TEST_F(ForwardTest, GivingUpAfterFailuresRejects) {
  make();
  load(R"(return { resolve = function(addr)
    assert(not await.forward("refused:1"))
    assert(not await.forward("refused:2"))
    return nil
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return r.called; }));
  EXPECT_FALSE(r.decision);
  EXPECT_EQ(r.error, "rejected by the ruleset");
  EXPECT_EQ(fwd_.committed, 0);
}

TEST_F(ForwardTest, FailedForwardsThenAReturnedDecisionDials) {
  make();
  load(R"(return { resolve = function(addr)
    assert(not await.forward("refused:1"))
    return "fallback.example:80"
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return r.called; }));
  ASSERT_TRUE(r.decision) << r.error;
  EXPECT_EQ(r.decision->addr, "fallback.example:80");
}

TEST_F(ForwardTest, SecondCallAfterSuccessRaises) {
  make();
  load(R"(return { resolve = function(addr)
    assert(await.forward("ok:1"))
    local ok, err = pcall(await.forward, "ok:2")
    test_done(not ok, tostring(err))
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_TRUE(host_.done_ok);
  EXPECT_NE(host_.done_msg.find("await.forward: the request is not forwardable"), std::string::npos)
      << host_.done_msg;
  EXPECT_EQ(fwd_.committed, 1);
  EXPECT_EQ(fwd_.dialed.size(), 1u);
}

TEST_F(ForwardTest, NilOrNothingAnswersNil) {
  make();
  load(R"(return { resolve = function(addr)
    local a, b = await.forward(), await.forward(nil)
    test_done(a == nil and b == nil, "")
    return addr
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return r.called; }));
  EXPECT_TRUE(host_.done_ok);
  EXPECT_TRUE(r.decision);
  EXPECT_TRUE(fwd_.dialed.empty());
}

TEST_F(ForwardTest, BadArgumentsRaise) {
  make();
  load(R"(return { resolve = function(addr)
    local ok1, e1 = pcall(await.forward, "no port")
    local ok2, e2 = pcall(await.forward, "ok:1", "ftp://x:1")
    local ok3, e3 = pcall(await.forward, {})
    test_done(not ok1 and not ok2 and not ok3, tostring(e1) .. "|" .. tostring(e2) .. "|" .. tostring(e3))
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_TRUE(host_.done_ok) << host_.done_msg;
  EXPECT_NE(host_.done_msg.find("invalid address"), std::string::npos) << host_.done_msg;
  EXPECT_NE(host_.done_msg.find("invalid proxy"), std::string::npos) << host_.done_msg;
  EXPECT_TRUE(fwd_.dialed.empty());
  EXPECT_EQ(engine_->pending_awaits(), 0u);
}

TEST_F(ForwardTest, WithoutForwarderRaises) {
  make();
  load(R"(return { resolve = function(addr)
    local ok, err = pcall(await.forward, "ok:1")
    test_done(not ok, tostring(err))
  end })");
  RouteResult r;
  auto h = start(r, "x:1", nullptr);
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_NE(host_.done_msg.find("the request is not forwardable"), std::string::npos)
      << host_.done_msg;
}

TEST_F(ForwardTest, OutsideARequestHandlerRaises) {
  make();
  load(R"(
  local function try(tag)
    local ok, err = pcall(await.forward, "ok:1")
    _G.results = (_G.results or "") .. tag .. "=" .. tostring(err) .. ";"
  end
  return {
    resolve = function(addr)
      -- A routine started from inside a request is not that request.
      neosocksd.async(function() end, function() try("async") end)
      return addr
    end,
    tick = function() try("tick") end,
  })");
  std::string reply;
  bool got = false;
  auto rpc = engine_->rpcall(R"(
    local ok, err = pcall(await.forward, "ok:1")
    return tostring(err)
  )",
                             [&](std::string body) {
                               reply = std::move(body);
                               got = true;
                             });
  ASSERT_TRUE(run_until([&] { return got; }));
  EXPECT_NE(reply.find("must be called from a ruleset request handler"), std::string::npos)
      << reply;
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return r.called; }));
  std::string err;
  ASSERT_TRUE(engine_->update(
      R"(assert(_G.results:find("async=[^;]*must be called from a ruleset request handler"), _G.results) return _G.ruleset or {})",
      "=check", &err))
      << err;
  // Synchronous callbacks cannot await at all.
  EXPECT_EQ(engine_->stats(0, ""), "");
  ASSERT_TRUE(engine_->update(R"(return { stats = function()
    local ok, e = pcall(await.forward, "ok:1") return tostring(e) end })",
                              "=stats", &err))
      << err;
  EXPECT_NE(engine_->stats(0, "").find("not in an asynchronous routine"), std::string::npos);
  EXPECT_TRUE(fwd_.dialed.empty());
}

TEST_F(ForwardTest, DroppingTheRequestMidForwardCancelsTheDial) {
  make();
  load(R"(return { resolve = function(addr)
    _G.closed = false
    local guard <close> = setmetatable({}, { __close = function() _G.closed = true end })
    await.forward("hang:1")
    return addr
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  run_for(0.02);
  EXPECT_EQ(fwd_.handles_alive, 1);
  EXPECT_EQ(engine_->pending_awaits(), 1u);
  h.reset();
  EXPECT_EQ(fwd_.handles_alive, 0) << "the dial outlived its request";
  EXPECT_EQ(engine_->pending_awaits(), 0u);
  EXPECT_EQ(engine_->routines_alive(), 0u);
  run_for(0.05);
  EXPECT_FALSE(r.called);
  EXPECT_EQ(fwd_.committed, 0);
  std::string err;
  EXPECT_TRUE(engine_->update("assert(_G.closed) return {}", "=check", &err)) << err;
}

TEST_F(ForwardTest, ADialEndingAfterTheRequestWentClosesItsConnection) {
  make();
  load(R"(return { resolve = function(addr)
    local ok, err = await.forward("ok:1")
    _G.result = tostring(ok) .. "/" .. tostring(err)
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  // The dial's answer is queued; the request goes before it is delivered.
  h.reset();
  run_for(0.05);
  EXPECT_EQ(fwd_.committed, 0);
  EXPECT_EQ(fwd_.handles_alive, 0);
  EXPECT_EQ(engine_->routines_alive(), 0u);
}

TEST_F(ForwardTest, TheRoutineOutlivesItsHandleOnceForwarded) {
  make();
  load(R"(return { resolve = function(addr)
    assert(await.forward("ok:1"))
    await.sleep(0.02)  -- bookkeeping after the forward
    test_done(true, "finished")
  end })");
  RouteResult r;
  auto h = start(r, "x:1", &fwd_);
  ASSERT_TRUE(run_until([&] { return fwd_.committed == 1; }));
  h.reset();  // the session is gone already
  ASSERT_TRUE(run_until([&] { return host_.done; }));
  EXPECT_EQ(host_.done_msg, "finished");
  EXPECT_FALSE(r.called);
}

}  // namespace
}  // namespace rs::ruleset::testing

namespace rs::ruleset::testing {
namespace {

TEST_F(EngineTest, ConnectWithoutAHostDialerRaises) {
  make();
  std::string reply;
  bool got = false;
  auto rpc = engine_->rpcall(R"(
    local ok, err = pcall(await.connect, "127.0.0.1:1", "socks5://127.0.0.1:2")
    local ok2, err2 = pcall(await.connect, "no port")
    return tostring(ok) .. "|" .. tostring(err) .. "|" .. tostring(ok2) .. "|" .. tostring(err2)
  )",
                             [&](std::string body) {
                               reply = std::move(body);
                               got = true;
                             });
  ASSERT_TRUE(run_until([&] { return got; }));
  EXPECT_NE(reply.find("false|await.connect: dialing is not available"), std::string::npos)
      << reply;
  EXPECT_NE(reply.find("false|await.connect: invalid address"), std::string::npos) << reply;
  EXPECT_EQ(engine_->pending_awaits(), 0u);
}

}  // namespace
}  // namespace rs::ruleset::testing
