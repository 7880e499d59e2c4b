// The neosocksd.* table, and print() routed to the server's log.
#include <arpa/inet.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "core/log.hpp"
#include "net/resolver.hpp"
#include "proto/address.hpp"
#include "ruleset/lib/lua_util.hpp"
#include "ruleset/runtime.hpp"

namespace rs::ruleset::detail {

namespace {

// Pushes one table from the host, or an empty one.
template <void (Host::*Push)(lua_State*)>
int push_host_table(lua_State* L) {
  lua_settop(L, 0);
  if (Host* host = Runtime::of(L).host()) (host->*Push)(L);
  if (lua_gettop(L) != 1 || !lua_istable(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  return 1;
}

// neosocksd.config()
int config_impl(lua_State* L) {
  return push_host_table<&Host::push_config>(L);
}

// neosocksd.stats(): the host's counters plus the VM's own.
int stats_impl(lua_State* L) {
  push_host_table<&Host::push_stats>(L);
  Runtime& rt = Runtime::of(L);
  lua_pushinteger(L, static_cast<lua_Integer>(rt.memory_bytes()));
  lua_setfield(L, 1, "bytes_allocated");
  const std::string& err = rt.last_error();
  if (!err.empty()) {
    lua_pushlstring(L, err.data(), err.size());
    lua_setfield(L, 1, "lasterror");
  }
  return 1;
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
