#include "config.hpp"

#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "config_file.hpp"
#include "version.hpp"

namespace rs {
namespace {

std::optional<MaxStartups> parse_max_startups(const std::string& s) {
  MaxStartups m;
  char tail = 0;
  if (std::sscanf(s.c_str(), "%u:%u:%u%c", &m.start, &m.rate, &m.full, &tail) != 3) return {};
  if (m.rate > 100 || m.full < m.start || m.full == 0) return {};
  return m;
}

// The first line of `path`, refused (nullopt, message printed) when group or
// others may read it: a key anyone on the host can read protects nothing.
std::optional<std::string> read_key_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "--api-key-file %s: %s\n", path.c_str(), std::strerror(errno));
    return std::nullopt;
  }
  if ((st.st_mode & 077) != 0) {
    std::fprintf(stderr,
                 "--api-key-file %s: mode %04o lets group or others read the key; "
                 "chmod 600 it\n",
                 path.c_str(), static_cast<unsigned>(st.st_mode & 07777));
    return std::nullopt;
  }
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    std::fprintf(stderr, "--api-key-file %s: cannot read a first line\n", path.c_str());
    return std::nullopt;
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

}  // namespace

std::optional<int> parse_command_line(int argc, char** argv, Config& c, std::string* file_error) {
  // Arguments after "--" are the config file's `...`; CLI11 never sees them.
  int nargs = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      nargs = i;
      c.config_args.assign(argv + i + 1, argv + argc);
      break;
    }
  }
  // -c is read before the flags so that every flag given overrides it: CLI11
  // assigns only the options that appear.
  for (int i = 1; i < nargs; ++i) {
    const std::string_view a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < nargs) {
      c.config_file = argv[i + 1];
    } else if (a.starts_with("--config=")) {
      c.config_file = std::string(a.substr(9));
    } else if (a.starts_with("-c") && a.size() > 2 && a[2] != '-') {
      c.config_file = std::string(a.substr(2));
    }
  }
  if (!c.config_file.empty()) {
    // Absolute: SIGHUP reads it again after -d has changed directory to /.
    std::error_code ec;
    auto abs = std::filesystem::absolute(c.config_file, ec);
    if (!ec) c.config_file = abs.string();
    if (auto err = load_config_file(c.config_file, c.config_args, c)) {
      if (file_error) {
        *file_error = *err;
      } else {
        std::fprintf(stderr, "%s\n", err->c_str());
      }
      return 2;
    }
  }

  CLI::App app{"rulesocks " RULESOCKS_VERSION
               " - a Lua-scriptable SOCKS4/4A/5 and HTTP CONNECT proxy server"};
  app.set_version_flag("-V,--version", "rulesocks " RULESOCKS_VERSION);
  std::string config_file;
  app.add_option("-c,--config", config_file,
                 "load options from the Lua config FILE (or FILE.gz; neosocksd's format: "
                 "returns a table of options, may carry a ruleset table); the flags given "
                 "override it; arguments after \"--\" are its `...`")
      ->type_name("FILE");
  app.add_flag("--dump-config", c.dump_config,
               "print the effective options as a config file for -c, and exit");
  app.get_formatter()->column_width(34);

  app.add_option("-l,--listen", c.listen,
                 "listen for SOCKS4/4A/5 on ADDR (repeatable); tls://ADDR speaks TLS")
      ->type_name("ADDR");
  app.add_option(
         "--http", c.http_listen,
         "listen for HTTP CONNECT on ADDR (repeatable; tls://ADDR: HTTPS proxy); without ADDR, "
         "the -l listeners speak HTTP CONNECT only")
      ->type_name("[ADDR]")
      ->expected(0, 1)
      ->allow_extra_args(false);
  app.add_option("-f,--forward", c.forward,
                 "forward every connection to ADDR (port forwarding); \":\" lets the ruleset pick "
                 "each connection's target (ruleset.resolve(\":0\"))")
      ->type_name("ADDR");
  app.add_option("-x,--proxy", c.proxy,
                 "dial outbound through proxy1[,proxy2...] (first hop first; socks4a, socks5, "
                 "http, and over TLS https, socks5s)")
      ->type_name("URI[,URI...]");
  app.add_option("--api", c.api,
                 "serve the RESTful API on ADDR (keep it on loopback; tls://ADDR: HTTPS)")
      ->type_name("ADDR");
  app.add_option("--api-key", c.api_key,
                 "require this key on the API (Authorization: Bearer KEY or "
                 "X-API-Key: KEY) and send it on RPC calls")
      ->type_name("KEY");
  std::string key_file;
  app.add_option("--api-key-file", c.api_key_file,
                 "as --api-key, with the key on the first line of FILE (mode 600 or stricter)")
      ->type_name("FILE");
  app.add_option("--tls-cert", c.tls_cert,
                 "certificate chain (PEM, leaf first) of the tls://ADDR listeners; "
                 "SIGHUP reloads it")
      ->type_name("FILE");
  app.add_option("--tls-key", c.tls_key, "private key (PEM) of --tls-cert")->type_name("FILE");
  app.add_option("--tls-client-ca", c.tls_client_ca,
                 "TLS listeners require a client certificate signed by this CA (mTLS)")
      ->type_name("FILE");
  app.add_option("--tls-ca", c.tls_ca,
                 "trust this CA for https:// and socks5s:// hops and https:// RPC targets, besides "
                 "the system's")
      ->type_name("FILE");
  app.add_option("-r,--ruleset", c.ruleset, "load the Lua ruleset FILE (or FILE.gz)")
      ->type_name("FILE");
  app.add_flag_function(
      "-4", [&](int64_t) { c.family = 4; }, "resolve host names to IPv4 only");
  app.add_flag_function(
      "-6", [&](int64_t) { c.family = 6; }, "resolve host names to IPv6 only");
  app.add_option("--nameserver", c.nameserver, "use this DNS server instead of the system's")
      ->type_name("IP[:PORT]");
  app.add_option("-i,--netdev", c.netdev, "bind outbound connections to network device NAME")
      ->type_name("NAME");
  std::optional<std::string> block_outbound;
  app.add_option("--block-outbound", block_outbound,
                 "refuse to dial these address classes (comma separated: loopback, multicast, "
                 "local, global; \"\" blocks none; default: multicast)")
      ->type_name("LIST");
  app.add_option("-t,--timeout", c.timeout,
                 "seconds allowed for a handshake and dial, an idle API connection, and a "
                 "half-closed relay without traffic")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_flag("--bidir-timeout", c.bidir_timeout,
               "keep the timeout until both directions have seen traffic");
  // neosocksd's seed-era releases called it this (a flag, no argument).
  app.add_flag("--proto-timeout", c.bidir_timeout, "the old name of --bidir-timeout");
  app.add_option("--loglevel", c.loglevel,
                 "0 silence, 1 fatal, 2 error, 3 warning, 4 notice, 5 info, 6 debug, 7 verbose, 8 "
                 "very verbose")
      ->check(CLI::Range(0, 8))
      ->capture_default_str();
  app.add_flag_function(
      "-s,--silence", [&](int64_t) { c.loglevel = 1; }, "same as --loglevel 1");
  app.add_flag_function(
      "-v,--verbose", [&](int64_t) { c.loglevel = 6; }, "same as --loglevel 6");
  app.add_flag("--pipe", c.pipe, "relay with splice(2) through pipes (zero copy)");
  app.add_flag("--reuseport", c.reuseport, "SO_REUSEPORT on listeners (one process per core)");
  app.add_option("--workers", c.workers,
                 "N worker processes accept on the same listeners, behind one --api")
      ->type_name("N")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  // Internal: how the supervisor starts a worker (not in --help).
  app.add_option("--worker-fd", c.worker_fd)->group("");
  app.add_flag("--auth-required", c.auth_required, "refuse clients that offer no credentials");
  app.add_flag("-d,--daemonize", c.daemonize, "run in the background and log to syslog");
  app.add_option("-u,--user", c.user, "drop privileges to user[:group] after binding")
      ->type_name("USER[:GROUP]");
  app.add_option("-m,--max-sessions", c.max_sessions,
                 "refuse beyond N concurrent sessions (0: as many as RLIMIT_NOFILE allows)")
      ->type_name("N")
      ->capture_default_str();
  std::string max_startups;
  app.add_option("--max-startups", max_startups,
                 "random early drop of half-open connections, as OpenSSH MaxStartups")
      ->type_name("START:RATE:FULL");
  app.add_option("--memlimit", c.memlimit_mib, "soft limit of the Lua heap in MiB (0: no limit)")
      ->type_name("MiB")
      ->capture_default_str();
  app.add_flag("--traceback", c.traceback, "log Lua tracebacks of ruleset errors");
  app.add_option("--log", c.log_output,
                 "where log lines go: stdout, stderr, syslog (-d's default) or discard")
      ->type_name("OUTPUT");
  app.add_flag("--accept-proxy-protocol", c.accept_proxy_protocol,
               "every proxy listener expects a PROXY protocol v1 or v2 header (HAProxy "
               "send-proxy / send-proxy-v2) and takes the client address from it");
  std::string send_proxy;
  app.add_option("--send-proxy-protocol", send_proxy,
                 "send a PROXY protocol header naming the client before anything else on each "
                 "direct (or -f) connection to a target")
      ->type_name("v1|v2");
  app.add_option("--tcp-sndbuf", c.tcp_sndbuf, "SO_SNDBUF of proxied sockets (0: system default)")
      ->type_name("BYTES");
  app.add_option("--tcp-rcvbuf", c.tcp_rcvbuf, "SO_RCVBUF of proxied sockets (0: system default)")
      ->type_name("BYTES");
  // Flag functions rather than "!--no-..." flags: those print their default as
  // "--no-nodelay{false}" in --help.
  app.add_flag_function(
      "--no-nodelay", [&](int64_t) { c.tcp_nodelay = false; }, "do not set TCP_NODELAY");
  app.add_flag_function(
      "--no-keepalive", [&](int64_t) { c.tcp_keepalive = false; }, "do not set SO_KEEPALIVE");
  app.add_flag_function(
      "--no-fastopen", [&](int64_t) { c.tcp_fastopen = false; },
      "do not set TCP_FASTOPEN on the proxy listeners (server-side TCP Fast Open, RFC 7413)");
  app.add_flag("--enable-socks5-bind", c.socks5_bind, "serve SOCKS5 BIND (RFC 1928)");
  app.add_flag("--socks5-bind-any-peer", c.bind_any_peer,
               "let BIND take the connection from any peer, not only from DST.ADDR");
  app.add_flag("--enable-socks5-udp", c.udp.enable, "serve SOCKS5 UDP ASSOCIATE (RFC 1928)");
  app.add_option("--udp-advertise", c.udp.advertise,
                 "the relay IP that UDP ASSOCIATE replies give (behind NAT); default: the local "
                 "address the client reached")
      ->type_name("IP");
  app.add_option("--udp-timeout", c.udp.timeout,
                 "seconds a UDP association may stay without a datagram either way")
      ->check(CLI::Range(1.0, 86400.0))
      ->capture_default_str();
  app.add_option("--udp-max-associations", c.udp.max_associations,
                 "refuse UDP ASSOCIATE beyond N live associations")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--udp-max-per-client", c.udp.max_per_client,
                 "refuse UDP ASSOCIATE beyond N live associations from one client IP")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--udp-max-pending", c.udp.max_pending,
                 "bytes of datagrams an association holds while routing a new destination")
      ->check(CLI::Range(size_t{1024}, size_t{1} << 30))
      ->type_name("BYTES")
      ->capture_default_str();

  app.add_flag("--tproxy", c.tproxy,
               "transparent proxy (Linux TPROXY): the -l listeners take connections "
               "redirected to any address, whose original destination goes to "
               "ruleset.route/route6 (or is dialed as it is)");
  try {
    app.parse(nargs, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // -r on the command line replaces a config file's ruleset table.
  if (app.count("-r") > 0) {
    c.config_ruleset = false;
    c.ruleset_chunk.clear();
  }
  // Checked here rather than by CLI11, whose set would show in --help.
  if (!send_proxy.empty()) {
    if (send_proxy != "v1" && send_proxy != "v2") {
      std::fprintf(stderr, "--send-proxy-protocol: expected v1 or v2, got \"%s\"\n",
                   send_proxy.c_str());
      return 2;
    }
    c.send_proxy_protocol = send_proxy == "v1" ? 1 : 2;
  }
  if (!c.log_output.empty() && c.log_output != "stdout" && c.log_output != "stderr" &&
      c.log_output != "syslog" && c.log_output != "discard") {
    std::fprintf(stderr, "--log: expected stdout, stderr, syslog or discard, got \"%s\"\n",
                 c.log_output.c_str());
    return 2;
  }
  // A bare --http comes out of CLI11 as an empty entry: it means "every -l".
  if (std::erase(c.http_listen, std::string()) > 0) c.http_all = true;
  if (!max_startups.empty()) {
    auto m = parse_max_startups(max_startups);
    if (!m) {
      std::fprintf(stderr,
                   "--max-startups: expected START:RATE:FULL with RATE <= 100 and FULL >= START, "
                   "got \"%s\"\n",
                   max_startups.c_str());
      return 2;
    }
    c.max_startups = *m;
  }
  if (c.max_startups.full < c.max_startups.start) {
    std::fprintf(stderr, "startup_limit_full must be at least startup_limit_start\n");
    return 2;
  }
  if (block_outbound) {
    std::string bad;
    auto mask = net::parse_class_list(*block_outbound, &bad);
    if (!mask) {
      std::fprintf(stderr,
                   "--block-outbound: unknown address class \"%s\" (expected a comma separated "
                   "list of loopback, multicast, local, global)\n",
                   bad.c_str());
      return 2;
    }
    c.block_outbound = *mask;
  }
  // A key from the file is read again on every parse (SIGHUP may have changed it).
  if (!c.api_key_file.empty() && app.count("--api-key") == 0 && app.count("--api-key-file") > 0)
    c.api_key.clear();
  if (app.count("--api-key") > 0 && app.count("--api-key-file") == 0) c.api_key_file.clear();
  key_file = c.api_key_file;
  if (!c.udp.advertise.empty() && !proto::parse_ipv4(c.udp.advertise) &&
      !proto::parse_ipv6(c.udp.advertise)) {
    std::fprintf(stderr, "--udp-advertise: expected a numeric IP address, got \"%s\"\n",
                 c.udp.advertise.c_str());
    return 2;
  }
  if (!key_file.empty() && !c.api_key.empty()) {
    std::fprintf(stderr, "give --api-key or --api-key-file, not both\n");
    return 2;
  }
  if (!key_file.empty()) {
    auto key = read_key_file(key_file);
    if (!key) return 2;
    c.api_key = std::move(*key);
  }
  for (char ch : c.api_key) {
    // Sent as it is in an Authorization header: visible ASCII only.
    if (ch < 0x21 || ch > 0x7e) {
      std::fprintf(stderr, "%s: the key may hold visible ASCII characters only (no spaces)\n",
                   key_file.empty() ? "--api-key" : key_file.c_str());
      return 2;
    }
  }
  if (!key_file.empty() && c.api_key.empty()) {
    std::fprintf(stderr, "--api-key-file %s: the first line is empty\n", key_file.c_str());
    return 2;
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    std::fprintf(stderr, "give --tls-cert and --tls-key together\n");
    return 2;
  }
  if (c.worker_fd >= 0) {
    // A worker: it accepts beside its siblings and serves the API privately,
    // on loopback, to the supervisor that owns the public one.
    if (!c.api.empty()) c.worker_public_api = c.api.starts_with("tls://") ? c.api.substr(6) : c.api;
    c.api = "127.0.0.1:0";
    c.reuseport = true;
    c.workers = 1;
    if (c.daemonize && c.log_output.empty()) c.log_output = "syslog";
    c.daemonize = false;
  }
  if (c.listen.empty() && c.http_listen.empty() && c.api.empty()) {
    std::fprintf(stderr,
                 "nothing to do: give at least one -l, --http or --api address (see --help)\n");
    return 2;
  }
  if (c.dump_config) {
    const std::string text = dump_config(c);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return std::fflush(stdout) == 0 ? 0 : 1;
  }
  return std::nullopt;
}

}  // namespace rs
