// The Engine facade: turns server requests into jobs on the Runtime and their
// outcomes into decisions and replies.
#include "ruleset/engine.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/log.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"
#include "proto/zlib_codec.hpp"
#include "ruleset/runtime.hpp"

namespace rs::ruleset {

using detail::JobKind;
using detail::Outcome;
using detail::Runtime;

namespace {

// Cancels a job when dropped; harmless once the job or the Engine is gone.
class JobHandle : public Cancellable {
 public:
  JobHandle(std::weak_ptr<Runtime> rt, uint64_t id) : rt_(std::move(rt)), id_(id) {}
  ~JobHandle() override {
    if (auto rt = rt_.lock()) rt->cancel(id_);
  }

 private:
  std::weak_ptr<Runtime> rt_;
  uint64_t id_;
};

// Restores the main thread's stack top on every path (host level: Lua does not
// longjmp here, it would panic instead).
class StackGuard {
 public:
  explicit StackGuard(lua_State* L) : L_(L), top_(lua_gettop(L)) {}
  ~StackGuard() { lua_settop(L_, top_); }
  StackGuard(const StackGuard&) = delete;
  StackGuard& operator=(const StackGuard&) = delete;

 private:
  lua_State* L_;
  int top_;
};

const char* method_of(Request::Kind kind) {
  switch (kind) {
    case Request::Kind::kResolve:
      return "resolve";
    case Request::Kind::kRoute:
      return "route";
    case Request::Kind::kRoute6:
      return "route6";
  }
  return "route";
}

const char* type_name(int type) {
  static constexpr const char* kNames[] = {"nil",      "boolean",  "light userdata",
                                           "number",   "string",   "table",
                                           "function", "userdata", "thread"};
  return type >= 0 && type < 9 ? kNames[type] : "unknown";
}

// A Lua string literal (for replies built on the C++ side).
std::string lua_quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\{:03d}", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

std::string rpc_reply(const Outcome& out) {
  if (out.ok && out.values.size() == 1 && out.values[0].type == LUA_TSTRING) {
    return "return " + out.values[0].str;
  }
  return "return false," + lua_quote(out.error);
}

// `return addr, proxyN, ..., proxy1` -> Decision; anything else says why not.
std::optional<Decision> decide(Outcome out, std::string* why) {
  if (!out.ok) {
    *why = std::move(out.error);
    return std::nullopt;
  }
  auto& v = out.values;
  if (v.empty() || v[0].type == LUA_TNIL) {
    *why = "rejected by the ruleset";
    return std::nullopt;
  }
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].type != LUA_TSTRING) {
      *why = fmt::format("bad ruleset result: value #{} is a {}, not a string", i + 1,
                         type_name(v[i].type));
      return std::nullopt;
    }
  }
  auto target = proto::parse_address(v[0].str);
  if (!target) {
    *why = fmt::format("bad ruleset result: invalid address \"{}\"", v[0].str);
    return std::nullopt;
  }
  Decision d;
  d.target = std::move(*target);
  d.chain.reserve(v.size() - 1);
  for (size_t i = v.size() - 1; i >= 1; --i) {
    auto uri = proto::parse_proxy_uri(v[i].str);
    if (!uri.ok()) {
      // By position: the URI's text may carry credentials, and `why` is logged.
      *why = fmt::format("bad ruleset result: value #{} is not a proxy URI: {}", i + 1, uri.error);
      return std::nullopt;
    }
    d.chain.push_back(std::move(uri.uri));
  }
  return d;
}

// Loads a chunk onto L's stack, or returns false with the message.
bool load_chunk(lua_State* L, std::string_view chunk, const std::string& name, std::string* err) {
  if (luaL_loadbufferx(L, chunk.data(), chunk.size(), name.c_str(), "t") == LUA_OK) return true;
  if (err != nullptr) *err = Runtime::describe(L, -1);
  lua_pop(L, 1);
  return false;
}

std::string chunk_name(std::string_view given, const char* fallback) {
  return given.empty() ? std::string(fallback) : std::string(given);
}

}  // namespace

Engine::Engine(ev::Loop* loop, net::Resolver* resolver, Host* host, EngineOptions opts)
    : rt_(std::make_shared<Runtime>(loop, resolver, host, opts)) {}

Engine::~Engine() = default;

bool Engine::load_file(const std::string& path, std::string* err) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  if (in) buf << in.rdbuf();
  if (!in) {
    *err = fmt::format("{}: cannot read the file", path);
    return false;
  }
  std::string chunk = std::move(buf).str();
  if (chunk.size() >= 2 && uint8_t(chunk[0]) == 0x1f && uint8_t(chunk[1]) == 0x8b) {
    proto::Inflated plain = proto::inflate_body(chunk, proto::Compression::kGzip);
    if (!plain.ok()) {
      *err = fmt::format("{}: {}", path, plain.message);
      return false;
    }
    chunk = std::move(plain.data);
  }
  auto dir = std::filesystem::path(path).parent_path();
  rt_->add_package_path(dir.empty() ? "." : dir.string());
  return update(chunk, "@" + path, err);
}

bool Engine::update(std::string_view chunk, std::string_view chunkname, std::string* err) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  if (!load_chunk(L, chunk, chunk_name(chunkname, "=ruleset"), err)) return false;
  lua_pushcfunction(L, detail::update_entry);
  lua_insert(L, -2);
  Outcome out = rt_->run_sync(1);
  if (!out.ok && err != nullptr) *err = std::move(out.error);
  return out.ok;
}

bool Engine::update_module(std::string_view name, std::string_view chunk,
                           std::string_view chunkname, std::string* err) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  if (!load_chunk(L, chunk, chunk_name(chunkname, "=module"), err)) return false;
  lua_pushcfunction(L, detail::module_entry);
  lua_insert(L, -2);
  lua_pushlstring(L, name.data(), name.size());
  lua_insert(L, -2);
  Outcome out = rt_->run_sync(2);
  if (!out.ok && err != nullptr) *err = std::move(out.error);
  return out.ok;
}

bool Engine::invoke(std::string_view chunk, std::string* err) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  if (!load_chunk(L, chunk, "=(invoke)", err)) return false;
  const uint64_t id = rt_->start_job(JobKind::kInvoke, 0, nullptr);
  detail::Job* job = rt_->find_job(id);
  if (job != nullptr && job->done) {
    const bool ok = job->outcome.ok;
    if (!ok && err != nullptr) *err = job->outcome.error;
    rt_->cancel(id);  // drop the pending delivery
    return ok;
  }
  // Still running: later errors are logged by the routine's finish.
  rt_->detach_job(id);
  return true;
}

std::unique_ptr<Cancellable> Engine::rpcall(std::string_view chunk,
                                            std::function<void(std::string)> cb) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  auto on_done = [cb = std::move(cb)](Outcome out) {
    // The caller gets the error too, but a neosocksd.invoke caller never
    // looks: say it here as well.
    if (!out.ok) log::warning("ruleset: rpcall: {}", out.error);
    cb(rpc_reply(out));
  };
  std::string err;
  uint64_t id = 0;
  if (!load_chunk(L, chunk, "=(rpcall)", &err)) {
    id = rt_->post_outcome(Outcome{false, {}, std::move(err)}, std::move(on_done));
  } else {
    // _ENV = setmetatable({}, {__index = _G}): the caller's globals stay its own.
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setupvalue(L, -2, 1);
    id = rt_->start_job(JobKind::kRpcall, 0, std::move(on_done));
  }
  return std::make_unique<JobHandle>(rt_, id);
}

std::unique_ptr<Cancellable> Engine::route(Request req, RouteCallback cb) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  const char* method = method_of(req.kind);
  auto on_done = [cb = std::move(cb), method, addr = req.addr](Outcome out) {
    const bool raised = !out.ok;
    std::string why;
    auto decision = decide(std::move(out), &why);
    if (!decision) {
      if (raised) {
        log::warning("ruleset.{}(\"{}\"): {}", method, addr, why);
      } else {
        log::debug("ruleset.{}(\"{}\"): {}", method, addr, why);
      }
    }
    cb(std::move(decision), std::move(why));
  };
  uint64_t id = 0;
  if (!has_ruleset()) {
    id = rt_->post_outcome(Outcome{false, {}, "no ruleset is loaded"}, std::move(on_done));
  } else {
    lua_pushboolean(L, 1);  // the method is required
    lua_pushcclosure(L, detail::method_entry, 1);
    lua_pushstring(L, method);
    lua_pushlstring(L, req.addr.data(), req.addr.size());
    for (const auto* s : {&req.username, &req.password}) {
      if (s->has_value()) {
        lua_pushlstring(L, (*s)->data(), (*s)->size());
      } else {
        lua_pushnil(L);
      }
    }
    if (req.client.empty()) {
      lua_pushnil(L);
    } else {
      lua_pushlstring(L, req.client.data(), req.client.size());
    }
    int nargs = 5;
    if (req.udp) {
      lua_pushliteral(L, "udp");
      ++nargs;
    }
    id = rt_->start_job(JobKind::kRoute, nargs, std::move(on_done), req.forwarder);
  }
  return std::make_unique<JobHandle>(rt_, id);
}

size_t Engine::gc() {
  return rt_->gc();
}

namespace {

// Pushes what runs the optional ruleset.`method` synchronously (its
// arguments follow).
void push_optional_method(lua_State* L, const char* method) {
  lua_pushboolean(L, 0);  // optional: absent answers nothing
  lua_pushcclosure(L, detail::method_entry, 1);
  lua_pushstring(L, method);
}

}  // namespace

std::string Engine::optional_text(const char* method, Outcome out) {
  if (!out.ok) {
    rt_->note_error(std::string("ruleset.") + method, out.error);
    return {};
  }
  if (out.values.empty() || out.values[0].type != LUA_TSTRING) return {};
  return std::move(out.values[0].str);
}

std::string Engine::stats(double dt, std::string_view q) {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  push_optional_method(L, "stats");
  lua_pushnumber(L, dt);
  lua_pushlstring(L, q.data(), q.size());
  return optional_text("stats", rt_->run_sync(3));
}

std::optional<std::string> Engine::healthy() {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  push_optional_method(L, "healthy");
  Outcome out = rt_->run_sync(1);
  if (!out.ok) {
    rt_->note_error("ruleset.healthy", out.error);
    return "ruleset.healthy: " + out.error;
  }
  if (out.values.empty() || out.values[0].type != LUA_TSTRING || out.values[0].str.empty())
    return std::nullopt;
  return std::move(out.values[0].str);
}

std::string Engine::metrics() {
  lua_State* L = rt_->L();
  StackGuard guard(L);
  push_optional_method(L, "metrics");
  return optional_text("metrics", rt_->run_sync(1));
}

size_t Engine::memory_bytes() const {
  return rt_->memory_bytes();
}
size_t Engine::memory_objects() const {
  return rt_->memory_objects();
}
size_t Engine::routines_alive() const {
  return rt_->routines_alive();
}
size_t Engine::coroutine_pool_size() const {
  return rt_->pool_size();
}
size_t Engine::pending_awaits() const {
  return rt_->pending_awaits();
}

bool Engine::has_ruleset() const {
  lua_State* L = rt_->L();
  const bool has = lua_rawgetp(L, LUA_REGISTRYINDEX, &detail::kRulesetKey) == LUA_TTABLE;
  lua_pop(L, 1);
  return has;
}

}  // namespace rs::ruleset
