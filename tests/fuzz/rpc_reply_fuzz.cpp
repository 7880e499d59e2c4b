// The RPC reply reader: the body an RPC peer answers to await.invoke, which the
// caller loads as Lua text (`return <marshal(...)>`) in an empty environment
// (ruleset/await.cpp, InvokeOp::push_results). A real Engine runs a routine
// that calls await.invoke; the fake Host answers with the fuzz input as the
// reply body, and the loop resumes the routine, which calls the result
// function under the engine's instruction and memory limits.
//
// Checks, in the routine: result() never raises; and what it returns, when it
// can be marshalled, reads back (with the same reader) as values that marshal
// to the same text, i.e. marshal and the reply reader round trip.
#include <lua.hpp>

#include "core/log.hpp"
#include "fuzz_util.hpp"
#include "ruleset/engine.hpp"

using namespace rs;

namespace {

// The routine. Failures are left in the global fuzz_error.
constexpr char kChunk[] = R"lua(
-- Running out of the instruction or memory budget is the reply's right. (Like
-- lauxlib's buffers, marshal's scratch memory gets no emergency collection, so
-- garbage near the limit can make it fail too.)
local function limited(err)
  err = tostring(err)
  return err:find("instruction limit exceeded", 1, true) or err:find("not enough memory", 1, true)
      or err:find("marshal: out of memory", 1, true)
end
local ok, result = await.invoke("return true", "192.0.2.1:9080")
-- A reply that does not load is an error message.
if ok == false and type(result) == "string" then
  fuzz_done = true
  return
end
if ok ~= true or type(result) ~= "function" then
  fuzz_error = "await.invoke gave " .. tostring(ok) .. ", " .. type(result)
  return
end
local r = table.pack(pcall(result))
if not r[1] then
  fuzz_error = "result() raised: " .. tostring(r[2])
  return
end
local okm, text = pcall(marshal, table.unpack(r, 2, r.n))
-- Tables as keys are written in traversal order, which differs between copies.
if okm and not text:find("[{", 1, true) then
  local f, err = load("return " .. text, "=(again)", "t", {})
  if not f then
    if not limited(err) then fuzz_error = "marshal output does not load: " .. err .. ": " .. text end
    return
  end
  local again = table.pack(pcall(f))
  if not again[1] then
    if not limited(again[2]) then fuzz_error = "marshal output fails: " .. tostring(again[2]) end
    return
  end
  local okm2, text2 = pcall(marshal, table.unpack(again, 2, again.n))
  if not okm2 then
    if not limited(text2) then fuzz_error = "marshal fails on its own output: " .. tostring(text2) end
    return
  end
  if text2 ~= text then fuzz_error = "round trip: " .. text .. " -> " .. text2 end
end
fuzz_done = true
)lua";

struct NoopCall : Cancellable {};

struct FakeHost : ruleset::Host {
  lua_State* L = nullptr;
  std::function<void(bool, std::string)> pending;
  void on_open(lua_State* state) override { L = state; }
  ruleset::HostConfig config() override { return {}; }
  ruleset::HostStats stats() override { return {}; }
  std::unique_ptr<Cancellable> invoke(std::string, proto::Address, std::vector<proto::ProxyUri>,
                                      bool, std::function<void(bool, std::string)> cb) override {
    pending = std::move(cb);
    return std::make_unique<NoopCall>();
  }
};

struct World {
  ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
  FakeHost host;
  std::unique_ptr<ruleset::Engine> engine;
  World() {
    ruleset::EngineOptions opts;
    opts.memlimit_bytes = 64 << 20;
    opts.instruction_limit = 1'000'000;
    engine = std::make_unique<ruleset::Engine>(loop, nullptr, &host, opts);
  }
};

World& world() {
  static World* w = new World;
  return *w;
}

std::string take_global(lua_State* L, const char* name) {
  lua_getglobal(L, name);
  std::string out;
  if (lua_type(L, -1) == LUA_TSTRING) out = lua_tostring(L, -1);
  if (lua_toboolean(L, -1) && out.empty()) out = "true";
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setglobal(L, name);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::threshold = log::kFatal;
  world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  std::string err;
  FUZZ_CHECK(w.engine->invoke(kChunk, &err));
  FUZZ_CHECK(w.host.pending != nullptr);
  auto reply = std::move(w.host.pending);
  w.host.pending = nullptr;
  reply(true, std::string(reinterpret_cast<const char*>(data), size));
  for (int i = 0; i < 100 && w.engine->routines_alive() > 0; ++i) ev_run(w.loop, EVRUN_NOWAIT);
  FUZZ_CHECK(w.engine->routines_alive() == 0);
  FUZZ_CHECK(w.engine->pending_awaits() == 0);
  std::string failure = take_global(w.host.L, "fuzz_error");
  if (!failure.empty()) {
    std::fprintf(stderr, "rpc reply: %.2000s\n", failure.c_str());
    FUZZ_CHECK(failure.empty());
  }
  take_global(w.host.L, "fuzz_done");
  // Garbage left by one input should not decide whether the next hits the limit.
  if (w.engine->memory_bytes() > (size_t{4} << 20)) w.engine->gc();
  return 0;
}
