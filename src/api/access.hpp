// Who may use the API (issue 12; API.md "Security model"). With a key
// (--api-key), every request except /healthy and /metrics must present it; without one, a
// request that came through this process's own proxy is refused while any
// proxy listener is not on loopback. Direct clients without a key are served
// as before.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/backend.hpp"
#include "api/endpoints.hpp"
#include "core/loop.hpp"
#include "net/self_connections.hpp"
#include "net/sockaddr.hpp"
#include "proto/http.hpp"

namespace rs::api {

// Whether `presented` equals `key`, in a time that depends on the length of
// `presented` only: never on where the two differ, nor on the key.
bool constant_time_equal(std::string_view presented, std::string_view key);

// The credentials a request presents, in header order: the token of each
// "Authorization: Bearer TOKEN" (scheme in any case) and each "X-API-Key"
// value, trimmed. Other schemes and empty values present nothing.
std::vector<std::string_view> presented_keys(const proto::HttpHeaders& headers);

// A key may be sent in a header as it is: visible ASCII (0x21-0x7e) only.
bool valid_api_key(std::string_view key);

struct AccessOptions {
  std::string key;  // --api-key; empty: none. Never logged.
  // Some proxy listener (-l, --http, -f) is not on a loopback address.
  bool exposed_listeners = false;
};

class Access {
 public:
  // `loop` and `backend` must outlive the Access; `self` (the Server's
  // registry, may be null: nothing counts as proxied) too.
  Access(ev::Loop* loop, ApiBackend& backend, const net::SelfConnections* self, AccessOptions opts);
  Access(const Access&) = delete;
  Access& operator=(const Access&) = delete;

  void set_exposed_listeners(bool exposed) { opts_.exposed_listeners = exposed; }
  bool has_key() const { return !opts_.key.empty(); }

  // Called with each request head, before its body is read. nullopt: serve
  // it. Otherwise the 401 (no or wrong key) or 403 (through an exposed proxy
  // without a key) to answer; the refusal has been counted and logged (at
  // most one line a second, with the number of refusals not logged since).
  std::optional<ApiResponse> check(const net::SockAddr& peer, std::string_view method,
                                   std::string_view path, const proto::HttpHeaders& headers);

 private:
  void note(const net::SockAddr& peer, std::string_view method, std::string_view path,
            std::string_view why);

  ev::Loop* loop_;
  ApiBackend& backend_;
  const net::SelfConnections* self_;
  AccessOptions opts_;
  double last_log_ = -1e18;
  uint64_t suppressed_ = 0;
};

}  // namespace rs::api
