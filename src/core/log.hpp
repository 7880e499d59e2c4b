// Levelled logging to stderr (or syslog once daemonized), one line per event.
// Levels follow neosocksd's --loglevel: 0 silence .. 8 very verbose.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace rs::log {

enum Level : int {
  kSilence = 0,
  kFatal = 1,
  kError = 2,
  kWarning = 3,
  kNotice = 4,
  kInfo = 5,
  kDebug = 6,
  kVerbose = 7,
  kVeryVerbose = 8,
};

// Current threshold; messages with level > threshold are dropped.
inline int threshold = kNotice;
inline bool enabled(int level) {
  return level <= threshold;
}

// Switch output to syslog(3) (used by --daemonize).
void use_syslog(const char* ident);
void write(int level, std::string_view msg);

template <class... Args>
void at(int level, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(level)) write(level, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void fatal(fmt::format_string<Args...> f, Args&&... args) {
  at(kFatal, f, std::forward<Args>(args)...);
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  at(kError, f, std::forward<Args>(args)...);
}
template <class... Args>
void warning(fmt::format_string<Args...> f, Args&&... args) {
  at(kWarning, f, std::forward<Args>(args)...);
}
template <class... Args>
void notice(fmt::format_string<Args...> f, Args&&... args) {
  at(kNotice, f, std::forward<Args>(args)...);
}
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  at(kInfo, f, std::forward<Args>(args)...);
}
template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  at(kDebug, f, std::forward<Args>(args)...);
}
template <class... Args>
void verbose(fmt::format_string<Args...> f, Args&&... args) {
  at(kVerbose, f, std::forward<Args>(args)...);
}

}  // namespace rs::log
