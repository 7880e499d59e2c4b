#include "ruleset/alloc.hpp"

#include <cstdlib>

namespace rs::ruleset::detail {

void* MemoryBudget::alloc(void* ud, void* ptr, size_t osize, size_t nsize) noexcept {
  auto* b = static_cast<MemoryBudget*>(ud);
  // For a new block Lua passes the object type in osize, not a size.
  const size_t old = ptr != nullptr ? osize : 0;
  if (nsize == 0) {
    if (ptr != nullptr) --b->objects;
    std::free(ptr);
    b->used -= old;
    return nullptr;
  }
  if (b->enforce && nsize > old && b->used - old + nsize > b->limit) {
    // Lua collects garbage and retries once before raising "not enough memory".
    ++b->refused;
    return nullptr;
  }
  void* p = std::realloc(ptr, nsize);
  if (p != nullptr) {
    b->used = b->used - old + nsize;
    if (ptr == nullptr) ++b->objects;
  }
  return p;
}

}  // namespace rs::ruleset::detail
