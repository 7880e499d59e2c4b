// Routines: the trampoline every ruleset coroutine runs, the thread pool, and
// the jobs the host waits for. The design is described in runtime.hpp.
#include <algorithm>

#include "core/log.hpp"
#include "ruleset/lib/lua_util.hpp"
#include "ruleset/runtime.hpp"

namespace rs::ruleset::detail {

namespace {

int idle_k(lua_State* co, int status, lua_KContext ctx);

int go_idle(lua_State* co) {
  lua_settop(co, 0);
  return lua_yieldk(co, 0, 0, idle_k);
}

// f returned or raised. Stack: handler|nil, finish, results... (or the error).
int call_k(lua_State* co, int status, lua_KContext) {
  Runtime& rt = Runtime::of(co);
  // job_finish is host code: it must be able to report even a memory limit hit.
  const bool host_finish = lua_tocfunction(co, 2) == job_finish;
  if (host_finish) rt.relax(+1);
  if (!lua_checkstack(co, 1)) luaL_error(co, "not enough memory");
  lua_pushboolean(co, status == LUA_OK || status == LUA_YIELD);
  lua_insert(co, 3);
  // finish(ok, ...) may not yield: a plain pcall.
  const int handler = lua_isfunction(co, 1) ? 1 : 0;
  const int finish_status = lua_pcall(co, lua_gettop(co) - 2, 0, handler);
  if (!host_finish) rt.relax(+1);
  rt.routine_end(co, finish_status == LUA_OK ? 0 : lua_gettop(co));
  rt.relax(-1);
  return go_idle(co);
}

// Resumed while idle: (token, finish, f, args...) starts a job; anything else
// is a stray coroutine.resume() and is ignored.
int idle_k(lua_State* co, int, lua_KContext) {
  if (lua_gettop(co) < 3 || lua_touserdata(co, 1) != &kJobToken) return go_idle(co);
  const bool traceback = Runtime::of(co).options().traceback;
  if (traceback) {
    lua_pushcfunction(co, api_traceback);
  } else {
    lua_pushnil(co);
  }
  lua_replace(co, 1);
  const int nargs = lua_gettop(co) - 3;
  return call_k(co, lua_pcallk(co, nargs, LUA_MULTRET, traceback ? 1 : 0, 0, call_k), 0);
}

// finish(ok, ...) of a job: upvalue 1 is the job id.
int finish_impl(lua_State* L) {
  Runtime& rt = Runtime::of(L);
  const auto id = static_cast<uint64_t>(lua_tointeger(L, lua_upvalueindex(1)));
  Job* job = rt.find_job(id);
  if (job == nullptr || job->thread != L) {
    // A detached invoke: nobody waits for the outcome any more.
    if (!lua_toboolean(L, 1)) rt.note_error("invoke", Runtime::describe(L, 2));
    return 0;
  }
  if (job->kind == JobKind::kRpcall) {
    // The reply is marshal(ok, ...); marshal raises on what it cannot encode,
    // and routine_end then fails the job with that error.
    lua_rawgetp(L, LUA_REGISTRYINDEX, &kMarshalKey);
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_error(L, "marshal returned no string");
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    job = rt.find_job(id);  // marshal ran code (finalizers): look again
    if (job == nullptr) return 0;
  }
  char err[256];
  if (!rt.collect(*job, L, err)) return luaL_error(L, "%s", err);
  return 0;
}

int method_k(lua_State* L, int, lua_KContext) {
  return lua_gettop(L);
}

int update_k(lua_State* L, int, lua_KContext) {
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_pushglobaltable(L);
    lua_getfield(L, -1, "ruleset");
    if (!lua_istable(L, -1)) {
      return luaL_error(L, "the ruleset must return a table or set the global 'ruleset'");
    }
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kRulesetKey);
  return 0;
}

// Stack: name, chunk, module.
int module_k(lua_State* L, int, lua_KContext) {
  if (lua_isnil(L, 3)) {
    lua_pushboolean(L, 1);
    lua_replace(L, 3);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);  // 4
  lua_pushvalue(L, 1);
  lua_gettable(L, 4);  // 5: the old module
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  lua_settable(L, 4);
  if (!lua_isnil(L, 5)) {
    lua_pushglobaltable(L);  // 6
    lua_pushvalue(L, 1);
    lua_gettable(L, 6);  // 7
    if (lua_rawequal(L, 5, 7)) {
      lua_pushvalue(L, 1);
      lua_pushvalue(L, 3);
      lua_settable(L, 6);
    }
  }
  return 0;
}

}  // namespace

int trampoline(lua_State* co) {
  return lua_yieldk(co, 0, 0, idle_k);
}

int job_finish(lua_State* L) {
  return guarded<finish_impl>(L);
}

int method_entry(lua_State* L) {
  const bool required = lua_toboolean(L, lua_upvalueindex(1));
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kRulesetKey) != LUA_TTABLE) {
    if (required) return luaL_error(L, "no ruleset is loaded");
    return 0;
  }
  lua_pushvalue(L, 1);
  if (lua_gettable(L, -2) == LUA_TNIL) {
    if (required) return luaL_error(L, "ruleset.%s is not defined", lua_tostring(L, 1));
    return 0;
  }
  lua_replace(L, 1);
  lua_pop(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, method_k);
  return method_k(L, LUA_OK, 0);
}

int update_entry(lua_State* L) {
  lua_callk(L, 0, 1, 0, update_k);
  return update_k(L, LUA_OK, 0);
}

int module_entry(lua_State* L) {
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 1);
  lua_callk(L, 1, 1, 0, module_k);
  return module_k(L, LUA_OK, 0);
}

namespace {

// co, err = neosocksd.async(finish, f, ...)
int async_impl(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checkany(L, 2);
  Runtime& rt = Runtime::of(L);
  if (rt.closing()) return luaL_error(L, "neosocksd.async: the ruleset is shutting down");
  const int n = lua_gettop(L);
  lua_State* co = rt.acquire(L);
  if (co == nullptr) return luaL_error(L, "neosocksd.async: cannot create a routine");
  lua_insert(L, 1);  // the thread stays below, anchored
  if (!lua_checkstack(co, n + 8)) return luaL_error(L, "neosocksd.async: too many arguments");
  rt.mark_active(co, true);
  lua_pushlightuserdata(co, const_cast<char*>(&kJobToken));
  lua_xmove(L, co, n);
  int nres = 0;
  const int status = rt.resume_nested(co, L, n + 1, &nres);
  if (status == LUA_OK || status == LUA_YIELD) {
    lua_pop(co, nres);
    return 1;
  }
  rt.mark_active(co, false);
  lua_pushnil(L);
  lua_xmove(co, L, 1);
  return 2;
}

}  // namespace

int api_async(lua_State* L) {
  return guarded<async_impl>(L);
}

// ---- The pool.

lua_State* Runtime::acquire(lua_State* L) {
  if (!pool_.empty()) {
    const int ref = pool_.back();
    pool_.pop_back();
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return lua_tothread(L, -1);
  }
  lua_State* co = lua_newthread(L);
  lua_pushcfunction(co, trampoline);
  int nres = 0;
  if (lua_resume(co, L, 0, &nres) != LUA_YIELD) {  // only out of memory
    lua_pop(L, 1);
    return nullptr;
  }
  return co;
}

void Runtime::mark_active(lua_State* co, bool active) {
  // Also used on dead threads, whose stack may have no free slot. Failing
  // (out of memory) only makes routines_alive() less exact.
  if (!lua_checkstack(co, 4)) return;
  // `co` is not the running thread (neosocksd.async marks a new routine from
  // inside another): an error raised on it would have no handler and reach the
  // panic function. Growing the table is host bookkeeping, so the ruleset's
  // --memlimit does not apply to it.
  relax(+1);
  lua_rawgetp(co, LUA_REGISTRYINDEX, &kActiveKey);
  lua_pushthread(co);
  if (active) {
    lua_pushboolean(co, 1);
  } else {
    lua_pushnil(co);
  }
  lua_rawset(co, -3);
  lua_pop(co, 1);
  relax(-1);
}

void Runtime::routine_end(lua_State* co, int err_index) {
  mark_active(co, false);
  int ref = LUA_NOREF;
  char err[256];
  const bool ok = try_cpp(err, [&] {
    Job* job = job_of(co);
    if (job == nullptr) {
      if (err_index != 0) note_error("async routine finish", describe(co, err_index));
      return;
    }
    if (!job->done) {
      // Only when finish raised (e.g. marshal refused a value).
      complete(*job, Outcome{false, {}, err_index != 0 ? describe(co, err_index) : "no result"});
    }
    ref = detach_thread(*job);
    if (job->cancelled) jobs_.erase(job->id);
  });
  if (!ok) log::error("ruleset: {}", err);
  if (pool_.size() >= kPoolMax) {
    if (ref != LUA_NOREF) luaL_unref(co, LUA_REGISTRYINDEX, ref);
    return;
  }
  if (ref == LUA_NOREF) {
    lua_pushthread(co);
    ref = luaL_ref(co, LUA_REGISTRYINDEX);
  }
  pool_.push_back(ref);  // capacity is reserved: no allocation
}

// ---- Jobs.

Job* Runtime::find_job(uint64_t id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

Job* Runtime::job_of(lua_State* co) {
  auto it = job_by_thread_.find(co);
  return it == job_by_thread_.end() ? nullptr : it->second;
}

bool Runtime::is_sync_thread(lua_State* L) const {
  return std::find(sync_threads_.begin(), sync_threads_.end(), L) != sync_threads_.end();
}

uint64_t Runtime::start_job(JobKind kind, int nargs, std::function<void(Outcome)> on_done,
                            Forwarder* forwarder) {
  auto owned = std::make_unique<Job>();
  Job& job = *owned;
  job.id = next_id();
  job.kind = kind;
  job.on_done = std::move(on_done);
  job.forwarder = forwarder;
  const uint64_t id = job.id;
  jobs_.emplace(id, std::move(owned));

  lua_State* co = acquire(L_);
  if (co == nullptr) {
    lua_pop(L_, nargs + 1);
    complete(job, Outcome{false, {}, "cannot create a routine"});
    return id;
  }
  job.thread = co;
  job.ref = luaL_ref(L_, LUA_REGISTRYINDEX);
  job_by_thread_[co] = &job;
  if (!lua_checkstack(co, nargs + 8)) {
    lua_pop(L_, nargs + 1);
    kill(co, "too many arguments");
    return id;
  }
  mark_active(co, true);
  lua_pushlightuserdata(co, const_cast<char*>(&kJobToken));
  lua_pushinteger(co, static_cast<lua_Integer>(id));
  lua_pushcclosure(co, job_finish, 1);
  lua_xmove(L_, co, nargs + 1);
  const bool sync = kind == JobKind::kSync;
  if (sync) sync_threads_.push_back(co);
  resume_host(co, nargs + 3);
  if (sync) sync_threads_.pop_back();
  return id;
}

Outcome Runtime::run_sync(int nargs) {
  const uint64_t id = start_job(JobKind::kSync, nargs, nullptr);
  Job* job = find_job(id);
  if (job->thread != nullptr) kill(job->thread, "attempt to yield from a synchronous callback");
  Outcome out = std::move(job->outcome);
  jobs_.erase(id);
  return out;
}

uint64_t Runtime::post_outcome(Outcome out, std::function<void(Outcome)> on_done) {
  auto job = std::make_unique<Job>();
  job->id = next_id();
  job->on_done = std::move(on_done);
  job->kind = JobKind::kRoute;  // any asynchronous kind: delivered from the loop
  const uint64_t id = job->id;
  Job& ref = *job;
  jobs_.emplace(id, std::move(job));
  complete(ref, std::move(out));
  return id;
}

void Runtime::detach_job(uint64_t id) {
  Job* job = find_job(id);
  if (job == nullptr) return;
  if (job->thread != nullptr) luaL_unref(L_, LUA_REGISTRYINDEX, detach_thread(*job));
  jobs_.erase(id);
}

void Runtime::mark_forwarded(Job& job) {
  job.forwarded = true;
  job.forwarder = nullptr;
  job.on_done = nullptr;
}

void Runtime::cancel(uint64_t id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  Job& job = *it->second;
  // Answered by await.forward: the routine may finish what it does after
  // (bookkeeping); nobody waits for its outcome.
  if (job.forwarded) return;
  job.cancelled = true;
  job.on_done = nullptr;
  job.forwarder = nullptr;
  if (job.thread == nullptr) {  // ended; its delivery is pending
    jobs_.erase(it);
    return;
  }
  if (lua_status(job.thread) != LUA_YIELD) {
    // Not suspended: it is running (we are inside it), so reset it from the loop.
    post([this, id] {
      if (!closing_) cancel(id);
    });
    return;
  }
  kill(job.thread, nullptr);
}

void Runtime::complete(Job& job, Outcome out) {
  if (job.done) return;
  job.done = true;
  job.outcome = std::move(out);
  if (job.kind != JobKind::kSync && !job.cancelled) {
    const uint64_t id = job.id;
    post([this, id] { deliver(id); });
  }
}

int Runtime::detach_thread(Job& job) {
  job_by_thread_.erase(job.thread);
  job.thread = nullptr;
  const int ref = job.ref;
  job.ref = LUA_NOREF;
  return ref;
}

void Runtime::deliver(uint64_t id) {
  if (closing_) return;
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  std::unique_ptr<Job> job = std::move(it->second);
  jobs_.erase(it);
  if (job->thread != nullptr) luaL_unref(L_, LUA_REGISTRYINDEX, detach_thread(*job));
  if (job->cancelled || !job->on_done) return;
  try {
    job->on_done(std::move(job->outcome));
  } catch (const std::exception& e) {
    log::error("ruleset: delivering a result: {}", e.what());
  }
}

bool Runtime::collect(Job& job, lua_State* L, char (&err)[256]) noexcept {
  // Only non-raising API here: lua_tolstring is used on strings alone.
  return try_cpp(err, [&] {
    Outcome out;
    out.ok = lua_toboolean(L, 1) != 0;
    const int top = lua_gettop(L);
    if (!out.ok) {
      out.error = describe(L, 2);
    } else {
      out.values.reserve(size_t(std::max(top - 1, 0)));
      for (int i = 2; i <= top; ++i) {
        Value v;
        v.type = lua_type(L, i);
        if (v.type == LUA_TSTRING) {
          size_t len = 0;
          const char* s = lua_tolstring(L, i, &len);
          v.str.assign(s, len);
        }
        out.values.push_back(std::move(v));
      }
    }
    complete(job, std::move(out));
  });
}

// ---- Resuming.

void Runtime::resume_host(lua_State* co, int nargs) {
  int status = LUA_OK;
  int nres = 0;
  {
    Entry entry(*this);
    arm_hook(co);
    status = lua_resume(co, nullptr, nargs, &nres);
  }
  after_resume(co, status, nres);
}

int Runtime::resume_nested(lua_State* co, lua_State* from, int nargs, int* nres) {
  Entry entry(*this);
  arm_hook(co);
  return lua_resume(co, from, nargs, nres);
}

void Runtime::after_resume(lua_State* co, int status, int nres) {
  if (status != LUA_OK && status != LUA_YIELD) {
    routine_died(co);
    return;
  }
  lua_pop(co, nres);
  if (status == LUA_YIELD && hook_victim_ == co) {
    hook_victim_ = nullptr;
    kill(co, "instruction limit exceeded");
  }
}

void Runtime::routine_died(lua_State* co) {
  std::string msg = describe(co, -1);
  if (opts_.traceback) {
    luaL_traceback(L_, co, msg.c_str(), 0);
    msg = describe(L_, -1);
    lua_pop(L_, 1);
  }
  mark_active(co, false);
  if (Job* job = job_of(co)) {
    luaL_unref(L_, LUA_REGISTRYINDEX, detach_thread(*job));
    if (job->cancelled) {
      jobs_.erase(job->id);
    } else {
      complete(*job, Outcome{false, {}, std::move(msg)});
    }
    return;
  }
  note_error("routine", msg);
}

void Runtime::kill(lua_State* co, const char* why) {
  const int top = lua_gettop(L_);
  Job* job = job_of(co);
  // Keep it anchored while resetting: the job's reference goes away below. (The
  // callers of a thread without a job anchor it themselves.)
  if (job != nullptr) lua_rawgeti(L_, LUA_REGISTRYINDEX, job->ref);
  {
    Entry entry(*this);  // a fresh budget for the __close handlers it runs
    if (lua_resetthread(co) != LUA_OK) {
      log::warning("ruleset: closing a routine: {}", describe(co, -1));
    }
  }
  mark_active(co, false);
  job = job_of(co);
  if (job != nullptr) {
    luaL_unref(L_, LUA_REGISTRYINDEX, detach_thread(*job));
    if (job->cancelled) {
      jobs_.erase(job->id);
    } else {
      complete(*job, Outcome{false, {}, why != nullptr ? why : "cancelled"});
    }
  } else if (why != nullptr) {
    note_error("routine", why);
  }
  lua_settop(L_, top);
}

}  // namespace rs::ruleset::detail
