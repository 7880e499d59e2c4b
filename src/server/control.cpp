#include "server/control.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <iterator>
#include <stdexcept>
#include <utility>

#include "api/endpoints.hpp"
#include "api/rpc_client.hpp"
#include "core/log.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace rs::server {
Control::Control(Server& server, const std::optional<net::SockAddr>& api_listen) : server_(server) {
  const Config& cfg = server.config();
  last_.time = server.start_time();
  if (!cfg.ruleset.empty()) {
    ruleset::EngineOptions opts;
    opts.memlimit_bytes = cfg.memlimit_mib << 20;
    opts.traceback = cfg.traceback;
    // Modules next to the ruleset come first (load_file adds that), then the
    // installed library, then the source tree's (running from a build dir).
    opts.lua_path_dirs = {RULESOCKS_LUA_DIR, RULESOCKS_SOURCE_LUA_DIR};
    opts.resolve_family = resolve_family(cfg);
    engine_ = std::make_unique<ruleset::Engine>(server.loop(), &server.resolver(), this, opts);
    std::string err;
    if (!engine_->load_file(cfg.ruleset, &err))
      throw std::runtime_error("ruleset " + cfg.ruleset + ": " + err);
    log::notice("ruleset loaded from {}", cfg.ruleset);
    std::error_code ec;
    auto abs = std::filesystem::absolute(cfg.ruleset, ec);
    ruleset_path_ = ec ? cfg.ruleset : abs.string();
  }
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
    log::warning("SIGHUP ignored: no ruleset file (-r) to reload");
    return;
  }
  const std::string& path = ruleset_path_;
  std::string err;
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
  out +=
      "# HELP rulesocks_request_outcomes_total Proxy requests ended, by outcome.\n"
      "# TYPE rulesocks_request_outcomes_total counter\n";
  const std::pair<const char*, uint64_t> outcomes[] = {{"success", s.success},
                                                       {"rejected", s.rejected},
                                                       {"dial_failed", s.dial_failed},
                                                       {"timed_out", s.timed_out},
                                                       {"bad", s.bad_requests}};
  for (const auto& [outcome, n] : outcomes)
    out += fmt::format("rulesocks_request_outcomes_total{{outcome=\"{}\"}} {}\n", outcome, n);
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
  api::add_metric(out, "rulesocks_dns_queries_total", "counter", "DNS queries started.",
                  server_.resolver().queries());
  api::add_metric(out, "rulesocks_dns_successes_total", "counter", "DNS queries that resolved.",
                  server_.resolver().successes());
  return out;
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

void Control::set_api_key(const proto::Address& addr, std::optional<std::string> key) {
  if (key) {
    peer_keys_[addr.to_string()] = std::move(*key);
  } else {
    peer_keys_.erase(addr.to_string());
  }
}

}  // namespace rs::server
