// regex.compile(pattern [, flags]) -> a compiled regex with :find, :match and :gmatch.
// flags is a string of "i" (ignore case) and "m" (multi-line); see regex_engine.hpp.
#include "ruleset/lib/libs.hpp"
#include "ruleset/lib/lua_util.hpp"
#include "ruleset/lib/regex_engine.hpp"

namespace rs::ruleset {
namespace {

namespace engine = regex_engine;

constexpr char kRegexMeta[] = "rs.regex";

// The userdata: a pointer, so that it stays trivially destructible whatever the engine holds.
struct Regex {
  engine::Pattern* pattern;
};

engine::Pattern* check_regex(lua_State* L) {
  return static_cast<Regex*>(luaL_checkudata(L, 1, kRegexMeta))->pattern;
}

// Turns a string.find-style init (1-based; negative counts from the end) into a byte offset.
// Returns false when init lies beyond the end of the string plus one, where nothing can match.
bool start_offset(lua_Integer init, size_t len, size_t* start) {
  if (init > 0) {
    if (static_cast<lua_Unsigned>(init) - 1 > len) return false;
    *start = static_cast<size_t>(init) - 1;
  } else if (init == 0 || static_cast<lua_Unsigned>(0) - static_cast<lua_Unsigned>(init) > len) {
    *start = 0;
  } else {
    *start = len - (static_cast<lua_Unsigned>(0) - static_cast<lua_Unsigned>(init));
  }
  return true;
}

bool search(lua_State* L, engine::Pattern* p, const char* s, size_t len, size_t start) {
  engine::Error err;
  const int rc = engine::search(p, s, len, start, &err);
  if (rc < 0) luaL_error(L, "regex: %s", err.text);
  return rc > 0;
}

// Pushes the whole match followed by every capture (nil for those that did not participate).
int push_captures(lua_State* L, const engine::Pattern* p, const char* s) {
  const size_t n = engine::groups(p) + 1;
  luaL_checkstack(L, static_cast<int>(n), "too many captures");
  for (size_t i = 0; i < n; ++i) {
    size_t begin = 0, end = 0;
    if (engine::span(p, i, &begin, &end)) {
      lua_pushlstring(L, s + begin, end - begin);
    } else {
      lua_pushnil(L);
    }
  }
  return static_cast<int>(n);
}

int compile(lua_State* L) {
  size_t len = 0;
  const char* pattern = luaL_checklstring(L, 1, &len);
  unsigned flags = 0;
  for (const char* f = luaL_optstring(L, 2, ""); *f != '\0'; ++f) {
    switch (*f) {
      case 'i':
        flags |= engine::kIgnoreCase;
        break;
      case 'm':
        flags |= engine::kMultiline;
        break;
      default:
        return luaL_argerror(L, 2, "unknown flag (expected \"i\" or \"m\")");
    }
  }
  // The userdata comes first, so an allocation failure cannot strand a compiled pattern.
  auto* re = static_cast<Regex*>(lua_newuserdatauv(L, sizeof(Regex), 0));
  re->pattern = nullptr;
  luaL_setmetatable(L, kRegexMeta);
  engine::Error err;
  re->pattern = engine::compile(pattern, len, flags, &err);
  if (re->pattern == nullptr) return luaL_error(L, "regex.compile: %s", err.text);
  return 1;
}

// re:find(s [, init]) -> start, end (1-based, inclusive) | nil
int find(lua_State* L) {
  engine::Pattern* p = check_regex(L);
  size_t len = 0;
  const char* s = luaL_checklstring(L, 2, &len);
  size_t start = 0;
  if (!start_offset(luaL_optinteger(L, 3, 1), len, &start) || !search(L, p, s, len, start)) {
    luaL_pushfail(L);
    return 1;
  }
  size_t begin = 0, end = 0;
  engine::span(p, 0, &begin, &end);
  lua_pushinteger(L, static_cast<lua_Integer>(begin) + 1);
  lua_pushinteger(L, static_cast<lua_Integer>(end));
  return 2;
}

// re:match(s [, init]) -> match, captures... | nil
int match(lua_State* L) {
  engine::Pattern* p = check_regex(L);
  size_t len = 0;
  const char* s = luaL_checklstring(L, 2, &len);
  size_t start = 0;
  if (!start_offset(luaL_optinteger(L, 3, 1), len, &start) || !search(L, p, s, len, start)) {
    luaL_pushfail(L);
    return 1;
  }
  return push_captures(L, p, s);
}

// The gmatch iterator. Upvalues: the regex, the subject, the next search offset and the end of
// the previous match (-1 before the first).
int gmatch_next(lua_State* L) {
  engine::Pattern* p = static_cast<Regex*>(lua_touserdata(L, lua_upvalueindex(1)))->pattern;
  size_t len = 0;
  const char* s = lua_tolstring(L, lua_upvalueindex(2), &len);
  auto pos = static_cast<size_t>(lua_tointeger(L, lua_upvalueindex(3)));
  const lua_Integer last = lua_tointeger(L, lua_upvalueindex(4));
  for (; pos <= len && search(L, p, s, len, pos); ++pos) {
    size_t begin = 0, end = 0;
    engine::span(p, 0, &begin, &end);
    // An empty match where the previous match ended is skipped, as string.gmatch does; otherwise
    // "a*" on "aab" would yield "aa" and then "" at the same spot.
    if (begin == end && static_cast<lua_Integer>(end) == last) {
      pos = begin;
      continue;
    }
    lua_pushinteger(L, static_cast<lua_Integer>(end));
    lua_copy(L, -1, lua_upvalueindex(3));
    lua_replace(L, lua_upvalueindex(4));
    return push_captures(L, p, s);
  }
  lua_pushinteger(L, static_cast<lua_Integer>(len) + 1);
  lua_replace(L, lua_upvalueindex(3));
  return 0;
}

// re:gmatch(s [, init]) -> iterator over match, captures...
int gmatch(lua_State* L) {
  check_regex(L);
  size_t len = 0;
  luaL_checklstring(L, 2, &len);
  size_t start = 0;
  if (!start_offset(luaL_optinteger(L, 3, 1), len, &start)) start = len + 1;
  lua_settop(L, 2);
  lua_pushinteger(L, static_cast<lua_Integer>(start));
  lua_pushinteger(L, -1);
  lua_pushcclosure(L, guarded<gmatch_next>, 4);
  return 1;
}

int gc(lua_State* L) {
  auto* re = static_cast<Regex*>(luaL_checkudata(L, 1, kRegexMeta));
  engine::destroy(re->pattern);
  re->pattern = nullptr;
  return 0;
}

int tostring(lua_State* L) {
  lua_pushfstring(L, "regex (%p)", lua_topointer(L, 1));
  return 1;
}

}  // namespace

const char* regex_backend() {
  return engine::name();
}

int luaopen_rs_regex(lua_State* L) {
  static constexpr luaL_Reg kMethods[] = {
      {"find", guarded<find>},
      {"match", guarded<match>},
      {"gmatch", guarded<gmatch>},
      {nullptr, nullptr},
  };
  static constexpr luaL_Reg kMeta[] = {
      {"__gc", gc},
      {"__tostring", tostring},
      {"__index", nullptr},
      {nullptr, nullptr},
  };
  static constexpr luaL_Reg kFuncs[] = {
      {"compile", guarded<compile>},
      {nullptr, nullptr},
  };
  if (luaL_newmetatable(L, kRegexMeta)) {
    luaL_setfuncs(L, kMeta, 0);
    luaL_newlib(L, kMethods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_newlib(L, kFuncs);
  return 1;
}

}  // namespace rs::ruleset
