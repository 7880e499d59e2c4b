// The self-contained Lua libraries of the ruleset, compatible with neosocksd:
//   regex   regex.compile(pattern [, flags]) -> object with :find, :match, :gmatch
//   time    time.monotonic/process/thread/wall() and time.measure(f, ...)
//   zlib    zlib.compress/uncompress (RFC 1950) and zlib.gzip/gunzip (RFC 1952)
//   marshal marshal(...) -> the arguments as Lua source, read back by load("return " .. s)
#pragma once

#include <lua.hpp>

namespace rs::ruleset {

// Each pushes its library table (for marshal: the function itself) and returns 1, in the manner
// of luaL_requiref.
int luaopen_rs_regex(lua_State* L);
int luaopen_rs_time(lua_State* L);
int luaopen_rs_zlib(lua_State* L);
int luaopen_rs_marshal(lua_State* L);

// Opens all of the above as the globals regex, time, zlib and marshal (also recorded in
// package.loaded). Raises a Lua error only when out of memory.
void open_libs(lua_State* L);

// The regex engine compiled in: "pcre2" or "posix".
const char* regex_backend();

}  // namespace rs::ruleset
