// The REST endpoints of the API server (neosocksd's): what each request means,
// apart from how it travels. The connection hands over a complete request with
// its body already decoded and gets a response back, now or later (rpcall).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "api/backend.hpp"
#include "api/http_util.hpp"
#include "core/cancellable.hpp"
#include "core/loop.hpp"
#include "proto/http.hpp"

namespace rs::api {

struct ApiRequest {
  std::string_view method;
  std::string_view path;  // as sent, without the query
  const Query& query;     // decoded
  const proto::HttpHeaders& headers;
  std::string body;                 // Content-Encoding already undone
  std::string_view raw_query = {};  // as sent, without '?' (--workers forwards it)
};

struct ApiResponse {
  int status = 200;
  std::string body;
  std::string content_type = "text/plain; charset=utf-8";
  proto::HttpHeaders headers;  // extra fields, e.g. Allow
  bool no_cache = false;       // Cache-Control: no-store
};

// A text/plain answer whose body is `message` and a newline.
ApiResponse text_response(int status, std::string_view message);

// "1.5 KiB", "12.0 MiB" (IEC units, one decimal).
std::string format_bytes(double bytes);
// Appends a /stats line padded like neosocksd's: "Label               : value".
void add_line(std::string& out, std::string_view label, std::string_view value);
// Appends one unlabelled Prometheus sample with its HELP and TYPE lines.
void add_metric(std::string& out, std::string_view name, std::string_view type,
                std::string_view help, double value);
void add_metric(std::string& out, std::string_view name, std::string_view type,
                std::string_view help, uint64_t value);
// "3d 04:05:06", "00:00:07".
std::string format_duration(double seconds);

class ApiForwarder;

class Endpoints {
 public:
  // `started` is the ev_now() timestamp uptime counts from.
  Endpoints(ev::Loop* loop, ApiBackend& backend, double started);

  using Reply = std::function<void(ApiResponse)>;
  struct Outcome {
    std::optional<ApiResponse> response;  // set when answered now
    // When not answered now: `reply` runs later, from the loop, exactly once
    // unless `handle` is destroyed first (which cancels the operation). The
    // handle may be null when the operation cannot be cancelled.
    std::unique_ptr<Cancellable> handle;
  };
  // May run Lua. Never calls `reply` from inside handle().
  Outcome handle(ApiRequest& req, Reply reply);

  // Whether a POST to `path` must carry a body: answered 411 without one.
  static bool requires_body(std::string_view path);
  // Counts a request head received (answered or not).
  void count_request() { backend_.count_api_request(); }
  // Counts a response with a 2xx status.
  void count_success() { backend_.count_api_success(); }
  // Set: every request goes to `f` instead (it must outlive the Endpoints).
  void set_forwarder(ApiForwarder* f) { forwarder_ = f; }

 private:
  ApiResponse stats(const ApiRequest& req, bool incremental);
  ApiResponse healthy(const ApiRequest& req);
  ApiResponse metrics();
  Outcome ruleset(std::string_view name, ApiRequest& req, Reply reply);

  ev::Loop* loop_;
  ApiBackend& backend_;
  double started_;
  double last_stats_;  // previous POST /stats, for ruleset.stats(dt)
  ApiForwarder* forwarder_ = nullptr;
};

// Answers API requests in place of the Endpoints: the supervisor of
// --workers, which forwards each request to its workers' private APIs. Same
// contract as Endpoints::handle().
class ApiForwarder {
 public:
  virtual ~ApiForwarder() = default;
  virtual Endpoints::Outcome forward(ApiRequest& req, Endpoints::Reply reply) = 0;
};

}  // namespace rs::api
