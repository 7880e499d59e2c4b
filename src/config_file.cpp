#include "config_file.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <lua.hpp>
#include <map>
#include <memory>
#include <sstream>

#include "core/loop.hpp"
#include "proto/zlib_codec.hpp"
#include "ruleset/engine.hpp"
#include "version.hpp"

namespace rs {
namespace {

// One field's value, copied out of Lua before anything else looks at it.
struct Value {
  enum Type { kString, kList, kInteger, kNumber, kBoolean } type = kString;
  std::string s;
  std::vector<std::string> list;
  int64_t i = 0;
  double d = 0;
  bool b = false;
  const char* type_name() const {
    switch (type) {
      case kString:
        return "a string";
      case kList:
        return "a list of strings";
      case kInteger:
        return "an integer";
      case kNumber:
        return "a number";
      case kBoolean:
        return "a boolean";
    }
    return "?";
  }
};

// Thrown by a field's setter with the reason; the caller adds file and field.
struct FieldError {
  std::string why;
};

std::string expect_string(const Value& v) {
  if (v.type != Value::kString) throw FieldError{"must be a string"};
  return v.s;
}
std::vector<std::string> expect_list(const Value& v) {
  if (v.type == Value::kString) return {v.s};
  if (v.type == Value::kList) return v.list;
  throw FieldError{"must be a string or a list of strings"};
}
bool expect_bool(const Value& v) {
  if (v.type != Value::kBoolean) throw FieldError{"must be a boolean"};
  return v.b;
}
int64_t expect_int(const Value& v, int64_t lo, int64_t hi) {
  if (v.type != Value::kInteger) throw FieldError{"must be an integer"};
  if (v.i < lo || v.i > hi) throw FieldError{fmt::format("is out of range ({} - {})", lo, hi)};
  return v.i;
}
double expect_number(const Value& v, double lo, double hi) {
  double d = v.type == Value::kInteger  ? static_cast<double>(v.i)
             : v.type == Value::kNumber ? v.d
                                        : throw FieldError{"must be a number"};
  if (!(d >= lo && d <= hi)) throw FieldError{fmt::format("is out of range ({} - {})", lo, hi)};
  return d;
}

// A Lua string literal for any bytes: control bytes and quotes escaped, with
// three-digit decimal escapes (a shorter one would swallow a following digit).
std::string lua_quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '\\' || ch == '"') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20 || ch >= 0x7f) {
      out += fmt::format("\\{:03d}", ch);
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

constexpr int64_t kIntMax = INT32_MAX;

// Address classes of --block-outbound, as neosocksd's block_* booleans.
void set_block(Config& c, net::AddrClass k, const Value& v) {
  if (expect_bool(v)) {
    c.block_outbound |= net::class_bit(k);
  } else {
    c.block_outbound &= ~net::class_bit(k);
  }
}
bool blocks(const Config& c, net::AddrClass k) {
  return (c.block_outbound & net::class_bit(k)) != 0;
}

std::string str(const std::string& s) {
  return s.empty() ? "nil" : lua_quote(s);
}
std::string list(const std::vector<std::string>& v) {
  std::string out = "{";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : " ") + lua_quote(v[i]);
  return out + (v.empty() ? "}" : " }");
}
std::string boolean(bool b) {
  return b ? "true" : "false";
}

struct Field {
  const char* name;
  std::function<void(Config&, const Value&)> set;
  // Its value in --dump-config; nullptr: an alias, not written.
  std::function<std::string(const Config&)> dump;
};

// Every flag as a field, neosocksd's name first where it has one; the order
// is --dump-config's. Aliases (rulesocks's names, as neosocksd.config()
// shows them) follow their field.
const std::vector<Field>& fields() {
  using K = net::AddrClass;
  static const std::vector<Field> table = {
      {"listen", [](Config& c, const Value& v) { c.listen = expect_list(v); },
       [](const Config& c) { return list(c.listen); }},
      {"http_listen",
       [](Config& c, const Value& v) {
         // true: the bare --http (the -l listeners speak HTTP CONNECT).
         if (v.type == Value::kBoolean) {
           c.http_all = v.b;
           return;
         }
         c.http_listen = expect_list(v);
       },
       [](const Config& c) { return c.http_all ? std::string("true") : list(c.http_listen); }},
      {"http", nullptr, nullptr},
      {"forward", [](Config& c, const Value& v) { c.forward = expect_string(v); },
       [](const Config& c) { return str(c.forward); }},
      {"proxy", [](Config& c, const Value& v) { c.proxy = expect_string(v); },
       [](const Config& c) { return str(c.proxy); }},
      {"restapi", [](Config& c, const Value& v) { c.api = expect_string(v); },
       [](const Config& c) { return str(c.api); }},
      {"api", nullptr, nullptr},
      {"api_key", [](Config& c, const Value& v) { c.api_key = expect_string(v); },
       // From a file the key stays there: only the file is named.
       [](const Config& c) { return c.api_key_file.empty() ? str(c.api_key) : "nil"; }},
      {"api_key_file", [](Config& c, const Value& v) { c.api_key_file = expect_string(v); },
       [](const Config& c) { return str(c.api_key_file); }},
      {"ruleset", [](Config& c, const Value& v) { c.ruleset = expect_string(v); },
       [](const Config& c) { return str(c.ruleset); }},
      {"nameserver", [](Config& c, const Value& v) { c.nameserver = expect_string(v); },
       [](const Config& c) { return str(c.nameserver); }},
      {"netdev", [](Config& c, const Value& v) { c.netdev = expect_string(v); },
       [](const Config& c) { return str(c.netdev); }},
      {"user_name", [](Config& c, const Value& v) { c.user = expect_string(v); },
       [](const Config& c) { return str(c.user); }},
      {"user", nullptr, nullptr},
      {"loglevel",
       [](Config& c, const Value& v) { c.loglevel = static_cast<int>(expect_int(v, 0, 8)); },
       [](const Config& c) { return std::to_string(c.loglevel); }},
      {"log",
       [](Config& c, const Value& v) {
         auto s = expect_string(v);
         if (s != "stdout" && s != "stderr" && s != "syslog" && s != "discard")
           throw FieldError{"must be one of stdout, stderr, syslog, discard"};
         c.log_output = s;
       },
       [](const Config& c) { return str(c.log_output); }},
      {"resolve_pf",
       [](Config& c, const Value& v) {
         // neosocksd's PF_UNSPEC / PF_INET / PF_INET6 (Linux values).
         auto pf = expect_int(v, 0, kIntMax);
         if (pf != 0 && pf != 2 && pf != 10)
           throw FieldError{"must be 0 (any), 2 (PF_INET, -4) or 10 (PF_INET6, -6)"};
         c.family = pf == 2 ? 4 : pf == 10 ? 6 : 0;
       },
       [](const Config& c) {
         return std::to_string(c.family == 4 ? 2 : c.family == 6 ? 10 : 0);
       }},
      {"timeout", [](Config& c, const Value& v) { c.timeout = expect_number(v, 0.1, 86400.0); },
       [](const Config& c) { return fmt::format("{:.17g}", c.timeout); }},
      {"memlimit",
       [](Config& c, const Value& v) {
         c.memlimit_mib = static_cast<size_t>(expect_int(v, 0, kIntMax >> 10));
       },
       [](const Config& c) { return std::to_string(c.memlimit_mib); }},
      {"auth_required", [](Config& c, const Value& v) { c.auth_required = expect_bool(v); },
       [](const Config& c) { return boolean(c.auth_required); }},
      {"bidir_timeout", [](Config& c, const Value& v) { c.bidir_timeout = expect_bool(v); },
       [](const Config& c) { return boolean(c.bidir_timeout); }},
      {"pipe", [](Config& c, const Value& v) { c.pipe = expect_bool(v); },
       [](const Config& c) { return boolean(c.pipe); }},
      {"reuseport", [](Config& c, const Value& v) { c.reuseport = expect_bool(v); },
       [](const Config& c) { return boolean(c.reuseport); }},
      {"workers",
       [](Config& c, const Value& v) { c.workers = static_cast<unsigned>(expect_int(v, 1, 256)); },
       [](const Config& c) { return std::to_string(c.workers); }},
      {"tcp_fastopen", [](Config& c, const Value& v) { c.tcp_fastopen = expect_bool(v); },
       [](const Config& c) { return boolean(c.tcp_fastopen); }},
      {"tcp_nodelay", [](Config& c, const Value& v) { c.tcp_nodelay = expect_bool(v); },
       [](const Config& c) { return boolean(c.tcp_nodelay); }},
      {"tcp_keepalive", [](Config& c, const Value& v) { c.tcp_keepalive = expect_bool(v); },
       [](const Config& c) { return boolean(c.tcp_keepalive); }},
      {"transparent", [](Config& c, const Value& v) { c.tproxy = expect_bool(v); },
       [](const Config& c) { return boolean(c.tproxy); }},
      {"traceback", [](Config& c, const Value& v) { c.traceback = expect_bool(v); },
       [](const Config& c) { return boolean(c.traceback); }},
      {"daemonize", [](Config& c, const Value& v) { c.daemonize = expect_bool(v); },
       [](const Config& c) { return boolean(c.daemonize); }},
      {"block_loopback", [](Config& c, const Value& v) { set_block(c, K::kLoopback, v); },
       [](const Config& c) { return boolean(blocks(c, K::kLoopback)); }},
      {"block_multicast", [](Config& c, const Value& v) { set_block(c, K::kMulticast, v); },
       [](const Config& c) { return boolean(blocks(c, K::kMulticast)); }},
      {"block_local", [](Config& c, const Value& v) { set_block(c, K::kLocal, v); },
       [](const Config& c) { return boolean(blocks(c, K::kLocal)); }},
      {"block_global", [](Config& c, const Value& v) { set_block(c, K::kGlobal, v); },
       [](const Config& c) { return boolean(blocks(c, K::kGlobal)); }},
      {"tcp_sndbuf",
       [](Config& c, const Value& v) {
         c.tcp_sndbuf = static_cast<int>(expect_int(v, 0, kIntMax));
       },
       [](const Config& c) { return std::to_string(c.tcp_sndbuf); }},
      {"tcp_rcvbuf",
       [](Config& c, const Value& v) {
         c.tcp_rcvbuf = static_cast<int>(expect_int(v, 0, kIntMax));
       },
       [](const Config& c) { return std::to_string(c.tcp_rcvbuf); }},
      {"max_sessions",
       [](Config& c, const Value& v) {
         c.max_sessions = static_cast<size_t>(expect_int(v, 0, kIntMax));
       },
       [](const Config& c) { return std::to_string(c.max_sessions); }},
      {"startup_limit_start",
       [](Config& c, const Value& v) {
         c.max_startups.start = static_cast<unsigned>(expect_int(v, 0, kIntMax));
       },
       [](const Config& c) { return std::to_string(c.max_startups.start); }},
      {"startup_limit_rate",
       [](Config& c, const Value& v) {
         c.max_startups.rate = static_cast<unsigned>(expect_int(v, 0, 100));
       },
       [](const Config& c) { return std::to_string(c.max_startups.rate); }},
      {"startup_limit_full",
       [](Config& c, const Value& v) {
         c.max_startups.full = static_cast<unsigned>(expect_int(v, 0, kIntMax));
       },
       [](const Config& c) { return std::to_string(c.max_startups.full); }},
      {"accept_proxy_protocol",
       [](Config& c, const Value& v) { c.accept_proxy_protocol = expect_bool(v); },
       [](const Config& c) { return boolean(c.accept_proxy_protocol); }},
      {"send_proxy_protocol",
       [](Config& c, const Value& v) {
         auto s = expect_string(v);
         if (s != "v1" && s != "v2") throw FieldError{"must be \"v1\" or \"v2\""};
         c.send_proxy_protocol = s == "v1" ? 1 : 2;
       },
       [](const Config& c) {
         return c.send_proxy_protocol == 0 ? std::string("nil")
                                           : lua_quote(c.send_proxy_protocol == 1 ? "v1" : "v2");
       }},
      // neosocksd features rulesocks does not have: false (what neosocksd's
      // --dump-config writes by default) is accepted, true refused.
      {"tls_cert", [](Config& c, const Value& v) { c.tls_cert = expect_string(v); },
       [](const Config& c) { return str(c.tls_cert); }},
      {"tls_key", [](Config& c, const Value& v) { c.tls_key = expect_string(v); },
       [](const Config& c) { return str(c.tls_key); }},
      {"tls_client_ca", [](Config& c, const Value& v) { c.tls_client_ca = expect_string(v); },
       [](const Config& c) { return str(c.tls_client_ca); }},
      {"tls_ca", [](Config& c, const Value& v) { c.tls_ca = expect_string(v); },
       [](const Config& c) { return str(c.tls_ca); }},
      {"socks5_bind", [](Config& c, const Value& v) { c.socks5_bind = expect_bool(v); },
       [](const Config& c) { return boolean(c.socks5_bind); }},
      {"socks5_bind_any_peer", [](Config& c, const Value& v) { c.bind_any_peer = expect_bool(v); },
       [](const Config& c) { return boolean(c.bind_any_peer); }},
      {"socks5_udp", [](Config& c, const Value& v) { c.udp.enable = expect_bool(v); },
       [](const Config& c) { return boolean(c.udp.enable); }},
      {"udp_advertise", [](Config& c, const Value& v) { c.udp.advertise = expect_string(v); },
       [](const Config& c) { return str(c.udp.advertise); }},
      {"udp_timeout",
       [](Config& c, const Value& v) { c.udp.timeout = expect_number(v, 1.0, 86400.0); },
       [](const Config& c) { return fmt::format("{:.17g}", c.udp.timeout); }},
      {"udp_max_associations",
       [](Config& c, const Value& v) {
         c.udp.max_associations = static_cast<size_t>(expect_int(v, 1, 1 << 20));
       },
       [](const Config& c) { return std::to_string(c.udp.max_associations); }},
      {"udp_max_per_client",
       [](Config& c, const Value& v) {
         c.udp.max_per_client = static_cast<size_t>(expect_int(v, 1, 1 << 20));
       },
       [](const Config& c) { return std::to_string(c.udp.max_per_client); }},
      {"udp_max_pending",
       [](Config& c, const Value& v) {
         c.udp.max_pending = static_cast<size_t>(expect_int(v, 1024, 1 << 30));
       },
       [](const Config& c) { return std::to_string(c.udp.max_pending); }},
      // neosocksd features rulesocks does not have: false (what neosocksd's
      // --dump-config writes by default) is accepted, true refused.
      {"tcp_fastopen_connect",
       [](Config&, const Value& v) {
         if (expect_bool(v)) throw FieldError{"client-side TCP Fast Open is not supported"};
       },
       nullptr},
  };
  return table;
}

// Aliases: rulesocks's names for neosocksd's fields.
const char* canonical(const std::string& name) {
  if (name == "http") return "http_listen";
  if (name == "api") return "restapi";
  if (name == "user") return "user_name";
  return nullptr;
}

const Field* find_field(const std::string& name) {
  const char* target = canonical(name);
  const std::string key = target ? target : name;
  for (const auto& f : fields())
    if (key == f.name && f.set) return &f;
  return nullptr;
}

struct LuaClose {
  void operator()(lua_State* L) const { lua_close(L); }
};

// Copies the table at the top of the stack (the options pass's reply: plain
// data) into `out`. Only raw accesses on values whose type was checked, none
// of which can raise a Lua error but for lack of memory (then the state's
// panic aborts, at start-up or on SIGHUP).
std::optional<std::string> read_table(lua_State* L, std::map<std::string, Value>& out) {
  const int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 2);
      return std::string("field names must be strings");
    }
    size_t n = 0;
    const char* k = lua_tolstring(L, -2, &n);
    std::string key(k, n);
    Value v;
    switch (lua_type(L, -1)) {
      case LUA_TSTRING: {
        const char* s = lua_tolstring(L, -1, &n);
        v.s.assign(s, n);
        break;
      }
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) {
          v.type = Value::kInteger;
          v.i = lua_tointeger(L, -1);
        } else {
          v.type = Value::kNumber;
          v.d = lua_tonumber(L, -1);
        }
        break;
      case LUA_TBOOLEAN:
        v.type = Value::kBoolean;
        v.b = lua_toboolean(L, -1) != 0;
        break;
      case LUA_TTABLE:
        v.type = Value::kList;
        for (lua_Integer i = 1;; ++i) {
          const int ty = lua_rawgeti(L, -1, i);
          if (ty == LUA_TNIL) {
            lua_pop(L, 1);
            break;
          }
          if (ty != LUA_TSTRING) {
            lua_pop(L, 3);
            return "field `" + key + "' must be a string or a list of strings";
          }
          const char* s = lua_tolstring(L, -1, &n);
          v.list.emplace_back(s, n);
          lua_pop(L, 1);
        }
        break;
      default:
        lua_pop(L, 2);
        return fmt::format("field `{}' has the wrong type", key);
    }
    lua_pop(L, 1);
    out.emplace(std::move(key), std::move(v));
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> read_config_source(const std::string& path, std::string* err) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *err = "cannot open " + path;
    return std::nullopt;
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  std::string data = std::move(buf).str();
  if (data.size() >= 2 && static_cast<uint8_t>(data[0]) == 0x1f &&
      static_cast<uint8_t>(data[1]) == 0x8b) {
    auto out = proto::inflate_body(data, proto::Compression::kGzip);
    if (!out.ok()) {
      *err = path + ": gzip: " + out.message;
      return std::nullopt;
    }
    return std::move(out.data);
  }
  return data;
}

namespace {

// The options pass: runs the file in a ruleset VM of its own (so that it may
// require libruleset or call neosocksd.* as it would in neosocksd) and
// returns its table without the ruleset, marshalled, with whether it carries
// a ruleset table. Values that cannot be options are refused here, by name.
constexpr std::string_view kOptionsPass = R"lua(
local f, e = load(SOURCE, NAME, "t")
if not f then error(e, 0) end
local t = f(table.unpack(ARGS, 1, NARGS))
if type(t) ~= "table" then
  error("expected the chunk to return a table, got " .. type(t), 0)
end
local out, has_ruleset = {}, false
for k, v in pairs(t) do
  if type(k) ~= "string" then error("field names must be strings", 0) end
  local ty = type(v)
  if k == "ruleset" and ty == "table" then
    has_ruleset = true
  elseif ty == "table" then
    for i, item in pairs(v) do
      if math.type(i) ~= "integer" or type(item) ~= "string" then
        error("field `" .. k .. "' must be a string or a list of strings (got a table)", 0)
      end
    end
    out[k] = v
  elseif ty == "string" or ty == "number" or ty == "boolean" then
    out[k] = v
  else
    error("field `" .. k .. "' has the wrong type (got a " .. ty .. ")", 0)
  end
end
if not has_ruleset and type(_G.ruleset) == "table" then has_ruleset = true end
return out, has_ruleset
)lua";

// Runs `chunk` as /ruleset/rpcall does, on a loop of its own, and returns
// the reply body ("return true, ..." or "return false, err").
std::optional<std::string> run_in_ruleset_vm(const std::string& chunk, std::string* err) {
  ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
  if (loop == nullptr) {
    *err = "cannot create an event loop";
    return std::nullopt;
  }
  std::optional<std::string> reply;
  try {
    ruleset::EngineOptions opts;
    opts.lua_path_dirs = {RULESOCKS_LUA_DIR, RULESOCKS_SOURCE_LUA_DIR};
    ruleset::Engine engine(loop, nullptr, nullptr, opts);
    auto job = engine.rpcall(chunk, [&reply](std::string body) { reply = std::move(body); });
    // Ends when the chunk has finished (maybe after awaiting something) or
    // nothing is left that could finish it.
    while (!reply && ev_run(loop, EVRUN_ONCE)) {
    }
  } catch (const std::exception& e) {
    *err = e.what();
  }
  ev_loop_destroy(loop);
  if (!reply && err->empty()) *err = "the chunk did not finish";
  return reply;
}

}  // namespace

std::optional<std::string> load_config_file(const std::string& path,
                                            const std::vector<std::string>& args, Config& c) {
  std::string err;
  auto source = read_config_source(path, &err);
  if (!source) return "-c " + err;
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string dir = fs::absolute(fs::path(path), ec).parent_path().string();
  const std::string chunkname = "@" + path;
  std::string argv = "{";
  for (const auto& a : args) argv += lua_quote(a) + ",";
  argv += "}";
  std::string pass = "package.path = " + lua_quote(dir + "/?.lua;") + " .. package.path\n" +
                     "local SOURCE, NAME, ARGS, NARGS = " + lua_quote(*source) + ", " +
                     lua_quote(chunkname) + ", " + argv + ", " + std::to_string(args.size()) +
                     "\n" + std::string(kOptionsPass);
  auto reply = run_in_ruleset_vm(pass, &err);
  if (!reply) return fmt::format("-c {}: {}", path, err);

  // The reply is plain data: read it in a bare state.
  std::unique_ptr<lua_State, LuaClose> state(luaL_newstate());
  lua_State* L = state.get();
  if (L == nullptr) return std::string("-c: cannot create a Lua state");
  if (luaL_loadbufferx(L, reply->data(), reply->size(), "=reply", "t") != LUA_OK ||
      lua_pcall(L, 0, 3, 0) != LUA_OK)
    return fmt::format("-c {}: unreadable options: {}", path, lua_tostring(L, -1));
  if (!lua_toboolean(L, 1)) {
    const char* why = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "error";
    return fmt::format("-c {}: {}", path, why);
  }
  const bool ruleset_table = lua_toboolean(L, 3) != 0;
  lua_settop(L, 2);
  if (!lua_istable(L, 2)) return fmt::format("-c {}: unreadable options", path);
  std::map<std::string, Value> values;
  if (auto e = read_table(L, values)) return fmt::format("-c {}: {}", path, *e);
  auto ruleset = values.find("ruleset");
  if (ruleset_table && ruleset != values.end())
    return fmt::format("-c {}: field `ruleset' names a file but _G.ruleset is a table too", path);
  for (const auto& [name, value] : values) {
    const Field* f = find_field(name);
    if (f == nullptr) return fmt::format("-c {}: unknown field `{}'", path, name);
    try {
      f->set(c, value);
    } catch (const FieldError& e) {
      return fmt::format("-c {}: field `{}' {} (got {})", path, name, e.why, value.type_name());
    }
  }
  c.config_ruleset = ruleset_table;
  c.ruleset_chunk = ruleset_table ? ruleset_chunk(*source, chunkname, dir, args) : std::string();
  return std::nullopt;
}

std::string ruleset_chunk(const std::string& source, const std::string& chunkname,
                          const std::string& dir, const std::vector<std::string>& args) {
  std::string argv = "{";
  for (const auto& a : args) argv += lua_quote(a) + ",";
  argv += "}";
  return fmt::format(
      "package.path = {} .. package.path\n"
      "local f, e = load({}, {}, \"t\")\n"
      "if not f then error(e, 0) end\n"
      "local args = {}\n"
      "local t = f(table.unpack(args, 1, {}))\n"
      "if type(t) == \"table\" and type(t.ruleset) == \"table\" then return t.ruleset end\n"
      "return _G.ruleset\n",
      lua_quote(dir + "/?.lua;"), lua_quote(source), lua_quote(chunkname), argv, args.size());
}

std::string dump_config(const Config& c) {
  std::string out = "-- rulesocks " RULESOCKS_VERSION " --dump-config: the effective options\n";
  if (c.config_ruleset)
    out += "-- (the ruleset table of " + c.config_file + " is not written out)\n";
  out += "return {\n";
  for (const auto& f : fields()) {
    if (!f.dump) continue;
    out += fmt::format("    {} = {},\n", f.name, f.dump(c));
  }
  return out + "}\n";
}

}  // namespace rs
