#include "ruleset/lib/libs.hpp"

namespace rs::ruleset {

void open_libs(lua_State* L) {
  static constexpr luaL_Reg kLibs[] = {
      {"regex", luaopen_rs_regex},
      {"time", luaopen_rs_time},
      {"zlib", luaopen_rs_zlib},
      {"marshal", luaopen_rs_marshal},
  };
  for (const luaL_Reg& lib : kLibs) {
    luaL_requiref(L, lib.name, lib.func, 1);
    lua_pop(L, 1);
  }
}

}  // namespace rs::ruleset
