// Levelled logging to stderr (or syslog once daemonized), one line per event.
// Levels follow neosocksd's --loglevel: 0 silence .. 8 very verbose.
#pragma once

#include <fmt/format.h>

#include <optional>
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

enum class Output { kStdout, kStderr, kSyslog, kDiscard };
// "stdout", "stderr", "syslog", "discard" (--log); nullopt for anything else.
std::optional<Output> parse_output(std::string_view name);
// Whether a syslog daemon listens on /dev/log: without one, syslog(3) drops
// every line silently.
bool syslog_available();
// Where lines go from now on; kSyslog opens syslog(3) with `ident`.
void set_output(Output out, const char* ident = "rulesocks");
// Switch output to syslog(3).
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
