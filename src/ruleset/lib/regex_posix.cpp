// POSIX <regex.h> engine (extended syntax) for the Lua regex library.
#if defined(RULESOCKS_REGEX_POSIX)

#include <regex.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "ruleset/lib/regex_engine.hpp"

namespace rs::ruleset::regex_engine {

struct Pattern {
  regex_t re{};
  bool compiled = false;
  std::vector<regmatch_t> match;  // one slot per group plus the whole match
  ~Pattern() {
    if (compiled) regfree(&re);
  }
};

Pattern* compile(const char* pattern, size_t len, unsigned flags, Error* err) {
  // regcomp() reads up to the first NUL; a pattern cut short there would silently differ.
  if (std::memchr(pattern, '\0', len) != nullptr) {
    std::strcpy(err->text, "pattern contains a NUL byte");
    return nullptr;
  }
  int cflags = REG_EXTENDED;
  if (flags & kIgnoreCase) cflags |= REG_ICASE;
  if (flags & kMultiline) cflags |= REG_NEWLINE;
  auto p = std::make_unique<Pattern>();
  const int rc = regcomp(&p->re, pattern, cflags);
  if (rc != 0) {
    regerror(rc, &p->re, err->text, sizeof err->text);
    return nullptr;
  }
  p->compiled = true;
  p->match.resize(p->re.re_nsub + 1);
  return p.release();
}

void destroy(Pattern* p) {
  delete p;
}

size_t groups(const Pattern* p) {
  return p->re.re_nsub;
}

int search(Pattern* p, const char* s, size_t len, size_t start, Error* err) {
  if (len > static_cast<size_t>(std::numeric_limits<regoff_t>::max())) {
    std::strcpy(err->text, "subject too long");
    return -1;
  }
  // REG_NOTBOL keeps "^" from matching at a later start offset where the C library treats
  // s + start as the beginning of the string (glibc already does not).
  const int notbol = start > 0 ? REG_NOTBOL : 0;
#if defined(REG_STARTEND)
  // The subject is s[rm_so, rm_eo): no NUL terminator needed, embedded NULs are plain bytes.
  p->match[0].rm_so = static_cast<regoff_t>(start);
  p->match[0].rm_eo = static_cast<regoff_t>(len);
  const int rc = regexec(&p->re, s, p->match.size(), p->match.data(), REG_STARTEND | notbol);
#else
  // Without REG_STARTEND the subject must be a C string: search a terminated copy of the tail
  // (an embedded NUL ends it early) and shift the offsets back.
  const std::string tail(s + start, len - start);
  const int rc = regexec(&p->re, tail.c_str(), p->match.size(), p->match.data(), notbol);
  if (rc == 0) {
    for (regmatch_t& m : p->match) {
      if (m.rm_so < 0) continue;
      m.rm_so += static_cast<regoff_t>(start);
      m.rm_eo += static_cast<regoff_t>(start);
    }
  }
#endif
  if (rc == REG_NOMATCH) return 0;
  if (rc != 0) {
    regerror(rc, &p->re, err->text, sizeof err->text);
    return -1;
  }
  return 1;
}

bool span(const Pattern* p, size_t i, size_t* begin, size_t* end) {
  const regmatch_t& m = p->match[i];
  if (m.rm_so < 0) return false;
  *begin = static_cast<size_t>(m.rm_so);
  *end = static_cast<size_t>(m.rm_eo);
  return true;
}

const char* name() {
  return "posix";
}

}  // namespace rs::ruleset::regex_engine

#endif
