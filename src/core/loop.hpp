// RAII wrappers for libev watchers.
//
// A watcher belongs to the object that declares it as a member; destroying the
// watcher stops it. Watchers are neither copyable nor movable because libev
// keeps their address while they are active. The callback runs on the loop
// thread; it may stop or restart its own watcher, but must not destroy the
// object that owns it (defer that, see rs::ev::Deferred).
#pragma once

#include <ev.h>

#include <functional>
#include <memory>
#include <vector>

#include "core/task.hpp"

namespace rs::ev {

using Loop = struct ev_loop;

template <class W>
class Watcher {
 public:
  using Callback = std::function<void(int revents)>;
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  bool active() const { return ev_is_active(&w_); }
  Loop* loop() const { return loop_; }
  void set_callback(Callback cb) { cb_ = std::move(cb); }

 protected:
  Watcher(Loop* loop, Callback cb) : loop_(loop), cb_(std::move(cb)) {}
  static void thunk(Loop*, W* w, int revents) {
    auto* self = static_cast<Watcher*>(w->data);
    self->cb_(revents);
  }
  W w_{};
  Loop* loop_;
  Callback cb_;
};

class Io : public Watcher<ev_io> {
 public:
  Io(Loop* loop, Callback cb = {}) : Watcher(loop, std::move(cb)) {
    ev_init(&w_, thunk);
    w_.data = this;
  }
  ~Io() { stop(); }
  // Sets fd and event mask (EV_READ/EV_WRITE); restarts if it was active.
  void set(int fd, int events) {
    bool was = active();
    stop();
    ev_io_set(&w_, fd, events);
    if (was && events) start();
  }
  // Like set(), for an fd whose file description another watcher on this
  // loop is watching right now (and goes on watching until this one has
  // started): libev then need not re-register it with the kernel, which
  // set() forces because a new fd may reuse a closed one's number. Saves an
  // epoll_ctl per hand-over (session -> relay).
  void adopt(int fd, int events) {
    set(fd, events);
    w_.events &= ~EV__IOFDSET;
  }
  // Changes the event mask, keeping the fd (and libev's registration of it:
  // the kernel hears of the change only if the fd's combined mask changes).
  // A mask of 0 stops the watcher.
  void modify(int events) {
    if (events == (w_.events & (EV_READ | EV_WRITE)) && active()) return;
    stop();
    ev_io_modify(&w_, events);
    if (events) start();
  }
  int fd() const { return w_.fd; }
  int events() const { return active() ? (w_.events & (EV_READ | EV_WRITE)) : 0; }
  void start() { ev_io_start(loop_, &w_); }
  void stop() { ev_io_stop(loop_, &w_); }
  // Runs the callback with `revents` in this loop iteration, after the
  // watchers already pending, as if the fd were ready (for bytes a TLS
  // library holds, which no socket event announces).
  void feed(int revents) { ev_feed_event(loop_, &w_, revents); }
};

class Timer : public Watcher<ev_timer> {
 public:
  Timer(Loop* loop, Callback cb = {}) : Watcher(loop, std::move(cb)) {
    ev_init(&w_, thunk);
    w_.data = this;
  }
  ~Timer() { stop(); }
  // One-shot after `after` seconds, then every `repeat` seconds if non-zero.
  void start(double after, double repeat = 0) {
    stop();
    ev_timer_set(&w_, after, repeat);
    ev_timer_start(loop_, &w_);
  }
  // Restarts the repeat interval from now (cheap idle-timeout refresh).
  void again(double repeat) {
    w_.repeat = repeat;
    ev_timer_again(loop_, &w_);
  }
  void stop() { ev_timer_stop(loop_, &w_); }
};

class Idle : public Watcher<ev_idle> {
 public:
  Idle(Loop* loop, Callback cb = {}) : Watcher(loop, std::move(cb)) {
    ev_init(&w_, thunk);
    w_.data = this;
  }
  ~Idle() { stop(); }
  void start() { ev_idle_start(loop_, &w_); }
  void stop() { ev_idle_stop(loop_, &w_); }
};

class Signal : public Watcher<ev_signal> {
 public:
  Signal(Loop* loop, int signum, Callback cb = {}) : Watcher(loop, std::move(cb)) {
    ev_init(&w_, thunk);
    ev_signal_set(&w_, signum);
    w_.data = this;
  }
  ~Signal() { stop(); }
  void start() { ev_signal_start(loop_, &w_); }
  void stop() { ev_signal_stop(loop_, &w_); }
};

// Child watchers only work on the default loop.
class Child : public Watcher<ev_child> {
 public:
  Child(Loop* loop, Callback cb = {}) : Watcher(loop, std::move(cb)) {
    ev_init(&w_, thunk);
    w_.data = this;
  }
  ~Child() { stop(); }
  void start(int pid) {
    stop();
    ev_child_set(&w_, pid, 0);
    ev_child_start(loop_, &w_);
  }
  void stop() { ev_child_stop(loop_, &w_); }
  int rstatus() const { return w_.rstatus; }
  int rpid() const { return w_.rpid; }
};

// Runs queued tasks from a prepare watcher on a clean stack, before the loop
// blocks again (so, unlike an idle watcher, even while other I/O is always
// pending). Used to destroy objects outside their own callbacks, to deliver
// results "later" (never inside the call that asked for them) and to resume
// coroutines.
//
// Each loop has one, reached with Deferred::of(loop): objects that run work
// later share it (one watcher per loop, none per object) and post through a
// Deferred::Scope they own, which cancels their tasks when they go away.
// Owners that predate it (Server, ApiServer, the ruleset Runtime) still hold
// Deferreds of their own.
class Deferred {
 public:
  explicit Deferred(Loop* loop);
  // Runs whatever is still queued.
  ~Deferred();
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;

  // The loop's own Deferred, created on first use and owned by the loop: an
  // ev_cleanup watcher destroys it (running what is left) in
  // ev_loop_destroy(). It outlives every object on the loop.
  static Deferred& of(Loop* loop);

  // Runs `task` later, from the loop, whatever happens to its poster: for
  // work that must happen (destruction). Work on behalf of an object that
  // may go away first goes through a Scope.
  void post(Task task);
  // Destroys `p` later, from the loop: for objects whose callback is running.
  // The task owns `p`, so it is destroyed even if the loop never runs again
  // (drain() or ~Deferred()).
  template <class T>
  void dispose(std::unique_ptr<T> p) {
    if (p) post([p = std::move(p)]() mutable { p.reset(); });
  }
  // Runs everything queued so far (and anything those post), e.g. at
  // shutdown. Inside a task it does nothing: the running drain goes on.
  void drain();

  // The tasks one object posts. Destroying the Scope, or cancel(), drops
  // (destroys without running) every task it posted that has not started,
  // so a task never runs after its poster is gone. The Deferred must outlive
  // the Scope; a task may destroy its own Scope (and the object that owns
  // it) as long as it touches neither afterwards.
  class Scope {
   public:
    explicit Scope(Deferred& deferred) : deferred_(deferred) {}
    explicit Scope(Loop* loop) : Scope(Deferred::of(loop)) {}
    ~Scope() { cancel(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

    void post(Task task);
    void cancel();
    // Tasks posted and not yet started or cancelled.
    size_t pending() const { return pending_; }

   private:
    friend class Deferred;
    Deferred& deferred_;
    size_t pending_ = 0;
  };

 private:
  struct Entry {
    Task task;
    Scope* scope = nullptr;  // null: unscoped, always runs
  };
  void push(Task task, Scope* scope);
  void cancel(Scope* scope);
  bool run_queued();  // whether a task ran
  static void thunk(Loop*, ev_prepare* w, int);

  Loop* loop_;
  ev_prepare w_{};
  ev_idle nudge_{};
  std::vector<Entry> queue_;
  // The batch drain() is running, from next_: cancel() looks there too.
  std::vector<Entry> running_;
  size_t next_ = 0;
  bool draining_ = false;
};

}  // namespace rs::ev
