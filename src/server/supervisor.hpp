// --workers N: the supervisor process. It starts N workers (this program
// again, with the hidden --worker-fd), each a whole server with its own loop
// and ruleset VM accepting on the same listeners (SO_REUSEPORT), and serves
// the one public --api by forwarding each request to the workers' private
// APIs (127.0.0.1, an ephemeral port each worker reports on a pipe):
// /ruleset/update, /ruleset/invoke, /ruleset/gc and /healthy to every worker,
// /stats and /metrics to every worker and summed (merge_stats(),
// merge_metrics()), everything else (/ruleset/rpcall) to one worker in turn.
//
// A worker that exits is started again after a backoff and given the
// current ruleset: the startup one it loads itself, then each
// /ruleset/update that every worker accepted, replayed in order.
//
// Ownership: the Supervisor owns its workers' watchers and pipes, the API
// server and every forwarded call. Everything runs on the default loop
// (child watchers need it).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/api_server.hpp"
#include "api/backend.hpp"
#include "api/endpoints.hpp"
#include "config.hpp"
#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/tls.hpp"

namespace rs::server {

// One worker's answer to a forwarded request; ok false when none came
// (error says why).
struct WorkerReply {
  size_t index = 0;
  pid_t pid = 0;
  bool ok = false;
  int status = 0;
  std::string body;  // the reply's body, or the error
  std::string content_type;
  proto::HttpHeaders headers;
};

// /stats of several workers as one: "Label : value" lines of the first text
// with each number summed over every text holding the same label (byte
// amounts "1.5 KiB" summed as bytes; values whose words differ, and
// durations, stay the first's). Lines that are not "Label : value" are the
// first text's.
std::string merge_stats(const std::vector<std::string>& texts);
// Prometheus text of several workers as one: every sample summed over the
// texts that hold it (families in first-seen order, HELP and TYPE from the
// first), except summary quantiles, which take the largest value. `replace`
// gives samples their value instead (the supervisor's own counters).
std::string merge_metrics(const std::vector<std::string>& texts,
                          const std::vector<std::pair<std::string, double>>& replace = {});

class Supervisor : public api::ApiBackend, public api::ApiForwarder {
 public:
  // Binds the public API (when cfg has --api; throws std::runtime_error
  // naming the problem). `argv` is the command line the workers get, with
  // --worker-fd appended. `loop` must be the default loop.
  Supervisor(ev::Loop* loop, const Config& cfg, std::vector<std::string> argv);
  ~Supervisor() override;
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the workers. `ready` runs once, when every worker has reported
  // ready for the first time; `stopped` once every worker has exited after
  // shutdown() or a failed start-up (`failed` true).
  void start(std::function<void()> ready, std::function<void(bool failed)> stopped);
  // SIGTERM to every worker and no more restarts; the API stops.
  void shutdown();
  // SIGHUP to every worker (each reloads its config and ruleset file, which
  // becomes the current ruleset again when there is one).
  void reload();

  // api::ApiForwarder
  api::Endpoints::Outcome forward(api::ApiRequest& req, api::Endpoints::Reply reply) override;
  // api::ApiBackend: the supervisor runs no ruleset; its own API counters
  // replace the workers' in the merged /stats and /metrics.
  ruleset::Engine* engine() override { return nullptr; }
  std::string server_stats(bool) override { return {}; }
  std::string server_metrics() override { return {}; }
  void count_api_request() override { ++api_requests_; }
  void count_api_success() override { ++api_successes_; }
  void count_api_unauthorized() override { ++api_unauthorized_; }

 private:
  struct Worker;
  class Fanout;
  friend class Fanout;

  void spawn(Worker& w);
  void on_pipe(Worker& w);
  void on_exit(Worker& w, int status);
  void replay(Worker& w, size_t next);
  void went_live(Worker& w);
  void stop_if_done();
  // Sends the request to worker `w`; `done` gets its answer.
  std::unique_ptr<Cancellable> call(const Worker& w, std::string_view method,
                                    std::string_view target, std::string_view content_type,
                                    std::string_view body, std::function<void(WorkerReply)> done);
  api::ApiResponse combine(std::string_view path, std::string_view method, std::string_view target,
                           std::string_view body, std::vector<WorkerReply>& replies);

  ev::Loop* loop_;
  const Config& cfg_;
  std::vector<std::string> argv_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::function<void()> ready_;
  std::function<void(bool)> stopped_;
  bool all_ready_ = false, stopping_ = false, failed_ = false;
  size_t next_rpc_ = 0;  // round-robin position for single-worker requests
  double started_;
  uint64_t api_requests_ = 0, api_successes_ = 0, api_unauthorized_ = 0, restarts_ = 0;
  // The /ruleset/update requests (target, body) every worker accepted since
  // the startup ruleset, one per module (and one for the ruleset itself),
  // in the order they last happened: replayed to a restarted worker.
  std::vector<std::pair<std::string, std::string>> updates_;
  ev::Timer kill_timer_;  // SIGKILL for workers that ignore SIGTERM
  net::SslCtxPtr tls_;
  std::unique_ptr<api::ApiServer> api_;
};

}  // namespace rs::server
