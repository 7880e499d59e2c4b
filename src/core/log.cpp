#include "core/log.hpp"

#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

namespace rs::log {
namespace {
bool to_syslog = false;
constexpr char kLetters[] = "SFEWNIDVV";
constexpr int kSyslogPriority[] = {LOG_DEBUG, LOG_CRIT,  LOG_ERR,   LOG_WARNING, LOG_NOTICE,
                                   LOG_INFO,  LOG_DEBUG, LOG_DEBUG, LOG_DEBUG};
}  // namespace

void use_syslog(const char* ident) {
  openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
  to_syslog = true;
}

void write(int level, std::string_view msg) {
  if (level < 0) level = 0;
  if (level > kVeryVerbose) level = kVeryVerbose;
  if (to_syslog) {
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
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace rs::log
