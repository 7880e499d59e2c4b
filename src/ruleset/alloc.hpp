// The lua_Alloc of the ruleset VM: counts live bytes and enforces --memlimit.
#pragma once

#include <cstddef>

namespace rs::ruleset::detail {

// Refuses growth past `limit` while `enforce` is set. The Runtime sets it only
// while ruleset code runs, so a refusal becomes a Lua "not enough memory" error
// in that code, and the host's own allocations (starting routines, reporting
// errors, closing the VM) never fail for lack of budget.
struct MemoryBudget {
  size_t used = 0;
  size_t objects = 0;  // live blocks (neosocksd's num_object)
  size_t limit = 0;    // 0: unlimited
  bool enforce = false;
  size_t refused = 0;  // allocations refused so far

  static void* alloc(void* ud, void* ptr, size_t osize, size_t nsize) noexcept;
};

}  // namespace rs::ruleset::detail
