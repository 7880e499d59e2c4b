// rpc_call's scheduling and ownership: results come later, from the loop; a
// handle may go before the result or inside its callback.
#include "api/rpc_client.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "proto/address.hpp"

namespace rs::api {
namespace {

struct RpcCallTest : ::testing::Test {
  ~RpcCallTest() override { ev_loop_destroy(loop); }
  void spin(int n = 3) {
    for (int i = 0; i < n; ++i) ev_run(loop, EVRUN_NOWAIT);
  }
  ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
  net::DialOptions opts;
  // A name with no resolver: the call fails inside rpc_call, before any I/O.
  const proto::Address unresolvable{std::string("example.org"), 9080};
};

TEST_F(RpcCallTest, FailureFoundInsideTheCallArrivesLaterOnce) {
  int calls = 0;
  std::string error;
  auto handle =
      rpc_call(loop, nullptr, opts, "return 1", unresolvable, {}, [&](bool ok, std::string msg) {
        ++calls;
        EXPECT_FALSE(ok);
        error = std::move(msg);
      });
  EXPECT_EQ(calls, 0);
  spin();
  EXPECT_EQ(calls, 1);
  EXPECT_NE(error.find("no resolver"), std::string::npos) << error;
}

// The pending delivery is cancelled with the handle; the call itself is
// destroyed from the loop (ASan would report it leaked or used after free).
TEST_F(RpcCallTest, HandleDestroyedBeforeTheResult) {
  int calls = 0;
  auto handle = rpc_call(loop, nullptr, opts, "return 1", unresolvable, {},
                         [&](bool, std::string) { ++calls; });
  handle.reset();
  spin();
  EXPECT_EQ(calls, 0);
}

TEST_F(RpcCallTest, HandleDestroyedInsideItsCallback) {
  std::unique_ptr<Cancellable> handle;
  int calls = 0;
  handle =
      rpc_call(loop, nullptr, opts, "return 1", unresolvable, {}, [&](bool ok, std::string msg) {
        ++calls;
        EXPECT_FALSE(ok);
        EXPECT_NE(msg.find("no resolver"), std::string::npos) << msg;
        handle.reset();
      });
  spin();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(handle, nullptr);
}

}  // namespace
}  // namespace rs::api
