// Dialer: failures found inside start() come later, from the loop, and soon.
#include "net/dialer.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include "net/resolver.hpp"

namespace rs::net {
namespace {

struct DialerTest : ::testing::Test {
  ~DialerTest() override { ev_loop_destroy(loop); }
  ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
  Resolver resolver{loop, {}};
  DialOptions opts;
};

// A denied direct target fails inside start(), before any connect(); the
// callback must not run there, and must run on the next loop iteration even
// while another watcher is ready on every iteration (an idle watcher, which
// delivered it before, never runs then: the dial waited for its timeout).
TEST_F(DialerTest, FailureInsideStartArrivesWhileOtherIoIsAlwaysReady) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "x", 1), 1);  // never read: always readable
  ev::Io busy(loop, [](int) {});
  busy.set(fds[0], EV_READ);
  busy.start();

  const proto::Address target{proto::Ipv4{127, 0, 0, 1}, 9};
  const std::vector<SockAddr> deny{SockAddr::from(proto::Ipv4{127, 0, 0, 1}, 9)};
  opts.timeout = 30;
  Dialer dialer(loop, &resolver, opts);
  int calls = 0;
  DialError got = DialError::kOk;
  dialer.start(target, {}, &deny, [&](Conn fd, DialError err, const std::string&) {
    ++calls;
    got = err;
    EXPECT_FALSE(fd);
  });
  EXPECT_EQ(calls, 0);  // never inside start()
  for (int i = 0; i < 20 && calls == 0; ++i) ev_run(loop, EVRUN_ONCE);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(got, DialError::kNotAllowed);
  busy.stop();
  close(fds[0]);
  close(fds[1]);
}

// Destroying the Dialer before the loop runs drops the pending delivery.
TEST_F(DialerTest, DestroyedBeforeDeliveryNeverCalls) {
  const std::vector<SockAddr> deny{SockAddr::from(proto::Ipv4{127, 0, 0, 1}, 9)};
  int calls = 0;
  {
    Dialer dialer(loop, &resolver, opts);
    dialer.start(proto::Address{proto::Ipv4{127, 0, 0, 1}, 9}, {}, &deny,
                 [&](Conn, DialError, const std::string&) { ++calls; });
  }
  for (int i = 0; i < 3; ++i) ev_run(loop, EVRUN_NOWAIT);
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace rs::net
