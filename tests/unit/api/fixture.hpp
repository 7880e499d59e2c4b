// An ApiServer with a real ruleset Engine on a loop thread, for the api tests.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "api/api_server.hpp"
#include "api/rpc_client.hpp"
#include "ruleset/engine.hpp"
#include "test_support.hpp"

namespace rs::api::test {

inline constexpr char kRuleset[] = R"lua(
local ruleset = {}
function ruleset.stats(dt, q)
  if q == "big" then return string.rep("0123456789", 500) end
  return string.format("ruleset stats q=[%s] touched=%s dt_ok=%s", q, tostring(_G.touched),
                       tostring(type(dt) == "number" and dt >= 0))
end
return ruleset
)lua";

// RPC for await.invoke goes through the real client.
struct FakeHost : ruleset::Host {
  ev::Loop* loop = nullptr;
  net::DialOptions dial;
  ruleset::HostConfig config() override { return {}; }
  ruleset::HostStats stats() override { return {}; }
  std::unique_ptr<Cancellable> invoke(std::string code, proto::Address addr,
                                      std::vector<proto::ProxyUri> chain, bool tls,
                                      std::function<void(bool, std::string)> cb) override {
    net::DialOptions opts = dial;
    opts.tls_target = tls;
    return rpc_call(loop, nullptr, opts, std::move(code), std::move(addr), std::move(chain),
                    std::move(cb));
  }
};

struct FakeBackend : ApiBackend {
  ruleset::Engine* eng = nullptr;
  std::atomic<int> requests{0};
  std::atomic<int> successes{0};
  std::atomic<int> unauthorized{0};
  std::atomic<int> incremental_calls{0};
  ruleset::Engine* engine() override { return eng; }
  std::string server_stats(bool incremental) override {
    if (incremental) {
      ++incremental_calls;
      return "Fake Server         : incremental\n";
    }
    return "Fake Server         : stateless\n";
  }
  std::string server_metrics() override {
    return "# HELP fake_total Fake.\n# TYPE fake_total counter\nfake_total 1\n";
  }
  void count_api_request() override { ++requests; }
  void count_api_success() override { ++successes; }
  void count_api_unauthorized() override { ++unauthorized; }
};

class ApiFixture : public ::testing::Test {
 protected:
  void SetUp() override { start_server(ApiOptions{}); }
  void TearDown() override { stop_server(); }

  void start_server(ApiOptions opts, bool with_engine = true) {
    std::string error = loop_.call([&]() -> std::string {
      host_.loop = loop_.loop();
      host_.dial.timeout = 5;
      if (with_engine) {
        engine_ = std::make_unique<ruleset::Engine>(loop_.loop(), nullptr, &host_,
                                                    ruleset::EngineOptions{});
        std::string err;
        if (!engine_->update(kRuleset, "=test", &err)) return err;
        backend_.eng = engine_.get();
      } else {
        backend_.eng = nullptr;
      }
      server_ = std::make_unique<ApiServer>(loop_.loop(), loopback(), backend_, opts);
      server_->start();
      return {};
    });
    ASSERT_EQ(error, "");
    addr_ = server_->address();
  }

  void stop_server() {
    loop_.call([&] {
      server_.reset();
      backend_.eng = nullptr;
      engine_.reset();
    });
  }

  // rpc_call on the loop; waits for its callback.
  std::pair<bool, std::string> rpc(std::string code, std::string addr = {},
                                   std::vector<std::string> chain = {}, double timeout = 10) {
    if (addr.empty()) addr = addr_.to_string();
    auto done = std::make_shared<std::promise<std::pair<bool, std::string>>>();
    auto result = done->get_future();
    std::shared_ptr<std::unique_ptr<Cancellable>> handle =
        std::make_shared<std::unique_ptr<Cancellable>>();
    loop_.call([&, done] {
      net::DialOptions opts;
      opts.timeout = timeout;
      // The options are copied by rpc_call.
      // Parsing is the caller's (the ruleset boundary's): the texts here are valid.
      std::vector<proto::ProxyUri> hops;
      for (const auto& text : chain) hops.push_back(proto::parse_proxy_uri(text).uri);
      *handle = rpc_call(loop_.loop(), nullptr, opts, std::move(code), *proto::parse_address(addr),
                         std::move(hops), [done](bool ok, std::string body) {
                           done->set_value({ok, std::move(body)});
                         });
    });
    if (result.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "rpc_call never called back";
      loop_.call([&] { handle->reset(); });
      return {false, "no callback"};
    }
    loop_.call([&] { handle->reset(); });
    return result.get();
  }

  Watchdog watchdog_;
  LoopThread loop_;
  FakeHost host_;
  FakeBackend backend_;
  std::unique_ptr<ruleset::Engine> engine_;
  std::unique_ptr<ApiServer> server_;
  net::SockAddr addr_;
};

}  // namespace rs::api::test
