// The control plane: the Lua ruleset engine (-r) and the RESTful API (--api),
// and what each of them sees of the proxy server.
//
// Ownership: the Control belongs to the Server and borrows it; it owns the
// Engine and the ApiServer. Both run on the loop thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "api/api_server.hpp"
#include "api/backend.hpp"
#include "net/sockaddr.hpp"
#include "ruleset/engine.hpp"

namespace rs::server {

class Server;

class Control : public ruleset::Host, public api::ApiBackend {
 public:
  // Creates the engine and loads the ruleset file when the configuration has
  // -r, and binds the API when it has --api. Throws std::runtime_error naming
  // the problem (a ruleset that fails to load, an address in use).
  // `api_listen` is where --api asked to listen.
  Control(Server& server, const std::optional<net::SockAddr>& api_listen);
  ~Control() override;
  Control(const Control&) = delete;
  Control& operator=(const Control&) = delete;

  // Stops the API (server shutdown); the engine stays until destruction.
  void stop();
  // The API's bound address, if there is an API.
  std::optional<net::SockAddr> api_address() const;
  // SIGHUP: loads the -r file again as load_file does (a failure keeps the
  // running ruleset) and logs the outcome; sessions are untouched. Without -r
  // it only logs that there is nothing to reload.
  void reload_ruleset();
  // Whether some proxy listener is not on loopback (see api/access.hpp).
  void set_exposed_listeners(bool exposed);

  // api::ApiBackend
  ruleset::Engine* engine() override { return engine_.get(); }
  std::string server_stats(bool incremental) override;
  std::string server_metrics() override;
  void count_api_request() override;
  void count_api_success() override;
  void count_api_unauthorized() override;

  // ruleset::Host
  ruleset::HostConfig config() override;
  ruleset::HostStats stats() override;
  std::unique_ptr<Cancellable> invoke(std::string code, proto::Address addr,
                                      std::vector<proto::ProxyUri> chain, bool tls,
                                      std::function<void(bool, std::string)> cb) override;
  void set_api_key(const proto::Address& addr, std::optional<std::string> key) override;
  // await.connect (health probes): never to the API, not counted as traffic.
  std::unique_ptr<Cancellable> connect(const ruleset::Decision& d,
                                       ruleset::Forwarder::DialCallback cb) override;

 private:
  // /metrics: neosocksd 2026-07's series, then the labelled ones (upstream
  // chains, listeners).
  void neosocksd_metrics(std::string& out);
  void labelled_metrics(std::string& out);

  Server& server_;
  std::unique_ptr<ruleset::Engine> engine_;
  // -r made absolute at start-up: -d changes the working directory to /.
  std::string ruleset_path_;
  std::unique_ptr<api::ApiServer> api_;
  // neosocksd.setapikey(): the key sent to each RPC peer (its Address text);
  // an empty key sends none. Peers not here get --api-key, if any.
  std::unordered_map<std::string, std::string> peer_keys_;
  // The previous POST /stats, for rates.
  struct Snapshot {
    double time = 0;
    uint64_t requests = 0, bytes_up = 0, bytes_down = 0;
  } last_;
};

}  // namespace rs::server
