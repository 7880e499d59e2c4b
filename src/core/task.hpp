// A move-only `void()` callable, for work that runs later (rs::ev::Deferred).
//
// std::function must be copyable, so it cannot hold a lambda that owns a
// unique_ptr; std::move_only_function is C++23. A Task owns its callable:
// destroying a Task that never ran destroys what it captured.
#pragma once

#include <concepts>
#include <memory>
#include <type_traits>
#include <utility>

namespace rs {

class Task {
 public:
  Task() = default;
  template <class F>
  requires(!std::same_as<std::remove_cvref_t<F>, Task> && std::invocable<std::decay_t<F>&>)
      Task(F&& f)  // NOLINT(google-explicit-constructor): lambdas convert, as to std::function
      : impl_(std::make_unique<Impl<std::decay_t<F>>>(std::forward<F>(f))) {}
  Task(Task&&) noexcept = default;
  Task& operator=(Task&&) noexcept = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  explicit operator bool() const { return impl_ != nullptr; }
  // Must not be empty.
  void operator()() { impl_->call(); }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void call() = 0;
  };
  template <class F>
  struct Impl final : Base {
    template <class G>
    explicit Impl(G&& g) : f(std::forward<G>(g)) {}
    void call() override { f(); }
    F f;
  };
  std::unique_ptr<Base> impl_;
};

}  // namespace rs
