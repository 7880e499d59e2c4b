// PCRE2 engine for the Lua regex library.
#if defined(RULESOCKS_REGEX_PCRE2)

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <cstdio>
#include <new>

#include "ruleset/lib/regex_engine.hpp"

namespace rs::ruleset::regex_engine {

struct Pattern {
  pcre2_code* code;
  pcre2_match_data* match;  // sized for the pattern once; reused by every search
};

namespace {

void describe(int code, char* out, size_t size) {
  PCRE2_UCHAR msg[192];
  if (pcre2_get_error_message(code, msg, sizeof msg) < 0) {
    std::snprintf(out, size, "PCRE2 error %d", code);
    return;
  }
  std::snprintf(out, size, "%s", reinterpret_cast<const char*>(msg));
}

}  // namespace

Pattern* compile(const char* pattern, size_t len, unsigned flags, Error* err) {
  // NEVER_UTF: rulesets match raw bytes, and "(*UTF)" in a pattern must not make invalid UTF-8
  // subjects fail. The rest mirrors POSIX ERE (see regex_engine.hpp).
  uint32_t options = PCRE2_NEVER_UTF | PCRE2_DOLLAR_ENDONLY;
  options |= (flags & kMultiline) ? PCRE2_MULTILINE : PCRE2_DOTALL;
  if (flags & kIgnoreCase) options |= PCRE2_CASELESS;
  int code = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* re =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), len, options, &code, &offset, nullptr);
  if (re == nullptr) {
    char msg[192];
    describe(code, msg, sizeof msg);
    std::snprintf(err->text, sizeof err->text, "%s at offset %zu", msg, offset);
    return nullptr;
  }
  // Best effort: where JIT is unavailable pcre2_match() interprets the pattern instead.
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(re, nullptr);
  Pattern* p = match ? new (std::nothrow) Pattern{re, match} : nullptr;
  if (p == nullptr) {
    pcre2_match_data_free(match);
    pcre2_code_free(re);
    throw std::bad_alloc();
  }
  return p;
}

void destroy(Pattern* p) {
  if (p == nullptr) return;
  pcre2_match_data_free(p->match);
  pcre2_code_free(p->code);
  delete p;
}

size_t groups(const Pattern* p) {
  uint32_t n = 0;
  pcre2_pattern_info(p->code, PCRE2_INFO_CAPTURECOUNT, &n);
  return n;
}

int search(Pattern* p, const char* s, size_t len, size_t start, Error* err) {
  const auto subject = reinterpret_cast<PCRE2_SPTR>(s);
  int rc = pcre2_match(p->code, subject, len, start, 0, p->match, nullptr);
  // The JIT stack is small and fixed; the interpreter copes with deeper backtracking.
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc = pcre2_match(p->code, subject, len, start, PCRE2_NO_JIT, p->match, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) {
    describe(rc, err->text, sizeof err->text);
    return -1;
  }
  return 1;
}

bool span(const Pattern* p, size_t i, size_t* begin, size_t* end) {
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(p->match);
  if (ov[2 * i] == PCRE2_UNSET) return false;
  *begin = ov[2 * i];
  *end = ov[2 * i + 1];
  return true;
}

const char* name() {
  return "pcre2";
}

}  // namespace rs::ruleset::regex_engine

#endif
