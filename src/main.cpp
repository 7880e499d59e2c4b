// rulesocks: start-up, signals and wiring. Everything runs on one libev loop.
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "config_file.hpp"
#include "core/log.hpp"
#include "core/loop.hpp"
#include "core/sd_notify.hpp"
#include "server/server.hpp"
#include "server/supervisor.hpp"
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

// The fields of a config file that SIGHUP applies to the running server: they
// are read where they are used, not copied at start-up. (The ruleset, too, is
// reloaded, by the caller.)
constexpr std::string_view kLiveFields[] = {"loglevel", "max_sessions", "startup_limit_start",
                                            "startup_limit_rate", "startup_limit_full"};

// Lines "    name = value," of --dump-config, by name.
std::map<std::string, std::string> dumped_fields(const rs::Config& c) {
  std::map<std::string, std::string> out;
  std::istringstream in(rs::dump_config(c));
  for (std::string line; std::getline(in, line);) {
    auto eq = line.find(" = ");
    if (line.starts_with("    ") && eq != std::string::npos)
      out[line.substr(4, eq - 4)] = line.substr(eq + 3);
  }
  return out;
}

// SIGHUP with -c: parses the command line (and so the file) again. A file
// that no longer loads changes nothing; otherwise the live fields take their
// new values and the others, when changed, are logged as needing a restart.
// False when the ruleset should not be reloaded either.
bool reload_config(int argc, char** argv, rs::Config& cfg) {
  rs::Config fresh;
  std::string err;
  if (rs::parse_command_line(argc, argv, fresh, &err)) {
    rs::log::error("SIGHUP: config {} not reloaded, the running one stays: {}", cfg.config_file,
                   err.empty() ? "bad command line" : err);
    return false;
  }
  const auto before = dumped_fields(cfg), after = dumped_fields(fresh);
  std::string restart;
  for (const auto& [name, value] : after) {
    if (before.at(name) == value) continue;
    if (std::find(std::begin(kLiveFields), std::end(kLiveFields), name) == std::end(kLiveFields)) {
      restart += (restart.empty() ? "" : ", ") + name;
      continue;
    }
    rs::log::notice("SIGHUP: {} = {}", name, value.substr(0, value.size() - 1));
  }
  cfg.loglevel = fresh.loglevel;
  rs::log::threshold = cfg.loglevel;
  cfg.max_sessions = fresh.max_sessions;
  cfg.max_startups = fresh.max_startups;
  cfg.ruleset_chunk = std::move(fresh.ruleset_chunk);
  cfg.config_ruleset = fresh.config_ruleset;
  if (!restart.empty())
    rs::log::warning("SIGHUP: {} changed in {}: takes effect at the next start", restart,
                     cfg.config_file);
  rs::log::notice("SIGHUP: config {} reloaded", cfg.config_file);
  return true;
}

// --workers N (N > 1): this process supervises N workers and serves the
// public API; see server/supervisor.hpp.
int supervise(int argc, char** argv, const rs::Config& cfg, rs::log::Output output) {
  rs::ev::Loop* loop = ev_default_loop(EVFLAG_AUTO);
  int code = 0;
  try {
    rs::server::Supervisor sup(loop, cfg, std::vector<std::string>(argv, argv + argc));
    if (cfg.daemonize) {
      const bool keep_stdio =
          output == rs::log::Output::kStdout || output == rs::log::Output::kStderr;
      if (daemon(0, keep_stdio ? 1 : 0) != 0)
        throw std::runtime_error(std::string("daemon: ") + std::strerror(errno));
      ev_loop_fork(loop);
    }
    auto stop = [&](int) {
      rs::log::notice("shutting down {} workers", cfg.workers);
      rs::sd::notify("STOPPING=1");
      sup.shutdown();
    };
    rs::ev::Signal sigint(loop, SIGINT, stop), sigterm(loop, SIGTERM, stop);
    rs::ev::Signal sighup(loop, SIGHUP, [&](int) {
      rs::sd::notify(rs::sd::reloading_state());
      sup.reload();
      rs::sd::notify("READY=1");
    });
    sigint.start();
    sigterm.start();
    sighup.start();
    sup.start(
        [&] {
          rs::log::notice("rulesocks {} started with {} workers", RULESOCKS_VERSION, cfg.workers);
          rs::sd::notify("READY=1");
        },
        [&](bool failed) {
          code = failed ? 1 : 0;
          ev_break(loop, EVBREAK_ALL);
        });
    ev_run(loop, 0);
  } catch (const std::exception& e) {
    rs::log::fatal("{}", e.what());
    return 1;
  }
  return code;
}

// A worker tells its supervisor it serves, and where its private API is.
void report_ready(int fd, const rs::server::Server& server) {
  const auto api = server.api_address();
  const std::string line = fmt::format("READY {}\n", api ? api->port() : 0);
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    rs::log::error("worker: reporting to the supervisor: {}", std::strerror(errno));
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  rs::Config cfg;
  if (auto code = rs::parse_command_line(argc, argv, cfg)) return *code;
  rs::log::threshold = cfg.loglevel;
  const auto output = choose_log_output(cfg);
  rs::log::set_output(output);
  signal(SIGPIPE, SIG_IGN);
  if (cfg.workers > 1) return supervise(argc, argv, cfg, output);

  rs::ev::Loop* loop = ev_default_loop(EVFLAG_AUTO);
  // Watched before anything binds: a SIGTERM during start-up (a big ruleset
  // loading, say) still ends in a graceful exit once the loop runs.
  rs::server::Server* running = nullptr;
  auto stop = [&](int) {
    rs::log::notice("shutting down");
    rs::sd::notify("STOPPING=1");
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
      // systemd (Type=notify) shows the unit "reloading" until READY=1 again.
      rs::sd::notify(rs::sd::reloading_state());
      // With -c the file is read again first; one that no longer loads keeps
      // everything, the ruleset included.
      if (cfg.config_file.empty() || reload_config(argc, argv, cfg)) running->reload_ruleset();
      rs::sd::notify("READY=1");
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
    // Every listener is bound (the Server constructor) and privileges are
    // dropped: systemd (Type=notify) may now start the units ordered after us.
    rs::sd::notify("READY=1");
    if (cfg.worker_fd >= 0) report_ready(cfg.worker_fd, server);
    ev_run(loop, 0);
    running = nullptr;
  } catch (const std::exception& e) {
    rs::log::fatal("{}", e.what());
    return 1;
  }
  return 0;
}
