// UDP port forwarding: a listener written "udp://ADDR" with -f TARGET. Each
// client address gets its own socket connected to TARGET (so that replies
// can only come from it and go back to that client); a flow ends after
// --udp-timeout seconds without a datagram either way. At most
// --udp-max-associations flows live at once, --udp-max-per-client per client
// IP; datagrams beyond are dropped and counted. Forwarding goes direct: it
// takes neither the ruleset nor -x.
//
// Ownership: the forwarder owns its listening socket, every flow's socket
// and their watchers; the Server outlives it.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>

#include "core/fd.hpp"
#include "core/loop.hpp"
#include "net/sockaddr.hpp"
#include "server/udp_admission.hpp"

namespace rs::server {

class Server;

class UdpForwarder {
 public:
  // Binds `listen`; throws std::runtime_error naming the problem.
  UdpForwarder(Server& server, const net::SockAddr& listen, const net::SockAddr& target);
  ~UdpForwarder();
  UdpForwarder(const UdpForwarder&) = delete;
  UdpForwarder& operator=(const UdpForwarder&) = delete;

  void start();
  // Closes every flow and stops listening (shutdown).
  void stop();
  net::SockAddr address() const;

 private:
  struct Flow;
  void on_listen_readable();
  void on_flow_readable(Flow& f);
  void on_sweep();

  Server& server_;
  net::SockAddr target_;
  UniqueFd fd_;
  ev::Io io_;
  ev::Timer sweep_;
  UdpAdmission admission_;
  std::unordered_map<std::string, std::unique_ptr<Flow>> flows_;  // by net::endpoint_key
};

}  // namespace rs::server
