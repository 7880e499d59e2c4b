// The VM itself: creation, limits, the resume queue, diagnostics. Routines and
// jobs are in routine.cpp.
#include "ruleset/runtime.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "core/log.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"
#include "proto/text.hpp"
#include "ruleset/lib/libs.hpp"

namespace rs::ruleset::detail {

namespace {

// (dir): puts dir/?.lua and dir/?/init.lua in front of package.path, once.
int prepend_package_path(lua_State* L) {
  const char* dir = luaL_checkstring(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "package") != LUA_TTABLE) return 0;
  lua_getfield(L, -1, "path");
  const char* old = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
  const char* entry = lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
  if (std::strstr(old, entry) != nullptr) return 0;
  lua_pushstring(L, old);
  lua_concat(L, 2);
  lua_setfield(L, -3, "path");
  return 0;
}

}  // namespace

Runtime::Runtime(ev::Loop* loop, net::Resolver* resolver, Host* host, const EngineOptions& opts)
    : loop_(loop),
      resolver_(resolver),
      host_(host),
      opts_(opts),
      tick_timer_(loop),
      deferred_(loop) {
  budget_.limit = opts_.memlimit_bytes;
  instr_limit_ = opts_.instruction_limit;
  if (instr_limit_ > 0) {
    // A hook call every thousand instructions costs well under a percent.
    hook_step_ = static_cast<int>(std::min<uint64_t>(instr_limit_, 1000));
    instr_grace_ = std::max<uint64_t>(instr_limit_ / 10, 2 * uint64_t(hook_step_));
  }
  pool_.reserve(kPoolMax);  // so that returning a thread never allocates
  L_ = lua_newstate(&MemoryBudget::alloc, &budget_);
  if (L_ == nullptr) throw std::bad_alloc();
  *static_cast<Runtime**>(lua_getextraspace(L_)) = this;
  lua_atpanic(L_, panic);
  lua_setwarnf(L_, warn, this);
  lua_pushcfunction(L_, open_all);
  if (lua_pcall(L_, 0, 0, 0) != LUA_OK) {
    std::string msg = describe(L_, -1);
    lua_close(L_);
    L_ = nullptr;
    throw std::runtime_error("ruleset: cannot open the Lua VM: " + msg);
  }
  // New threads copy the hook of the thread that creates them.
  if (hook_step_ > 0) lua_sethook(L_, count_hook, LUA_MASKCOUNT, hook_step_);
  tick_timer_.set_callback([this](int) { tick(); });
}

Runtime::~Runtime() {
  closing_ = true;
  tick_timer_.stop();
  if (L_ != nullptr) {
    // Runs every __gc: pending awaits stop their watchers and cancel queries.
    Entry entry(*this);
    lua_close(L_);
    L_ = nullptr;
  }
  jobs_.clear();
  job_by_thread_.clear();
  detached_calls_.clear();
  orphans_.clear();
}

int Runtime::open_all(lua_State* L) {
  Runtime& rt = of(L);
  luaL_openlibs(L);
  open_libs(L);
  lua_getglobal(L, "marshal");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kMarshalKey);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kPinsKey);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kActiveKey);
  open_neosocksd(L);
  open_await(L);
  // Later entries end up first; keep the configured order.
  const auto& dirs = rt.opts_.lua_path_dirs;
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    lua_pushcfunction(L, prepend_package_path);
    lua_pushstring(L, it->c_str());
    lua_call(L, 1, 0);
  }
  if (rt.host_ != nullptr) {
    char err[256];
    if (!try_cpp(err, [&] { rt.host_->on_open(L); })) return luaL_error(L, "%s", err);
  }
  return 0;
}

void Runtime::add_package_path(const std::string& dir) {
  const int top = lua_gettop(L_);
  lua_pushcfunction(L_, prepend_package_path);
  lua_pushstring(L_, dir.c_str());
  if (lua_pcall(L_, 1, 0, 0) != LUA_OK) log::warning("ruleset: package.path: {}", describe(L_, -1));
  lua_settop(L_, top);
}

// ---- Entering Lua and the limits.

Runtime::Entry::Entry(Runtime& rt) : rt_(rt) {
  if (rt_.depth_++ == 0) {
    rt_.relaxed_ = 0;
    rt_.instr_used_ = 0;
    rt_.limit_raised_ = false;
    rt_.hook_victim_ = nullptr;
  }
  rt_.update_enforce();
}

Runtime::Entry::~Entry() {
  if (--rt_.depth_ == 0) rt_.relaxed_ = 0;
  rt_.update_enforce();
}

void Runtime::arm_hook(lua_State* co) {
  // Also undoes a debug.sethook() by the ruleset, and restarts the count.
  if (hook_step_ > 0) lua_sethook(co, count_hook, LUA_MASKCOUNT, hook_step_);
}

void Runtime::count_hook(lua_State* L, lua_Debug*) {
  Runtime& rt = of(L);
  if (rt.depth_ == 0) return;  // host-level finalizers
  rt.instr_used_ += uint64_t(rt.hook_step_);
  if (rt.instr_used_ <= rt.instr_limit_) return;
  if (!rt.limit_raised_) {
    // First a plain error, so that the routine's finish/handlers can report it.
    rt.limit_raised_ = true;
    luaL_error(L, "instruction limit exceeded");
    return;
  }
  if (rt.instr_used_ <= rt.instr_limit_ + rt.instr_grace_) return;
  // The error was caught and the code keeps running: take the thread away.
  if (lua_isyieldable(L)) {
    rt.hook_victim_ = L;
    lua_yield(L, 0);
    return;
  }
  luaL_error(L, "instruction limit exceeded");
}

int Runtime::panic(lua_State* L) {
  const char* msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)";
  log::fatal("ruleset: unprotected Lua error: {}", msg);
  std::abort();
}

void Runtime::warn(void* ud, const char* msg, int tocont) {
  auto* rt = static_cast<Runtime*>(ud);
  try {
    // "@on" / "@off" style control messages: warnings are always logged.
    if (rt->warning_.empty() && tocont == 0 && msg[0] == '@') return;
    rt->warning_ += msg;
    if (tocont != 0) return;
    log::warning("ruleset: warning: {}", rt->warning_);
  } catch (...) {
  }
  rt->warning_.clear();
}

// ---- The resume queue.

void Runtime::pin(lua_State* L, uint64_t id) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kPinsKey);
  lua_pushthread(L);
  lua_rawseti(L, -2, static_cast<lua_Integer>(id));
  lua_pop(L, 1);
}

void Runtime::unpin(lua_State* L, uint64_t id) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kPinsKey);
  lua_pushnil(L);
  lua_rawseti(L, -2, static_cast<lua_Integer>(id));  // removing never allocates
  lua_pop(L, 1);
}

void Runtime::schedule(uint64_t id) noexcept {
  if (closing_) return;
  try {
    ready_.push_back(id);
    if (!flush_posted_) {
      deferred_.post([this] { flush(); });
      flush_posted_ = true;
    }
  } catch (...) {
    log::error("ruleset: out of memory, a routine will not be resumed");
  }
}

void Runtime::flush() {
  flush_posted_ = false;
  std::vector<uint64_t> batch;
  batch.swap(ready_);
  for (uint64_t id : batch) {
    if (closing_) return;
    const int top = lua_gettop(L_);
    lua_rawgetp(L_, LUA_REGISTRYINDEX, &kPinsKey);
    lua_rawgeti(L_, -1, static_cast<lua_Integer>(id));
    // The pin goes away when the await closes; the main stack anchors the thread
    // while it runs.
    lua_State* co = lua_tothread(L_, -1);
    if (co != nullptr && lua_status(co) == LUA_YIELD) resume_host(co, 0);
    lua_settop(L_, top);
  }
}

void Runtime::adopt_child(pid_t pid) {
  if (closing_) return;  // libev's SIGCHLD handler still reaps it
  try {
    auto watcher = std::make_unique<ev::Child>(loop_);
    ev::Child* w = watcher.get();
    w->set_callback([this, pid, w](int) {
      log::debug("ruleset: reaped the child {} of a cancelled await.execute (status {})", pid,
                 w->rstatus());
      w->stop();
      post([this, pid] {
        if (!closing_) orphans_.erase(pid);
      });
    });
    w->start(pid);
    orphans_[pid] = std::move(watcher);
  } catch (...) {
  }
}

// ---- neosocksd.* support.

void Runtime::set_interval(double seconds) {
  if (seconds == 0) {
    tick_timer_.stop();
  } else {
    tick_timer_.start(seconds, seconds);
  }
}

void Runtime::tick() {
  if (closing_) return;
  const int top = lua_gettop(L_);
  try {
    lua_pushboolean(L_, 0);
    lua_pushcclosure(L_, method_entry, 1);
    lua_pushliteral(L_, "tick");
    lua_pushnumber(L_, ev_now(loop_));
    Outcome out = run_sync(2);
    if (!out.ok) note_error("ruleset.tick", out.error);
  } catch (const std::exception& e) {
    log::error("ruleset.tick: {}", e.what());
  }
  lua_settop(L_, top);
}

RpcTarget parse_rpc_target(lua_State* L, int first, int last, const char* who) {
  auto text = [L](int i) {
    size_t len = 0;
    const char* s = lua_tolstring(L, i, &len);  // a string already: never raises
    return std::string_view(s, len);
  };
  RpcTarget t;
  std::string_view where = text(first);
  // "https://host:port": the peer's API speaks HTTPS (--api tls://).
  if (where.size() > 8 && proto::iequals(where.substr(0, 8), "https://")) {
    t.tls = true;
    where.remove_prefix(8);
    if (where.ends_with('/')) where.remove_suffix(1);
  }
  auto addr = proto::parse_address(where);
  // As in neosocksd, a target that can never be dialled is the caller's error,
  // not an invocation lost later.
  if (!addr)
    throw std::invalid_argument(fmt::format("{}: invalid address \"{}\"", who, text(first)));
  t.addr = std::move(*addr);
  for (int i = last; i > first; --i) {
    auto uri = proto::parse_proxy_uri(text(i));
    if (!uri.ok()) {
      throw std::invalid_argument(
          fmt::format("{}: invalid proxy (argument #{}): {}", who, i, uri.error));
    }
    t.chain.push_back(std::move(uri.uri));
  }
  return t;
}

void Runtime::invoke_detached(std::string code, RpcTarget target) {
  if (host_ == nullptr) throw std::runtime_error("neosocksd.invoke: RPC is not available");
  const uint64_t id = next_id();
  auto handle = host_->invoke(std::move(code), std::move(target.addr), std::move(target.chain),
                              target.tls, [this, id](bool ok, std::string err) {
                                if (!ok) log::warning("ruleset: neosocksd.invoke: {}", err);
                                // Not from inside the handle's own callback.
                                post([this, id] {
                                  if (!closing_) detached_calls_.erase(id);
                                });
                              });
  if (!handle) throw std::runtime_error("neosocksd.invoke: RPC is not available");
  detached_calls_[id] = std::move(handle);
}

// ---- Diagnostics.

std::string Runtime::describe(lua_State* L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len = 0;
      const char* s = lua_tolstring(L, idx, &len);
      return std::string(s, len);
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) return std::to_string(lua_tointeger(L, idx));
      return fmt::format("{}", lua_tonumber(L, idx));
    case LUA_TBOOLEAN:
      return lua_toboolean(L, idx) ? "true" : "false";
    case LUA_TNIL:
      return "nil";
    default:
      return fmt::format("(error object is a {} value)", luaL_typename(L, idx));
  }
}

void Runtime::note_error(std::string_view what, std::string_view msg) {
  try {
    last_error_ = fmt::format("{}: {}", what, msg);
    log::warning("ruleset: {}", last_error_);
  } catch (...) {
  }
}

size_t Runtime::routines_alive() {
  size_t n = 0;
  lua_rawgetp(L_, LUA_REGISTRYINDEX, &kActiveKey);
  lua_pushnil(L_);
  while (lua_next(L_, -2) != 0) {
    ++n;
    lua_pop(L_, 1);
  }
  lua_pop(L_, 1);
  return n;
}

size_t Runtime::gc() {
  Entry entry(*this);  // finalizers are ruleset code
  const size_t before = budget_.used;
  lua_gc(L_, LUA_GCCOLLECT);
  return before > budget_.used ? before - budget_.used : 0;
}

void check_async(lua_State* L, const char* name) {
  if (!lua_isyieldable(L) || Runtime::of(L).is_sync_thread(L)) {
    luaL_error(L, "%s: not in an asynchronous routine", name);
  }
}

}  // namespace rs::ruleset::detail
