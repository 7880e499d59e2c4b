// The ApiServer with a real Engine, and the RPC client against it: timeouts,
// limits, pipelining around rpcalls, and cancellation, with options the
// command line does not reach.
#include "api/api_server.hpp"

#include <atomic>

#include "fixture.hpp"

namespace rs::api::test {
namespace {

constexpr char kRpc[] = "Content-Type: application/x-neosocksd-rpc; version=1\r\n";

using ApiServerTest = ApiFixture;

TEST_F(ApiServerTest, ServesTheEndpoints) {
  auto r = test::exchange(addr_, get("/healthy"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = test::exchange(addr_, post("/stats?q=abc", ""));
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("Fake Server         : incremental"), std::string::npos);
  EXPECT_NE(r->body.find("ruleset stats q=[abc]"), std::string::npos);
  r = test::exchange(addr_, get("/stats?q=abc"));
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("Fake Server         : stateless"), std::string::npos);
  EXPECT_EQ(r->body.find("ruleset stats"), std::string::npos);
  EXPECT_EQ(backend_.incremental_calls, 1);
  EXPECT_GE(backend_.requests, 3);
}

TEST_F(ApiServerTest, RpcRoundTripAndErrors) {
  auto [ok, body] = rpc("return 1, 'two', {3}");
  ASSERT_TRUE(ok) << body;
  EXPECT_EQ(body, "return true,1,\"two\",{3}");
  // A large request travels deflated, a large reply too.
  std::string big = "return '" + std::string(100000, 'x') + "'";
  std::tie(ok, body) = rpc(big);
  ASSERT_TRUE(ok) << body;
  EXPECT_EQ(body.size(), std::string("return true,\"\"").size() + 100000);
  std::tie(ok, body) = rpc("error('remote')");
  ASSERT_TRUE(ok);
  EXPECT_EQ(check_reply(body, "return function(ok, msg) return tostring(ok) .. ' ' .. msg end"),
            "false (rpcall):1: remote");
  // Failures of the call itself.
  std::tie(ok, body) = rpc("return 1", "127.0.0.1:" + std::to_string(dead_port()));
  EXPECT_FALSE(ok);
  EXPECT_NE(body.find("refused"), std::string::npos) << body;
  // (Bad addresses and proxy URIs never get here: the ruleset parses them;
  // tests/lua/await_api.lua covers them.)
  // The reply is limited like a request.
  std::tie(ok, body) =
      rpc("local t = {} for i = 1, 600000 do t[i] = string.pack('<d', i * 0.7) end "
          "return table.concat(t)");
  EXPECT_FALSE(ok);
  EXPECT_NE(body.find("exceeds"), std::string::npos) << body;
}

TEST_F(ApiServerTest, PipelineWaitsForAnRpcall) {
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(fd);
  std::string stream = post("/ruleset/rpcall", "await.sleep(0.1) return 'slow'", kRpc) +
                       get("/healthy") + post("/ruleset/rpcall", "return 'fast'", kRpc);
  ASSERT_TRUE(send_all(fd.get(), stream));
  std::string buf;
  auto a = read_response(fd.get(), buf);
  auto b = read_response(fd.get(), buf);
  auto c = read_response(fd.get(), buf);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->body, "return true,\"slow\"");
  EXPECT_EQ(b->status, 200);
  EXPECT_EQ(c->body, "return true,\"fast\"");
}

TEST_F(ApiServerTest, CancellingAnRpcCallNeverCallsBack) {
  auto called = std::make_shared<std::atomic<int>>(0);
  std::unique_ptr<Cancellable> kept;
  std::unique_ptr<ev::Timer> timer;
  loop_.call([&] {
    net::DialOptions opts;
    opts.timeout = 5;
    auto count = [called](bool, std::string) { ++*called; };
    // Before anything happened.
    rpc_call(loop_.loop(), nullptr, opts, "await.sleep(0.05) return 1", addr_.to_address(), {},
             count)
        .reset();
    // And once it is under way: the server runs the routine by then.
    kept = rpc_call(loop_.loop(), nullptr, opts, "await.sleep(0.2) return 1", addr_.to_address(),
                    {}, count);
    timer = std::make_unique<ev::Timer>(loop_.loop(), [&kept](int) { kept.reset(); });
    timer->start(0.05);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  loop_.call([&] {
    timer.reset();
    kept.reset();
  });
  EXPECT_EQ(*called, 0);
  // The server is fine, and the cancelled call's routine went with its connection.
  auto [ok, body] = rpc("return 'after'");
  EXPECT_TRUE(ok) << body;
  EXPECT_EQ(loop_.call([&] { return engine_->routines_alive(); }), 0u);
}

TEST_F(ApiServerTest, HandleMayBeDestroyedInsideItsCallback) {
  std::promise<bool> done;
  auto handle = std::make_shared<std::unique_ptr<Cancellable>>();
  loop_.call([&] {
    net::DialOptions opts;
    opts.timeout = 5;
    *handle = rpc_call(loop_.loop(), nullptr, opts, "return 1", addr_.to_address(), {},
                       [&done, handle](bool ok, std::string) {
                         handle->reset();
                         done.set_value(ok);
                       });
  });
  auto f = done.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(f.get());
}

TEST_F(ApiServerTest, StoppingWithAnRpcallRunning) {
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(send_all(fd.get(), post("/ruleset/rpcall", "await.sleep(30)", kRpc)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  loop_.call([&] { server_->stop(); });
  EXPECT_TRUE(closed_by_peer(fd.get(), 5));
  EXPECT_EQ(loop_.call([&] { return server_->connections(); }), 0u);
  // Destroying the server and engine (TearDown) with nothing left is clean too.
}

class ShortTimeoutTest : public ApiFixture {
 protected:
  void SetUp() override {
    ApiOptions opts;
    opts.timeout = 0.3;
    opts.max_connections = 3;
    opts.compress_min = 16;
    start_server(opts);
  }
};

TEST_F(ShortTimeoutTest, IdleAndPartialRequestsTimeOut) {
  UniqueFd idle = connect_to(addr_);
  UniqueFd partial = connect_to(addr_);
  ASSERT_TRUE(
      send_all(partial.get(), "POST /ruleset/invoke HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"));
  std::string buf;
  auto r = read_response(partial.get(), buf);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_TRUE(closed_by_peer(partial.get(), 3));
  EXPECT_TRUE(closed_by_peer(idle.get(), 3));
}

TEST_F(ShortTimeoutTest, RpcallIsNotTimedOutWhileItRuns) {
  // The timeout covers the client's part only: a routine may take longer.
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(send_all(fd.get(), post("/ruleset/rpcall", "await.sleep(0.6) return 'done'", kRpc)));
  std::string buf;
  auto r = read_response(fd.get(), buf);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "return true,\"done\"");
}

TEST_F(ShortTimeoutTest, ConnectionLimit) {
  UniqueFd a = connect_to(addr_), b = connect_to(addr_), c = connect_to(addr_);
  ASSERT_TRUE(a && b && c);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto r = test::exchange(addr_, get("/healthy"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  a.reset();
  b.reset();
  c.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  r = test::exchange(addr_, get("/healthy"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ShortTimeoutTest, DeflatesFromCompressMin) {
  auto r = test::exchange(addr_, post("/stats?q=big", "", "Accept-Encoding: deflate\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header("Content-Encoding"), "deflate");
  EXPECT_NE(r->text().find("0123456789"), std::string::npos);
  r = test::exchange(addr_, post("/stats?q=big", ""));
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->header("Content-Encoding"));
}

}  // namespace
}  // namespace rs::api::test
