#include "core/loop.hpp"

namespace rs::ev {

Deferred::Deferred(Loop* loop) : loop_(loop) {
  ev_prepare_init(&w_, thunk);
  w_.data = this;
}

Deferred::~Deferred() {
  ev_prepare_stop(loop_, &w_);
  drain();
}

void Deferred::post(std::function<void()> fn) {
  queue_.push_back(std::move(fn));
  if (!ev_is_active(&w_)) ev_prepare_start(loop_, &w_);
}

void Deferred::drain() {
  while (!queue_.empty()) {
    auto batch = std::move(queue_);
    queue_.clear();
    for (auto& fn : batch) fn();
  }
}

void Deferred::thunk(Loop*, ev_prepare* w, int) {
  auto* self = static_cast<Deferred*>(w->data);
  self->drain();
  if (self->queue_.empty()) ev_prepare_stop(self->loop_, &self->w_);
}

}  // namespace rs::ev
