#include "core/log.hpp"

#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

namespace rs::log {
namespace {
Output output = Output::kStderr;
constexpr char kLetters[] = "SFEWNIDVV";
constexpr int kSyslogPriority[] = {LOG_DEBUG, LOG_CRIT,  LOG_ERR,   LOG_WARNING, LOG_NOTICE,
                                   LOG_INFO,  LOG_DEBUG, LOG_DEBUG, LOG_DEBUG};
}  // namespace

std::optional<Output> parse_output(std::string_view name) {
  if (name == "stdout") return Output::kStdout;
  if (name == "stderr") return Output::kStderr;
  if (name == "syslog") return Output::kSyslog;
  if (name == "discard") return Output::kDiscard;
  return std::nullopt;
}

bool syslog_available() {
  struct stat st {};
  return ::stat(_PATH_LOG, &st) == 0 && S_ISSOCK(st.st_mode);
}

void set_output(Output out, const char* ident) {
  if (out == Output::kSyslog) openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
  output = out;
}

void use_syslog(const char* ident) {
  set_output(Output::kSyslog, ident);
}

void write(int level, std::string_view msg) {
  if (level < 0) level = 0;
  if (level > kVeryVerbose) level = kVeryVerbose;
  if (output == Output::kDiscard) return;
  if (output == Output::kSyslog) {
    syslog(kSyslogPriority[level], "%.*s", static_cast<int>(msg.size()), msg.data());
    return;
  }
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  localtime_r(&ts.tv_sec, &t);
  // One fwrite per line keeps lines whole when several processes share stderr.
  auto line = fmt::format("{} {:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03} {}\n", kLetters[level],
                          t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                          ts.tv_nsec / 1000000, msg);
  FILE* to = output == Output::kStdout ? stdout : stderr;
  std::fwrite(line.data(), 1, line.size(), to);
  // stdout is block-buffered when it is not a terminal: a line at a time, as
  // stderr, so that a pipe reader sees each event when it happens.
  if (to == stdout) std::fflush(stdout);
}

}  // namespace rs::log
