// The regex engine behind the Lua regex library: PCRE2 (regex_pcre2.cpp) or POSIX <regex.h>
// (regex_posix.cpp), whichever the build selects. No Lua here; functions may throw only
// std::bad_alloc.
//
// Both engines are set up for POSIX ERE behaviour on the common syntax: byte-oriented (no UTF),
// "." matches a newline and "$" only the very end unless kMultiline, and "^" matches only at the
// start of the subject, never at a later search offset. One difference remains: for
// alternatives POSIX takes the longest match, PCRE2 the first alternative that matches.
#pragma once

#include <cstddef>

namespace rs::ruleset::regex_engine {

struct Pattern;

enum Flag : unsigned {
  kIgnoreCase = 1,  // "i"
  kMultiline = 2,   // "m": "^"/"$" also match at line breaks, "." does not match "\n"
};

struct Error {
  char text[256];
};

// Returns nullptr and fills *err when the pattern does not compile.
Pattern* compile(const char* pattern, size_t len, unsigned flags, Error* err);
void destroy(Pattern* p);

// The number of capture groups.
size_t groups(const Pattern* p);

// Searches s[start, len) for the leftmost match; s[0, start) still counts as context.
// Returns 1 on a match, 0 on none, -1 with *err filled when the engine gives up.
int search(Pattern* p, const char* s, size_t len, size_t start, Error* err);

// The bounds of group i (0: the whole match) in the last successful search, as byte offsets
// into s; false when the group took no part in the match.
bool span(const Pattern* p, size_t i, size_t* begin, size_t* end);

// "pcre2" or "posix".
const char* name();

}  // namespace rs::ruleset::regex_engine
