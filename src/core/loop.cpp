#include "core/loop.hpp"

#include <utility>

namespace rs::ev {

namespace {

// Owns a loop's Deferred::of(); lives in the loop's userdata.
struct LoopDeferred {
  explicit LoopDeferred(Loop* loop) : deferred(loop) {
    ev_cleanup_init(&cleanup, [](Loop* l, ev_cleanup* w, int) {
      ev_cleanup_stop(l, w);
      delete static_cast<LoopDeferred*>(ev_userdata(l));
      ev_set_userdata(l, nullptr);
    });
    ev_cleanup_start(loop, &cleanup);
  }
  Deferred deferred;
  ev_cleanup cleanup{};
};

}  // namespace

Deferred::Deferred(Loop* loop) : loop_(loop) {
  ev_prepare_init(&w_, thunk);
  w_.data = this;
  ev_idle_init(&nudge_, [](Loop* l, ev_idle* w, int) { ev_idle_stop(l, w); });
}

Deferred::~Deferred() {
  ev_prepare_stop(loop_, &w_);
  ev_idle_stop(loop_, &nudge_);
  drain();
}

Deferred& Deferred::of(Loop* loop) {
  auto* owner = static_cast<LoopDeferred*>(ev_userdata(loop));
  if (owner == nullptr) {
    owner = new LoopDeferred(loop);
    ev_set_userdata(loop, owner);
  }
  return owner->deferred;
}

void Deferred::post(Task task) {
  push(std::move(task), nullptr);
}

void Deferred::push(Task task, Scope* scope) {
  if (!task) return;
  if (scope) ++scope->pending_;
  queue_.push_back(Entry{std::move(task), scope});
  if (!ev_is_active(&w_)) ev_prepare_start(loop_, &w_);
}

void Deferred::cancel(Scope* scope) {
  // Destroyed after the scan: a task's captures may post or cancel in turn.
  std::vector<Task> dropped;
  auto scan = [&](std::vector<Entry>& v, size_t from) {
    for (size_t i = from; i < v.size() && scope->pending_ > 0; ++i) {
      if (v[i].scope != scope) continue;
      dropped.push_back(std::move(v[i].task));
      v[i].scope = nullptr;
      --scope->pending_;
    }
  };
  if (draining_) scan(running_, next_);
  scan(queue_, 0);
}

void Deferred::drain() {
  run_queued();
}

bool Deferred::run_queued() {
  if (draining_) return false;
  bool ran = false;
  draining_ = true;
  while (!queue_.empty()) {
    running_ = std::move(queue_);
    queue_.clear();
    for (next_ = 0; next_ < running_.size(); ++next_) {
      // Moved out first: the task may cancel its own scope, or post more.
      Entry e = std::exchange(running_[next_], Entry{});
      if (!e.task) continue;  // cancelled
      if (e.scope) --e.scope->pending_;
      e.task();
      ran = true;
    }
    running_.clear();
  }
  draining_ = false;
  return ran;
}

void Deferred::thunk(Loop*, ev_prepare* w, int) {
  auto* self = static_cast<Deferred*>(w->data);
  // Tasks are work done this iteration, as events are: an active idle
  // watcher keeps the poll that follows from blocking, so that
  // ev_run(EVRUN_ONCE) returns after them (its callback only stops it).
  if (self->run_queued()) ev_idle_start(self->loop_, &self->nudge_);
  if (self->queue_.empty()) ev_prepare_stop(self->loop_, &self->w_);
}

void Deferred::Scope::post(Task task) {
  deferred_.push(std::move(task), this);
}

void Deferred::Scope::cancel() {
  if (pending_ > 0) deferred_.cancel(this);
}

}  // namespace rs::ev
