// The Lua ruleset host: one lua_State running a neosocksd-compatible ruleset on
// the loop thread.
//
// Ownership: the Engine owns the lua_State and everything Lua can reach
// (routines, pending await.* operations, the tick timer). It borrows the loop,
// the resolver and the Host, which must outlive it. Handles returned by route()
// and rpcall() may outlive the Engine; destroying them then does nothing.
//
// Every callback the Engine makes (route, rpcall) runs later from the loop,
// never inside the call that asked for it. Ruleset failures (errors, bad return
// values, --memlimit, the instruction limit) fail that one request, are logged,
// and leave the Engine working.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/cancellable.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/dial_error.hpp"
#include "net/resolver.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"

struct lua_State;

namespace rs::ruleset {

namespace detail {
class Runtime;
struct Outcome;
}  // namespace detail

// Where to send it: `target` through `chain`, parsed once by the engine.
struct Decision {
  proto::Address target;
  // Hops in dial order, first hop first: the reverse of Lua's
  // `return addr, proxyN, ..., proxy1`.
  std::vector<proto::ProxyUri> chain;
};

// await.forward's way back to the request's owner (a Session, an HttpProxy):
// the ruleset dials from inside its callback and, on success, hands the
// connection over before the callback returns. Implemented by the server;
// every method runs on the loop thread, never inside Lua frames.
struct Forwarder {
  virtual ~Forwarder() = default;
  using DialCallback = std::function<void(net::Conn conn, net::DialError err, std::string msg)>;
  // Dials d.target through d.chain (dial order) bounded by the server's
  // timeout, then cb once, from the loop. Destroying the handle cancels (no
  // callback after that); it is never destroyed inside cb. May throw.
  virtual std::unique_ptr<Cancellable> forward_dial(const Decision& d, DialCallback cb) = 0;
  // A dial succeeded: the request is answered over `conn` (reply, then relay;
  // TLS already when the last hop is https:// or socks5s://).
  // Called at most once per request; after it the route callback is never
  // called, and the owner may drop the route handle at once.
  virtual void forward_commit(net::Conn conn, Decision d) = 0;
};

// One proxy request, as the ruleset callbacks see it.
struct Request {
  enum class Kind { kResolve, kRoute, kRoute6 } kind = Kind::kResolve;
  std::string addr;  // "example.org:80", "1.2.3.4:80", "[::1]:80"
  std::optional<std::string> username, password;
  // The client's address ("192.0.2.7:56324"), the PROXY protocol's source
  // when the listener takes one: the callbacks' fourth argument. Empty: nil.
  std::string client;
  // A destination of a SOCKS5 UDP association rather than a TCP connection:
  // the callback gets "udp" as its fifth argument (nil for TCP).
  bool udp = false;
  // Borrowed; must outlive the route handle. nullptr: await.forward raises
  // "the request is not forwardable".
  Forwarder* forwarder = nullptr;
};

// neosocksd.config(): the server's options as plain data. An empty string
// stays nil in the table, as in neosocksd (an empty string would be true).
struct HostConfig {
  int loglevel = 0;
  double timeout = 0;
  bool auth_required = false, traceback = false, bidir_timeout = false, pipe = false,
       reuseport = false;
  uint64_t max_sessions = 0;
  uint64_t memlimit_mib = 0;
  std::string listen, http;  // the first -l / --http
  std::string api;           // --api, also shown as neosocksd's "restapi"
  std::string proxy, forward, ruleset, version;
};

// neosocksd.stats(): the server's counters as plain data (the engine adds its
// own: bytes_allocated, num_object, lasterror). Names are the table's keys.
struct HostStats {
  uint64_t num_halfopen = 0, num_sessions = 0, num_sessions_peak = 0;
  uint64_t num_accept = 0, num_serve = 0;
  uint64_t num_request = 0, num_success = 0;  // proxy requests only, never API ones
  uint64_t num_reject_ruleset = 0, num_reject_timeout = 0, num_reject_upstream = 0,
           num_reject_bad = 0;
  uint64_t byt_up = 0, byt_down = 0;
  uint64_t num_api_request = 0, num_api_success = 0, num_api_unauthorized = 0;
  uint64_t num_dns_query = 0, num_dns_success = 0;
  double uptime = 0;
};

// Server state that Lua may see, implemented by the server so that the ruleset
// module does not depend on it. Every method runs on the loop thread.
struct Host {
  virtual ~Host() = default;
  // Called once when the VM opens, after the libraries: may add globals (tests
  // do). Runs inside a protected call; exceptions are caught.
  virtual void on_open(lua_State* /*L*/) {}
  // The rest run inside Lua but in no frame that Lua may unwind: they may throw
  // (the engine turns that into a Lua error once their objects are gone) and
  // never touch the lua_State.
  virtual HostConfig config() = 0;
  virtual HostStats stats() = 0;
  // RPC client for await.invoke / neosocksd.invoke: POST `code` to `addr`
  // through `chain` (dial order; parsed by the engine at the Lua boundary), then
  // cb(true, reply body) or cb(false, error). Destroying the handle cancels (no
  // callback after that). Returns nullptr when RPC is unavailable. Runs inside
  // Lua (no Lua call in its frames): it must not call back into the Engine
  // synchronously.
  // `tls`: the target was written https://host:port (its API speaks HTTPS).
  virtual std::unique_ptr<Cancellable> invoke(
      std::string code, proto::Address addr, std::vector<proto::ProxyUri> chain, bool tls,
      std::function<void(bool ok, std::string body_or_error)> cb) = 0;
  // await.connect: dials d.target through d.chain (dial order, parsed by the
  // engine) bounded by the server's timeout, never to the API, then cb once
  // (the engine closes the connection). Destroying the handle cancels.
  // Returns nullptr when the host cannot dial. Same rules as invoke().
  virtual std::unique_ptr<Cancellable> connect(const Decision& /*d*/,
                                               Forwarder::DialCallback /*cb*/) {
    return nullptr;
  }
  // neosocksd.setapikey(addr, key): the API key invoke() sends to `addr`
  // from now on; an empty key sends none, nullopt goes back to the node's
  // own (--api-key). May throw (hosts without RPC).
  virtual void set_api_key(const proto::Address& /*addr*/, std::optional<std::string> /*key*/) {
    throw std::runtime_error("neosocksd.setapikey: RPC is not available");
  }
};

struct EngineOptions {
  size_t memlimit_bytes = 0;  // 0: unlimited
  bool traceback = false;     // append a Lua traceback to ruleset errors
  // Lua VM instructions one resume may run (count hook); 0: unlimited.
  uint64_t instruction_limit = 100'000'000;
  std::vector<std::string> lua_path_dirs;  // prepended to package.path
  // For the blocking neosocksd.resolve (await.resolve uses the Resolver's own).
  net::Family resolve_family = net::Family::kAny;
};

class Engine {
 public:
  // `resolver` and `host` may be null: await.resolve then blocks like
  // neosocksd.resolve, and RPC raises "not available". Throws on failure to
  // create the VM.
  Engine(ev::Loop* loop, net::Resolver* resolver, Host* host, EngineOptions opts);
  // Cancels every routine and pending await without calling back, closes the VM.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads FILE (or gzip-compressed FILE, detected by its magic) as the ruleset;
  // the file's directory is prepended to package.path.
  bool load_file(const std::string& path, std::string* err);
  // Replaces the ruleset with the table the chunk returns, else _G.ruleset. On
  // any error the previous ruleset stays.
  bool update(std::string_view chunk, std::string_view chunkname, std::string* err);
  // Replaces package.loaded[name] with what the chunk returns (true for nil), and
  // _G[name] too if it referred to the old module.
  bool update_module(std::string_view name, std::string_view chunk, std::string_view chunkname,
                     std::string* err);
  // /ruleset/invoke: runs the chunk as an asynchronous routine. Errors up to its
  // first yield are returned; later ones are logged.
  bool invoke(std::string_view chunk, std::string* err);
  // /ruleset/rpcall: runs the chunk as an asynchronous routine in an environment
  // whose __index is _G; cb gets the reply body `return <marshal(ok, ...)>`.
  std::unique_ptr<Cancellable> rpcall(std::string_view chunk, std::function<void(std::string)> cb);

  // Asks ruleset.resolve / route / route6 (addr, username, password) in a
  // routine. `error` says why a request was rejected, for the logs. Destroying
  // the handle cancels the routine and everything it awaits, except after
  // await.forward succeeded: the routine then runs on, its result ignored.
  using RouteCallback = std::function<void(std::optional<Decision> d, std::string error)>;
  [[nodiscard]] std::unique_ptr<Cancellable> route(Request req, RouteCallback cb);

  size_t gc();  // full collection; returns the bytes freed
  // ruleset.stats(dt, q), or "" when absent or failing.
  std::string stats(double dt, std::string_view q);
  // ruleset.healthy(), run like stats(): nullopt when healthy (no ruleset, no
  // such function, or it returned anything but a non-empty string); otherwise
  // why not: the string it returned, or its error. It may not wait: await.*
  // raises "not in an asynchronous routine", and a bare coroutine.yield() is
  // closed at once as "attempt to yield from a synchronous callback".
  std::optional<std::string> healthy();
  // ruleset.metrics(), run like stats(): Prometheus text appended to
  // /metrics, or "" when absent, failing or not a string.
  std::string metrics();

  size_t memory_bytes() const;
  size_t memory_objects() const;       // live Lua heap blocks (neosocksd's num_object)
  size_t routines_alive() const;       // routines started and not yet ended
  size_t coroutine_pool_size() const;  // idle threads kept for reuse
  size_t pending_awaits() const;       // await.* operations in flight
  bool has_ruleset() const;

 private:
  // The text an optional synchronous callback returned, or "" (errors noted).
  std::string optional_text(const char* method, detail::Outcome out);

  std::shared_ptr<detail::Runtime> rt_;
};

}  // namespace rs::ruleset
