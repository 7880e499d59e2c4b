#include "server/forward_dial.hpp"

#include "core/log.hpp"
#include "server/routing.hpp"
#include "server/server.hpp"

namespace rs::server {

ForwardDial::ForwardDial(Server& server, const proto::Address& asked, const ruleset::Decision& d,
                         ruleset::Forwarder::DialCallback cb, bool record)
    : server_(server) {
  ruleset::Decision copy = d;
  std::vector<proto::ProxyUri> chain = decision_chain(server.proxy_chain(), copy);
  const bool rewritten = d.target != asked;
  const auto* deny = rewritten ? nullptr : &server.protected_addresses();
  log::debug("await.forward: dialing {}", d.target);
  dialer_ = std::make_unique<net::Dialer>(server.loop(), &server.resolver(), server.dial_options());
  const double started = ev_now(server.loop());
  std::string label = chain_label(d.chain);
  dialer_->start(copy.target, std::move(chain), deny,
                 [this, started, record, label = std::move(label), cb = std::move(cb)](
                     net::Conn conn, net::DialError err, const std::string& msg) {
                   if (record)
                     server_.stats().record_dial(label, err == net::DialError::kOk,
                                                 ev_now(server_.loop()) - started);
                   cb(std::move(conn), err, msg);
                 });
}

ForwardDial::~ForwardDial() {
  if (dialer_) dialer_->cancel();
  server_.deferred().dispose(std::move(dialer_));
}

}  // namespace rs::server
