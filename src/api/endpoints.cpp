#include "api/endpoints.hpp"

#include <fmt/format.h>

#include <cmath>

#include "core/log.hpp"
#include "ruleset/engine.hpp"
#include "version.hpp"

namespace rs::api {
namespace {

constexpr std::string_view kRulesetPrefix = "/ruleset/";

ApiResponse method_not_allowed(std::string_view method, std::string_view path,
                               std::string_view allow) {
  ApiResponse r = text_response(
      405, fmt::format("method {} is not allowed for {}; allowed: {}", method, path, allow));
  r.headers.emplace_back("Allow", std::string(allow));
  return r;
}

}  // namespace

void add_line(std::string& out, std::string_view label, std::string_view value) {
  out += fmt::format("{:<20}: {}\n", label, value);
}

void add_metric(std::string& out, std::string_view name, std::string_view type,
                std::string_view help, double value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}

void add_metric(std::string& out, std::string_view name, std::string_view type,
                std::string_view help, uint64_t value) {
  out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, value);
}

ApiResponse text_response(int status, std::string_view message) {
  ApiResponse r;
  r.status = status;
  r.body.reserve(message.size() + 1);
  r.body += message;
  r.body += '\n';
  return r;
}

std::string format_bytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t unit = 0;
  while (std::fabs(bytes) >= 1024 && unit + 1 < std::size(kUnits)) {
    bytes /= 1024;
    ++unit;
  }
  if (unit == 0) return fmt::format("{:.0f} {}", bytes, kUnits[unit]);
  return fmt::format("{:.1f} {}", bytes, kUnits[unit]);
}

std::string format_duration(double seconds) {
  if (!(seconds > 0)) seconds = 0;
  auto total = static_cast<uint64_t>(seconds);
  uint64_t days = total / 86400, h = total / 3600 % 24, m = total / 60 % 60, s = total % 60;
  if (days > 0) return fmt::format("{}d {:02}:{:02}:{:02}", days, h, m, s);
  return fmt::format("{:02}:{:02}:{:02}", h, m, s);
}

Endpoints::Endpoints(ev::Loop* loop, ApiBackend& backend, double started)
    : loop_(loop), backend_(backend), started_(started), last_stats_(started) {}

bool Endpoints::requires_body(std::string_view path) {
  return path == "/ruleset/invoke" || path == "/ruleset/update" || path == "/ruleset/rpcall";
}

Endpoints::Outcome Endpoints::handle(ApiRequest& req, Reply reply) {
  if (forwarder_ != nullptr) return forwarder_->forward(req, std::move(reply));
  Outcome out;
  if (req.path == "/healthy") {
    out.response = healthy(req);
    return out;
  }
  if (req.path == "/metrics") {
    out.response = req.method == "GET" || req.method == "HEAD"
                       ? metrics()
                       : method_not_allowed(req.method, req.path, "GET");
    return out;
  }
  if (req.path == "/stats") {
    if (req.method == "GET") {
      out.response = stats(req, false);
    } else if (req.method == "POST") {
      out.response = stats(req, true);
    } else {
      out.response = method_not_allowed(req.method, req.path, "GET, POST");
    }
    return out;
  }
  if (req.path.starts_with(kRulesetPrefix)) {
    return ruleset(req.path.substr(kRulesetPrefix.size()), req, std::move(reply));
  }
  out.response = text_response(404, fmt::format("no such endpoint: {}", req.path));
  return out;
}

ApiResponse Endpoints::healthy(const ApiRequest& req) {
  ApiResponse r;
  r.no_cache = true;
  // Only a read asks the ruleset; any other method answers 200 as it always has.
  ruleset::Engine* engine = backend_.engine();
  if ((req.method == "GET" || req.method == "HEAD") && engine != nullptr) {
    if (auto why = engine->healthy()) {
      r = text_response(503, *why);
      r.no_cache = true;
    }
  }
  return r;
}

ApiResponse Endpoints::metrics() {
  std::string body = backend_.server_metrics();
  if (ruleset::Engine* engine = backend_.engine()) {
    add_metric(body, "rulesocks_lua_memory_bytes", "gauge", "Lua heap in use.",
               static_cast<double>(engine->memory_bytes()));
    add_metric(body, "rulesocks_lua_objects", "gauge", "Live Lua heap blocks.",
               static_cast<double>(engine->memory_objects()));
  }
  add_metric(body, "rulesocks_uptime_seconds", "gauge", "Seconds since the server started.",
             ev_now(loop_) - started_);
  if (ruleset::Engine* engine = backend_.engine()) {
    add_metric(body, "neosocksd_lua_memory_bytes", "gauge", "Bytes allocated by the Lua VM.",
               static_cast<double>(engine->memory_bytes()));
    add_metric(body, "neosocksd_lua_objects", "gauge", "Number of live Lua objects.",
               static_cast<double>(engine->memory_objects()));
    add_metric(body, "neosocksd_lua_threads_active", "gauge",
               "Lua coroutines currently dispatched.",
               static_cast<double>(engine->routines_alive()));
    // Last, as in neosocksd: the ruleset's own families (libruleset: rule
    // hits by tag, failover group members). Its text is taken as it is.
    std::string extra = engine->metrics();
    if (!extra.empty() && extra.back() != '\n') extra += '\n';
    body += extra;
  }
  ApiResponse r;
  r.body = std::move(body);
  r.content_type = "text/plain; version=0.0.4";
  r.no_cache = true;
  return r;
}

ApiResponse Endpoints::stats(const ApiRequest& req, bool incremental) {
  bool banner = true, server = true;
  std::string_view q;
  if (auto v = query_get(req.query, "nobanner")) banner = !parse_flag(*v);
  if (auto v = query_get(req.query, "server")) server = parse_flag(*v);
  if (auto v = query_get(req.query, "q")) q = *v;

  const double now = ev_now(loop_);
  ruleset::Engine* engine = backend_.engine();
  std::string body;
  if (banner) {
    body += "rulesocks " RULESOCKS_VERSION "\n";
    add_line(body, "Uptime", format_duration(now - started_));
    body += '\n';
  }
  if (server) {
    body += backend_.server_stats(incremental);
    if (!body.empty() && body.back() != '\n') body += '\n';
    if (engine != nullptr) {
      add_line(body, "Lua Memory", format_bytes(static_cast<double>(engine->memory_bytes())));
      add_line(body, "Routines",
               fmt::format("{} alive, {} pooled", engine->routines_alive(),
                           engine->coroutine_pool_size()));
      add_line(body, "Pending Awaits", std::to_string(engine->pending_awaits()));
    }
  }
  if (incremental) {
    const double dt = now - last_stats_;
    last_stats_ = now;
    if (engine != nullptr) {
      std::string extra = engine->stats(dt, q);
      if (!extra.empty()) {
        if (!body.empty()) body += '\n';
        body += extra;
        if (body.back() != '\n') body += '\n';
      }
    }
  }
  ApiResponse r;
  r.body = std::move(body);
  r.no_cache = true;
  return r;
}

Endpoints::Outcome Endpoints::ruleset(std::string_view name, ApiRequest& req, Reply reply) {
  Outcome out;
  if (name != "invoke" && name != "update" && name != "gc" && name != "rpcall") {
    out.response = text_response(404, fmt::format("no such endpoint: {}", req.path));
    return out;
  }
  if (req.method != "POST") {
    out.response = method_not_allowed(req.method, req.path, "POST");
    return out;
  }
  ruleset::Engine* engine = backend_.engine();
  if (engine == nullptr) {
    out.response = text_response(500, "ruleset is not enabled");
    return out;
  }

  if (name == "invoke") {
    std::string err;
    if (!engine->invoke(req.body, &err)) {
      log::warning("api: ruleset invoke: {}", err);
      out.response = text_response(500, err);
    } else {
      out.response = ApiResponse{};
    }
    return out;
  }

  if (name == "update") {
    auto module = query_get(req.query, "module");
    std::string chunkname;
    if (auto c = query_get(req.query, "chunkname"); c && !c->empty()) {
      chunkname = *c;
    } else {
      chunkname = module ? fmt::format("={}", *module) : "=(update)";
    }
    std::string err;
    bool ok = module ? engine->update_module(*module, req.body, chunkname, &err)
                     : engine->update(req.body, chunkname, &err);
    if (!ok) {
      log::warning("api: ruleset update: {}", err);
      out.response = text_response(500, err);
      return out;
    }
    log::notice("api: {} updated ({} bytes)",
                module ? fmt::format("module {}", *module) : std::string("ruleset"),
                req.body.size());
    out.response =
        text_response(200, module ? fmt::format("module {} updated", *module) : "ruleset updated");
    return out;
  }

  if (name == "gc") {
    size_t freed = engine->gc();
    out.response =
        text_response(200, fmt::format("Lua memory: {} in use, {} freed",
                                       format_bytes(static_cast<double>(engine->memory_bytes())),
                                       format_bytes(static_cast<double>(freed))));
    return out;
  }

  // rpcall
  if (auto problem = check_rpc_media_type(proto::find_header(req.headers, "Content-Type"))) {
    out.response = text_response(400, "rpcall: " + *problem);
    return out;
  }
  out.handle = engine->rpcall(req.body, [reply = std::move(reply)](std::string result) {
    ApiResponse r;
    r.content_type = std::string(kRpcMediaType);
    r.body = std::move(result);
    r.no_cache = true;
    reply(std::move(r));
  });
  return out;
}

}  // namespace rs::api
