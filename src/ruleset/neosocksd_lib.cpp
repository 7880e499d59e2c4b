// The neosocksd.* table, and print() routed to the server's log.
#include <arpa/inet.h>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "core/log.hpp"
#include "net/resolver.hpp"
#include "proto/address.hpp"
#include "ruleset/lib/lua_util.hpp"
#include "ruleset/runtime.hpp"

namespace rs::ruleset::detail {

namespace {

// Table builders: Lua calls on plain data only, run under lua_pcall (a refused
// allocation unwinds no C++ frame). Argument 1: the host's data, or nil.
void set_string(lua_State* L, const char* key, const std::string& value) {
  if (value.empty()) return;  // unset stays nil, as in neosocksd
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

int config_table(lua_State* L) {
  const auto* c = static_cast<const HostConfig*>(lua_touserdata(L, 1));
  lua_createtable(L, 0, 18);
  if (c == nullptr) return 1;
  set_integer(L, "loglevel", static_cast<uint64_t>(c->loglevel));
  set_number(L, "timeout", c->timeout);
  set_boolean(L, "auth_required", c->auth_required);
  set_boolean(L, "traceback", c->traceback);
  set_boolean(L, "bidir_timeout", c->bidir_timeout);
  set_boolean(L, "pipe", c->pipe);
  set_boolean(L, "reuseport", c->reuseport);
  set_integer(L, "max_sessions", c->max_sessions);
  set_integer(L, "memlimit", c->memlimit_mib);
  set_string(L, "listen", c->listen);
  set_string(L, "http", c->http);
  // neosocksd's name for --api is "restapi"; the scripts in lua/ read "api".
  set_string(L, "restapi", c->api);
  set_string(L, "api", c->api);
  set_string(L, "proxy", c->proxy);
  set_string(L, "forward", c->forward);
  set_string(L, "ruleset", c->ruleset);
  set_string(L, "version", c->version);
  return 1;
}

// The host's counters plus the VM's own.
int stats_table(lua_State* L) {
  const auto* s = static_cast<const HostStats*>(lua_touserdata(L, 1));
  Runtime& rt = Runtime::of(L);
  lua_createtable(L, 0, 24);
  if (s != nullptr) {
    set_integer(L, "num_halfopen", s->num_halfopen);
    set_integer(L, "num_sessions", s->num_sessions);
    set_integer(L, "num_sessions_peak", s->num_sessions_peak);
    set_integer(L, "num_accept", s->num_accept);
    set_integer(L, "num_serve", s->num_serve);
    set_integer(L, "num_request", s->num_request);
    set_integer(L, "num_success", s->num_success);
    set_integer(L, "num_reject_ruleset", s->num_reject_ruleset);
    set_integer(L, "num_reject_timeout", s->num_reject_timeout);
    set_integer(L, "num_reject_upstream", s->num_reject_upstream);
    set_integer(L, "num_reject_bad", s->num_reject_bad);
    set_integer(L, "byt_up", s->byt_up);
    set_integer(L, "byt_down", s->byt_down);
    set_integer(L, "num_api_request", s->num_api_request);
    set_integer(L, "num_api_success", s->num_api_success);
    set_integer(L, "num_api_unauthorized", s->num_api_unauthorized);
    set_integer(L, "num_dns_query", s->num_dns_query);
    set_integer(L, "num_dns_success", s->num_dns_success);
    set_number(L, "uptime", s->uptime);
  }
  set_integer(L, "bytes_allocated", rt.memory_bytes());
  set_integer(L, "num_object", rt.memory_objects());
  set_string(L, "lasterror", rt.last_error());
  return 1;
}

// Gets the host's data (C++, may throw), builds the table from it in a
// protected call, and raises what went wrong only after the data is gone.
template <class T, T (Host::*Get)(), lua_CFunction Build>
int host_table(lua_State* L) {
  lua_settop(L, 0);
  Host* host = Runtime::of(L).host();
  char err[256];
  bool got = true;
  int status = LUA_OK;
  {
    T data{};
    if (host != nullptr) got = try_cpp(err, [&] { data = (host->*Get)(); });
    if (got) {
      // Neither push allocates; a C function has LUA_MINSTACK free slots.
      lua_pushcfunction(L, Build);
      if (host != nullptr) {
        lua_pushlightuserdata(L, &data);
      } else {
        lua_pushnil(L);
      }
      status = lua_pcall(L, 1, 1, 0);
    }
  }
  if (!got) return luaL_error(L, "%s", err);
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

// neosocksd.config()
int config_impl(lua_State* L) {
  return host_table<HostConfig, &Host::config, config_table>(L);
}

// neosocksd.stats()
int stats_impl(lua_State* L) {
  return host_table<HostStats, &Host::stats, stats_table>(L);
}

// neosocksd.splithostport(s) -> host, port; raises on failure.
int splithostport_impl(lua_State* L) {
  size_t len = 0;
  const char* s = luaL_checklstring(L, 1, &len);
  const auto hp = proto::split_host_port(std::string_view(s, len));
  if (!hp) return luaL_error(L, "invalid address: `%s'", s);
  lua_pushlstring(L, hp->host.data(), hp->host.size());
  lua_pushlstring(L, hp->port.data(), hp->port.size());
  return 2;
}

// neosocksd.parse_ipv4(s) -> integer (network order read as a number) or nil.
int parse_ipv4_impl(lua_State* L) {
  const char* s = lua_tostring(L, 1);
  in_addr in{};
  if (s == nullptr || inet_pton(AF_INET, s, &in) != 1) return 0;
  lua_pushinteger(L, static_cast<lua_Integer>(ntohl(in.s_addr)));
  return 1;
}

// neosocksd.parse_ipv6(s) -> high, low 64-bit integers or nil.
int parse_ipv6_impl(lua_State* L) {
  const char* s = lua_tostring(L, 1);
  in6_addr in6{};
  if (s == nullptr || inet_pton(AF_INET6, s, &in6) != 1) return 0;
  for (int half = 0; half < 2; ++half) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | in6.s6_addr[half * 8 + i];
    lua_pushinteger(L, static_cast<lua_Integer>(v));
  }
  return 2;
}

// neosocksd.setinterval(seconds): ruleset.tick(now) every interval; 0 stops.
int setinterval_impl(lua_State* L) {
  const lua_Number n = luaL_checknumber(L, 1);
  luaL_argcheck(L, n == 0 || (n >= 1e-3 && n <= 1e9), 1, "interval must be 0 or in [1e-3, 1e9]");
  Runtime::of(L).set_interval(n);
  return 0;
}

// neosocksd.invoke(code, addr, proxyN, ..., proxy1): fire and forget.
int invoke_impl(lua_State* L) {
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  const int n = lua_gettop(L);
  for (int i = 3; i <= n; ++i) luaL_checkstring(L, i);
  char err[256];
  // Every C++ object lives in the lambda: gone before the error is raised.
  if (!try_cpp(err, [L, n] {
        size_t len = 0;
        const char* code = lua_tolstring(L, 1, &len);
        Runtime::of(L).invoke_detached(std::string(code, len),
                                       parse_rpc_target(L, 2, n, "neosocksd.invoke"));
      })) {
    return luaL_error(L, "%s", err);
  }
  return 0;
}

// neosocksd.setapikey(addr, key): the API key RPC calls to `addr` send
// (await.invoke, neosocksd.invoke and what libruleset builds on them); ""
// sends none, nil goes back to the node's own --api-key.
int setapikey_impl(lua_State* L) {
  luaL_checkstring(L, 1);
  if (!lua_isnil(L, 2)) luaL_checkstring(L, 2);
  lua_settop(L, 2);
  char err[256];
  // Every C++ object lives in the lambda: gone before the error is raised.
  if (!try_cpp(err, [L] {
        size_t alen = 0;
        const char* a = lua_tolstring(L, 1, &alen);
        auto addr = proto::parse_address(std::string_view(a, alen));
        if (!addr)
          throw std::runtime_error("neosocksd.setapikey: bad address (expected HOST:PORT)");
        std::optional<std::string> key;
        if (!lua_isnil(L, 2)) {
          size_t klen = 0;
          const char* k = lua_tolstring(L, 2, &klen);
          key.emplace(k, klen);
          for (char c : *key)
            if (c < 0x21 || c > 0x7e)
              throw std::runtime_error(
                  "neosocksd.setapikey: the key may hold visible ASCII characters only");
        }
        Host* host = Runtime::of(L).host();
        if (host == nullptr) throw std::runtime_error("neosocksd.setapikey: RPC is not available");
        host->set_api_key(*addr, std::move(key));
      })) {
    return luaL_error(L, "%s", err);
  }
  return 0;
}

// neosocksd.now(): the time of the event being handled.
int now_impl(lua_State* L) {
  lua_pushnumber(L, ev_now(Runtime::of(L).loop()));
  return 1;
}

// print(...): one log line, fields separated by tabs.
int print_impl(lua_State* L) {
  const int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; ++i) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, nullptr);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len = 0;
  const char* s = lua_tolstring(L, -1, &len);
  char err[256];
  try_cpp(err, [s, len] { log::notice("{}", std::string_view(s, len)); });
  return 0;
}

}  // namespace

// neosocksd.resolve(host) -> address or nil, error. Blocks the whole server.
int api_resolve(lua_State* L) {
  const char* host = luaL_checkstring(L, 1);
  const net::Family family = Runtime::of(L).options().resolve_family;
  char addr[64] = {};
  char err[256] = {};
  const bool ok = try_cpp(err, [&] {
    std::string error;
    const auto addrs = net::resolve_blocking(host, 0, family, error);
    if (addrs.empty()) {
      std::snprintf(err, sizeof err, "%s", error.c_str());
      return;
    }
    std::snprintf(addr, sizeof addr, "%s", addrs.front().to_address().host_string().c_str());
  });
  if (!ok) return luaL_error(L, "%s", err);
  if (addr[0] == '\0') {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushstring(L, addr);
  return 1;
}

// neosocksd.traceback(msg): a message handler that appends (and logs) a traceback.
int api_traceback(lua_State* L) {
  const char* msg = nullptr;
  switch (lua_type(L, 1)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
      msg = lua_tostring(L, 1);
      break;
    case LUA_TNIL:
      msg = "(nil)";
      break;
    default:
      msg = lua_pushfstring(L, "(%s: %p)", luaL_typename(L, 1), lua_topointer(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  if (log::enabled(log::kDebug)) {
    size_t len = 0;
    const char* s = lua_tolstring(L, -1, &len);
    char err[256];
    try_cpp(err, [s, len] { log::debug("ruleset: {}", std::string_view(s, len)); });
  }
  return 1;
}

void open_neosocksd(lua_State* L) {
  const luaL_Reg funcs[] = {
      {"async", api_async},
      {"config", guarded<config_impl>},
      {"invoke", guarded<invoke_impl>},
      {"now", now_impl},
      {"parse_ipv4", parse_ipv4_impl},
      {"parse_ipv6", parse_ipv6_impl},
      {"resolve", guarded<api_resolve>},
      {"setapikey", guarded<setapikey_impl>},
      {"setinterval", setinterval_impl},
      {"splithostport", splithostport_impl},
      {"stats", guarded<stats_impl>},
      {"traceback", api_traceback},
      {nullptr, nullptr},
  };
  luaL_newlib(L, funcs);
  lua_setglobal(L, "neosocksd");
  lua_pushcfunction(L, print_impl);
  lua_setglobal(L, "print");
}

}  // namespace rs::ruleset::detail
