// time.*: clock_gettime() for rulesets, in float seconds.
#include <time.h>

#include <cerrno>
#include <cstring>

#include "ruleset/lib/libs.hpp"
#include "ruleset/lib/lua_util.hpp"

namespace rs::ruleset {
namespace {

// Returns a negative value (never a valid reading of these clocks) on failure.
double read_clock(clockid_t id) {
  timespec ts{};
  if (clock_gettime(id, &ts) != 0) return -1.0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

template <clockid_t Id>
int clock_now(lua_State* L) {
  const double t = read_clock(Id);
  if (t < 0) return luaL_error(L, "clock_gettime: %s", std::strerror(errno));
  lua_pushnumber(L, t);
  return 1;
}

// time.measure(f, ...) -> seconds, f(...): errors raised by f propagate unchanged.
int measure(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  const int nargs = lua_gettop(L) - 1;
  const double t0 = read_clock(CLOCK_MONOTONIC);
  lua_call(L, nargs, LUA_MULTRET);
  const double t1 = read_clock(CLOCK_MONOTONIC);
  luaL_checkstack(L, 1, "too many results");
  lua_pushnumber(L, t1 - t0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

}  // namespace

int luaopen_rs_time(lua_State* L) {
  static constexpr luaL_Reg kFuncs[] = {
      {"monotonic", guarded<clock_now<CLOCK_MONOTONIC>>},
      {"process", guarded<clock_now<CLOCK_PROCESS_CPUTIME_ID>>},
      {"thread", guarded<clock_now<CLOCK_THREAD_CPUTIME_ID>>},
      {"wall", guarded<clock_now<CLOCK_REALTIME>>},
      {"unix", guarded<clock_now<CLOCK_REALTIME>>},  // neosocksd's name for the wall clock
      {"measure", guarded<measure>},
      {nullptr, nullptr},
  };
  luaL_newlib(L, kFuncs);
  return 1;
}

}  // namespace rs::ruleset
