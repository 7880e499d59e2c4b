// What every proxied request asks the ruleset, and how its answer becomes a
// dial: shared by the Session (SOCKS, CONNECT, forwarding) and the plain HTTP
// proxy, so that both route alike.
#pragma once

#include <iterator>
#include <string>
#include <vector>

#include "net/sockaddr.hpp"
#include "proto/proxy_uri.hpp"
#include "ruleset/engine.hpp"
#include "server/frontend.hpp"

namespace rs::server {

// resolve for names, route / route6 for literal addresses, with the client's
// credentials and address.
inline ruleset::Request routing_request(const ClientRequest& r, const net::SockAddr& client) {
  const auto& t = r.target;
  ruleset::Request req;
  req.kind = t.is_ipv4()   ? ruleset::Request::Kind::kRoute
             : t.is_ipv6() ? ruleset::Request::Kind::kRoute6
                           : ruleset::Request::Kind::kResolve;
  req.addr = t.to_string();
  req.username = r.username;
  req.password = r.password;
  if (client.len != 0) req.client = client.to_string();
  return req;
}

// The -x chain is this node's way out, so the decision's hops follow it.
inline std::vector<proto::ProxyUri> decision_chain(const std::vector<proto::ProxyUri>& own,
                                                   ruleset::Decision& d) {
  std::vector<proto::ProxyUri> chain = own;
  chain.insert(chain.end(), std::make_move_iterator(d.chain.begin()),
               std::make_move_iterator(d.chain.end()));
  return chain;
}

// A chain for metric labels: its hops in dial order without credentials,
// "direct" when empty.
inline std::string chain_label(const std::vector<proto::ProxyUri>& chain) {
  if (chain.empty()) return "direct";
  std::string out;
  for (const auto& hop : chain) {
    if (!out.empty()) out += ',';
    out += hop.to_string();
  }
  return out;
}

}  // namespace rs::server
