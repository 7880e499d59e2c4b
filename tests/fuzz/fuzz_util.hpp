// Shared by the fuzz targets (tests/fuzz/*_fuzz.cpp).
//
// Invariants are checked with FUZZ_CHECK, which prints the failed condition and
// aborts: libFuzzer reports that as a crash and saves the input, and the corpus
// replay test (replay_main.cpp) fails on it. It is active in every build type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proto/parse.hpp"

// Variadic so that a condition may hold unparenthesized commas (braces, templates).
#define FUZZ_CHECK(...)                 \
  ((__VA_ARGS__) ? static_cast<void>(0) \
                 : ::rs::fuzz::check_failed(#__VA_ARGS__, __FILE__, __LINE__))

namespace rs::fuzz {

using proto::Bytes;

[[noreturn]] inline void check_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: invariant failed: %s\n", file, line, what);
  std::fflush(stderr);
  std::abort();
}

inline std::string_view as_text(Bytes in) {
  return {reinterpret_cast<const char*>(in.data()), in.size()};
}

// A small deterministic generator (splitmix64), seeded from the input, for
// split points and options that must not depend on anything but the input.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  static Rng of(Bytes in) {
    uint64_t h = 14695981039346656037ull;  // FNV-1a
    for (uint8_t b : in) h = (h ^ b) * 1099511628211ull;
    return Rng(h);
  }
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform enough in [0, n]; 0 when n is 0.
  size_t upto(size_t n) { return n == 0 ? 0 : static_cast<size_t>(next() % (n + 1)); }

 private:
  uint64_t s_;
};

// Takes option bytes off the front of the input; reads 0 once it is empty.
class Reader {
 public:
  explicit Reader(Bytes in) : in_(in) {}
  uint8_t byte() {
    if (in_.empty()) return 0;
    uint8_t b = in_[0];
    in_ = in_.subspan(1);
    return b;
  }
  Bytes rest() const { return in_; }

 private:
  Bytes in_;
};

// Chunk sizes for feeding `total` bytes in pieces: all at once, one byte at a
// time, or random pieces (mode 2) from `rng`.
inline std::vector<size_t> split_sizes(size_t total, int mode, Rng& rng) {
  std::vector<size_t> out;
  if (mode == 0) {
    out.push_back(total);
    return out;
  }
  for (size_t done = 0; done < total;) {
    size_t n = mode == 1 ? 1 : 1 + rng.upto(std::min<size_t>(total - done, 64) - 1);
    out.push_back(n);
    done += n;
  }
  return out;
}

// The contract of every codec in proto/ (see proto/parse.hpp): a pure
// function of all bytes received so far. Checks it on `in` and a few of its
// prefixes: consumed never exceeds the input; a done message is done with the
// same length and value for every prefix that holds it and needs more for the
// shorter ones; an error stays the same error, or is still need-more, on
// prefixes; need-more on the whole means need-more on every prefix.
// Returns the result for the whole input.
template <class Parse>
auto check_codec(Parse parse, Bytes in) {
  auto whole = parse(in);
  FUZZ_CHECK(whole.consumed <= in.size());
  if (whole.done()) {
    FUZZ_CHECK(whole.consumed > 0);
    FUZZ_CHECK(whole.error.empty());
  } else {
    FUZZ_CHECK(whole.consumed == 0);
  }
  if (whole.failed()) FUZZ_CHECK(!whole.error.empty());

  Rng rng = Rng::of(in);
  const size_t n = in.size();
  size_t points[] = {0,
                     1,
                     n / 2,
                     n > 0 ? n - 1 : 0,
                     whole.consumed > 0 ? whole.consumed - 1 : 0,
                     whole.consumed,
                     rng.upto(n),
                     rng.upto(n)};
  for (size_t k : points) {
    if (k > n) continue;
    auto part = parse(in.first(k));
    FUZZ_CHECK(part.consumed <= k);
    if (whole.done()) {
      if (k >= whole.consumed) {
        FUZZ_CHECK(part.done());
        FUZZ_CHECK(part.consumed == whole.consumed);
        FUZZ_CHECK(part.value == whole.value);
      } else {
        FUZZ_CHECK(part.need_more());
      }
    } else if (whole.need_more()) {
      FUZZ_CHECK(part.need_more());
    } else {
      FUZZ_CHECK(part.need_more() || part.failed());
      if (part.failed()) {
        FUZZ_CHECK(part.error == whole.error);
        FUZZ_CHECK(part.code == whole.code);
      }
    }
  }
  return whole;
}

}  // namespace rs::fuzz
