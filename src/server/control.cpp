#include "server/control.hpp"

#include <fmt/format.h>

#include <iterator>
#include <lua.hpp>
#include <stdexcept>

#include "api/endpoints.hpp"
#include "api/rpc_client.hpp"
#include "core/log.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace rs::server {
namespace {

// The push_* helpers run inside a lua_CFunction: only Lua calls and plain
// values here, nothing with a destructor.
// An unset option stays nil, as in neosocksd (an empty string would be true).
void set_string(lua_State* L, const char* key, const std::string& value) {
  if (value.empty()) return;
  lua_pushlstring(L, value.data(), value.size());
  lua_setfield(L, -2, key);
}
void set_integer(lua_State* L, const char* key, uint64_t value) {
  lua_pushinteger(L, static_cast<lua_Integer>(value));
  lua_setfield(L, -2, key);
}
void set_number(lua_State* L, const char* key, double value) {
  lua_pushnumber(L, value);
  lua_setfield(L, -2, key);
}
void set_boolean(lua_State* L, const char* key, bool value) {
  lua_pushboolean(L, value);
  lua_setfield(L, -2, key);
}

}  // namespace

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
  }
  if (api_listen) {
    api::ApiOptions opts;
    opts.started = server.start_time();
    // As in neosocksd, -t bounds API requests (head and body) and idle or
    // stalled API connections as well as proxy handshakes.
    opts.timeout = cfg.timeout;
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

std::string Control::server_stats(bool incremental) {
  const Stats& s = server_.stats();
  std::string out;
  api::add_line(out, "Sessions",
                fmt::format("{} ({} half-open, peak {})", s.sessions, s.halfopen, s.sessions_peak));
  api::add_line(out, "Accepted", fmt::format("{} ({} refused by limits)", s.accepted, s.refused));
  api::add_line(out, "Requests",
                fmt::format("{} ({} success, {} rejected, {} dial failed, {} bad)", s.requests,
                            s.success, s.rejected, s.dial_failed, s.bad_requests));
  api::add_line(out, "Traffic",
                fmt::format("up {}, down {}", api::format_bytes(static_cast<double>(s.bytes_up)),
                            api::format_bytes(static_cast<double>(s.bytes_down))));
  api::add_line(out, "API requests", std::to_string(s.api_requests));
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

void Control::count_api_request() {
  ++server_.stats().api_requests;
}

void Control::push_config(lua_State* L) {
  const Config& c = server_.config();
  lua_createtable(L, 0, 16);
  set_integer(L, "loglevel", static_cast<uint64_t>(c.loglevel));
  set_number(L, "timeout", c.timeout);
  set_boolean(L, "auth_required", c.auth_required);
  set_boolean(L, "traceback", c.traceback);
  set_boolean(L, "bidir_timeout", c.bidir_timeout);
  set_boolean(L, "pipe", c.pipe);
  set_boolean(L, "reuseport", c.reuseport);
  set_integer(L, "max_sessions", c.max_sessions);
  set_integer(L, "memlimit", c.memlimit_mib);
  set_string(L, "listen", c.listen.empty() ? std::string() : c.listen.front());
  set_string(L, "http", c.http_listen.empty() ? std::string() : c.http_listen.front());
  // neosocksd's name for --api is "restapi"; the scripts in lua/ read "api".
  set_string(L, "restapi", c.api);
  set_string(L, "api", c.api);
  set_string(L, "proxy", c.proxy);
  set_string(L, "forward", c.forward);
  set_string(L, "ruleset", c.ruleset);
  set_string(L, "version", RULESOCKS_VERSION);
}

void Control::push_stats(lua_State* L) {
  const Stats& s = server_.stats();
  lua_createtable(L, 0, 16);
  set_integer(L, "num_halfopen", s.halfopen);
  set_integer(L, "num_sessions", s.sessions);
  set_integer(L, "num_sessions_peak", s.sessions_peak);
  set_integer(L, "num_accept", s.accepted);
  set_integer(L, "num_serve", s.accepted - s.refused);
  set_integer(L, "num_request", s.requests);
  set_integer(L, "num_success", s.success);
  set_integer(L, "num_reject_ruleset", s.rejected);
  set_integer(L, "num_reject_upstream", s.dial_failed);
  set_integer(L, "num_reject_bad", s.bad_requests);
  set_integer(L, "byt_up", s.bytes_up);
  set_integer(L, "byt_down", s.bytes_down);
  set_integer(L, "num_api_request", s.api_requests);
  set_integer(L, "num_dns_query", server_.resolver().queries());
  set_number(L, "uptime", ev_now(server_.loop()) - server_.start_time());
  if (engine_) set_integer(L, "bytes_allocated", engine_->memory_bytes());
}

std::unique_ptr<Cancellable> Control::invoke(std::string code, proto::Address addr,
                                             std::vector<proto::ProxyUri> chain,
                                             std::function<void(bool, std::string)> cb) {
  // The -x chain (parsed at start-up) is the way out of this node, so it comes first.
  std::vector<proto::ProxyUri> hops = server_.proxy_chain();
  hops.insert(hops.end(), std::make_move_iterator(chain.begin()),
              std::make_move_iterator(chain.end()));
  return api::rpc_call(server_.loop(), &server_.resolver(), server_.dial_options(), std::move(code),
                       std::move(addr), std::move(hops), std::move(cb));
}

}  // namespace rs::server
