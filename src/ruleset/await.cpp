// await.*: operations a routine waits for. Each is a full userdata owning what
// it waits on, marked to-be-closed on the routine's stack; see runtime.hpp
// ("Awaiting") for how completion, resumption and cancellation meet.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "core/log.hpp"
#include "ruleset/lib/lua_util.hpp"
#include "ruleset/runtime.hpp"

namespace rs::ruleset::detail {

namespace {

class Op {
 public:
  explicit Op(Runtime& rt) : rt_(rt), id_(rt.next_id()) { rt_.op_started(); }
  virtual ~Op() {
    if (live_) rt_.op_stopped();
  }
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

  uint64_t id() const { return id_; }
  bool done() const { return done_; }
  // The routine no longer waits: cancel whatever is in flight, or release
  // what a completed op still holds (a dial's handle). Idempotent.
  void stop() {
    if (live_) {
      live_ = false;
      rt_.op_stopped();
    }
    halt();
  }

 protected:
  virtual void halt() {}
  // The result is in: resume the routine later, from the loop.
  void complete() {
    if (!live_) return;
    live_ = false;
    done_ = true;
    rt_.op_stopped();
    rt_.schedule(id_);
  }

  Runtime& rt_;

 private:
  uint64_t id_;
  bool live_ = true;
  bool done_ = false;
};

template <class T>
int op_gc(lua_State* L) {
  static_cast<T*>(luaL_checkudata(L, 1, T::kName))->~T();
  return 0;
}

template <class T>
int op_close(lua_State* L) {
  auto* op = static_cast<T*>(luaL_checkudata(L, 1, T::kName));
  op->stop();
  Runtime::of(L).unpin(L, op->id());
  return 0;
}

template <class T>
void register_op(lua_State* L) {
  luaL_newmetatable(L, T::kName);
  lua_pushcfunction(L, op_gc<T>);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, op_close<T>);
  lua_setfield(L, -2, "__close");
  lua_pushliteral(L, "await");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

// Pushes a new T (marked to-be-closed) and pins the running thread to it.
template <class T>
T* push_op(lua_State* L) {
  Runtime& rt = Runtime::of(L);
  void* mem = lua_newuserdatauv(L, sizeof(T), 0);
  T* op = nullptr;
  char err[256];
  if (!try_cpp(err, [&] { op = new (mem) T(rt); })) luaL_error(L, "%s", err);
  // Nothing between construction and the metatable can raise: __gc always pairs.
  luaL_setmetatable(L, T::kName);
  lua_toclose(L, -1);
  rt.pin(L, op->id());
  return op;
}

// The continuation of every await: `slot` holds the op.
template <class T>
int await_k(lua_State* L, int, lua_KContext slot) {
  auto* op = static_cast<T*>(lua_touserdata(L, static_cast<int>(slot)));
  lua_settop(L, static_cast<int>(slot));
  // Resumed by a stray coroutine.resume(): keep waiting.
  if (!op->done()) return lua_yieldk(L, 0, slot, await_k<T>);
  const int n = T::push_results(L, *op);
  lua_closeslot(L, static_cast<int>(slot));
  return n;
}

// Starts `op` (C++ only, may throw), then yields until it completes.
template <class T, class F>
int wait_for(lua_State* L, T* op, int slot, F&& start) {
  char err[256];
  if (!try_cpp(err, [&] { start(*op); })) return luaL_error(L, "%s", err);
  return lua_yieldk(L, 0, slot, await_k<T>);
}

// ---- await.sleep(n)

class SleepOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.sleep";
  explicit SleepOp(Runtime& rt) : Op(rt), timer_(rt.loop()) {}
  void start(double seconds) {
    if (seconds <= 0) {
      complete();  // still resumed later, from the loop
      return;
    }
    timer_.set_callback([this](int) { complete(); });
    timer_.start(seconds);
  }
  static int push_results(lua_State*, SleepOp&) { return 0; }

 private:
  void halt() override { timer_.stop(); }
  ev::Timer timer_;
};

int sleep_impl(lua_State* L) {
  check_async(L, "await.sleep");
  const lua_Number n = luaL_checknumber(L, 1);
  luaL_argcheck(L, std::isfinite(n) && n >= 0 && n <= 1e9, 1, "interval must be in [0, 1e9]");
  lua_settop(L, 1);
  auto* op = push_op<SleepOp>(L);
  return wait_for(L, op, 2, [n](SleepOp& o) { o.start(n); });
}

// ---- await.idle(): resumes when the loop has nothing else to do.

class IdleOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.idle";
  explicit IdleOp(Runtime& rt) : Op(rt), idle_(rt.loop()) {}
  void start() {
    idle_.set_callback([this](int) {
      idle_.stop();
      complete();
    });
    idle_.start();
  }
  static int push_results(lua_State*, IdleOp&) { return 0; }

 private:
  void halt() override { idle_.stop(); }
  ev::Idle idle_;
};

int idle_impl(lua_State* L) {
  check_async(L, "await.idle");
  lua_settop(L, 0);
  auto* op = push_op<IdleOp>(L);
  return wait_for(L, op, 1, [](IdleOp& o) { o.start(); });
}

// ---- addr, err = await.resolve(host)

class ResolveOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.resolve";
  explicit ResolveOp(Runtime& rt) : Op(rt) {}
  void start(const char* host) {
    query_ = rt_.resolver()->resolve(host, 0,
                                     [this](std::vector<net::SockAddr> addrs, std::string error) {
                                       if (addrs.empty()) {
                                         error_ = std::move(error);
                                       } else {
                                         addr_ = addrs.front().to_address().host_string();
                                       }
                                       complete();
                                     });
  }
  static int push_results(lua_State* L, ResolveOp& op) {
    if (op.addr_.empty()) {
      lua_pushnil(L);
      lua_pushlstring(L, op.error_.data(), op.error_.size());
      return 2;
    }
    lua_pushlstring(L, op.addr_.data(), op.addr_.size());
    return 1;
  }

 private:
  void halt() override { query_.reset(); }
  std::unique_ptr<net::Resolver::Query> query_;
  std::string addr_;
  std::string error_;
};

int resolve_impl(lua_State* L) {
  check_async(L, "await.resolve");
  const char* host = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  // Without an asynchronous resolver it behaves like neosocksd.resolve.
  if (Runtime::of(L).resolver() == nullptr) return api_resolve(L);
  auto* op = push_op<ResolveOp>(L);
  return wait_for(L, op, 2, [host](ResolveOp& o) { o.start(host); });
}

// ---- ok, what, code = await.execute(command)

class ExecuteOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.execute";
  explicit ExecuteOp(Runtime& rt) : Op(rt), child_(rt.loop()) {}
  ~ExecuteOp() override { kill_child(); }

  void start(const char* command) {
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
    // Its own session, so that cancelling kills the whole command; default
    // signal dispositions and mask rather than the server's; no stdin.
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    char* argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), const_cast<char*>(command),
                    nullptr};
    pid_t pid = -1;
    const int err = posix_spawn(&pid, "/bin/sh", &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (err != 0) throw std::system_error(err, std::generic_category(), "await.execute");
    pid_ = pid;
    child_.set_callback([this](int) {
      status_ = child_.rstatus();
      child_.stop();
      pid_ = -1;
      complete();
    });
    child_.start(pid);
  }

  // Like os.execute: true|nil, "exit"|"signal", code.
  static int push_results(lua_State* L, ExecuteOp& op) {
    const int st = op.status_;
    if (WIFSIGNALED(st)) {
      lua_pushnil(L);
      lua_pushliteral(L, "signal");
      lua_pushinteger(L, WTERMSIG(st));
      return 3;
    }
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : st;
    if (code == 0) {
      lua_pushboolean(L, 1);
    } else {
      lua_pushnil(L);
    }
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, code);
    return 3;
  }

 private:
  void halt() override { kill_child(); }
  void kill_child() {
    child_.stop();
    if (pid_ <= 0) return;
    if (::kill(-pid_, SIGKILL) != 0) ::kill(pid_, SIGKILL);
    rt_.adopt_child(pid_);  // reaped and logged from the loop
    pid_ = -1;
  }

  ev::Child child_;
  pid_t pid_ = -1;
  int status_ = 0;
};

int execute_impl(lua_State* L) {
  check_async(L, "await.execute");
  const char* command = luaL_checkstring(L, 1);
  // libev delivers child events on the default loop only.
  if (!ev_is_default_loop(Runtime::of(L).loop())) {
    return luaL_error(L, "await.execute: needs the default event loop");
  }
  lua_settop(L, 1);
  auto* op = push_op<ExecuteOp>(L);
  return wait_for(L, op, 2, [command](ExecuteOp& o) { o.start(command); });
}

// ---- ok, result = await.invoke(code, addr, proxyN, ..., proxy1)

// result(): runs the reply chunk (upvalue 1) and returns what it returns, or
// false and the error.
int rpc_result(lua_State* L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  if (lua_pcall(L, 0, LUA_MULTRET, 0) != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_insert(L, 1);
    return 2;
  }
  return lua_gettop(L);
}

class InvokeOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.invoke";
  explicit InvokeOp(Runtime& rt) : Op(rt) {}

  // code, addr, proxyN, ..., proxy1 are strings at L[first..last]. C++ only.
  void start(lua_State* L, int first, int last) {
    Host* host = rt_.host();
    if (host == nullptr) throw std::runtime_error("await.invoke: RPC is not available");
    RpcTarget target;
    try {
      target = parse_rpc_target(L, first + 1, last, "await.invoke");
    } catch (const std::invalid_argument& e) {
      // Like any other failure to reach the peer: ok is false, nothing raises.
      body_ = e.what();
      complete();
      return;
    }
    size_t len = 0;
    const char* code = lua_tolstring(L, first, &len);
    call_ = host->invoke(std::string(code, len), std::move(target.addr), std::move(target.chain),
                         target.tls, [this](bool ok, std::string body) {
                           ok_ = ok;
                           body_ = std::move(body);
                           complete();
                         });
    if (!call_ && !done()) throw std::runtime_error("await.invoke: RPC is not available");
  }

  static int push_results(lua_State* L, InvokeOp& op) {
    lua_pushboolean(L, op.ok_);
    if (!op.ok_) {
      lua_pushlstring(L, op.body_.data(), op.body_.size());
      return 2;
    }
    // The reply is `return <marshalled values>`: plain data, so it gets an
    // empty environment.
    if (luaL_loadbufferx(L, op.body_.data(), op.body_.size(), "=(rpc reply)", "t") != LUA_OK) {
      lua_replace(L, -2);
      lua_pushboolean(L, 0);
      lua_insert(L, -2);
      return 2;
    }
    lua_newtable(L);
    lua_setupvalue(L, -2, 1);
    lua_pushcclosure(L, rpc_result, 1);
    return 2;
  }

 private:
  void halt() override { call_.reset(); }
  std::unique_ptr<Cancellable> call_;
  bool ok_ = false;
  std::string body_;
};

int invoke_impl(lua_State* L) {
  check_async(L, "await.invoke");
  luaL_checkstring(L, 1);
  luaL_checkstring(L, 2);
  const int n = lua_gettop(L);
  for (int i = 3; i <= n; ++i) luaL_checkstring(L, i);
  auto* op = push_op<InvokeOp>(L);
  return wait_for(L, op, n + 1, [L, n](InvokeOp& o) { o.start(L, 1, n); });
}

// ---- ok, err, detail = await.forward(addr, proxyN, ..., proxy1)

// neosocksd's dialer error names, so that rulesets written for it can match
// on them.
const char* forward_error_name(net::DialError err, bool through_proxy) {
  switch (err) {
    case net::DialError::kOk:
      return "success";
    case net::DialError::kTimeout:
      return "timeout";
    case net::DialError::kNotAllowed:
      return through_proxy ? "request rejected by proxy" : "connection blocked by policy";
    case net::DialError::kNetUnreachable:
    case net::DialError::kHostUnreachable:
    case net::DialError::kRefused:
      return "connection failed";
    case net::DialError::kAddressType:
      return "proxy protocol error";
    case net::DialError::kGeneral:
      break;
  }
  return "system error";
}

class ForwardOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.forward";
  explicit ForwardOp(Runtime& rt) : Op(rt) {}

  // C++ only. `job_id` names the request; its Forwarder is looked up again
  // when the dial ends, since the request may be gone by then.
  void start(uint64_t job_id, Forwarder& fwd, Decision d) {
    job_id_ = job_id;
    through_proxy_ = !d.chain.empty();
    decision_ = std::move(d);
    dial_ =
        fwd.forward_dial(decision_, [this](net::Conn conn, net::DialError err, std::string msg) {
          on_dialed(std::move(conn), err, std::move(msg));
        });
  }

  static int push_results(lua_State* L, ForwardOp& op) {
    lua_pushboolean(L, op.ok_);
    if (op.ok_) return 1;
    lua_pushstring(L, op.error_);
    lua_pushlstring(L, op.detail_.data(), op.detail_.size());
    return 3;
  }

 private:
  // From the loop, not inside Lua: the handle (dial_) stays until halt().
  void on_dialed(net::Conn conn, net::DialError err, std::string msg) {
    if (done()) return;
    Job* job = rt_.find_job(job_id_);
    Forwarder* fwd = job != nullptr ? job->forwarder : nullptr;
    if (err != net::DialError::kOk) {
      error_ = forward_error_name(err, through_proxy_);
      detail_ = std::move(msg);
    } else if (fwd == nullptr) {
      // The client left meanwhile: `conn` closes here.
      error_ = "request cancelled";
    } else {
      ok_ = true;
      // Before the commit: whatever the owner does with its route handle
      // from inside it must leave this routine running.
      rt_.mark_forwarded(*job);
      try {
        fwd->forward_commit(std::move(conn), std::move(decision_));
      } catch (const std::exception& e) {
        log::error("ruleset: await.forward: {}", e.what());
      }
    }
    complete();
  }
  void halt() override { dial_.reset(); }

  uint64_t job_id_ = 0;
  bool through_proxy_ = false;
  Decision decision_;
  std::unique_ptr<Cancellable> dial_;
  bool ok_ = false;
  const char* error_ = "request cancelled";
  std::string detail_;
};

int forward_impl(lua_State* L) {
  check_async(L, "await.forward");
  Runtime& rt = Runtime::of(L);
  Job* job = rt.job_on(L);
  if (job == nullptr || job->kind != JobKind::kRoute) {
    return luaL_error(L, "await.forward must be called from a ruleset request handler");
  }
  if (job->forwarder == nullptr) {
    return luaL_error(L, "await.forward: the request is not forwardable");
  }
  const int n = lua_gettop(L);
  // As in neosocksd: nothing (or nil) to forward to answers nil, and the
  // request stays open.
  if (n < 1 || lua_isnil(L, 1)) {
    lua_settop(L, 0);
    lua_pushnil(L);
    return 1;
  }
  for (int i = 1; i <= n; ++i) luaL_checkstring(L, i);
  const uint64_t job_id = job->id;
  auto* op = push_op<ForwardOp>(L);
  return wait_for(L, op, n + 1, [L, n, job_id, &rt](ForwardOp& o) {
    RpcTarget t = parse_rpc_target(L, 1, n, "await.forward");
    Job* j = rt.find_job(job_id);
    if (j == nullptr || j->forwarder == nullptr)
      throw std::runtime_error("await.forward: the request is not forwardable");
    o.start(job_id, *j->forwarder, Decision{std::move(t.addr), std::move(t.chain)});
  });
}

// ---- ok, seconds | false, err, detail = await.connect(addr, proxyN, ..., proxy1)
// A health probe: a connection through the chain, closed at once.

class ConnectOp : public Op {
 public:
  static constexpr const char* kName = "rs.await.connect";
  explicit ConnectOp(Runtime& rt) : Op(rt) {}

  void start(Decision d) {
    Host* host = rt_.host();
    if (host == nullptr) throw std::runtime_error("await.connect: dialing is not available");
    through_proxy_ = !d.chain.empty();
    started_ = ev_now(rt_.loop());
    dial_ = host->connect(d, [this](net::Conn conn, net::DialError err, std::string msg) {
      if (done()) return;
      seconds_ = ev_now(rt_.loop()) - started_;
      ok_ = err == net::DialError::kOk && conn;
      if (!ok_) {
        error_ = forward_error_name(err, through_proxy_);
        detail_ = std::move(msg);
      }
      conn.reset();  // a probe: connected is all it asks
      complete();
    });
    if (!dial_ && !done()) throw std::runtime_error("await.connect: dialing is not available");
  }

  static int push_results(lua_State* L, ConnectOp& op) {
    lua_pushboolean(L, op.ok_);
    if (op.ok_) {
      lua_pushnumber(L, op.seconds_);
      return 2;
    }
    lua_pushstring(L, op.error_);
    lua_pushlstring(L, op.detail_.data(), op.detail_.size());
    return 3;
  }

 private:
  void halt() override { dial_.reset(); }
  std::unique_ptr<Cancellable> dial_;
  bool through_proxy_ = false;
  double started_ = 0, seconds_ = 0;
  bool ok_ = false;
  const char* error_ = "system error";
  std::string detail_;
};

int connect_impl(lua_State* L) {
  check_async(L, "await.connect");
  const int n = lua_gettop(L);
  luaL_checkstring(L, 1);
  for (int i = 2; i <= n; ++i) luaL_checkstring(L, i);
  auto* op = push_op<ConnectOp>(L);
  return wait_for(L, op, n + 1, [L, n](ConnectOp& o) {
    RpcTarget t = parse_rpc_target(L, 1, n, "await.connect");
    o.start(Decision{std::move(t.addr), std::move(t.chain)});
  });
}

}  // namespace

void open_await(lua_State* L) {
  register_op<SleepOp>(L);
  register_op<IdleOp>(L);
  register_op<ResolveOp>(L);
  register_op<ExecuteOp>(L);
  register_op<InvokeOp>(L);
  register_op<ForwardOp>(L);
  register_op<ConnectOp>(L);
  const luaL_Reg funcs[] = {
      {"sleep", guarded<sleep_impl>},     {"idle", guarded<idle_impl>},
      {"resolve", guarded<resolve_impl>}, {"execute", guarded<execute_impl>},
      {"invoke", guarded<invoke_impl>},   {"forward", guarded<forward_impl>},
      {"connect", guarded<connect_impl>}, {nullptr, nullptr},
  };
  luaL_newlib(L, funcs);
  lua_setglobal(L, "await");
}

}  // namespace rs::ruleset::detail
