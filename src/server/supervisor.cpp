#include "server/supervisor.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "api/rpc_client.hpp"
#include "core/log.hpp"
#include "proto/address.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace rs::server {

struct Supervisor::Worker {
  Worker(ev::Loop* loop, size_t i) : index(i), io(loop), child(loop), restart(loop) {}
  size_t index;
  pid_t pid = -1;
  UniqueFd pipe;   // read end: "READY <port>\n"
  std::string in;  // what arrived on it so far
  uint16_t port = 0;
  bool live = false;  // ready and given the current ruleset: requests go to it
  double started = 0;
  unsigned failures = 0;  // exits in a row soon after starting: the backoff
  ev::Io io;
  ev::Child child;
  ev::Timer restart;
  std::unique_ptr<Cancellable> replaying;
};

namespace {

// A worker that lived this long before exiting starts again at once.
constexpr double kStableSeconds = 30.0;
constexpr double kMaxBackoff = 30.0;
// Forwarded requests: rpcall routines may wait long; others run Lua briefly.
constexpr double kRpcTimeout = 3600.0;
constexpr double kCallTimeout = 120.0;
constexpr double kKillAfter = 10.0;

bool fan_out(std::string_view path) {
  return path == "/ruleset/update" || path == "/ruleset/invoke" || path == "/ruleset/gc" ||
         path == "/healthy" || path == "/stats" || path == "/metrics";
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("ended ({})", status);
}

// Every line of `text` after `prefix`.
void prefixed(std::string& out, std::string_view prefix, std::string_view text) {
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (text.empty()) {
    // "worker 0 (pid 12):" alone: that worker answered with an empty body.
    out += prefix.substr(0, prefix.size() - 1);
    out += '\n';
    return;
  }
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    out += prefix;
    out += text.substr(pos, nl - pos);
    out += '\n';
    pos = nl + 1;
  }
}

// --- /stats -----------------------------------------------------------------

constexpr std::string_view kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};

struct Token {
  double value = 0;
  int decimals = 0;
  int unit = -1;  // index in kUnits when a byte amount
};

// Splits a value into its numbers and the words around them ("12 (3 refused
// by limits)" -> [12, 3] and "# (# refused by limits)").
std::string tokenize(std::string_view v, std::vector<Token>& nums) {
  std::string shape;
  size_t i = 0;
  while (i < v.size()) {
    const bool starts = (v[i] >= '0' && v[i] <= '9') ||
                        (v[i] == '-' && i + 1 < v.size() && v[i + 1] >= '0' && v[i + 1] <= '9');
    if (!starts) {
      shape += v[i++];
      continue;
    }
    size_t j = i + 1;
    while (j < v.size() && ((v[j] >= '0' && v[j] <= '9') || v[j] == '.')) ++j;
    Token t;
    std::string num(v.substr(i, j - i));
    t.value = std::strtod(num.c_str(), nullptr);
    auto dot = num.find('.');
    t.decimals = dot == std::string::npos ? 0 : static_cast<int>(num.size() - dot - 1);
    if (j < v.size() && v[j] == ' ') {
      for (size_t u = 0; u < std::size(kUnits); ++u) {
        auto unit = kUnits[u];
        if (v.substr(j + 1, unit.size()) == unit &&
            (j + 1 + unit.size() == v.size() || v[j + 1 + unit.size()] == ' ' ||
             v[j + 1 + unit.size()] == ',' || v[j + 1 + unit.size()] == ')' ||
             v[j + 1 + unit.size()] == '/')) {
          t.unit = static_cast<int>(u);
          t.value *= std::pow(1024.0, static_cast<double>(u));
          j += 1 + unit.size();
          break;
        }
      }
    }
    nums.push_back(t);
    shape += t.unit >= 0 ? "#B" : "#";
    i = j;
  }
  return shape;
}

bool is_duration(std::string_view v) {
  return v.size() >= 8 && v[v.size() - 3] == ':' && v[v.size() - 6] == ':';
}

struct StatLine {
  std::string label, value;  // label as padded; empty label: not "Label : value"
};

std::vector<StatLine> split_stats(std::string_view text) {
  std::vector<StatLine> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    auto colon = line.find(": ");
    if (colon != std::string_view::npos && colon > 0 && line[colon - 1] == ' ')
      out.push_back({std::string(line.substr(0, colon)), std::string(line.substr(colon + 2))});
    else
      out.push_back({{}, std::string(line)});
  }
  return out;
}

// --- /metrics ---------------------------------------------------------------

std::string format_sample(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9e15)
    return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

}  // namespace

std::string merge_stats(const std::vector<std::string>& texts) {
  if (texts.empty()) return {};
  std::vector<std::vector<StatLine>> all;
  for (const auto& t : texts) all.push_back(split_stats(t));
  std::string out;
  std::map<std::string, size_t> seen;  // label -> occurrences so far in the first text
  for (const StatLine& line : all[0]) {
    if (line.label.empty()) {
      out += line.value;
      out += '\n';
      continue;
    }
    const size_t occurrence = seen[line.label]++;
    std::vector<Token> sum;
    std::string shape = tokenize(line.value, sum);
    bool same = !is_duration(line.value);
    for (size_t k = 1; k < all.size() && same; ++k) {
      size_t n = 0;
      const StatLine* match = nullptr;
      for (const StatLine& other : all[k])
        if (other.label == line.label && n++ == occurrence) {
          match = &other;
          break;
        }
      if (match == nullptr) continue;  // this worker has no such line
      std::vector<Token> nums;
      if (tokenize(match->value, nums) != shape) {
        same = false;
        break;
      }
      for (size_t i = 0; i < nums.size(); ++i) {
        sum[i].value += nums[i].value;
        sum[i].decimals = std::max(sum[i].decimals, nums[i].decimals);
      }
    }
    std::string value;
    if (!same) {
      value = line.value;
    } else {
      size_t n = 0;
      for (size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] != '#') {
          value += shape[i];
          continue;
        }
        const Token& t = sum[n++];
        if (i + 1 < shape.size() && shape[i + 1] == 'B') {
          value += api::format_bytes(t.value);
          ++i;
        } else {
          value += fmt::format("{:.{}f}", t.value, t.decimals);
        }
      }
    }
    out += line.label;
    out += ": ";
    out += value;
    out += '\n';
  }
  // split_stats() saw the final newline as ending the last line.
  if (!texts[0].empty() && texts[0].back() != '\n' && !out.empty()) out.pop_back();
  return out;
}

std::string merge_metrics(const std::vector<std::string>& texts,
                          const std::vector<std::pair<std::string, double>>& replace) {
  struct Sample {
    std::string key;  // name{labels}
    double value = 0;
    bool quantile = false;
  };
  struct Family {
    std::string meta;                    // its HELP and TYPE lines
    const std::string* owner = nullptr;  // the text they come from
    std::vector<Sample> samples;
    std::map<std::string, size_t> index;
  };
  std::vector<Family> families;
  std::map<std::string, size_t> by_name;
  auto family = [&](const std::string& name) -> Family& {
    auto [it, added] = by_name.try_emplace(name, families.size());
    if (added) families.emplace_back();
    return families[it->second];
  };
  for (const std::string& text : texts) {
    Family* current = nullptr;
    std::string current_name;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      std::string_view line(text.data() + pos, nl - pos);
      pos = nl + 1;
      if (line.empty()) continue;
      if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
        std::string_view rest = line.substr(7);
        std::string name(rest.substr(0, rest.find(' ')));
        current = &family(name);
        current_name = name;
        // HELP and TYPE come from the first text announcing the family.
        if (current->owner == nullptr) current->owner = &text;
        if (current->owner == &text && current->meta.find(line) == std::string::npos) {
          current->meta += line;
          current->meta += '\n';
        }
        continue;
      }
      if (line.starts_with('#')) continue;
      auto space = line.rfind(' ');
      if (space == std::string_view::npos) continue;
      std::string key(line.substr(0, space));
      double v = std::strtod(std::string(line.substr(space + 1)).c_str(), nullptr);
      std::string name = key.substr(0, key.find('{'));
      // A sample belongs to the family announced before it (name_bucket,
      // name_sum...), or to one of its own name.
      Family& f = current != nullptr && name.starts_with(current_name) ? *current : family(name);
      auto [it, added] = f.index.try_emplace(key, f.samples.size());
      const bool quantile = key.find("quantile=\"") != std::string::npos;
      if (added) {
        f.samples.push_back({key, v, quantile});
      } else if (quantile) {
        f.samples[it->second].value = std::max(f.samples[it->second].value, v);
      } else {
        f.samples[it->second].value += v;
      }
    }
  }
  std::string out;
  for (Family& f : families) {
    out += f.meta;
    for (Sample& s : f.samples) {
      for (const auto& [key, v] : replace)
        if (key == s.key) s.value = v;
      out += s.key;
      out += ' ';
      out += format_sample(s.value);
      out += '\n';
    }
  }
  return out;
}

// One request forwarded to every worker (or one): collects the answers and
// replies once they are all in. Owned by the handle the ApiConnection holds;
// destroying it cancels the calls still running.
class Supervisor::Fanout final : public Cancellable {
 public:
  Fanout(Supervisor& s, api::ApiRequest& req, api::Endpoints::Reply reply)
      : s_(s),
        method_(req.method),
        path_(req.path),
        target_(req.raw_query.empty() ? std::string(req.path)
                                      : fmt::format("{}?{}", req.path, req.raw_query)),
        body_(std::move(req.body)),
        reply_(std::move(reply)) {
    if (auto ct = proto::find_header(req.headers, "Content-Type")) content_type_ = *ct;
  }
  // Sends to `targets` (worker indexes); false when there are none.
  bool start(const std::vector<size_t>& targets) {
    replies_.resize(targets.size());
    pending_ = targets.size();
    for (size_t i = 0; i < targets.size(); ++i) {
      const Worker& w = *s_.workers_[targets[i]];
      calls_.push_back(s_.call(w, method_, target_, content_type_, body_,
                               [this, i](WorkerReply r) { done(i, std::move(r)); }));
    }
    return !targets.empty();
  }

 private:
  void done(size_t i, WorkerReply r) {
    replies_[i] = std::move(r);
    if (--pending_ > 0) return;
    // reply_ may destroy this object (through the connection's deferred
    // queue, so not before we return).
    reply_(s_.combine(path_, method_, target_, body_, replies_));
  }

  Supervisor& s_;
  std::string method_, path_, target_, body_, content_type_;
  api::Endpoints::Reply reply_;
  std::vector<WorkerReply> replies_;
  size_t pending_ = 0;
  std::vector<std::unique_ptr<Cancellable>> calls_;
};

Supervisor::Supervisor(ev::Loop* loop, const Config& cfg, std::vector<std::string> argv)
    : loop_(loop),
      cfg_(cfg),
      argv_(std::move(argv)),
      started_(ev_now(loop)),
      kill_timer_(loop, [this](int) {
        for (auto& w : workers_)
          if (w->pid > 0) {
            log::warning("worker {} (pid {}) ignored SIGTERM: killing it", w->index, w->pid);
            ::kill(w->pid, SIGKILL);
          }
      }) {
  for (size_t i = 0; i < cfg.workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(loop, i));
    Worker& w = *workers_.back();
    w.restart.set_callback([this, &w](int) {
      if (!stopping_) spawn(w);
    });
  }
  if (!cfg.api.empty()) {
    const auto [text, tls] = strip_tls(cfg.api);
    if (tls) {
      if (cfg.tls_cert.empty())
        throw std::runtime_error("--api " + cfg.api + " needs --tls-cert and --tls-key");
      tls_ = net::make_server_context({cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca});
    }
    api::ApiOptions opts;
    opts.started = started_;
    opts.timeout = cfg.timeout;
    opts.access.key = cfg.api_key;
    opts.forwarder = this;
    if (tls) opts.tls = &tls_;
    api_ = std::make_unique<api::ApiServer>(loop, parse_listen(text), *this, opts);
  }
}

Supervisor::~Supervisor() {
  if (api_) api_->stop();
  for (auto& w : workers_) w->replaying.reset();
}

void Supervisor::start(std::function<void()> ready, std::function<void(bool)> stopped) {
  ready_ = std::move(ready);
  stopped_ = std::move(stopped);
  for (auto& w : workers_) spawn(*w);
}

void Supervisor::spawn(Worker& w) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    log::error("worker {}: pipe: {}", w.index, std::strerror(errno));
    w.restart.start(1.0);
    return;
  }
  UniqueFd rd(fds[0]), wr(fds[1]);
  // Everything the child needs, built before fork(): it only execs.
  std::vector<std::string> args = argv_;
  args.push_back("--worker-fd");
  args.push_back(std::to_string(wr.get()));
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    log::error("worker {}: fork: {}", w.index, std::strerror(errno));
    w.restart.start(1.0);
    return;
  }
  if (pid == 0) {
    // The worker ends with us (SIGTERM: a graceful exit), even when we are
    // killed with SIGKILL; a parent already gone means exit now.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);
    ::fcntl(wr.get(), F_SETFD, 0);  // the one fd the worker inherits
    ::unsetenv("NOTIFY_SOCKET");    // only the supervisor talks to systemd
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv("/proc/self/exe", cargv.data());
    ::_exit(127);
  }
  wr.reset();
  w.pid = pid;
  w.pipe = std::move(rd);
  w.in.clear();
  w.port = 0;
  w.live = false;
  w.started = ev_now(loop_);
  w.io.set_callback([this, &w](int) { on_pipe(w); });
  w.io.set(w.pipe.get(), EV_READ);
  w.io.start();
  w.child.set_callback([this, &w](int) { on_exit(w, w.child.rstatus()); });
  w.child.start(pid);
  log::info("worker {} started (pid {})", w.index, pid);
}

void Supervisor::on_pipe(Worker& w) {
  char buf[64];
  ssize_t n = ::read(w.pipe.get(), buf, sizeof buf);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {  // the worker is going: its child watcher says how
    w.io.stop();
    w.pipe.reset();
    return;
  }
  w.in.append(buf, static_cast<size_t>(n));
  auto nl = w.in.find('\n');
  if (nl == std::string::npos) return;
  unsigned port = 0;
  if (w.in.starts_with("READY ")) std::from_chars(w.in.data() + 6, w.in.data() + nl, port);
  w.io.stop();
  w.pipe.reset();
  if (port == 0 || port > 65535) {
    log::error("worker {} (pid {}): unexpected report \"{}\"", w.index, w.pid, w.in.substr(0, nl));
    ::kill(w.pid, SIGTERM);
    return;
  }
  w.port = static_cast<uint16_t>(port);
  replay(w, 0);
}

void Supervisor::replay(Worker& w, size_t next) {
  if (stopping_) return;
  if (next >= updates_.size()) {
    w.replaying.reset();
    went_live(w);
    return;
  }
  const auto& [target, body] = updates_[next];
  w.replaying = call(w, "POST", target, "", body, [this, &w, next](WorkerReply r) {
    if (!r.ok || r.status != 200)
      log::error("worker {} (pid {}): replaying {}: {}", w.index, w.pid, updates_[next].first,
                 r.ok ? fmt::format("HTTP {}: {}", r.status, r.body) : r.body);
    // The handle is ours and we are inside its callback: dispose of it later.
    ev::Deferred::of(loop_).dispose(std::move(w.replaying));
    replay(w, next + 1);
  });
}

void Supervisor::went_live(Worker& w) {
  w.live = true;
  log::notice(
      "worker {} (pid {}) ready{}", w.index, w.pid,
      updates_.empty() ? "" : fmt::format(", {} ruleset update(s) replayed", updates_.size()));
  if (all_ready_) return;
  for (auto& other : workers_)
    if (!other->live) return;
  all_ready_ = true;
  if (api_) api_->start();
  if (ready_) ready_();
}

void Supervisor::on_exit(Worker& w, int status) {
  w.child.stop();
  w.io.stop();
  w.pipe.reset();
  w.replaying.reset();
  w.live = false;
  const pid_t pid = std::exchange(w.pid, -1);
  if (stopping_) {
    log::info("worker {} (pid {}) {}", w.index, pid, describe_exit(status));
    stop_if_done();
    return;
  }
  if (!all_ready_) {
    // As a single process would: a start-up failure (an address in use, a
    // ruleset that does not load) ends the program.
    log::fatal("worker {} (pid {}) {} while starting: stopping", w.index, pid,
               describe_exit(status));
    failed_ = true;
    shutdown();
    return;
  }
  const double lived = ev_now(loop_) - w.started;
  w.failures = lived >= kStableSeconds ? 0 : w.failures + 1;
  const double delay =
      w.failures == 0 ? 0.0 : std::min(kMaxBackoff, 0.5 * std::pow(2.0, w.failures - 1));
  log::error("worker {} (pid {}) {}: restarting it in {:.1f} s", w.index, pid,
             describe_exit(status), delay);
  ++restarts_;
  w.restart.start(delay);
}

void Supervisor::shutdown() {
  if (stopping_) return;
  stopping_ = true;
  if (api_) api_->stop();
  for (auto& w : workers_) {
    w->restart.stop();
    w->replaying.reset();
    if (w->pid > 0) ::kill(w->pid, SIGTERM);
  }
  kill_timer_.start(kKillAfter);
  stop_if_done();
}

void Supervisor::stop_if_done() {
  for (auto& w : workers_)
    if (w->pid > 0) return;
  kill_timer_.stop();
  if (auto done = std::exchange(stopped_, nullptr)) done(failed_);
}

void Supervisor::reload() {
  // With a ruleset file the workers load it again: it is what a restarted
  // worker starts from, and what they all run (unless it fails to load,
  // which each worker logs).
  if (!cfg_.ruleset.empty() || cfg_.config_ruleset) updates_.clear();
  for (auto& w : workers_)
    if (w->pid > 0) ::kill(w->pid, SIGHUP);
}

std::unique_ptr<Cancellable> Supervisor::call(const Worker& w, std::string_view method,
                                              std::string_view target,
                                              std::string_view content_type, std::string_view body,
                                              std::function<void(WorkerReply)> done) {
  net::DialOptions opts;
  opts.timeout = target.starts_with("/ruleset/rpcall") ? kRpcTimeout : kCallTimeout;
  std::vector<std::pair<std::string, std::string>> headers;
  if (!content_type.empty()) headers.emplace_back("Content-Type", std::string(content_type));
  if (!cfg_.api_key.empty()) headers.emplace_back("Authorization", "Bearer " + cfg_.api_key);
  const size_t index = w.index;
  const pid_t pid = w.pid;
  return api::http_call(
      loop_, opts, *proto::parse_address(fmt::format("127.0.0.1:{}", w.port)), method, target,
      headers, body,
      [index, pid, done = std::move(done)](bool ok, api::HttpReply r, std::string error) {
        WorkerReply out{index,
                        pid,
                        ok,
                        r.status,
                        ok ? std::move(r.body) : std::move(error),
                        std::move(r.content_type),
                        std::move(r.headers)};
        done(std::move(out));
      });
}

api::Endpoints::Outcome Supervisor::forward(api::ApiRequest& req, api::Endpoints::Reply reply) {
  api::Endpoints::Outcome out;
  std::vector<size_t> targets;
  const bool all = fan_out(req.path);
  for (size_t k = 0; k < workers_.size(); ++k) {
    const size_t i = all ? k : (next_rpc_ + k) % workers_.size();
    if (!workers_[i]->live) continue;
    targets.push_back(i);
    if (!all) {
      next_rpc_ = i + 1;
      break;
    }
  }
  auto fanout = std::make_unique<Fanout>(*this, req, std::move(reply));
  if (!fanout->start(targets)) {
    out.response = api::text_response(503, "no worker is running (restarting)");
    return out;
  }
  out.handle = std::move(fanout);
  return out;
}

api::ApiResponse Supervisor::combine(std::string_view path, std::string_view method,
                                     std::string_view target, std::string_view body,
                                     std::vector<WorkerReply>& replies) {
  api::ApiResponse r;
  r.no_cache = true;
  auto failed = [](const WorkerReply& w) { return !w.ok || w.status < 200 || w.status > 299; };

  // One worker's answer as it gave it.
  auto as_is = [&](WorkerReply& w) {
    r.status = w.status;
    r.body = std::move(w.body);
    if (!w.content_type.empty()) r.content_type = std::move(w.content_type);
    for (auto& [name, value] : w.headers)
      if (proto::iequals(name, "Allow") || proto::iequals(name, "WWW-Authenticate"))
        r.headers.emplace_back(std::move(name), std::move(value));
    if (method == "HEAD") r.body.clear();
    return r;
  };
  if (!fan_out(path)) {
    WorkerReply& w = replies.front();
    if (!w.ok) return api::text_response(502, fmt::format("worker {}: {}", w.index, w.body));
    return as_is(w);
  }
  // Every worker refused the request itself the same way (a wrong method, a
  // missing body, no ruleset): one answer says it all.
  const WorkerReply& first = replies.front();
  if (first.ok && first.status >= 300 &&
      (first.status != 500 || first.body == "ruleset is not enabled\n") &&
      std::all_of(replies.begin(), replies.end(), [&](const WorkerReply& w) {
        return w.ok && w.status == first.status && w.body == first.body;
      }))
    return as_is(replies.front());

  if ((path == "/stats" || path == "/metrics") &&
      std::any_of(replies.begin(), replies.end(),
                  [&](const WorkerReply& w) { return !failed(w); })) {
    std::vector<std::string> texts;
    for (auto& w : replies)
      if (!failed(w)) texts.push_back(std::move(w.body));
    size_t live = 0;
    std::string pids;
    for (auto& w : workers_)
      if (w->live) {
        ++live;
        pids += fmt::format("{}{}", pids.empty() ? "" : " ", w->pid);
      }
    if (path == "/metrics") {
      r.content_type = "text/plain; version=0.0.4";
      r.body = merge_metrics(
          texts, {{"rulesocks_uptime_seconds", ev_now(loop_) - started_},
                  {"rulesocks_api_requests_total", static_cast<double>(api_requests_)},
                  {"rulesocks_api_successes_total", static_cast<double>(api_successes_)},
                  {"rulesocks_api_unauthorized_total", static_cast<double>(api_unauthorized_)}});
      api::add_metric(r.body, "rulesocks_workers", "gauge", "Worker processes serving (--workers).",
                      static_cast<double>(live));
      api::add_metric(r.body, "rulesocks_worker_restarts_total", "counter",
                      "Workers started again after exiting.", restarts_);
      return r;
    }
    r.body = merge_stats(texts);
    // The supervisor's own uptime and API counts; the workers saw each API
    // request once each.
    auto set = [&](std::string_view label, const std::string& value) {
      std::string key = fmt::format("{:<20}: ", label);
      auto at = r.body.find(key);
      if (at == std::string::npos) return;
      auto end = r.body.find('\n', at);
      r.body.replace(at + key.size(), end - at - key.size(), value);
    };
    set("Uptime", api::format_duration(ev_now(loop_) - started_));
    set("API requests", std::to_string(api_requests_));
    set("API unauthorized", std::to_string(api_unauthorized_));
    std::string line;
    api::add_line(line, "Workers",
                  fmt::format("{} of {} running (pids {})", live, workers_.size(), pids));
    // After the banner (or first, without one).
    auto blank = r.body.find("\n\n");
    if (r.body.starts_with("rulesocks ") && blank != std::string::npos)
      r.body.insert(blank + 1, line);
    else
      r.body.insert(0, line);
    return r;
  }

  // Every worker's answer: the first failure is the status; each line says
  // which worker said it.
  int status = 200;
  std::string text;
  for (const WorkerReply& w : replies) {
    if (failed(w) && status == 200) status = w.ok ? w.status : 502;
    if (path == "/healthy" && !failed(w)) continue;
    prefixed(text, fmt::format("worker {} (pid {}): ", w.index, w.pid),
             w.ok ? w.body : "no answer: " + w.body);
  }
  for (auto& w : workers_)
    if (!w->live && !stopping_ && path != "/healthy")
      text += fmt::format("worker {}: restarting{}\n", w->index,
                          path == "/ruleset/update" ? " (it will load this update)" : "");
  if (path == "/ruleset/update" && method == "POST" && status == 200) {
    // The ruleset itself, or the module: each is replaced by its own newest update.
    std::string key;
    if (auto m = target.find("module="); m != std::string_view::npos) {
      key = std::string(target.substr(m, target.find('&', m) - m));
    }
    std::erase_if(updates_, [&](const auto& u) {
      auto m = u.first.find("module=");
      std::string k = m == std::string::npos ? "" : u.first.substr(m, u.first.find('&', m) - m);
      return k == key;
    });
    updates_.emplace_back(std::string(target), std::string(body));
  }
  r.status = status;
  r.body = std::move(text);
  if (method == "HEAD") r.body.clear();
  return r;
}

}  // namespace rs::server
