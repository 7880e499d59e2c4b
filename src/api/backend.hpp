// What the API server needs from the rest of the program, implemented by the
// server module so that the api module does not depend on it. Every method
// runs on the loop thread.
#pragma once

#include <string>

namespace rs::ruleset {
class Engine;
}

namespace rs::api {

struct ApiBackend {
  virtual ~ApiBackend() = default;
  // The ruleset engine, or nullptr when there is none: the /ruleset/*
  // endpoints then answer 500 "ruleset is not enabled". Asked per request, so
  // the engine may come and go.
  virtual ruleset::Engine* engine() = 0;
  // The server's block of /stats text, lines ending in '\n'. `incremental`
  // (POST /stats) asks for rates since the previous incremental call as well.
  virtual std::string server_stats(bool incremental) = 0;
  // The server's block of /metrics: Prometheus text format 0.0.4, every
  // family with its HELP and TYPE lines, names prefixed rulesocks_.
  virtual std::string server_metrics() = 0;
  // Called once for every request head received, answered or not.
  virtual void count_api_request() = 0;
  // Called once for every response with a 2xx status (neosocksd's num_api_success).
  virtual void count_api_success() = 0;
  // Called once for every request refused 401 or 403 by the API's access rules.
  virtual void count_api_unauthorized() {}
};

}  // namespace rs::api
