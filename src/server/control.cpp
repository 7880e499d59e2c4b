#include "server/control.hpp"

#include <fmt/format.h>
#include <time.h>

#include <algorithm>
#include <filesystem>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <string_view>
#include <utility>
#include <vector>

#include "api/endpoints.hpp"
#include "api/rpc_client.hpp"
#include "core/log.hpp"
#include "server/forward_dial.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace rs::server {
namespace {

// share/rulesocks/lua beside the running binary's bin/: a package built from
// a tree configured for /usr/local and installed to /usr (CPack) still finds
// its library. Empty when /proc/self/exe cannot be read.
std::string lua_dir_beside_binary() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return (exe.parent_path() / RULESOCKS_LUA_DIR_FROM_BIN).lexically_normal().string();
}

}  // namespace

Control::Control(Server& server, const std::optional<net::SockAddr>& api_listen) : server_(server) {
  const Config& cfg = server.config();
  last_.time = server.start_time();
  // The API is bound first: the ruleset may ask for its address while it
  // loads (neosocksd.config().api in a --workers worker).
  if (api_listen) {
    api::ApiOptions opts;
    opts.started = server.start_time();
    // As in neosocksd, -t bounds API requests (head and body) and idle or
    // stalled API connections as well as proxy handshakes.
    opts.timeout = cfg.timeout;
    opts.access.key = cfg.api_key;
    opts.self = &server.self_connections();
    if (server.api_tls()) opts.tls = &server.tls_server_context();
    api_ = std::make_unique<api::ApiServer>(server.loop(), *api_listen, *this, opts);
    api_->start();
  }
  if (!cfg.ruleset.empty() || !cfg.ruleset_chunk.empty()) {
    ruleset::EngineOptions opts;
    opts.memlimit_bytes = cfg.memlimit_mib << 20;
    opts.traceback = cfg.traceback;
    // Modules next to the ruleset come first (load_file adds that), then the
    // installed library (where the binary is, then where it was configured
    // for), then the source tree's (running from a build dir).
    opts.lua_path_dirs = {RULESOCKS_LUA_DIR, RULESOCKS_SOURCE_LUA_DIR};
    if (auto dir = lua_dir_beside_binary(); !dir.empty() && dir != RULESOCKS_LUA_DIR)
      opts.lua_path_dirs.insert(opts.lua_path_dirs.begin(), dir);
    opts.resolve_family = resolve_family(cfg);
    engine_ = std::make_unique<ruleset::Engine>(server.loop(), &server.resolver(), this, opts);
    std::string err;
    if (!cfg.ruleset_chunk.empty()) {
      // -c FILE with a ruleset table: the file runs again in the VM.
      if (!engine_->update(cfg.ruleset_chunk, "=" + cfg.config_file, &err))
        throw std::runtime_error("ruleset of " + cfg.config_file + ": " + err);
      log::notice("ruleset loaded from {}", cfg.config_file);
    } else {
      if (!engine_->load_file(cfg.ruleset, &err))
        throw std::runtime_error("ruleset " + cfg.ruleset + ": " + err);
      log::notice("ruleset loaded from {}", cfg.ruleset);
      std::error_code ec;
      auto abs = std::filesystem::absolute(cfg.ruleset, ec);
      ruleset_path_ = ec ? cfg.ruleset : abs.string();
    }
  }
}

Control::~Control() = default;

void Control::stop() {
  if (api_) api_->stop();
}

std::optional<net::SockAddr> Control::api_address() const {
  if (!api_) return std::nullopt;
  return api_->address();
}

void Control::reload_ruleset() {
  if (!engine_) {
    log::warning("SIGHUP ignored: no ruleset (-r, or a ruleset table in -c) to reload");
    return;
  }
  std::string err;
  const Config& cfg = server_.config();
  if (!cfg.ruleset_chunk.empty()) {
    // The config file was read again by the caller (main), into cfg.
    if (engine_->update(cfg.ruleset_chunk, "=" + cfg.config_file, &err)) {
      log::notice("SIGHUP: ruleset reloaded from {}", cfg.config_file);
    } else {
      log::error("SIGHUP: ruleset of {} not reloaded, the running one stays: {}", cfg.config_file,
                 err);
    }
    return;
  }
  if (ruleset_path_.empty()) {
    log::warning("SIGHUP: {} no longer has a ruleset table; the running ruleset stays",
                 cfg.config_file);
    return;
  }
  const std::string& path = ruleset_path_;
  if (engine_->load_file(path, &err)) {
    log::notice("SIGHUP: ruleset reloaded from {}", path);
  } else {
    log::error("SIGHUP: ruleset {} not reloaded, the running one stays: {}", path, err);
  }
}

void Control::set_exposed_listeners(bool exposed) {
  if (api_) api_->set_exposed_listeners(exposed);
}

std::string Control::server_stats(bool incremental) {
  const Stats& s = server_.stats();
  std::string out;
  api::add_line(out, "Sessions",
                fmt::format("{} ({} half-open, peak {})", s.sessions, s.halfopen, s.sessions_peak));
  api::add_line(out, "Accepted", fmt::format("{} ({} refused by limits)", s.accepted, s.refused));
  api::add_line(
      out, "Requests",
      fmt::format("{} ({} success, {} rejected, {} dial failed, {} bad, {} timed out)", s.requests,
                  s.success, s.rejected, s.dial_failed, s.bad_requests, s.timed_out));
  api::add_line(out, "Traffic",
                fmt::format("up {}, down {}", api::format_bytes(static_cast<double>(s.bytes_up)),
                            api::format_bytes(static_cast<double>(s.bytes_down))));
  api::add_line(out, "API requests", std::to_string(s.api_requests));
  api::add_line(out, "API unauthorized", std::to_string(s.api_unauthorized));
  api::add_line(out, "DNS queries", std::to_string(server_.resolver().queries()));
  const UdpStats& u = s.udp;
  if (server_.config().udp.enable || u.datagrams_up + u.datagrams_down > 0) {
    api::add_line(out, "UDP associations",
                  fmt::format("{} ({} granted, {} refused by limits)", u.associations, u.associated,
                              u.refused));
    api::add_line(out, "UDP datagrams",
                  fmt::format("up {} ({}), down {} ({})", u.datagrams_up,
                              api::format_bytes(static_cast<double>(u.bytes_up)), u.datagrams_down,
                              api::format_bytes(static_cast<double>(u.bytes_down))));
    api::add_line(out, "UDP dropped",
                  fmt::format("foreign {}, fragment {}, malformed {}, rejected {}, overflow {}, "
                              "unsolicited {}",
                              u.dropped_foreign, u.dropped_fragment, u.dropped_malformed,
                              u.dropped_rejected, u.dropped_overflow, u.dropped_unsolicited));
  }
  if (incremental) {
    const double now = ev_now(server_.loop());
    const double dt = now - last_.time;
    if (dt > 0) {
      auto rate = [dt](uint64_t now_v, uint64_t then) {
        return static_cast<double>(now_v - then) / dt;
      };
      api::add_line(out, "Request rate", fmt::format("{:.2f}/s", rate(s.requests, last_.requests)));
      api::add_line(
          out, "Traffic rate",
          fmt::format("up {}/s, down {}/s", api::format_bytes(rate(s.bytes_up, last_.bytes_up)),
                      api::format_bytes(rate(s.bytes_down, last_.bytes_down))));
    }
    last_ = {now, s.requests, s.bytes_up, s.bytes_down};
  }
  return out;
}

namespace {
// One counter family with a label: its HELP and TYPE lines, then a sample per value.
void add_labelled_counter(std::string& out, std::string_view name, std::string_view help,
                          std::string_view label,
                          std::initializer_list<std::pair<const char*, uint64_t>> samples) {
  out += fmt::format("# HELP {} {}\n# TYPE {} counter\n", name, help, name);
  for (const auto& [value, n] : samples)
    out += fmt::format("{}{{{}=\"{}\"}} {}\n", name, label, value, n);
}
}  // namespace

std::string Control::server_metrics() {
  const Stats& s = server_.stats();
  std::string out;
  api::add_metric(out, "rulesocks_sessions", "gauge", "Live sessions, half-open and relaying.",
                  s.sessions);
  api::add_metric(out, "rulesocks_sessions_peak", "gauge", "Most live sessions at once.",
                  s.sessions_peak);
  api::add_metric(out, "rulesocks_halfopen_sessions", "gauge",
                  "Sessions accepted and not yet relaying.", s.halfopen);
  api::add_metric(out, "rulesocks_connections_accepted_total", "counter",
                  "Proxy connections accepted.", s.accepted);
  api::add_metric(out, "rulesocks_connections_refused_total", "counter",
                  "Proxy connections dropped by the session limits or accept errors.", s.refused);
  api::add_metric(out, "rulesocks_requests_total", "counter",
                  "Proxy handshakes that produced a request.", s.requests);
  add_labelled_counter(out, "rulesocks_request_outcomes_total", "Proxy requests ended, by outcome.",
                       "outcome",
                       {{"success", s.success},
                        {"rejected", s.rejected},
                        {"dial_failed", s.dial_failed},
                        {"timed_out", s.timed_out},
                        {"bad", s.bad_requests}});
  api::add_metric(out, "rulesocks_uplink_bytes_total", "counter",
                  "Bytes relayed from clients to upstreams.", s.bytes_up);
  api::add_metric(out, "rulesocks_downlink_bytes_total", "counter",
                  "Bytes relayed from upstreams to clients.", s.bytes_down);
  api::add_metric(out, "rulesocks_api_requests_total", "counter", "API request heads received.",
                  s.api_requests);
  api::add_metric(out, "rulesocks_api_successes_total", "counter",
                  "API requests answered with a 2xx status.", s.api_successes);
  api::add_metric(out, "rulesocks_api_unauthorized_total", "counter",
                  "API requests refused 401 or 403 by the access rules.", s.api_unauthorized);
  const UdpStats& u = s.udp;
  api::add_metric(out, "rulesocks_udp_associations", "gauge", "Live SOCKS5 UDP associations.",
                  u.associations);
  api::add_metric(out, "rulesocks_udp_associations_total", "counter",
                  "SOCKS5 UDP associations granted.", u.associated);
  api::add_metric(out, "rulesocks_udp_associations_refused_total", "counter",
                  "SOCKS5 UDP associations refused by --udp-max-associations/--udp-max-per-client.",
                  u.refused);
  api::add_metric(out, "rulesocks_udp_uplink_datagrams_total", "counter",
                  "UDP datagrams relayed from clients to destinations.", u.datagrams_up);
  api::add_metric(out, "rulesocks_udp_downlink_datagrams_total", "counter",
                  "UDP datagrams relayed from destinations to clients.", u.datagrams_down);
  api::add_metric(out, "rulesocks_udp_uplink_bytes_total", "counter",
                  "UDP payload bytes relayed from clients to destinations.", u.bytes_up);
  api::add_metric(out, "rulesocks_udp_downlink_bytes_total", "counter",
                  "UDP payload bytes relayed from destinations to clients.", u.bytes_down);
  add_labelled_counter(out, "rulesocks_udp_dropped_total", "UDP datagrams dropped, by reason.",
                       "reason",
                       {{"foreign", u.dropped_foreign},
                        {"fragment", u.dropped_fragment},
                        {"malformed", u.dropped_malformed},
                        {"rejected", u.dropped_rejected},
                        {"overflow", u.dropped_overflow},
                        {"unsolicited", u.dropped_unsolicited}});
  api::add_metric(out, "rulesocks_dns_queries_total", "counter", "DNS queries started.",
                  server_.resolver().queries());
  api::add_metric(out, "rulesocks_dns_successes_total", "counter", "DNS queries that resolved.",
                  server_.resolver().successes());
  neosocksd_metrics(out);
  labelled_metrics(out);
  return out;
}

namespace {

// A Prometheus label value: backslash, quote and newline escaped.
std::string label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

double process_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// The q-quantile of the sorted samples (nearest rank).
double quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(q * static_cast<double>(sorted.size()));
  return sorted[std::min(rank, sorted.size() - 1)];
}

}  // namespace

void Control::neosocksd_metrics(std::string& out) {
  // neosocksd 2026-07's names, types and meanings, so that its dashboards
  // work here; the values are neosocksd.stats()'s (Control::stats()).
  const ruleset::HostStats h = stats();
  const Stats& s = server_.stats();
  struct Series {
    const char* name;
    const char* type;
    const char* help;
    double value;
  };
  const auto n = [](uint64_t v) { return static_cast<double>(v); };
  const Series series[] = {
      {"sessions_active", "gauge", "Number of active proxy sessions.", n(h.num_sessions)},
      {"sessions_peak", "gauge", "Peak concurrent proxy sessions since start.",
       n(h.num_sessions_peak)},
      {"halfopen_connections", "gauge", "Connections in handshake/ruleset/dial phase.",
       n(h.num_halfopen)},
      {"uptime_seconds", "gauge", "Seconds since server start.", h.uptime},
      {"process_cpu_seconds_total", "counter", "Total CPU time consumed by the process.",
       process_cpu_seconds()},
      {"connections_accepted_total", "counter", "Connections accepted by the listener.",
       n(h.num_accept)},
      {"connections_served_total", "counter", "Connections upgraded to proxy sessions.",
       n(h.num_serve)},
      {"requests_total", "counter", "Total proxy requests processed.", n(h.num_request)},
      {"requests_success_total", "counter", "Proxy requests completed successfully.",
       n(h.num_success)},
      {"rejects_ruleset_total", "counter", "Connections rejected by the ruleset.",
       n(h.num_reject_ruleset)},
      {"rejects_timeout_total", "counter", "Connections timed out before becoming active.",
       n(h.num_reject_timeout)},
      {"rejects_upstream_total", "counter", "Connections failed during upstream dial.",
       n(h.num_reject_upstream)},
      {"dns_queries_total", "counter", "DNS queries issued.", n(h.num_dns_query)},
      {"dns_success_total", "counter", "DNS queries resolved successfully.", n(h.num_dns_success)},
      {"api_requests_total", "counter", "API requests received.", n(h.num_api_request)},
      {"api_requests_success_total", "counter", "API requests completed successfully.",
       n(h.num_api_success)},
      {"uplink_bytes_total", "counter", "Total bytes of proxied payload sent to upstream.",
       n(h.byt_up)},
      {"downlink_bytes_total", "counter", "Total bytes of proxied payload received from upstream.",
       n(h.byt_down)},
  };
  for (const auto& m : series)
    api::add_metric(out, fmt::format("neosocksd_{}", m.name), m.type, m.help, m.value);
  if (s.connects > 0) {
    // Over the last Stats::kLatencySamples successful connects.
    const size_t n = std::min<uint64_t>(s.connects, Stats::kLatencySamples);
    std::vector<double> sorted(s.connect_latency.begin(), s.connect_latency.begin() + n);
    std::sort(sorted.begin(), sorted.end());
    out +=
        "# HELP neosocksd_connect_latency_seconds Connection establishment latency.\n"
        "# TYPE neosocksd_connect_latency_seconds summary\n";
    for (double q : {0.5, 0.9, 0.99})
      out += fmt::format("neosocksd_connect_latency_seconds{{quantile=\"{}\"}} {}\n", q,
                         quantile(sorted, q));
    out += fmt::format("neosocksd_connect_latency_seconds_sum {}\n", s.connect_latency_sum);
    out += fmt::format("neosocksd_connect_latency_seconds_count {}\n", s.connects);
  }
}

void Control::labelled_metrics(std::string& out) {
  const Stats& s = server_.stats();
  if (!s.chains.empty()) {
    // One counter family by chain: HELP, TYPE, then a sample per chain.
    auto by_chain = [&](std::string_view name, std::string_view help, auto value) {
      out += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n", name, help);
      for (const auto& [label, c] : s.chains)
        out += fmt::format("{}{{chain=\"{}\"}} {}\n", name, label_value(label), value(c));
    };
    by_chain("rulesocks_upstream_dials_total",
             "Dials ended, by upstream chain (hops in dial order, credentials masked; "
             "\"direct\" for none).",
             [](const ChainStats& c) { return c.dials; });
    by_chain("rulesocks_upstream_dial_failures_total", "Dials that failed, by upstream chain.",
             [](const ChainStats& c) { return c.failures; });
    out +=
        "# HELP rulesocks_upstream_connect_seconds Time to a connected upstream, successful "
        "dials, by upstream chain.\n"
        "# TYPE rulesocks_upstream_connect_seconds histogram\n";
    for (const auto& [label, c] : s.chains) {
      const std::string l = label_value(label);
      for (size_t i = 0; i < ChainStats::kBuckets.size(); ++i)
        out +=
            fmt::format("rulesocks_upstream_connect_seconds_bucket{{chain=\"{}\",le=\"{}\"}} {}\n",
                        l, ChainStats::kBuckets[i], c.le[i]);
      out +=
          fmt::format("rulesocks_upstream_connect_seconds_bucket{{chain=\"{}\",le=\"+Inf\"}} {}\n",
                      l, c.dials - c.failures);
      out += fmt::format("rulesocks_upstream_connect_seconds_sum{{chain=\"{}\"}} {}\n", l,
                         c.latency_sum);
      out += fmt::format("rulesocks_upstream_connect_seconds_count{{chain=\"{}\"}} {}\n", l,
                         c.dials - c.failures);
    }
  }
  out +=
      "# HELP rulesocks_listener_bytes_total Bytes relayed by tunnels (SOCKS, CONNECT, "
      "forwarding), by listener kind and direction.\n"
      "# TYPE rulesocks_listener_bytes_total counter\n";
  for (size_t i = 0; i < s.listener_bytes.size(); ++i) {
    const char* name = Stats::kListenerNames[i];
    out += fmt::format("rulesocks_listener_bytes_total{{listener=\"{}\",direction=\"up\"}} {}\n",
                       name, s.listener_bytes[i][0]);
    out += fmt::format("rulesocks_listener_bytes_total{{listener=\"{}\",direction=\"down\"}} {}\n",
                       name, s.listener_bytes[i][1]);
  }
}

void Control::count_api_request() {
  ++server_.stats().api_requests;
}

void Control::count_api_success() {
  ++server_.stats().api_successes;
}

void Control::count_api_unauthorized() {
  ++server_.stats().api_unauthorized;
}

ruleset::HostConfig Control::config() {
  const Config& c = server_.config();
  ruleset::HostConfig out;
  out.loglevel = c.loglevel;
  out.timeout = c.timeout;
  out.auth_required = c.auth_required;
  out.traceback = c.traceback;
  out.bidir_timeout = c.bidir_timeout;
  out.pipe = c.pipe;
  out.reuseport = c.reuseport;
  out.max_sessions = c.max_sessions;
  out.memlimit_mib = c.memlimit_mib;
  if (!c.listen.empty()) out.listen = c.listen.front();
  if (!c.http_listen.empty()) out.http = c.http_listen.front();
  out.api = c.api;
  // A --workers worker: its own private API, which knows the connections its
  // proxy makes (a ruleset mapping api.neosocksd.internal there reaches this
  // worker, through the same access rules as a single process's API).
  if (c.worker_fd >= 0)
    if (auto bound = api_address()) out.api = bound->to_string();
  out.proxy = c.proxy;
  out.forward = c.forward;
  out.ruleset = c.ruleset;
  out.version = RULESOCKS_VERSION;
  return out;
}

ruleset::HostStats Control::stats() {
  const Stats& s = server_.stats();
  ruleset::HostStats out;
  out.num_halfopen = s.halfopen;
  out.num_sessions = s.sessions;
  out.num_sessions_peak = s.sessions_peak;
  out.num_accept = s.accepted;
  out.num_serve = s.accepted - s.refused;
  out.num_request = s.requests;
  out.num_success = s.success;
  out.num_reject_ruleset = s.rejected;
  out.num_reject_timeout = s.timed_out;
  out.num_reject_upstream = s.dial_failed;
  out.num_reject_bad = s.bad_requests;
  out.byt_up = s.bytes_up;
  out.byt_down = s.bytes_down;
  out.num_api_request = s.api_requests;
  out.num_api_success = s.api_successes;
  out.num_api_unauthorized = s.api_unauthorized;
  out.num_dns_query = server_.resolver().queries();
  out.num_dns_success = server_.resolver().successes();
  out.uptime = ev_now(server_.loop()) - server_.start_time();
  return out;
}

std::unique_ptr<Cancellable> Control::invoke(std::string code, proto::Address addr,
                                             std::vector<proto::ProxyUri> chain, bool tls,
                                             std::function<void(bool, std::string)> cb) {
  // The -x chain (parsed at start-up) is the way out of this node, so it comes first.
  std::vector<proto::ProxyUri> hops = server_.proxy_chain();
  hops.insert(hops.end(), std::make_move_iterator(chain.begin()),
              std::make_move_iterator(chain.end()));
  // The node's own RPC calls are not proxied clients: not recorded as such.
  net::DialOptions opts = server_.dial_options();
  opts.self = nullptr;
  opts.tls_target = tls;
  auto it = peer_keys_.find(addr.to_string());
  std::string key = it != peer_keys_.end() ? it->second : server_.config().api_key;
  return api::rpc_call(server_.loop(), &server_.resolver(), opts, std::move(code), std::move(addr),
                       std::move(hops), std::move(cb), std::move(key));
}

std::unique_ptr<Cancellable> Control::connect(const ruleset::Decision& d,
                                              ruleset::Forwarder::DialCallback cb) {
  // `asked` = the target itself: not a rewrite, so the API stays out of reach.
  return std::make_unique<ForwardDial>(server_, d.target, d, std::move(cb), false);
}

void Control::set_api_key(const proto::Address& addr, std::optional<std::string> key) {
  if (key) {
    peer_keys_[addr.to_string()] = std::move(*key);
  } else {
    peer_keys_.erase(addr.to_string());
  }
}

}  // namespace rs::server
