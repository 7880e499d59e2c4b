#include "api/access.hpp"

#include "core/log.hpp"
#include "proto/text.hpp"

namespace rs::api {
namespace {

// One log line a second at most: a client guessing keys must not flood the log.
constexpr double kLogInterval = 1.0;

// The request's method or path as a log shows it: short, printable ASCII.
std::string loggable(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out;
  for (char c : s.substr(0, kMax)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > kMax) out += "...";
  return out;
}

}  // namespace

bool constant_time_equal(std::string_view presented, std::string_view key) {
  // Every byte of `presented` is compared with some byte of the key, so the
  // time is that of presented.size() steps whatever the contents.
  unsigned diff = presented.size() == key.size() ? 0 : 1;
  if (key.empty()) return false;
  const volatile char* k = key.data();
  for (size_t i = 0; i < presented.size(); ++i)
    diff |=
        static_cast<unsigned char>(presented[i]) ^ static_cast<unsigned char>(k[i % key.size()]);
  return diff == 0;
}

bool valid_api_key(std::string_view key) {
  for (char c : key)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

std::vector<std::string_view> presented_keys(const proto::HttpHeaders& headers) {
  std::vector<std::string_view> out;
  for (const auto& [name, value] : headers) {
    std::string_view v = proto::trim_ows(value);
    if (proto::iequals(name, "Authorization")) {
      constexpr std::string_view kBearer = "bearer";
      if (v.size() <= kBearer.size() || !proto::iequals(v.substr(0, kBearer.size()), kBearer) ||
          (v[kBearer.size()] != ' ' && v[kBearer.size()] != '\t'))
        continue;
      v = proto::trim_ows(v.substr(kBearer.size()));
    } else if (!proto::iequals(name, "X-API-Key")) {
      continue;
    }
    if (!v.empty()) out.push_back(v);
  }
  return out;
}

Access::Access(ev::Loop* loop, ApiBackend& backend, const net::SelfConnections* self,
               AccessOptions opts)
    : loop_(loop), backend_(backend), self_(self), opts_(std::move(opts)) {}

std::optional<ApiResponse> Access::check(const net::SockAddr& peer, std::string_view method,
                                         std::string_view path, const proto::HttpHeaders& headers) {
  // Liveness and metrics stay open: load balancers, service managers and
  // Prometheus scrapers probe them (issue 12).
  if (path == "/healthy" || path == "/metrics") return std::nullopt;
  if (!opts_.key.empty()) {
    bool ok = false;
    const auto keys = presented_keys(headers);
    // Every presented value is compared: the time does not tell which matched.
    for (auto k : keys) ok |= constant_time_equal(k, opts_.key);
    if (ok) return std::nullopt;
    note(peer, method, path, keys.empty() ? "no API key" : "wrong API key");
    ApiResponse r = text_response(
        401, keys.empty() ? "API key required (Authorization: Bearer KEY or X-API-Key: KEY)"
                          : "wrong API key");
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
  }
  if (opts_.exposed_listeners && self_ != nullptr && self_->contains(peer)) {
    note(peer, method, path, "through the proxy, which listens beyond loopback, and no --api-key");
    return text_response(
        403,
        "the API is not served through this proxy: a proxy listener is not on loopback and no "
        "API key is set (set --api-key, or listen on loopback only)");
  }
  return std::nullopt;
}

void Access::note(const net::SockAddr& peer, std::string_view method, std::string_view path,
                  std::string_view why) {
  backend_.count_api_unauthorized();
  const double now = ev_now(loop_);
  if (now - last_log_ < kLogInterval) {
    ++suppressed_;
    return;
  }
  last_log_ = now;
  if (suppressed_ > 0) {
    log::warning("api {}: unauthorized {} {}: {} ({} more suppressed since the last line)", peer,
                 loggable(method), loggable(path), why, suppressed_);
  } else {
    log::warning("api {}: unauthorized {} {}: {}", peer, loggable(method), loggable(path), why);
  }
  suppressed_ = 0;
}

}  // namespace rs::api
