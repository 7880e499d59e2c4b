// rulesocks: start-up, signals and wiring. Everything runs on one libev loop.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "config.hpp"
#include "core/log.hpp"
#include "core/loop.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace {

// -u user[:group]; throws on an unknown name or a failed call.
void drop_privileges(const std::string& spec) {
  auto colon = spec.find(':');
  std::string user = spec.substr(0, colon);
  std::string group = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const passwd* pw = getpwnam(user.c_str());
  if (!pw) throw std::runtime_error("unknown user \"" + user + "\"");
  gid_t gid = pw->pw_gid;
  if (!group.empty()) {
    const struct group* gr = getgrnam(group.c_str());
    if (!gr) throw std::runtime_error("unknown group \"" + group + "\"");
    gid = gr->gr_gid;
  }
  if (setgroups(0, nullptr) != 0 && errno != EPERM)
    throw std::runtime_error(std::string("setgroups: ") + std::strerror(errno));
  if (setgid(gid) != 0) throw std::runtime_error(std::string("setgid: ") + std::strerror(errno));
  if (setuid(pw->pw_uid) != 0)
    throw std::runtime_error(std::string("setuid: ") + std::strerror(errno));
}

// --log, or stderr (syslog with -d); syslog falls back to stderr, with a
// warning, when no syslog daemon listens: its lines would vanish.
rs::log::Output choose_log_output(const rs::Config& cfg) {
  using rs::log::Output;
  Output out = cfg.daemonize ? Output::kSyslog : Output::kStderr;
  if (!cfg.log_output.empty()) out = rs::log::parse_output(cfg.log_output).value_or(out);
  if (out == Output::kSyslog && !rs::log::syslog_available()) {
    rs::log::warning("syslog is absent (nothing listens on /dev/log): logging to stderr");
    out = Output::kStderr;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  rs::Config cfg;
  if (auto code = rs::parse_command_line(argc, argv, cfg)) return *code;
  rs::log::threshold = cfg.loglevel;
  const auto output = choose_log_output(cfg);
  rs::log::set_output(output);
  signal(SIGPIPE, SIG_IGN);

  rs::ev::Loop* loop = ev_default_loop(EVFLAG_AUTO);
  // Watched before anything binds: a SIGTERM during start-up (a big ruleset
  // loading, say) still ends in a graceful exit once the loop runs.
  rs::server::Server* running = nullptr;
  auto stop = [&](int) {
    rs::log::notice("shutting down");
    if (running) running->shutdown();
    ev_break(loop, EVBREAK_ALL);
  };
  rs::ev::Signal sigint(loop, SIGINT, stop), sigterm(loop, SIGTERM, stop);
  sigint.start();
  sigterm.start();
  // SIGHUP reloads the ruleset; before the server exists (or without -r) it
  // is only logged, never the default action that ends the process.
  rs::ev::Signal sighup(loop, SIGHUP, [&](int) {
    if (running) {
      running->reload_ruleset();
    } else {
      rs::log::warning("SIGHUP ignored: still starting");
    }
  });
  sighup.start();
  try {
    rs::server::Server server(loop, cfg);
    running = &server;
    if (!cfg.user.empty()) drop_privileges(cfg.user);
    if (cfg.daemonize) {
      // Logging to stdout or stderr keeps them (stdin still goes to /dev/null).
      const bool keep_stdio =
          output == rs::log::Output::kStdout || output == rs::log::Output::kStderr;
      if (daemon(0, keep_stdio ? 1 : 0) != 0)
        throw std::runtime_error(std::string("daemon: ") + std::strerror(errno));
      if (keep_stdio) {
        const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null >= 0) {
          dup2(null, STDIN_FILENO);
          close(null);
        }
      }
      ev_loop_fork(loop);
    }
    rs::log::notice("rulesocks {} started", RULESOCKS_VERSION);
    ev_run(loop, 0);
    running = nullptr;
  } catch (const std::exception& e) {
    rs::log::fatal("{}", e.what());
    return 1;
  }
  return 0;
}
