// Command line -> Config. Flag names follow neosocksd's so that existing
// service files keep working.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "net/sockaddr.hpp"

namespace rs {

struct MaxStartups {
  // OpenSSH-style "start:rate:full": above `start` half-open connections,
  // refuse new ones with probability rate% rising linearly to 100% at `full`.
  unsigned start = 0, rate = 100, full = 0;
  bool enabled() const { return full > 0; }
};

struct Config {
  // Listener addresses may be written tls://ADDR (a TLS listener).
  std::vector<std::string> listen;       // -l: SOCKS4/4A/5 (and HTTP CONNECT, sniffed) listeners
  std::vector<std::string> http_listen;  // --http ADDR: HTTP CONNECT listeners
  bool http_all = false;                 // bare --http: every -l listener speaks HTTP
  std::string forward;                   // -f: TCP forwarding target (":": the ruleset picks)
  std::string proxy;                     // -x: comma separated chain, first hop first
  std::string api;                       // --api ADDR
  // --api-key KEY or the first line of --api-key-file FILE; empty: none. A
  // secret: never logged, never shown to Lua (neosocksd.config()).
  std::string api_key;
  // TLS (see API.md "TLS"): the listeners' certificate chain and key (for
  // tls:// addresses), the CA that must have signed client certificates
  // (mTLS; empty: none asked), and a CA trusted by TLS hops beyond the
  // system's store.
  std::string tls_cert, tls_key, tls_client_ca, tls_ca;
  std::string ruleset;  // -r FILE
  std::string nameserver;
  std::string netdev;  // -i: bind outbound sockets to a device
  std::string user;    // -u user[:group]
  int family = 0;      // 4: -4, 6: -6, 0: any
  int loglevel = 4;
  double timeout = 60.0;  // -t: handshake+dial, idle API, half-closed relay
  bool bidir_timeout = false;
  bool pipe = false;
  bool reuseport = false;
  bool auth_required = false;
  bool daemonize = false;
  bool traceback = false;
  bool tcp_fastopen = true;  // TCP_FASTOPEN on the proxy listeners (--no-fastopen: off)
  bool tcp_nodelay = true;
  bool tcp_keepalive = true;
  int tcp_sndbuf = 0, tcp_rcvbuf = 0;
  size_t max_sessions = 0;  // 0 = unlimited
  MaxStartups max_startups;
  size_t memlimit_mib = 0;
  // --block-outbound: the net::AddrClass bits no dial may reach.
  unsigned block_outbound = net::class_bit(net::AddrClass::kMulticast);
};

// Parses argv. On --help/--version or an error, prints and returns the exit
// code to use; otherwise returns nullopt and fills `out`.
std::optional<int> parse_command_line(int argc, char** argv, Config& out);

}  // namespace rs
