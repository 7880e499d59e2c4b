// Internals of the ruleset host, shared by the Engine and the Lua libraries it
// installs (neosocksd.*, await.*). Not part of the public API.
//
// Routines and the coroutine pool
// -------------------------------
// Every piece of ruleset code runs in a routine: a Lua thread executing the C
// trampoline below, which loops forever:
//
//   idle:  yield, waiting for a job: (token, finish, f, args...)
//   run:   finish(pcall(f, args...))      -- f may yield; finish may not
//          give the thread back to the pool, go idle
//
// Threads are created on demand and up to kPoolMax idle ones are kept for reuse
// (neosocksd.async shares the pool). The token is a private light userdata, so a
// stray coroutine.resume() of an idle thread is ignored. Because the trampoline is
// C code it runs no Lua instructions and stays out of the instruction budget.
//
// Jobs are the routines the host waits for (route, rpcall, invoke, and the
// synchronous callbacks update/tick/stats). Their `finish` is job_finish, which
// copies the results out of Lua into Job::outcome. A job anchors its thread in
// the registry while it runs; asynchronous outcomes are delivered later from
// the loop (ev::Deferred), never from inside Lua. Routines started from Lua
// (neosocksd.async) are not anchored, as in neosocksd: one nobody can resume any
// more is simply collected.
//
// Awaiting
// --------
// An await.* call pushes a full userdata owning its watchers, marks it
// to-be-closed, pins the thread in the registry (pins[id] = thread) and yields.
// Completion only records the result and queues the id; the queue is drained
// from the loop, which looks the pin up and resumes the thread on a clean stack.
// Closing the userdata (normal continuation, an error unwinding, or
// lua_resetthread on cancellation) stops the watchers and removes the pin, so a
// queued id whose routine went away finds nothing and is dropped. Ids are never
// reused, unlike addresses.
//
// Cancellation resets the job's thread with lua_resetthread, which runs the
// pending __close handlers; a cancelled thread is never reused. A thread that is
// not suspended (the cancel comes from inside it) is reset later, from the loop.
// Only the job's own thread is reset: a coroutine it created and left waiting on
// an await of its own is not tracked, and finishes or is collected on its own.
//
// Limits
// ------
// Each resume from the host gets a fresh instruction budget, checked by a
// count hook: when it runs out the hook raises "instruction limit exceeded";
// if the code catches that and keeps going past a grace allowance, the hook
// yields the thread back to the host, which kills it. The memory limit is
// enforced only while ruleset code runs, and is relaxed while the host's own
// C code finishes a job, so a refused allocation fails the request, not the
// bookkeeping around it.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <lua.hpp>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/cancellable.hpp"
#include "core/loop.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"
#include "ruleset/alloc.hpp"
#include "ruleset/engine.hpp"

namespace rs::ruleset::detail {

// Where an await.invoke / neosocksd.invoke call goes, parsed at the Lua boundary.
struct RpcTarget {
  proto::Address addr;
  std::vector<proto::ProxyUri> chain;  // dial order
  bool tls = false;                    // written https://host:port
};
// Parses (addr, proxyN, ..., proxy1), strings at L[first..last]. C++ only (no Lua
// errors): throws std::invalid_argument naming the bad value, prefixed by `who`.
RpcTarget parse_rpc_target(lua_State* L, int first, int last, const char* who);

// A value handed back by a routine, copied out of Lua.
struct Value {
  int type = LUA_TNIL;
  std::string str;  // for LUA_TSTRING
};

struct Outcome {
  bool ok = false;            // false: `error` says why
  std::vector<Value> values;  // what f returned (for rpcall: the marshalled reply)
  std::string error;
};

enum class JobKind { kRoute, kRpcall, kInvoke, kSync };

struct Job {
  uint64_t id = 0;
  JobKind kind = JobKind::kSync;
  lua_State* thread = nullptr;  // while the routine runs
  int ref = LUA_NOREF;          // registry anchor of `thread`
  bool done = false;            // `outcome` is final
  bool cancelled = false;
  Outcome outcome;
  std::function<void(Outcome)> on_done;  // asynchronous kinds, run from the loop
  // kRoute: await.forward's host side, borrowed; cleared when the job is
  // cancelled or has forwarded. `forwarded`: the request was answered by
  // await.forward, so the routine's outcome is dropped and cancel() leaves it.
  Forwarder* forwarder = nullptr;
  bool forwarded = false;
};

// Registry keys (their addresses are the keys).
inline const char kRulesetKey = 0;  // the current ruleset table
inline const char kPinsKey = 0;     // id -> thread waiting on an await
inline const char kActiveKey = 0;   // weak set of routines running a job
inline const char kMarshalKey = 0;  // marshal(), for rpcall replies
inline const char kJobToken = 0;    // light userdata marking a job for the trampoline

class Runtime {
 public:
  static constexpr size_t kPoolMax = 512;

  Runtime(ev::Loop* loop, net::Resolver* resolver, Host* host, const EngineOptions& opts);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  static Runtime& of(lua_State* L) { return **static_cast<Runtime**>(lua_getextraspace(L)); }

  lua_State* L() const { return L_; }
  ev::Loop* loop() const { return loop_; }
  net::Resolver* resolver() const { return resolver_; }
  Host* host() const { return host_; }
  const EngineOptions& options() const { return opts_; }
  bool closing() const { return closing_; }
  uint64_t next_id() { return ++last_id_; }

  // ---- Entering Lua. Each outermost entry gets a fresh instruction budget and
  // turns the memory limit on; Relaxed sections (host C code inside Lua) turn it off.
  class Entry {
   public:
    explicit Entry(Runtime& rt);
    ~Entry();
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;

   private:
    Runtime& rt_;
  };
  // Inside Lua, host C code that must not fail for the ruleset's memory use.
  // Reset by the outermost Entry, so an error between the two calls is harmless.
  void relax(int delta) {
    relaxed_ += delta;
    update_enforce();
  }

  // ---- Jobs (host level: not from inside Lua unless stated).
  // Starts `f` with `nargs` arguments, found on top of the main thread's stack
  // (popped). The routine runs until its first yield before this returns.
  uint64_t start_job(JobKind kind, int nargs, std::function<void(Outcome)> on_done,
                     Forwarder* forwarder = nullptr);
  // The job whose routine runs on thread `co` (its main function, not a
  // coroutine inside it), or nullptr. Safe from inside Lua.
  Job* job_on(lua_State* co) { return job_of(co); }
  // await.forward succeeded for `job`: drop its callback, keep its routine.
  void mark_forwarded(Job& job);
  // Runs `f` (as above) as a synchronous callback: yielding is an error.
  Outcome run_sync(int nargs);
  // A job that already has its outcome (e.g. "no ruleset"): delivered later.
  uint64_t post_outcome(Outcome out, std::function<void(Outcome)> on_done);
  // Forgets a job without cancelling its routine (invoke after its first yield).
  void detach_job(uint64_t id);
  // Drops the job's callback and kills its routine. Safe from anywhere.
  void cancel(uint64_t id);
  Job* find_job(uint64_t id);

  // ---- Routines (called from Lua: the trampoline and neosocksd.async).
  // Pushes an idle trampoline thread onto L's stack, from the pool or new.
  lua_State* acquire(lua_State* L);
  // Marks `co` as running a routine (weak set; collected routines drop out).
  void mark_active(lua_State* co, bool active);
  // Resumes a routine from inside Lua (neosocksd.async).
  int resume_nested(lua_State* co, lua_State* from, int nargs, int* nres);
  // The trampoline finished a routine on `co`: settle its job (err_index: the
  // error finish raised, or 0) and pool the thread. Call relaxed.
  void routine_end(lua_State* co, int err_index);
  // Copies finish(ok, ...) on L's stack into the job's outcome. No Lua errors;
  // false (with `err` filled) only when C++ runs out of memory.
  bool collect(Job& job, lua_State* L, char (&err)[256]) noexcept;
  bool is_sync_thread(lua_State* L) const;

  // ---- Awaits.
  void pin(lua_State* L, uint64_t id);    // may raise (memory)
  void unpin(lua_State* L, uint64_t id);  // never raises
  // The await `id` has its result: resume its routine from the loop.
  void schedule(uint64_t id) noexcept;
  void op_started() { ++awaits_; }
  void op_stopped() { --awaits_; }
  size_t pending_awaits() const { return awaits_; }
  // A child of a cancelled await.execute: killed; reap it and log.
  void adopt_child(pid_t pid);

  // ---- neosocksd.* support.
  void set_interval(double seconds);  // 0 stops
  // Fire-and-forget RPC (neosocksd.invoke): keeps the handle until it finishes.
  // Throws when RPC is unavailable. C++ only.
  void invoke_detached(std::string code, RpcTarget target);
  void post(std::function<void()> fn) { deferred_.post(std::move(fn)); }
  // Puts dir/?.lua and dir/?/init.lua in front of package.path (host level).
  void add_package_path(const std::string& dir);

  // ---- Diagnostics.
  // Describes the Lua value at idx without raising (no __tostring).
  static std::string describe(lua_State* L, int idx);
  void note_error(std::string_view what, std::string_view msg);
  const std::string& last_error() const { return last_error_; }
  size_t memory_bytes() const { return budget_.used; }
  size_t memory_objects() const { return budget_.objects; }
  size_t routines_alive();
  size_t pool_size() const { return pool_.size(); }
  size_t gc();

 private:
  static void count_hook(lua_State* L, lua_Debug* ar);
  static int panic(lua_State* L);
  static void warn(void* ud, const char* msg, int tocont);
  static int open_all(lua_State* L);

  void update_enforce() { budget_.enforce = budget_.limit != 0 && depth_ > 0 && relaxed_ == 0; }
  void arm_hook(lua_State* co);
  // Resumes `co` from the loop and settles what happened to it.
  void resume_host(lua_State* co, int nargs);
  void after_resume(lua_State* co, int status, int nres);
  // The routine raised out of the trampoline (a host bug or out of memory).
  void routine_died(lua_State* co);
  // Resets `co` (running its __close handlers) and fails its job with `why`.
  void kill(lua_State* co, const char* why);
  Job* job_of(lua_State* co);
  void complete(Job& job, Outcome out);
  int detach_thread(Job& job);  // returns the thread's registry ref
  void deliver(uint64_t id);
  void flush();
  void tick();

  ev::Loop* loop_;
  net::Resolver* resolver_;
  Host* host_;
  EngineOptions opts_;
  MemoryBudget budget_;
  lua_State* L_ = nullptr;
  bool closing_ = false;
  uint64_t last_id_ = 0;

  int depth_ = 0;    // nesting of Entry
  int relaxed_ = 0;  // nesting of relaxed sections
  uint64_t instr_used_ = 0;
  uint64_t instr_limit_ = 0;
  uint64_t instr_grace_ = 0;
  int hook_step_ = 0;
  bool limit_raised_ = false;
  lua_State* hook_victim_ = nullptr;  // yielded by the hook: to be killed

  std::vector<int> pool_;  // registry refs of idle threads
  std::unordered_map<uint64_t, std::unique_ptr<Job>> jobs_;
  std::unordered_map<lua_State*, Job*> job_by_thread_;
  std::vector<lua_State*> sync_threads_;
  std::vector<uint64_t> ready_;  // awaits whose routine is due for a resume
  bool flush_posted_ = false;
  size_t awaits_ = 0;
  std::string last_error_;
  std::string warning_;  // a warning being assembled (lua_WarnFunction pieces)

  ev::Timer tick_timer_;
  std::map<pid_t, std::unique_ptr<ev::Child>> orphans_;
  std::map<uint64_t, std::unique_ptr<Cancellable>> detached_calls_;
  // Last member: destroyed first, while everything its closures touch is alive.
  ev::Deferred deferred_;
};

// lua_CFunctions shared across files.
int trampoline(lua_State* co);
int job_finish(lua_State* L);
// ruleset[method](args...): upvalue 1 says whether a missing method is an error.
int method_entry(lua_State* L);
int update_entry(lua_State* L);   // (chunk) -> installs the ruleset
int module_entry(lua_State* L);   // (name, chunk) -> replaces package.loaded[name]
int api_async(lua_State* L);      // neosocksd.async
int api_traceback(lua_State* L);  // neosocksd.traceback, also the message handler
int api_resolve(lua_State* L);    // neosocksd.resolve (blocking)

// Library openers (each sets its global).
void open_neosocksd(lua_State* L);
void open_await(lua_State* L);

// Runs f (C++ only: nothing in it may raise a Lua error), turning an exception
// into a message in `err`. The caller raises afterwards, once f's objects are gone.
template <class F>
bool try_cpp(char (&err)[256], F&& f) noexcept {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    std::snprintf(err, sizeof err, "%s", e.what());
  } catch (...) {
    std::snprintf(err, sizeof err, "unknown C++ exception");
  }
  return false;
}

// Raises "name: not in an asynchronous routine" unless L may await.
void check_async(lua_State* L, const char* name);

}  // namespace rs::ruleset::detail
