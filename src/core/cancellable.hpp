// A handle to an operation in progress: destroying it cancels the operation,
// and its callback is not called afterwards.
#pragma once

namespace rs {

struct Cancellable {
  virtual ~Cancellable() = default;
};

}  // namespace rs
