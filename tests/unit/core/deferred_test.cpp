// ev::Deferred: move-only tasks, scopes that cancel, one Deferred per loop.
#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "core/loop.hpp"
#include "core/task.hpp"

namespace rs::ev {
namespace {

struct LoopFixture : ::testing::Test {
  ~LoopFixture() override {
    if (loop) ev_loop_destroy(loop);
  }
  // Runs up to `n` iterations without blocking.
  void spin(int n = 1) {
    for (int i = 0; i < n; ++i) ev_run(loop, EVRUN_NOWAIT);
  }
  Loop* loop = ev_loop_new(EVFLAG_AUTO);
};

TEST(Task, HoldsMoveOnlyCallables) {
  auto p = std::make_unique<int>(41);
  int seen = 0;
  Task t([p = std::move(p), &seen]() mutable { seen = ++*p; });
  Task moved = std::move(t);
  EXPECT_FALSE(t);  // NOLINT(bugprone-use-after-move): moved-from is empty
  ASSERT_TRUE(moved);
  moved();
  EXPECT_EQ(seen, 42);
}

TEST(Task, DestroyingAnUnrunTaskDestroysItsCaptures) {
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> watch = alive;
  {
    Task t([alive = std::move(alive)] {});
    EXPECT_FALSE(watch.expired());
  }
  EXPECT_TRUE(watch.expired());
}

TEST_F(LoopFixture, RunsMoveOnlyTasksLaterInOrder) {
  Deferred d(loop);
  std::vector<int> order;
  for (int i = 0; i < 3; ++i)
    d.post([i, p = std::make_unique<int>(i), &order] { order.push_back(*p + i); });
  EXPECT_TRUE(order.empty());  // never inside post()
  spin();
  EXPECT_EQ(order, (std::vector<int>{0, 2, 4}));
}

TEST_F(LoopFixture, DisposeOwnsTheObject) {
  struct Flag {
    explicit Flag(bool& b) : gone(b) {}
    ~Flag() { gone = true; }
    bool& gone;
  };
  bool gone = false;
  {
    Deferred d(loop);
    d.dispose(std::make_unique<Flag>(gone));
    EXPECT_FALSE(gone);
    spin();
    EXPECT_TRUE(gone);
    gone = false;
    // Never run by the loop: the Deferred's destruction still destroys it.
    d.dispose(std::make_unique<Flag>(gone));
  }
  EXPECT_TRUE(gone);
}

TEST_F(LoopFixture, ScopeCancelsItsTasksWhenDestroyed) {
  Deferred d(loop);
  int ran = 0;
  auto alive = std::make_shared<int>(0);
  std::weak_ptr<int> captured = alive;
  {
    Deferred::Scope scope(d);
    scope.post([&ran, alive = std::move(alive)] { ++ran; });
    d.post([&ran] { ran += 10; });  // unscoped: runs whatever happens
    EXPECT_EQ(scope.pending(), 1u);
  }
  EXPECT_TRUE(captured.expired());  // the dropped task was destroyed at once
  spin();
  EXPECT_EQ(ran, 10);
}

TEST_F(LoopFixture, ScopeCancelledFromATaskOfTheSameBatch) {
  Deferred d(loop);
  auto scope = std::make_unique<Deferred::Scope>(d);
  int ran = 0;
  // The first task destroys the poster of the second, both queued for the
  // same iteration: the second must not run.
  d.post([&scope] { scope.reset(); });
  scope->post([&ran] { ++ran; });
  spin();
  EXPECT_EQ(ran, 0);
  EXPECT_EQ(scope, nullptr);
}

TEST_F(LoopFixture, TaskMayDestroyItsOwnScope) {
  Deferred d(loop);
  auto scope = std::make_unique<Deferred::Scope>(d);
  int ran = 0;
  scope->post([&] {
    scope.reset();
    ++ran;
  });
  scope->post([&ran] { ran += 10; });  // cancelled by the first
  spin();
  EXPECT_EQ(ran, 1);
}

TEST_F(LoopFixture, TasksPostedByTasksRunOnALaterIteration) {
  Deferred d(loop);
  Deferred::Scope scope(d);
  int ran = 0;
  scope.post([&] {
    ++ran;
    scope.post([&ran] { ++ran; });
  });
  spin();
  EXPECT_GE(ran, 1);
  spin();
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(scope.pending(), 0u);
}

// An idle watcher never runs while another watcher is always ready; the
// Deferred's prepare watcher runs on every iteration.
TEST_F(LoopFixture, RunsWhileOtherIoIsAlwaysPending) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "x", 1), 1);  // never read: always readable
  int busy = 0;
  Io always(loop, [&busy](int) { ++busy; });
  always.set(fds[0], EV_READ);
  always.start();
  Deferred::Scope scope(loop);
  bool ran = false;
  scope.post([&ran] { ran = true; });
  for (int i = 0; i < 3 && !ran; ++i) ev_run(loop, EVRUN_ONCE);
  EXPECT_TRUE(ran);
  always.stop();
  close(fds[0]);
  close(fds[1]);
}

TEST_F(LoopFixture, OneDeferredPerLoop) {
  Deferred& a = Deferred::of(loop);
  EXPECT_EQ(&a, &Deferred::of(loop));
  Loop* other = ev_loop_new(EVFLAG_AUTO);
  EXPECT_NE(&a, &Deferred::of(other));
  // Destroying the loop destroys its Deferred, running what is left.
  bool ran = false;
  Deferred::of(other).post([&ran] { ran = true; });
  ev_loop_destroy(other);
  EXPECT_TRUE(ran);
}

}  // namespace
}  // namespace rs::ev
