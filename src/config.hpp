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

// SOCKS5 UDP ASSOCIATE (server/udp_associate.hpp).
struct UdpConfig {
  bool enable = false;             // --enable-socks5-udp
  std::string advertise;           // --udp-advertise IP: the relay address in the reply (NAT)
  double timeout = 60.0;           // --udp-timeout: idle seconds before an association ends
  size_t max_associations = 1024;  // --udp-max-associations: live ones in total
  size_t max_per_client = 32;      // --udp-max-per-client: live ones per client IP
  // --udp-max-pending: bytes of datagrams one association holds while their
  // destination is being routed or resolved; more are dropped.
  size_t max_pending = 256 * 1024;
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
  std::string api_key_file;  // --api-key-file FILE (for --dump-config: the key stays there)
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
  // --workers N: N worker processes behind one API (server/supervisor.hpp).
  unsigned workers = 1;
  // Set in a worker process only (hidden --worker-fd FD): the pipe it reports
  // its private API port on; -1 in every other process.
  int worker_fd = -1;
  // In a worker: the supervisor's public --api address (without tls://),
  // which the worker's proxy must not dial on a client's behalf either.
  std::string worker_public_api;
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
  // --accept-proxy-protocol: every proxy listener (-l, --http, -f) reads a
  // PROXY v1/v2 header first and takes the client address from it.
  bool accept_proxy_protocol = false;
  // --send-proxy-protocol v1|v2: 0 none, else the version sent first on
  // every connection dialed for a client (direct and -f; not through -x hops).
  int send_proxy_protocol = 0;
  // --log: stdout, stderr, syslog or discard; empty: stderr, or syslog with -d.
  std::string log_output;
  // --tproxy: the -l listeners are transparent (IP_TRANSPARENT): each
  // connection's target is the address it was sent to.
  bool tproxy = false;
  // -c FILE (config_file.hpp) and the arguments after "--" it gets as `...`.
  std::string config_file;
  std::vector<std::string> config_args;
  // The config file carries a ruleset table (installed instead of -r FILE),
  // and the chunk that runs the file in the ruleset VM and returns it (see
  // ruleset_chunk() in config_file.hpp); both empty without one.
  bool config_ruleset = false;
  std::string ruleset_chunk;
  bool dump_config = false;  // --dump-config: print the options as a config file, exit
  // --block-outbound: the net::AddrClass bits no dial may reach.
  unsigned block_outbound = net::class_bit(net::AddrClass::kMulticast);
  UdpConfig udp;
  bool socks5_bind = false;    // --enable-socks5-bind (server/socks5_bind.hpp)
  bool bind_any_peer = false;  // --socks5-bind-any-peer: BIND takes a connection from anyone
};

// Parses argv: -c FILE first (when given), then the flags, which override
// it. On --help/--version/--dump-config or an error, prints and returns the
// exit code to use; otherwise returns nullopt and fills `out`. With
// `file_error`, an error in the config file is stored there instead of being
// printed (SIGHUP logs it).
std::optional<int> parse_command_line(int argc, char** argv, Config& out,
                                      std::string* file_error = nullptr);

}  // namespace rs
