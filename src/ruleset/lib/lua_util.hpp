// Small helpers for C++ code called from Lua through the C API.
//
// Lua is built as C, so every error it raises is a longjmp: destructors of C++ objects in the
// frames it skips never run, and a C++ exception must never unwind through Lua's own frames.
// The rules that follow from this: no object with a non-trivial destructor is alive in a frame
// while it calls something that may raise, and C++ exceptions stop at the lua_CFunction border.
#pragma once

#include <cstdio>
#include <exception>
#include <lua.hpp>
#include <new>
#include <type_traits>

namespace rs::ruleset {

// Wraps a lua_CFunction so that a C++ exception becomes a Lua error. The message is copied out
// of the exception first: the longjmp must happen after the handler has finished, when no
// exception object is alive any more. Only std::exception is caught, because a Lua built as
// C++ throws its own errors as exceptions and those must pass through untouched.
template <lua_CFunction F>
int guarded(lua_State* L) {
  char msg[256];
  try {
    return F(L);
  } catch (const std::bad_alloc&) {
    std::snprintf(msg, sizeof msg, "out of memory");
  } catch (const std::exception& e) {
    std::snprintf(msg, sizeof msg, "%s", e.what());
  }
  return luaL_error(L, "%s", msg);
}

// Pushes a full userdata holding a default-constructed T whose __gc runs ~T. A C++ object kept
// this way is released by the collector even when an error unwinds past the frame that made it.
// `tname` names the metatable in the registry and must be unique per T.
template <class T>
T* push_boxed(lua_State* L, const char* tname) {
  static_assert(std::is_nothrow_default_constructible_v<T>);
  void* mem = lua_newuserdatauv(L, sizeof(T), 0);
  if (luaL_newmetatable(L, tname)) {
    lua_pushcfunction(L, [](lua_State* L) {
      static_cast<T*>(lua_touserdata(L, 1))->~T();
      return 0;
    });
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  // Constructed last: nothing after this point can raise, so ~T always pairs with T().
  return new (mem) T();
}

}  // namespace rs::ruleset
