// Checks shared by the codec tests: split-point sweeps, prefix consistency and
// seeded random inputs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "proto/parse.hpp"

namespace rs::proto::test {

// Bytes written as numbers, for binary messages: raw({5, 1, 0}).
inline std::string raw(std::initializer_list<int> bytes) {
  std::string out;
  for (int b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

template <class T>
std::string describe(const Parsed<T>& r) {
  switch (r.status) {
    case ParseStatus::kNeedMore:
      return "need more";
    case ParseStatus::kDone:
      return "done, consumed " + std::to_string(r.consumed);
    case ParseStatus::kError:
      return "error: " + r.error;
  }
  return "?";
}

// A valid message: every strict prefix needs more, the whole is done with
// consumed == size, and bytes after it are neither consumed nor change the
// value. Returns the parsed value.
template <class Parse>
auto expect_message(Parse parse, std::string_view msg) {
  for (size_t k = 0; k < msg.size(); ++k) {
    auto r = parse(to_bytes(msg.substr(0, k)));
    EXPECT_TRUE(r.need_more()) << "prefix of " << k << "/" << msg.size() << ": " << describe(r);
  }
  auto whole = parse(to_bytes(msg));
  EXPECT_TRUE(whole.done()) << describe(whole);
  EXPECT_EQ(whole.consumed, msg.size());
  std::string longer = std::string(msg) + raw({0, 5, 'G', '\r', '\n', '\n', 0xff});
  auto more = parse(to_bytes(longer));
  EXPECT_TRUE(more.done()) << describe(more);
  EXPECT_EQ(more.consumed, msg.size());
  EXPECT_TRUE(more.value == whole.value);
  return whole.value;
}

// An invalid message: kError on the whole, with a message; prefixes may still
// need more, but once an error is reported it stays the same error.
template <class Parse>
auto expect_error(Parse parse, std::string_view msg, int code = -1) {
  std::optional<std::string> first_error;
  for (size_t k = 0; k <= msg.size(); ++k) {
    auto r = parse(to_bytes(msg.substr(0, k)));
    EXPECT_FALSE(r.done()) << "prefix of " << k << ": " << describe(r);
    if (first_error) {
      EXPECT_EQ(r.error, *first_error) << "prefix of " << k;
    }
    if (r.failed() && !first_error) first_error = r.error;
  }
  auto whole = parse(to_bytes(msg));
  EXPECT_TRUE(whole.failed()) << describe(whole);
  EXPECT_FALSE(whole.error.empty());
  if (code >= 0) {
    EXPECT_EQ(whole.code, code) << whole.error;
  }
  return whole;
}

// The property behind "same answer for any split": walking through every
// prefix of `buf`, the answer changes at most once, from need-more to a final
// one, and never consumes more than it was given.
template <class Parse>
void expect_prefix_consistent(Parse parse, std::string_view buf) {
  using Result = decltype(parse(Bytes{}));
  std::optional<Result> settled;
  for (size_t k = 0; k <= buf.size(); ++k) {
    Result r = parse(to_bytes(buf.substr(0, k)));
    if (r.done()) {
      EXPECT_GT(r.consumed, 0u);
      EXPECT_LE(r.consumed, k);
    }
    if (r.failed()) {
      EXPECT_FALSE(r.error.empty());
    }
    if (!settled) {
      if (!r.need_more()) settled = std::move(r);
      continue;
    }
    EXPECT_EQ(r.status, settled->status) << "prefix of " << k << ": " << describe(r);
    EXPECT_EQ(r.consumed, settled->consumed);
    EXPECT_EQ(r.error, settled->error);
    EXPECT_EQ(r.code, settled->code);
    EXPECT_TRUE(r.value == settled->value);
    if (::testing::Test::HasFailure()) return;
  }
}

inline std::string random_bytes(std::mt19937& rng, size_t max_len) {
  std::string out(rng() % (max_len + 1), '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

// A few random edits of a valid message, which reach far deeper into a
// parser than pure noise does.
inline std::string mutate(std::mt19937& rng, std::string s) {
  int edits = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < edits; ++i) {
    size_t at = s.empty() ? 0 : rng() % s.size();
    switch (rng() % 5) {
      case 0:
        if (!s.empty()) s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8)));
        break;
      case 1:
        if (!s.empty()) s[at] = static_cast<char>(rng());
        break;
      case 2:
        s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), static_cast<char>(rng()));
        break;
      case 3:
        if (!s.empty()) s.erase(at, 1);
        break;
      case 4:
        s.resize(at);
        break;
    }
  }
  return s;
}

// Runs `parse` on `iterations` seeded buffers, half noise and half mutated
// `samples`, checking prefix consistency on each (and, under ASan, memory
// safety).
template <class Parse>
void fuzz(Parse parse, const std::vector<std::string>& samples, uint32_t seed,
          int iterations = 10000, size_t max_noise = 64) {
  std::mt19937 rng(seed);
  for (int i = 0; i < iterations; ++i) {
    std::string buf = i % 2 == 0 || samples.empty() ? random_bytes(rng, max_noise)
                                                    : mutate(rng, samples[rng() % samples.size()]);
    expect_prefix_consistent(parse, buf);
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "seed " << seed << ", iteration " << i;
      return;
    }
  }
}

}  // namespace rs::proto::test
