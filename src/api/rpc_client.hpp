// The client side of neosocksd's RPC (await.invoke, neosocksd.invoke): POST a
// Lua chunk to another node's /ruleset/rpcall, through a proxy chain, and hand
// back the reply body (`return <marshal(ok, ...)>`).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/cancellable.hpp"
#include "core/loop.hpp"
#include "net/dialer.hpp"
#include "net/resolver.hpp"
#include "proto/address.hpp"
#include "proto/http.hpp"
#include "proto/proxy_uri.hpp"

namespace rs::api {

// ok: body is the reply body, inflated. !ok: body is an error message, e.g.
// "dial 10.0.0.1:9080: connection refused" or "HTTP 500: <reply text>".
using RpcCallback = std::function<void(bool ok, std::string body_or_error)>;

// Requests with a body larger than this are sent deflated.
inline constexpr size_t kRpcCompressMin = 256;

// Dials `addr` through `chain` (first hop first), sends
//   POST /ruleset/rpcall HTTP/1.1
//   Host: <addr>
//   Content-Type: application/x-neosocksd-rpc; version=1
//   Accept-Encoding: deflate
//   Authorization: Bearer <api_key>   (only when api_key is not empty)
//   Connection: close
// with `code` as the body, and reads one response (Content-Length, chunked or
// up to EOF; deflate or gzip; at most 4 MiB). 200 is success; any other status
// is an error carrying the reply's text. `opts.timeout` bounds the whole call.
//
// `cb` runs exactly once, always later from the loop (never inside rpc_call),
// unless the returned handle is destroyed first: that cancels the call
// silently. The handle may be destroyed inside `cb`. `loop` and `resolver`
// must outlive the call; `resolver` may be null when addr and the first hop
// are numeric; `opts` is copied. `api_key` must be a valid header value
// (visible ASCII, see api::valid_api_key()); it is never logged.
std::unique_ptr<Cancellable> rpc_call(ev::Loop* loop, net::Resolver* resolver,
                                      const net::DialOptions& opts, std::string code,
                                      proto::Address addr, std::vector<proto::ProxyUri> chain,
                                      RpcCallback cb, const std::string& api_key = {});

// One plain HTTP/1.1 exchange with any status (the supervisor forwarding an
// API request to a worker's private API, server/supervisor.hpp).
struct HttpReply {
  int status = 0;
  std::string content_type;  // empty when the reply has none
  std::string body;          // inflated
  proto::HttpHeaders headers;
};
// ok: `reply` holds the response, whatever its status. !ok: the exchange
// failed (dial, timeout, malformed reply) and `error` says how.
using HttpCallback = std::function<void(bool ok, HttpReply reply, std::string error)>;

// Sends `method target` to `addr` (numeric: no resolver) with `headers` and
// `body` (Content-Length; Connection: close), reads one response as
// rpc_call() does. Same callback and handle rules as rpc_call().
std::unique_ptr<Cancellable> http_call(
    ev::Loop* loop, const net::DialOptions& opts, proto::Address addr, std::string_view method,
    std::string_view target, const std::vector<std::pair<std::string, std::string>>& headers,
    std::string_view body, HttpCallback cb);

}  // namespace rs::api
