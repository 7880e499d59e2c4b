// rs-loadgen: the load generator and origin server of the rulesocks benchmarks
// (bench/compare drives it). One thread, one epoll set, non-blocking sockets,
// libc and (for --tls) OpenSSL.
//
//   rs-loadgen origin --listen 127.0.0.1:PORT --mode reply:N|http:N|source|sink
//   rs-loadgen rate   --proxy H:P --proto P --target H:P -c CONNS -d SECONDS [--pid PID]
//   rs-loadgen bulk   --proxy H:P --proto P --target H:P --dir up|down -n BYTES [--pid PID]
//   rs-loadgen idle   --proxy H:P --proto P --target H:P -n N --pid PID
//   (rate, bulk, idle: --tls [--tls-ca FILE] [--tls-name NAME] speaks TLS to the proxy)
//   rs-loadgen get    [--proxy H:P] --proto http|direct --target H:P -c CONNS -d SECONDS [--pid
//   PID]
//
// Every client run prints one human-readable line and one line starting with
// "JSON " that holds the same numbers as a JSON object.
#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

// ---------------------------------------------------------------- utilities

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fputs("rs-loadgen: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
  std::exit(2);
}

std::string strf(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += strf("\\u%04x", c);
    } else {
      out += ch;
    }
  }
  return out;
}

// Raises RLIMIT_NOFILE to its hard limit; returns the new soft limit.
rlim_t raise_nofile() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

volatile sig_atomic_t g_stop = 0;
void on_signal(int) {
  g_stop = 1;
}

void install_signals() {
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// ---------------------------------------------------------------- addresses

struct Endpoint {
  std::string host;  // as given, without brackets
  uint16_t port = 0;
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool resolved = false;

  bool is_v6_literal() const { return host.find(':') != std::string::npos; }
  // host:port with brackets around an IPv6 literal (HTTP authority form).
  std::string authority() const {
    return (is_v6_literal() ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
};

Endpoint parse_endpoint(const std::string& s, bool must_resolve) {
  Endpoint ep;
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 == s.size())
    die("expected HOST:PORT, got \"%s\"", s.c_str());
  ep.host = s.substr(0, colon);
  if (ep.host.size() >= 2 && ep.host.front() == '[' && ep.host.back() == ']')
    ep.host = ep.host.substr(1, ep.host.size() - 2);
  char* end = nullptr;
  unsigned long port = std::strtoul(s.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535) die("bad port in \"%s\"", s.c_str());
  ep.port = static_cast<uint16_t>(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string portstr = std::to_string(port);
  int rc = getaddrinfo(ep.host.empty() ? nullptr : ep.host.c_str(), portstr.c_str(), &hints, &res);
  if (rc != 0) {
    if (must_resolve) die("cannot resolve \"%s\": %s", ep.host.c_str(), gai_strerror(rc));
    return ep;
  }
  // Prefer IPv4: the benchmarks run on 127.0.0.1.
  const addrinfo* pick = res;
  for (const addrinfo* ai = res; ai; ai = ai->ai_next)
    if (ai->ai_family == AF_INET) {
      pick = ai;
      break;
    }
  std::memcpy(&ep.ss, pick->ai_addr, pick->ai_addrlen);
  ep.len = pick->ai_addrlen;
  ep.resolved = true;
  freeaddrinfo(res);
  return ep;
}

// ---------------------------------------------------------------- /proc

long clk_tck() {
  static long t = sysconf(_SC_CLK_TCK);
  return t > 0 ? t : 100;
}

struct ProcStat {
  int ppid = 0;
  uint64_t cpu_ticks = 0;  // utime + stime + cutime + cstime
};

bool read_proc_stat(int pid, ProcStat& out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return false;
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name is in parentheses and may itself hold spaces or ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p) return false;
  char state = 0;
  int ppid = 0;
  unsigned long long ut = 0, st = 0;
  long long cut = 0, cst = 0;
  // Fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt
  // cmajflt utime stime cutime cstime
  if (std::sscanf(p + 1, " %c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &state,
                  &ppid, &ut, &st, &cut, &cst) != 6)
    return false;
  out.ppid = ppid;
  out.cpu_ticks = ut + st + static_cast<uint64_t>(std::max(0LL, cut)) +
                  static_cast<uint64_t>(std::max(0LL, cst));
  return true;
}

// `root` and all its descendants (dante and tinyproxy may fork).
std::vector<int> process_tree(int root) {
  std::vector<std::pair<int, int>> all;  // (pid, ppid)
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      char* end = nullptr;
      long pid = std::strtol(e->d_name, &end, 10);
      if (*end != '\0' || pid <= 0) continue;
      ProcStat ps;
      if (read_proc_stat(static_cast<int>(pid), ps))
        all.emplace_back(static_cast<int>(pid), ps.ppid);
    }
    closedir(d);
  }
  std::vector<int> tree{root};
  for (size_t i = 0; i < tree.size() && i < 100000; ++i)
    for (auto [pid, ppid] : all)
      if (ppid == tree[i] && pid != root) tree.push_back(pid);
  return tree;
}

// Every process of the trees rooted at `pids` once (a proxy may be two
// processes, such as stunnel in front of microsocks); empty if one is gone.
std::vector<int> process_trees(const std::vector<int>& pids) {
  std::vector<int> out;
  for (int root : pids) {
    ProcStat ps;
    if (!read_proc_stat(root, ps)) return {};
    for (int p : process_tree(root))
      if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  }
  return out;
}

// CPU seconds used by `pids` and their descendants so far; -1 if one is gone.
double tree_cpu_seconds(const std::vector<int>& pids) {
  std::vector<int> all = process_trees(pids);
  if (all.empty()) return -1;
  uint64_t ticks = 0;
  for (int p : all) {
    ProcStat ps;
    if (read_proc_stat(p, ps)) ticks += ps.cpu_ticks;
  }
  return static_cast<double>(ticks) / static_cast<double>(clk_tck());
}

// VmRSS in KiB of `pids` and their descendants; -1 if one is gone.
long tree_rss_kib(const std::vector<int>& pids) {
  long total = -1;
  for (int p : process_trees(pids)) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/status", p);
    FILE* f = std::fopen(path, "r");
    if (!f) continue;
    char line[256];
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmRSS:", 6) == 0) {
        total = std::max(total, 0L) + std::strtol(line + 6, nullptr, 10);
        break;
      }
    std::fclose(f);
  }
  return total;
}

// ---------------------------------------------------------------- options

struct Options {
  std::string mode;  // origin | rate | bulk | idle | get
  // origin
  std::string listen = "127.0.0.1:0";
  std::string origin_mode = "reply:64";
  double lifetime = 0;  // seconds; 0 = until SIGTERM
  // clients
  std::string proxy;
  std::string proto = "socks5";
  std::string target;
  int conns = 1;
  bool conns_given = false;
  double duration = 3;
  bool duration_given = false;
  uint64_t count = 0;  // -n: bulk bytes, idle sessions, or rate transactions (then no -d)
  std::string dir = "down";
  std::vector<int> pids;  // --pid PID[,PID...]: the proxy's processes, CPU (and RSS) summed
  bool tls = false;       // rate/bulk/idle: TLS to the proxy (or the target, with direct)
  std::string tls_ca;     // verify the peer against this CA file (else no verification)
  std::string tls_name;   // SNI and the name verified (default: the --proxy host)
  int request = 64;       // bytes a rate transaction sends
  int reply = 64;         // bytes a rate transaction expects back
  double timeout = 10;    // per connection attempt / transaction
  int batch = 256;        // idle: handshakes in flight at once
  double hold = 2;        // idle: seconds to hold the sessions after the last one is up
  double warmup = 0;      // rate: seconds of load before measuring
  std::string label;      // copied into the JSON line
};

void usage() {
  std::puts(
      "usage:\n"
      "  rs-loadgen origin --listen ADDR:PORT --mode reply:N|http:N|source|sink [--request B]\n"
      "             [--lifetime S]\n"
      "  rs-loadgen rate --proxy H:P --proto PROTO --target H:P -c CONNS -d SECONDS|-n TX [--pid "
      "PID]\n"
      "             [--warmup S] [--request B] [--reply B] [--timeout S]\n"
      "  rs-loadgen bulk --proxy H:P --proto PROTO --target H:P --dir up|down -n BYTES [-d "
      "SECONDS]\n"
      "             [-c STREAMS] [--pid PID]\n"
      "  rs-loadgen idle --proxy H:P --proto PROTO --target H:P -n SESSIONS --pid PID [--batch B]\n"
      "             [--hold S]\n"
      "  rs-loadgen get [--proxy H:P] --proto http|direct --target H:P -c CONNS -d SECONDS\n"
      "             [--pid PID] [--timeout S]\n"
      "origin http:N answers every HTTP/1.x request head (no request bodies) with 200 and an\n"
      "N-byte body, keeping the connection unless asked to close. get: keep-alive GETs of /,\n"
      "absolute-form through an HTTP proxy (http) or origin-form to the target (direct), each\n"
      "response read by its Content-Length.\n"
      "PROTO: direct socks4 socks4a socks5 socks5h http (socks4a/socks5h send the target host\n"
      "as a name). --pid PID[,PID...]: proxy processes whose CPU time (and RSS, with idle) is\n"
      "measured and summed, children included. --label TEXT is copied into the JSON line. BYTES\n"
      "take K, M, G suffixes (binary).\n"
      "rate, bulk, idle: --tls wraps each connection to the proxy in TLS 1.2/1.3 (a full\n"
      "handshake every time, no session resumption) before PROTO's handshake; --tls-ca FILE\n"
      "verifies the proxy's certificate against FILE and its name (--tls-name NAME, default the\n"
      "--proxy host; also sent as SNI when it is not an address), without it nothing is verified.");
}

uint64_t parse_size(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) die("bad size \"%s\"", s.c_str());
  std::string suf = end;
  double mul = 1;
  if (suf == "K" || suf == "k" || suf == "KiB")
    mul = 1024.0;
  else if (suf == "M" || suf == "MiB")
    mul = 1024.0 * 1024;
  else if (suf == "G" || suf == "GiB")
    mul = 1024.0 * 1024 * 1024;
  else if (!suf.empty())
    die("bad size suffix in \"%s\"", s.c_str());
  return static_cast<uint64_t>(v * mul);
}

double parse_double(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') die("bad number \"%s\"", s.c_str());
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  if (argc < 2) {
    usage();
    std::exit(2);
  }
  o.mode = argv[1];
  if (o.mode == "-h" || o.mode == "--help") {
    usage();
    std::exit(0);
  }
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die("%s needs a value", a.c_str());
      return argv[++i];
    };
    if (a == "--listen")
      o.listen = val();
    else if (a == "--mode")
      o.origin_mode = val();
    else if (a == "--lifetime")
      o.lifetime = parse_double(val());
    else if (a == "--proxy")
      o.proxy = val();
    else if (a == "--proto")
      o.proto = val();
    else if (a == "--target")
      o.target = val();
    else if (a == "-c")
      o.conns = static_cast<int>(parse_double(val())), o.conns_given = true;
    else if (a == "-d")
      o.duration = parse_double(val()), o.duration_given = true;
    else if (a == "-n")
      o.count = parse_size(val());
    else if (a == "--dir")
      o.dir = val();
    else if (a == "--pid") {
      std::string list = val();
      for (size_t pos = 0; pos <= list.size();) {
        size_t comma = std::min(list.find(',', pos), list.size());
        int pid = static_cast<int>(parse_double(list.substr(pos, comma - pos)));
        if (pid <= 0) die("--pid: bad process id in \"%s\"", list.c_str());
        o.pids.push_back(pid);
        pos = comma + 1;
      }
    } else if (a == "--tls")
      o.tls = true;
    else if (a == "--tls-ca")
      o.tls_ca = val();
    else if (a == "--tls-name")
      o.tls_name = val();
    else if (a == "--request")
      o.request = static_cast<int>(parse_size(val()));
    else if (a == "--reply")
      o.reply = static_cast<int>(parse_size(val()));
    else if (a == "--timeout")
      o.timeout = parse_double(val());
    else if (a == "--batch")
      o.batch = static_cast<int>(parse_double(val()));
    else if (a == "--hold")
      o.hold = parse_double(val());
    else if (a == "--warmup")
      o.warmup = parse_double(val());
    else if (a == "--label")
      o.label = val();
    else if (a == "-h" || a == "--help") {
      usage();
      std::exit(0);
    } else {
      die("unknown argument \"%s\" (see --help)", a.c_str());
    }
  }
  return o;
}

// ---------------------------------------------------------------- origin

// Static payload shared by every writer.
constexpr size_t kBig = 256 * 1024;
char g_big[kBig];

int run_origin(const Options& o) {
  enum class M { kReply, kHttp, kSource, kSink } mode;
  uint64_t reply_bytes = 0;
  if (o.origin_mode.rfind("reply:", 0) == 0) {
    mode = M::kReply;
    reply_bytes = parse_size(o.origin_mode.substr(6));
  } else if (o.origin_mode.rfind("http:", 0) == 0) {
    mode = M::kHttp;
    reply_bytes = parse_size(o.origin_mode.substr(5));
  } else if (o.origin_mode == "source") {
    mode = M::kSource;
  } else if (o.origin_mode == "sink") {
    mode = M::kSink;
  } else {
    die("--mode: expected reply:N, http:N, source or sink");
  }
  const uint64_t request_bytes = o.request > 0 ? static_cast<uint64_t>(o.request) : 1;
  rlim_t nofile = raise_nofile();
  install_signals();
  std::memset(g_big, 'x', sizeof g_big);

  Endpoint ep = parse_endpoint(o.listen, true);
  int lfd = socket(ep.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket: %s", std::strerror(errno));
  int on = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&ep.ss), ep.len) != 0)
    die("bind %s: %s", o.listen.c_str(), std::strerror(errno));
  if (listen(lfd, 65535) != 0) die("listen: %s", std::strerror(errno));
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (bound.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&bound);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    port = ntohs(sin->sin_port);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&bound);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
    port = ntohs(sin6->sin6_port);
  }

  int ep_fd = epoll_create1(EPOLL_CLOEXEC);
  if (ep_fd < 0) die("epoll_create1: %s", std::strerror(errno));
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.fd = lfd;
  epoll_ctl(ep_fd, EPOLL_CTL_ADD, lfd, &lev);

  struct Conn {
    bool open = false;
    uint64_t received = 0;
    uint64_t to_send = 0;  // reply mode: bytes still owed
    bool replied = false;
  };
  std::vector<Conn> conns(static_cast<size_t>(std::min<rlim_t>(nofile, 1 << 20)) + 16);
  static char rbuf[kBig];
  // http mode only (kept out of Conn, which is allocated for every possible fd):
  // the partial request head and the unsent part of the responses, per fd.
  struct HttpConn {
    std::string in, out;
    size_t out_off = 0;
    bool close_after = false;  // the client asked to close: do so once `out` is sent
  };
  std::unordered_map<int, HttpConn> http;
  const std::string http_body(static_cast<size_t>(reply_bytes), 'x');
  const std::string http_head =
      "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
      std::to_string(reply_bytes) + "\r\n";
  // Queues one response per complete request head in `h.in` (pipelining
  // included); false when the input is not HTTP.
  auto http_requests = [&](HttpConn& h) -> bool {
    size_t pos = 0;
    for (;;) {
      size_t end = h.in.find("\r\n\r\n", pos);
      if (end == std::string::npos) break;
      std::string head = h.in.substr(pos, end + 4 - pos);
      pos = end + 4;
      size_t eol = head.find("\r\n");
      if (eol < 9 || head.compare(eol - 9, 8, " HTTP/1.") != 0) return false;
      for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      bool http10 = head[eol - 1] == '0';
      bool close = head.find("\r\nconnection: close") != std::string::npos ||
                   head.find("\r\nproxy-connection: close") != std::string::npos ||
                   (http10 && head.find("\r\nconnection: keep-alive") == std::string::npos);
      h.out += http_head;
      h.out += close ? "Connection: close\r\n\r\n" : "\r\n";
      h.out += http_body;
      if (close) {
        h.close_after = true;
        break;  // anything after a request that closes is ignored
      }
    }
    h.in.erase(0, pos);
    return h.in.size() <= 64 * 1024;  // a head that never ends
  };

  std::printf("READY %s:%u mode=%s\n", host, port, o.origin_mode.c_str());
  std::fflush(stdout);

  auto close_conn = [&](int fd) {
    conns[fd] = Conn{};
    if (mode == M::kHttp) http.erase(fd);
    close(fd);
  };
  // Returns false when the connection was closed.
  auto pump_write = [&](int fd) -> bool {
    Conn& c = conns[fd];
    if (mode == M::kHttp) {
      HttpConn& h = http[fd];
      while (h.out_off < h.out.size()) {
        ssize_t w = send(fd, h.out.data() + h.out_off, h.out.size() - h.out_off, MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EAGAIN || errno == EINTR) return true;
          close_conn(fd);
          return false;
        }
        h.out_off += static_cast<size_t>(w);
      }
      h.out.clear();
      h.out_off = 0;
      if (h.close_after) {
        close_conn(fd);
        return false;
      }
      return true;
    }
    while (mode == M::kSource || c.to_send > 0) {
      size_t n =
          mode == M::kSource ? kBig : static_cast<size_t>(std::min<uint64_t>(c.to_send, kBig));
      ssize_t w = send(fd, g_big, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        close_conn(fd);
        return false;
      }
      if (mode != M::kSource) c.to_send -= static_cast<uint64_t>(w);
      if (static_cast<size_t>(w) < n) return true;  // the socket buffer is full
    }
    return true;
  };
  // `hup`: the event said the peer has shut down, so a short read does not
  // mean "drained" (with EPOLLET the EOF would never be reported again).
  auto pump_read = [&](int fd, bool hup) -> bool {
    Conn& c = conns[fd];
    for (;;) {
      ssize_t r = recv(fd, rbuf, sizeof rbuf, 0);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return true;
        close_conn(fd);
        return false;
      }
      if (r == 0) {
        close_conn(fd);  // the peer is done: close our side too
        return false;
      }
      c.received += static_cast<uint64_t>(r);
      if (mode == M::kHttp) {
        HttpConn& h = http[fd];
        if (!h.close_after) {
          h.in.append(rbuf, static_cast<size_t>(r));
          if (!http_requests(h)) {
            close_conn(fd);
            return false;
          }
        }
      }
      if (mode == M::kReply && !c.replied && c.received >= request_bytes) {
        c.replied = true;
        c.to_send = reply_bytes;
      }
      if (static_cast<size_t>(r) < sizeof rbuf && !hup) return true;
    }
  };

  int64_t end = o.lifetime > 0 ? now_ns() + static_cast<int64_t>(o.lifetime * 1e9) : 0;
  std::vector<epoll_event> evs(512);
  while (!g_stop && (end == 0 || now_ns() < end)) {
    int n = epoll_wait(ep_fd, evs.data(), static_cast<int>(evs.size()), 1000);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", std::strerror(errno));
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        for (int k = 0; k < 256; ++k) {
          int cfd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE)
              std::fprintf(stderr, "rs-loadgen origin: accept: %s\n", std::strerror(errno));
            break;
          }
          if (static_cast<size_t>(cfd) >= conns.size()) {
            close(cfd);
            continue;
          }
          setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
          conns[cfd] = Conn{};
          conns[cfd].open = true;
          epoll_event cev{};
          cev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
          cev.data.fd = cfd;
          epoll_ctl(ep_fd, EPOLL_CTL_ADD, cfd, &cev);
        }
        continue;
      }
      if (!conns[fd].open) continue;
      uint32_t e = evs[i].events;
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        if (!pump_read(fd, e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) continue;
      bool owed = mode == M::kHttp ? !http[fd].out.empty() : conns[fd].to_send > 0;
      if (mode != M::kSink && (e & EPOLLOUT || owed)) pump_write(fd);
    }
  }
  return 0;
}

// ---------------------------------------------------------------- clients

enum class Proto { kDirect, kSocks4, kSocks4a, kSocks5, kSocks5h, kHttp };

Proto parse_proto(const std::string& s) {
  if (s == "direct") return Proto::kDirect;
  if (s == "socks4") return Proto::kSocks4;
  if (s == "socks4a") return Proto::kSocks4a;
  if (s == "socks5") return Proto::kSocks5;
  if (s == "socks5h") return Proto::kSocks5h;
  if (s == "http") return Proto::kHttp;
  die("--proto: expected direct, socks4, socks4a, socks5, socks5h or http, got \"%s\"", s.c_str());
}

struct Latencies {
  std::vector<uint32_t> us;
  void add(int64_t ns) {
    us.push_back(static_cast<uint32_t>(std::min<int64_t>(ns / 1000, UINT32_MAX)));
  }
  // Nearest-rank percentile in milliseconds.
  double pct(double q) {
    if (us.empty()) return 0;
    size_t k = static_cast<size_t>(q * static_cast<double>(us.size()));
    if (k > 0 && static_cast<double>(k) == q * static_cast<double>(us.size())) --k;
    k = std::min(k, us.size() - 1);
    std::nth_element(us.begin(), us.begin() + static_cast<long>(k), us.end());
    return us[k] / 1000.0;
  }
};

class Client {
 public:
  enum class Phase : uint8_t {
    kFree,
    kConnecting,
    kTls,  // --tls: the TLS handshake, before the proxy protocol's
    kHandshake,
    kRequest,
    kDown,
    kUp,
    kUpDrain,
    kIdle
  };
  int fd = -1;
  SSL* ssl = nullptr;  // --tls: owned, freed with the connection (Runner::finish/fail)
  Phase phase = Phase::kFree;
  int step = 0;         // handshake step
  int64_t t0 = 0;       // connect() called
  int64_t t_hs = 0;     // handshake complete
  int64_t stop_at = 0;  // bulk: stop moving data at this time (0: at -n bytes only)
  uint64_t got = 0;     // payload bytes received
  uint64_t sent = 0;    // payload bytes sent
  size_t rlen = 0;      // bytes in rbuf
  bool hup = false;     // the last event reported the peer's EOF or an error
  std::string wbuf;     // pending handshake / request bytes
  size_t woff = 0;
  char rbuf[1024];
};

class Runner {
 public:
  explicit Runner(const Options& o) : o_(o), proto_(parse_proto(o.proto)) {
    if (o_.target.empty()) die("--target is required");
    if (proto_ != Proto::kDirect && o_.proxy.empty())
      die("--proxy is required with --proto %s", o_.proto.c_str());
    bool target_by_name =
        proto_ == Proto::kSocks4a || proto_ == Proto::kSocks5h || proto_ == Proto::kHttp;
    target_ = parse_endpoint(o_.target, !target_by_name);
    connect_to_ = proto_ == Proto::kDirect ? target_ : parse_endpoint(o_.proxy, true);
    if ((proto_ == Proto::kSocks4) && target_.ss.ss_family != AF_INET)
      die("socks4 needs an IPv4 target");
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1: %s", std::strerror(errno));
    std::memset(g_big, 'x', sizeof g_big);
    if (o_.tls) init_tls();
  }
  ~Runner() { SSL_CTX_free(tls_ctx_); }
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  int run();

 private:
  // --- TLS (--tls): every connection a full handshake, records read and
  // written through these two, which map "want read/write" to EAGAIN.
  void init_tls();
  bool start_tls(Client& c);
  bool continue_tls(Client& c);  // false when the client failed
  ssize_t io_recv(Client& c, void* buf, size_t n);
  ssize_t io_send(Client& c, const void* buf, size_t n);
  ssize_t tls_result(Client& c, int r);
  std::string io_error() const;  // after io_recv/io_send returned -1
  std::string tls_reason(const Client& c);

  // --- connection plumbing
  bool start(Client& c, size_t slot);
  void fail(Client& c, const std::string& why);
  void finish(Client& c);  // close without error
  void on_event(Client& c, uint32_t events);
  bool flush(Client& c);
  bool on_connected(Client& c);
  bool read_handshake(Client& c);
  bool handshake_done(Client& c, size_t used);
  bool read_payload(Client& c);
  bool pump_up(Client& c);
  void check_timeouts(int64_t now);
  int wait_events(int timeout_ms);

  std::string first_message();  // sent on connect
  // Parses rbuf; returns bytes used once this step's reply is complete, 0 if
  // it needs more, -1 on a refusal or a malformed reply (sets err).
  long parse_reply(Client& c, std::string& err);

  // --- modes
  int run_rate();
  int run_bulk();
  int run_idle();
  void report(const std::string& human, const std::string& json);

  const Options& o_;
  Proto proto_;
  Endpoint target_;
  Endpoint connect_to_;
  int ep_ = -1;
  std::vector<Client> clients_;
  std::vector<epoll_event> evs_ = std::vector<epoll_event>(1024);
  SSL_CTX* tls_ctx_ = nullptr;
  std::string tls_name_;      // SNI / verified name; empty: none
  bool tls_name_ip_ = false;  // tls_name_ is an address (verified, never sent as SNI)
  std::string tls_error_;     // io_recv/io_send's last TLS failure

  // results
  uint64_t ok_ = 0;
  uint64_t ok_in_window_ = 0;
  uint64_t errors_ = 0;
  std::string first_error_;
  Latencies lat_hs_, lat_tx_;
  Latencies lat_tls_;         // --tls: connect() to the end of the TLS handshake
  int64_t deadline_ = 0;      // rate: stop starting transactions after this
  uint64_t started_ = 0;      // rate: transactions started (-n stops at that many)
  bool measuring_ = true;     // false during the rate warm-up
  uint64_t bytes_ = 0;        // bulk payload moved
  int64_t bulk_ns_ = 0;       // bulk: sum over streams of handshake -> end
  uint64_t established_ = 0;  // idle
  uint64_t dropped_ = 0;      // idle: sessions the proxy closed while held
};

void Runner::init_tls() {
  tls_ctx_ = SSL_CTX_new(TLS_client_method());
  if (!tls_ctx_) die("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(tls_ctx_, TLS1_2_VERSION);
  // A benchmark of handshakes: never resume a session.
  SSL_CTX_set_session_cache_mode(tls_ctx_, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(tls_ctx_, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // pump_up stops mid-buffer at its stop time and sends g_big from any offset.
  SSL_CTX_set_mode(tls_ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  tls_name_ = !o_.tls_name.empty() ? o_.tls_name : connect_to_.host;
  in6_addr a6{};
  tls_name_ip_ = inet_pton(AF_INET, tls_name_.c_str(), &a6) == 1 ||
                 inet_pton(AF_INET6, tls_name_.c_str(), &a6) == 1;
  if (!o_.tls_ca.empty()) {
    if (SSL_CTX_load_verify_locations(tls_ctx_, o_.tls_ca.c_str(), nullptr) != 1)
      die("--tls-ca %s: cannot load it", o_.tls_ca.c_str());
    SSL_CTX_set_verify(tls_ctx_, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(tls_ctx_, SSL_VERIFY_NONE, nullptr);
  }
}

// The TCP connection is up: set up its TLS session and start the handshake.
bool Runner::start_tls(Client& c) {
  c.ssl = SSL_new(tls_ctx_);
  if (!c.ssl || SSL_set_fd(c.ssl, c.fd) != 1) {
    fail(c, "SSL_new failed");
    return false;
  }
  if (!tls_name_.empty()) {
    if (!tls_name_ip_) SSL_set_tlsext_host_name(c.ssl, tls_name_.c_str());
    if (!o_.tls_ca.empty()) {
      X509_VERIFY_PARAM* param = SSL_get0_param(c.ssl);
      int ok = tls_name_ip_ ? X509_VERIFY_PARAM_set1_ip_asc(param, tls_name_.c_str())
                            : X509_VERIFY_PARAM_set1_host(param, tls_name_.c_str(), 0);
      if (ok != 1) {
        fail(c, "cannot set the name to verify");
        return false;
      }
    }
  }
  c.phase = Client::Phase::kTls;
  return continue_tls(c);
}

std::string Runner::tls_reason(const Client& c) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  std::string why =
      e ? ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "?" : "connection closed";
  if (c.ssl) {
    long v = SSL_get_verify_result(c.ssl);
    if (v != X509_V_OK) why += std::string(" (") + X509_verify_cert_error_string(v) + ")";
  }
  return why;
}

bool Runner::continue_tls(Client& c) {
  ERR_clear_error();
  int r = SSL_connect(c.ssl);
  if (r == 1) {
    if (measuring_) lat_tls_.add(now_ns() - c.t0);
    return on_connected(c);
  }
  int err = SSL_get_error(c.ssl, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return true;
  std::string why = err == SSL_ERROR_SYSCALL && errno ? std::strerror(errno) : tls_reason(c);
  fail(c, "TLS handshake: " + why);
  return false;
}

ssize_t Runner::io_recv(Client& c, void* buf, size_t n) {
  if (!c.ssl) return recv(c.fd, buf, n, 0);
  ERR_clear_error();
  return tls_result(c, SSL_read(c.ssl, buf, static_cast<int>(std::min<size_t>(n, INT32_MAX))));
}

ssize_t Runner::io_send(Client& c, const void* buf, size_t n) {
  if (!c.ssl) return send(c.fd, buf, n, MSG_NOSIGNAL);
  ERR_clear_error();
  ssize_t w =
      tls_result(c, SSL_write(c.ssl, buf, static_cast<int>(std::min<size_t>(n, INT32_MAX))));
  if (w == 0) errno = EPIPE;  // the peer's close_notify: send never returns 0
  return w == 0 ? -1 : w;
}

// SSL_read/SSL_write's result `r` as recv/send would say it.
ssize_t Runner::tls_result(Client& c, int r) {
  if (r > 0) return r;
  int err = SSL_get_error(c.ssl, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    errno = EAGAIN;
    return -1;
  }
  if (err == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify (or EOF: IGNORE_UNEXPECTED_EOF)
  if (err == SSL_ERROR_SYSCALL && errno) return -1;
  tls_error_ = "TLS: " + tls_reason(c);
  errno = EPROTO;
  return -1;
}

std::string Runner::io_error() const {
  return errno == EPROTO && !tls_error_.empty() ? tls_error_ : std::strerror(errno);
}

std::string Runner::first_message() {
  std::string m;
  auto port_bytes = [&] {
    m += static_cast<char>(target_.port >> 8);
    m += static_cast<char>(target_.port & 0xff);
  };
  switch (proto_) {
    case Proto::kDirect:
      break;
    case Proto::kSocks4:
    case Proto::kSocks4a:
      m += '\x04';
      m += '\x01';
      port_bytes();
      if (proto_ == Proto::kSocks4) {
        m.append(
            reinterpret_cast<const char*>(&reinterpret_cast<sockaddr_in*>(&target_.ss)->sin_addr),
            4);
        m += '\0';  // empty user id
      } else {
        m.append("\0\0\0\x01", 4);
        m += '\0';
        m += target_.host;
        m += '\0';
      }
      break;
    case Proto::kSocks5:
    case Proto::kSocks5h:
      m.append("\x05\x01\x00", 3);  // one method: no authentication
      break;
    case Proto::kHttp:
      m = "CONNECT " + target_.authority() + " HTTP/1.1\r\nHost: " + target_.authority() +
          "\r\n\r\n";
      break;
  }
  return m;
}

long Runner::parse_reply(Client& c, std::string& err) {
  const auto* b = reinterpret_cast<const unsigned char*>(c.rbuf);
  switch (proto_) {
    case Proto::kDirect:
      return 0;
    case Proto::kSocks4:
    case Proto::kSocks4a:
      if (c.rlen < 8) return 0;
      if (b[1] != 0x5A) {
        err = strf("socks4 reply 0x%02X", b[1]);
        return -1;
      }
      return 8;
    case Proto::kSocks5:
    case Proto::kSocks5h:
      if (c.step == 0) {
        if (c.rlen < 2) return 0;
        if (b[0] != 5 || b[1] != 0) {
          err = strf("socks5 method reply %02X %02X", b[0], b[1]);
          return -1;
        }
        return 2;
      } else {
        if (c.rlen < 5) return 0;
        if (b[0] != 5 || b[1] != 0) {
          err = strf("socks5 reply 0x%02X", b[1]);
          return -1;
        }
        size_t need = b[3] == 1 ? 10 : b[3] == 4 ? 22 : b[3] == 3 ? 7u + b[4] : 0;
        if (need == 0) {
          err = strf("socks5 reply with address type %u", b[3]);
          return -1;
        }
        return c.rlen < need ? 0 : static_cast<long>(need);
      }
    case Proto::kHttp: {
      std::string_view v(c.rbuf, c.rlen);
      auto end = v.find("\r\n\r\n");
      if (end == std::string_view::npos) {
        if (c.rlen == sizeof c.rbuf) {
          err = "http reply header too long";
          return -1;
        }
        return 0;
      }
      if (v.size() < 12 || v.substr(0, 7) != "HTTP/1." || v.substr(9, 3) != "200") {
        err = "http reply \"" + std::string(v.substr(0, std::min<size_t>(v.find('\r'), 40))) + "\"";
        return -1;
      }
      return static_cast<long>(end + 4);
    }
  }
  return -1;
}

bool Runner::start(Client& c, size_t slot) {
  c.phase = Client::Phase::kConnecting;
  c.step = 0;
  c.t0 = now_ns();
  c.t_hs = 0;
  c.stop_at = 0;
  c.got = c.sent = 0;
  c.rlen = 0;
  c.hup = false;
  c.wbuf.clear();
  c.woff = 0;
  c.fd = socket(connect_to_.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    fail(c, strf("socket: %s", std::strerror(errno)));
    return false;
  }
  int on = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = slot;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    fail(c, strf("epoll_ctl: %s", std::strerror(errno)));
    return false;
  }
  if (connect(c.fd, reinterpret_cast<const sockaddr*>(&connect_to_.ss), connect_to_.len) != 0 &&
      errno != EINPROGRESS) {
    fail(c, strf("connect: %s", std::strerror(errno)));
    return false;
  }
  return true;  // completion arrives as EPOLLOUT
}

void Runner::fail(Client& c, const std::string& why) {
  ++errors_;
  if (first_error_.empty()) first_error_ = why;
  SSL_free(c.ssl);  // no close_notify on a failed connection
  c.ssl = nullptr;
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.phase = Client::Phase::kFree;
}

void Runner::finish(Client& c) {
  if (c.ssl) {
    // close_notify, as real clients send it; one non-blocking attempt.
    SSL_shutdown(c.ssl);
    SSL_free(c.ssl);
    c.ssl = nullptr;
  }
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.phase = Client::Phase::kFree;
}

bool Runner::flush(Client& c) {
  while (c.woff < c.wbuf.size()) {
    ssize_t n = io_send(c, c.wbuf.data() + c.woff, c.wbuf.size() - c.woff);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return true;
      fail(c, "send: " + io_error());
      return false;
    }
    c.woff += static_cast<size_t>(n);
  }
  c.wbuf.clear();
  c.woff = 0;
  return true;
}

bool Runner::on_connected(Client& c) {
  if (proto_ == Proto::kDirect) return handshake_done(c, 0);
  c.phase = Client::Phase::kHandshake;
  c.wbuf = first_message();
  return flush(c);
}

// The proxy said yes: `used` bytes of rbuf were its reply, the rest is payload.
bool Runner::handshake_done(Client& c, size_t used) {
  c.t_hs = now_ns();
  size_t extra = c.rlen - std::min(used, c.rlen);
  c.rlen = 0;
  if (o_.mode == "rate") {
    if (measuring_) lat_hs_.add(c.t_hs - c.t0);
    c.phase = Client::Phase::kRequest;
    c.wbuf.assign(static_cast<size_t>(o_.request), 'q');
    c.woff = 0;
    c.got = extra;
    if (!flush(c)) return false;
    if (c.got >= static_cast<uint64_t>(o_.reply)) return read_payload(c);
    return true;
  }
  if (o_.mode == "idle") {
    lat_hs_.add(c.t_hs - c.t0);
    c.phase = Client::Phase::kIdle;
    ++established_;
    return true;
  }
  // bulk: -d limits each stream's time after its handshake.
  if (o_.duration_given) c.stop_at = c.t_hs + static_cast<int64_t>(o_.duration * 1e9);
  if (o_.dir == "down") {
    c.phase = Client::Phase::kDown;
    c.got = extra;
    return true;
  }
  c.phase = Client::Phase::kUp;
  return pump_up(c);
}

bool Runner::read_handshake(Client& c) {
  for (;;) {
    ssize_t n = io_recv(c, c.rbuf + c.rlen, sizeof c.rbuf - c.rlen);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return true;
      fail(c, "handshake recv: " + io_error());
      return false;
    }
    if (n == 0) {
      fail(c, "proxy closed during the handshake");
      return false;
    }
    c.rlen += static_cast<size_t>(n);
    // With EPOLLET a pending EOF is reported once: only a short read without
    // it means the socket is drained. Not with TLS: a short read ends a
    // record, and more records may wait in the socket.
    bool drained = c.rlen < sizeof c.rbuf && !c.hup && !c.ssl;
    for (;;) {
      std::string err;
      long used = parse_reply(c, err);
      if (used < 0) {
        fail(c, err);
        return false;
      }
      if (used == 0) break;
      bool socks5_methods = (proto_ == Proto::kSocks5 || proto_ == Proto::kSocks5h) && c.step == 0;
      if (!socks5_methods) {
        if (!handshake_done(c, static_cast<size_t>(used))) return false;
        // Leftover payload was accounted for; the rest continues in read_payload.
        if (c.phase == Client::Phase::kFree) return false;
        return c.phase == Client::Phase::kUp || c.phase == Client::Phase::kIdle ? true
                                                                                : read_payload(c);
      }
      // Method accepted: send the request.
      std::memmove(c.rbuf, c.rbuf + used, c.rlen - static_cast<size_t>(used));
      c.rlen -= static_cast<size_t>(used);
      c.step = 1;
      std::string& m = c.wbuf;
      m.append("\x05\x01\x00", 3);
      if (proto_ == Proto::kSocks5h) {
        m += '\x03';
        m += static_cast<char>(std::min<size_t>(target_.host.size(), 255));
        m.append(target_.host, 0, 255);
      } else if (target_.ss.ss_family == AF_INET) {
        m += '\x01';
        m.append(
            reinterpret_cast<const char*>(&reinterpret_cast<sockaddr_in*>(&target_.ss)->sin_addr),
            4);
      } else {
        m += '\x04';
        m.append(
            reinterpret_cast<const char*>(&reinterpret_cast<sockaddr_in6*>(&target_.ss)->sin6_addr),
            16);
      }
      m += static_cast<char>(target_.port >> 8);
      m += static_cast<char>(target_.port & 0xff);
      if (!flush(c)) return false;
    }
    if (drained) return true;
  }
}

// Reads payload in the rate, bulk-down, bulk-up-drain and idle phases.
bool Runner::read_payload(Client& c) {
  static char sink[kBig];
  bool drained = false;
  for (;;) {
    if (c.phase == Client::Phase::kRequest && c.got >= static_cast<uint64_t>(o_.reply)) {
      int64_t t = now_ns();
      if (measuring_) {
        lat_tx_.add(t - c.t0);
        ++ok_;
        if (t <= deadline_) ++ok_in_window_;
      }
      finish(c);
      return false;
    }
    if (c.phase == Client::Phase::kDown &&
        (c.got >= o_.count || (c.stop_at && now_ns() >= c.stop_at))) {
      bulk_ns_ += now_ns() - c.t_hs;
      bytes_ += c.got;
      ++ok_;
      finish(c);
      return false;
    }
    if (drained) return true;
    ssize_t n = io_recv(c, sink, sizeof sink);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return true;
      if (c.phase == Client::Phase::kIdle) ++dropped_;
      fail(c, "recv: " + io_error());
      return false;
    }
    if (n == 0) {
      if (c.phase == Client::Phase::kUpDrain) {
        bulk_ns_ += now_ns() - c.t_hs;
        bytes_ += c.sent;
        ++ok_;
        finish(c);
        return false;
      }
      if (c.phase == Client::Phase::kIdle) ++dropped_;
      fail(c, "proxy closed the connection early");
      return false;
    }
    c.got += static_cast<uint64_t>(n);
    if (c.phase == Client::Phase::kIdle) {
      ++dropped_;
      fail(c, "unexpected data on an idle session");
      return false;
    }
    // A short read drained the socket: no need for a recv that says EAGAIN,
    // but the completion checks at the top still have to run once.
    drained = static_cast<size_t>(n) < sizeof sink && !c.hup && !c.ssl;
  }
}

bool Runner::pump_up(Client& c) {
  while (c.phase == Client::Phase::kUp) {
    if (c.sent >= o_.count || (c.stop_at && now_ns() >= c.stop_at)) {
      if (c.ssl) SSL_shutdown(c.ssl);  // close_notify: TLS's end of the upload
      shutdown(c.fd, SHUT_WR);
      c.phase = Client::Phase::kUpDrain;
      return read_payload(c);
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(o_.count - c.sent, kBig));
    ssize_t w = io_send(c, g_big, n);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) return true;
      fail(c, "send: " + io_error());
      return false;
    }
    c.sent += static_cast<uint64_t>(w);
  }
  return true;
}

void Runner::on_event(Client& c, uint32_t events) {
  if (c.phase == Client::Phase::kFree) return;
  c.hup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  if (c.phase == Client::Phase::kConnecting) {
    if (events & EPOLLERR) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      fail(c, strf("connect: %s", std::strerror(err ? err : ECONNREFUSED)));
      return;
    }
    if (!(events & EPOLLOUT)) return;
    if (tls_ctx_) {
      start_tls(c);
      return;  // the server speaks only after our ClientHello
    }
    if (!on_connected(c)) return;
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) return;
  }
  if (c.phase == Client::Phase::kTls) {
    if (!continue_tls(c)) return;
    // Done: the proxy protocol's first message is out; its answer comes later.
    if (c.phase != Client::Phase::kHandshake || !(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)))
      return;
  }
  // A TLS write may wait on a read (and the other way round): retry it on any event.
  if ((events & EPOLLOUT || c.ssl) && !c.wbuf.empty() && !flush(c)) return;
  if ((events & EPOLLOUT) && c.phase == Client::Phase::kUp && !pump_up(c)) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    if (c.phase == Client::Phase::kHandshake)
      read_handshake(c);
    else if (c.phase != Client::Phase::kUp)
      read_payload(c);
    else if (events & (EPOLLHUP | EPOLLERR))
      fail(c, "connection reset while sending");
  }
}

void Runner::check_timeouts(int64_t now) {
  const auto limit = static_cast<int64_t>(o_.timeout * 1e9);
  for (Client& c : clients_) {
    if (c.phase == Client::Phase::kFree || c.phase == Client::Phase::kIdle) continue;
    bool bulk = c.phase == Client::Phase::kDown || c.phase == Client::Phase::kUp ||
                c.phase == Client::Phase::kUpDrain;
    if (bulk) continue;  // bounded by -d / -n instead
    if (now - c.t0 > limit)
      fail(c, c.phase == Client::Phase::kConnecting  ? "connect timeout"
              : c.phase == Client::Phase::kTls       ? "TLS handshake timeout"
              : c.phase == Client::Phase::kHandshake ? "handshake timeout"
                                                     : "reply timeout");
  }
}

int Runner::wait_events(int timeout_ms) {
  int n = epoll_wait(ep_, evs_.data(), static_cast<int>(evs_.size()), timeout_ms);
  if (n < 0) {
    if (errno != EINTR) die("epoll_wait: %s", std::strerror(errno));
    return 0;
  }
  for (int i = 0; i < n; ++i) on_event(clients_[evs_[i].data.u64], evs_[i].events);
  return n;
}

void Runner::report(const std::string& human, const std::string& json) {
  std::printf("%s\n", human.c_str());
  std::printf(
      "JSON "
      "{\"mode\":\"%s\",\"proto\":\"%s\",\"proxy\":\"%s\",\"target\":\"%s\",\"label\":\"%s\",%s}\n",
      o_.mode.c_str(), o_.proto.c_str(), json_escape(o_.proxy).c_str(),
      json_escape(o_.target).c_str(), json_escape(o_.label).c_str(), json.c_str());
  std::fflush(stdout);
}

// Proxy CPU over a run, from /proc (children included).
struct CpuMeter {
  std::vector<int> pids;
  double before = -1;
  explicit CpuMeter(const std::vector<int>& p) : pids(p) { restart(); }
  void restart() {
    if (!pids.empty()) {
      before = tree_cpu_seconds(pids);
      if (before < 0) die("--pid: a process is gone");
    }
  }
  double used() const {
    if (pids.empty()) return -1;
    double after = tree_cpu_seconds(pids);
    return after < 0 ? -1 : after - before;
  }
};

int Runner::run_rate() {
  if (o_.conns < 1) die("-c must be at least 1");
  clients_.resize(static_cast<size_t>(o_.conns));
  CpuMeter cpu(o_.pids);
  const int64_t t_start = now_ns();
  // Warm-up: the same load, then every counter starts from zero.
  const int64_t measure_from = t_start + static_cast<int64_t>(std::max(0.0, o_.warmup) * 1e9);
  measuring_ = measure_from == t_start;
  // -n alone: as long as the transactions take (up to an hour).
  const bool by_count = o_.count > 0 && !o_.duration_given;
  deadline_ = measure_from + static_cast<int64_t>((by_count ? 3600.0 : o_.duration) * 1e9);
  const int64_t grace_end = deadline_ + static_cast<int64_t>((o_.timeout + 1) * 1e9);
  int64_t last_timeout_check = t_start;
  for (size_t i = 0; i < clients_.size() && (o_.count == 0 || started_ < o_.count); ++i) {
    start(clients_[i], i);
    ++started_;
  }
  for (;;) {
    int64_t now = now_ns();
    if (!measuring_ && now >= measure_from) {
      measuring_ = true;
      ok_ = ok_in_window_ = errors_ = 0;
      first_error_.clear();
      cpu.restart();
    }
    bool before_deadline = now < deadline_ && !g_stop && (o_.count == 0 || started_ < o_.count);
    // Give up early if nothing ever works (e.g. the proxy is not there).
    if (ok_ == 0 && errors_ >= 1000) before_deadline = false;
    size_t busy = 0;
    for (size_t i = 0; i < clients_.size(); ++i) {
      if (clients_[i].phase == Client::Phase::kFree && before_deadline &&
          (o_.count == 0 || started_ < o_.count)) {
        start(clients_[i], i);
        ++started_;
      }
      if (clients_[i].phase != Client::Phase::kFree) ++busy;
    }
    if (busy == 0 && !before_deadline) break;
    if (now > grace_end || (g_stop && now > deadline_)) break;
    wait_events(before_deadline ? 50 : 20);
    if (now - last_timeout_check > 100000000) {
      check_timeouts(now);
      last_timeout_check = now;
    }
  }
  double cpu_s = cpu.used();
  for (Client& c : clients_)
    if (c.phase != Client::Phase::kFree) fail(c, "unfinished at the end of the run");
  double secs = by_count ? static_cast<double>(now_ns() - measure_from) / 1e9 : o_.duration;
  double rate = static_cast<double>(ok_in_window_) / secs;
  std::string human = strf(
      "rate %s c=%d d=%.1fs: %.0f tx/s (%llu tx, %llu errors), handshake p50/p90/p99 "
      "%.3f/%.3f/%.3f ms, "
      "tx p50/p90/p99 %.3f/%.3f/%.3f ms",
      o_.proto.c_str(), o_.conns, secs, rate, static_cast<unsigned long long>(ok_),
      static_cast<unsigned long long>(errors_), lat_hs_.pct(0.5), lat_hs_.pct(0.9),
      lat_hs_.pct(0.99), lat_tx_.pct(0.5), lat_tx_.pct(0.9), lat_tx_.pct(0.99));
  std::string json = strf(
      "\"conns\":%d,\"seconds\":%.3f,\"tx\":%llu,\"tx_per_s\":%.1f,\"errors\":%llu,"
      "\"hs_p50_ms\":%.4f,\"hs_p90_ms\":%.4f,\"hs_p99_ms\":%.4f,"
      "\"tx_p50_ms\":%.4f,\"tx_p90_ms\":%.4f,\"tx_p99_ms\":%.4f",
      o_.conns, secs, static_cast<unsigned long long>(ok_), rate,
      static_cast<unsigned long long>(errors_), lat_hs_.pct(0.5), lat_hs_.pct(0.9),
      lat_hs_.pct(0.99), lat_tx_.pct(0.5), lat_tx_.pct(0.9), lat_tx_.pct(0.99));
  if (o_.tls) {
    // Part of the handshake latency above: connect() to the end of the TLS handshake.
    human += strf(", TLS handshake p50/p99 %.3f/%.3f ms", lat_tls_.pct(0.5), lat_tls_.pct(0.99));
    json += strf(",\"tls\":true,\"tls_p50_ms\":%.4f,\"tls_p99_ms\":%.4f", lat_tls_.pct(0.5),
                 lat_tls_.pct(0.99));
  }
  if (cpu_s >= 0) {
    // CPU over the run (including the grace period) against every finished transaction.
    double per_tx_us = ok_ ? cpu_s * 1e6 / static_cast<double>(ok_) : 0;
    double tx_per_cpu = cpu_s > 0 ? static_cast<double>(ok_) / cpu_s : 0;
    human += strf(", proxy cpu %.2f s (%.1f us/tx, %.0f tx/cpu-s)", cpu_s, per_tx_us, tx_per_cpu);
    json += strf(",\"proxy_cpu_s\":%.3f,\"cpu_us_per_tx\":%.2f,\"tx_per_cpu_s\":%.1f", cpu_s,
                 per_tx_us, tx_per_cpu);
  }
  if (!first_error_.empty()) {
    human += "; first error: " + first_error_;
    json += ",\"first_error\":\"" + json_escape(first_error_) + "\"";
  }
  report(human, json);
  return ok_ > 0 ? 0 : 1;
}

int Runner::run_bulk() {
  if (o_.count == 0) die("bulk needs -n BYTES");
  if (o_.dir != "up" && o_.dir != "down") die("--dir: expected up or down");
  int streams = o_.conns_given ? o_.conns : 1;
  if (streams < 1) die("-c must be at least 1");
  clients_.resize(static_cast<size_t>(streams));
  CpuMeter cpu(o_.pids);
  const int64_t t_start = now_ns();
  // Each stream stops at -n bytes or -d seconds after its handshake; a hard
  // end bounds everything (handshakes included).
  const double cap = o_.duration_given ? o_.duration : 120;
  const int64_t hard_end = t_start + static_cast<int64_t>((cap + 2 * o_.timeout + 1) * 1e9);
  int64_t last_timeout_check = t_start;
  for (size_t i = 0; i < clients_.size() && (o_.count == 0 || started_ < o_.count); ++i) {
    start(clients_[i], i);
    ++started_;
  }
  for (;;) {
    int64_t now = now_ns();
    size_t busy = 0;
    int64_t next_stop = 0;
    for (Client& c : clients_) {
      if (c.phase == Client::Phase::kFree) continue;
      ++busy;
      if (c.stop_at && (next_stop == 0 || c.stop_at < next_stop)) next_stop = c.stop_at;
    }
    if (busy == 0 || now > hard_end || g_stop) break;
    int wait_ms = 50;
    if (next_stop)
      wait_ms = static_cast<int>(std::clamp<int64_t>((next_stop - now) / 1000000, 0, 50));
    wait_events(wait_ms);
    // Streams blocked in send or recv still have to notice their stop time.
    now = now_ns();
    for (Client& c : clients_) {
      if (!c.stop_at || now < c.stop_at) continue;
      if (c.phase == Client::Phase::kDown)
        read_payload(c);
      else if (c.phase == Client::Phase::kUp)
        pump_up(c);
    }
    if (now - last_timeout_check > 100000000) {
      check_timeouts(now);
      last_timeout_check = now;
    }
  }
  const int64_t t_end = now_ns();
  double cpu_s = cpu.used();
  for (Client& c : clients_)
    if (c.phase != Client::Phase::kFree) fail(c, "unfinished at the end of the run");
  // Wall time from the start (all streams run together) minus the handshakes.
  double secs = streams == 1 && ok_ == 1 ? static_cast<double>(bulk_ns_) / 1e9
                                         : static_cast<double>(t_end - t_start) / 1e9;
  double mbs = secs > 0 ? static_cast<double>(bytes_) / secs / 1e6 : 0;
  std::string human =
      strf("bulk %s %s: %.1f MB/s (%.1f MiB in %.3f s, %d stream(s), %llu errors)",
           o_.proto.c_str(), o_.dir.c_str(), mbs, static_cast<double>(bytes_) / 1048576.0, secs,
           streams, static_cast<unsigned long long>(errors_));
  std::string json = strf(
      "\"dir\":\"%s\",\"streams\":%d,\"bytes\":%llu,\"seconds\":%.4f,\"mb_per_s\":%.2f,"
      "\"errors\":%llu",
      o_.dir.c_str(), streams, static_cast<unsigned long long>(bytes_), secs, mbs,
      static_cast<unsigned long long>(errors_));
  if (cpu_s >= 0) {
    double per_gb = bytes_ ? cpu_s / (static_cast<double>(bytes_) / 1e9) : 0;
    human += strf(", proxy cpu %.2f s (%.3f cpu-s/GB)", cpu_s, per_gb);
    json += strf(",\"proxy_cpu_s\":%.3f,\"cpu_s_per_gb\":%.4f", cpu_s, per_gb);
  }
  if (!first_error_.empty()) {
    human += "; first error: " + first_error_;
    json += ",\"first_error\":\"" + json_escape(first_error_) + "\"";
  }
  report(human, json);
  return ok_ > 0 && errors_ == 0 ? 0 : 1;
}

int Runner::run_idle() {
  if (o_.count == 0) die("idle needs -n SESSIONS");
  if (o_.pids.empty()) die("idle needs --pid PROXY_PID");
  const size_t n = static_cast<size_t>(o_.count);
  clients_.resize(n);
  long rss_before = tree_rss_kib(o_.pids);
  if (rss_before < 0) die("--pid: no such process");
  const int64_t t_start = now_ns();
  const int64_t open_end = t_start + static_cast<int64_t>((o_.timeout + 60) * 1e9);
  const size_t batch = static_cast<size_t>(std::max(1, o_.batch));
  size_t next = 0;
  int64_t last_timeout_check = t_start;
  // Open in batches: at most `batch` handshakes in flight, so that the proxy's
  // accept backlog never overflows.
  for (;;) {
    size_t in_flight = 0;
    for (size_t i = 0; i < next; ++i) {
      auto ph = clients_[i].phase;
      in_flight += ph == Client::Phase::kConnecting || ph == Client::Phase::kTls ||
                   ph == Client::Phase::kHandshake;
    }
    while (next < n && in_flight < batch && !g_stop) {
      if (start(clients_[next], next)) ++in_flight;
      ++next;
    }
    if (next >= n && in_flight == 0) break;
    int64_t now = now_ns();
    if (now > open_end || g_stop) break;
    wait_events(20);
    if (now - last_timeout_check > 100000000) {
      check_timeouts(now);
      last_timeout_check = now;
    }
  }
  const double open_s = static_cast<double>(now_ns() - t_start) / 1e9;
  // Hold: anything the proxy does to an idle session (close, data) is counted.
  const int64_t hold_end = now_ns() + static_cast<int64_t>(o_.hold * 1e9);
  while (now_ns() < hold_end && !g_stop) wait_events(50);
  long rss_after = tree_rss_kib(o_.pids);
  size_t held = 0;
  for (Client& c : clients_) held += c.phase == Client::Phase::kIdle;
  for (Client& c : clients_)
    if (c.phase != Client::Phase::kFree) finish(c);
  double per = held ? static_cast<double>(rss_after - rss_before) / static_cast<double>(held) : 0;
  std::string human = strf(
      "idle %s: %zu/%zu sessions held (%llu errors, %llu dropped while held), opened in %.2f s, "
      "proxy RSS %ld -> %ld KiB, %.2f KiB/session",
      o_.proto.c_str(), held, n, static_cast<unsigned long long>(errors_),
      static_cast<unsigned long long>(dropped_), open_s, rss_before, rss_after, per);
  std::string json = strf(
      "\"sessions\":%zu,\"held\":%zu,\"errors\":%llu,\"dropped\":%llu,\"open_s\":%.3f,"
      "\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"kib_per_session\":%.3f,"
      "\"hs_p50_ms\":%.4f,\"hs_p99_ms\":%.4f",
      n, held, static_cast<unsigned long long>(errors_), static_cast<unsigned long long>(dropped_),
      open_s, rss_before, rss_after, per, lat_hs_.pct(0.5), lat_hs_.pct(0.99));
  if (!first_error_.empty()) {
    human += "; first error: " + first_error_;
    json += ",\"first_error\":\"" + json_escape(first_error_) + "\"";
  }
  report(human, json);
  return held == n ? 0 : 1;
}

// ---------------------------------------------------------------- get

// Keep-alive HTTP/1.1 GETs on -c connections for -d seconds: each connection
// sends one request, reads the response by its Content-Length, and sends the
// next; a response that says `Connection: close` (or a peer that closes
// between responses) makes it reconnect, which `connects` counts. A reused
// connection closed before any byte of the next response is retried on a new
// one, as browsers do (tinyproxy closes after every response without saying
// `Connection: close`): `retries` counts those.
class GetRunner {
 public:
  explicit GetRunner(const Options& o) : o_(o) {
    if (o_.target.empty()) die("--target is required");
    if (o_.proto != "http" && o_.proto != "direct") die("get: --proto must be http or direct");
    if (o_.tls) die("get: --tls is for rate, bulk and idle only");
    target_ = parse_endpoint(o_.target, o_.proto == "direct");
    if (o_.proto == "http") {
      if (o_.proxy.empty()) die("--proxy is required with --proto http");
      connect_to_ = parse_endpoint(o_.proxy, true);
      request_ = "GET http://" + target_.authority() +
                 "/ HTTP/1.1\r\nHost: " + target_.authority() +
                 "\r\nUser-Agent: rs-loadgen\r\n\r\n";
    } else {
      connect_to_ = target_;
      request_ =
          "GET / HTTP/1.1\r\nHost: " + target_.authority() + "\r\nUser-Agent: rs-loadgen\r\n\r\n";
    }
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1: %s", std::strerror(errno));
  }

  int run();

 private:
  struct Conn {
    int fd = -1;
    bool connecting = false;
    bool busy = false;       // a request is outstanding
    bool head_done = false;  // its response head has been read
    bool close_after = false;
    bool want_out = false;  // EPOLLOUT is in the interest set
    uint64_t served = 0;    // responses read on this connection
    uint64_t body_left = 0;
    size_t woff = 0;
    size_t rlen = 0;
    int64_t t_req = 0;
    char rbuf[4096];
  };

  void open_conn(Conn& c, size_t slot);
  void close_conn(Conn& c) {
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
    c.busy = c.connecting = false;
  }
  void fail(Conn& c, const std::string& why) {
    // The peer closed a reused connection before answering: retry the
    // request on a new connection (the run loop opens it).
    if (c.busy && c.served > 0 && !c.head_done && c.rlen == 0) {
      ++retries_;
      return close_conn(c);
    }
    ++errors_;
    if (first_error_.empty()) first_error_ = why;
    close_conn(c);
  }
  void interest(Conn& c, size_t slot, bool out) {
    if (out == c.want_out) return;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0u);
    ev.data.u64 = slot;
    epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
    c.want_out = out;
  }
  bool send_request(Conn& c, size_t slot);
  bool flush(Conn& c, size_t slot);
  void on_readable(Conn& c, size_t slot);
  // Parses the head in rbuf: bytes it takes, 0 if incomplete, -1 if bad.
  long parse_head(Conn& c, std::string& err);
  void on_event(size_t slot, uint32_t events);

  const Options& o_;
  Endpoint target_, connect_to_;
  std::string request_;
  int ep_ = -1;
  std::vector<Conn> conns_;
  bool before_deadline_ = true;
  int64_t deadline_ = 0;
  uint64_t ok_ = 0, ok_in_window_ = 0, errors_ = 0, connects_ = 0, retries_ = 0;
  std::string first_error_;
  Latencies lat_;
};

void GetRunner::open_conn(Conn& c, size_t slot) {
  c = Conn{};
  c.fd = socket(connect_to_.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) return fail(c, strf("socket: %s", std::strerror(errno)));
  int on = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
  ev.data.u64 = slot;
  c.want_out = true;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, c.fd, &ev) != 0)
    return fail(c, strf("epoll_ctl: %s", std::strerror(errno)));
  ++connects_;
  c.connecting = true;
  c.t_req = now_ns();  // the first request's latency includes the connect
  if (connect(c.fd, reinterpret_cast<const sockaddr*>(&connect_to_.ss), connect_to_.len) != 0 &&
      errno != EINPROGRESS)
    fail(c, strf("connect: %s", std::strerror(errno)));
}

bool GetRunner::flush(Conn& c, size_t slot) {
  while (c.woff < request_.size()) {
    ssize_t n = send(c.fd, request_.data() + c.woff, request_.size() - c.woff, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        interest(c, slot, true);
        return true;
      }
      fail(c, strf("send: %s", std::strerror(errno)));
      return false;
    }
    c.woff += static_cast<size_t>(n);
  }
  interest(c, slot, false);
  return true;
}

bool GetRunner::send_request(Conn& c, size_t slot) {
  c.busy = true;
  c.head_done = c.close_after = false;
  c.body_left = 0;
  c.woff = 0;
  if (!c.connecting) c.t_req = now_ns();
  return flush(c, slot);
}

long GetRunner::parse_head(Conn& c, std::string& err) {
  std::string_view v(c.rbuf, c.rlen);
  size_t end = v.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (c.rlen == sizeof c.rbuf) {
      err = "response head too long";
      return -1;
    }
    return 0;
  }
  if (v.size() < 12 || v.substr(0, 7) != "HTTP/1." || v.substr(9, 3) != "200") {
    err = "response \"" + std::string(v.substr(0, std::min(v.find('\r'), size_t{40}))) + "\"";
    return -1;
  }
  std::string head(v.substr(0, end + 2));
  for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t cl = head.find("\r\ncontent-length:");
  if (cl == std::string::npos) {
    err = "response without Content-Length";
    return -1;
  }
  c.body_left = std::strtoull(head.c_str() + cl + 17, nullptr, 10);
  bool http10 = head[7] == '0';
  c.close_after = head.find("\r\nconnection: close") != std::string::npos ||
                  (http10 && head.find("\r\nconnection: keep-alive") == std::string::npos);
  return static_cast<long>(end + 4);
}

void GetRunner::on_readable(Conn& c, size_t slot) {
  ssize_t n = recv(c.fd, c.rbuf + c.rlen, sizeof c.rbuf - c.rlen, 0);
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) fail(c, strf("recv: %s", std::strerror(errno)));
    return;
  }
  if (n == 0) {
    if (!c.busy && before_deadline_)
      return close_conn(c);  // closed between requests: the loop reconnects
    return fail(c, c.busy ? "connection closed before the response ended"
                          : "connection closed after the deadline");
  }
  c.rlen += static_cast<size_t>(n);
  if (!c.busy) return fail(c, "data before any request");
  if (!c.head_done) {
    std::string err;
    long used = parse_head(c, err);
    if (used < 0) return fail(c, err);
    if (used == 0) return;
    c.head_done = true;
    c.rlen -= static_cast<size_t>(used);  // body bytes already read
    std::memmove(c.rbuf, c.rbuf + used, c.rlen);
  }
  uint64_t take = std::min<uint64_t>(c.rlen, c.body_left);
  c.body_left -= take;
  c.rlen -= static_cast<size_t>(take);
  if (c.body_left > 0) {
    c.rlen = 0;  // body bytes are not kept
    return;
  }
  if (c.rlen > 0) return fail(c, "bytes after the response");
  int64_t t = now_ns();
  lat_.add(t - c.t_req);
  ++ok_;
  if (t <= deadline_) ++ok_in_window_;
  ++c.served;
  c.busy = false;
  if (c.close_after || !before_deadline_) return close_conn(c);
  send_request(c, slot);
}

void GetRunner::on_event(size_t slot, uint32_t events) {
  Conn& c = conns_[slot];
  if (c.fd < 0) return;
  if (c.connecting) {
    if (events & (EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      return fail(c, strf("connect: %s", std::strerror(err ? err : ECONNREFUSED)));
    }
    if (!(events & EPOLLOUT)) return;
    if (!send_request(c, slot)) return;
    c.connecting = false;
    return;
  }
  if ((events & EPOLLOUT) && c.busy && !flush(c, slot)) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c, slot);
}

int GetRunner::run() {
  if (o_.conns < 1) die("-c must be at least 1");
  conns_.resize(static_cast<size_t>(o_.conns));
  CpuMeter cpu(o_.pids);
  const int64_t t_start = now_ns();
  deadline_ = t_start + static_cast<int64_t>(o_.duration * 1e9);
  const int64_t limit = static_cast<int64_t>(o_.timeout * 1e9);
  const int64_t grace_end = deadline_ + limit + 1000000000;
  int64_t last_timeout_check = t_start;
  std::vector<epoll_event> evs(1024);
  for (;;) {
    int64_t now = now_ns();
    before_deadline_ = now < deadline_ && !g_stop && !(ok_ == 0 && errors_ >= 1000);
    size_t busy = 0;
    for (size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i].fd < 0 && before_deadline_) open_conn(conns_[i], i);
      if (conns_[i].fd >= 0 && (conns_[i].busy || before_deadline_)) ++busy;
    }
    if (busy == 0 || now > grace_end || (g_stop && now > deadline_)) break;
    int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 20);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", std::strerror(errno));
    for (int i = 0; i < n; ++i) on_event(evs[i].data.u64, evs[i].events);
    if (now - last_timeout_check > 100000000) {
      last_timeout_check = now;
      for (Conn& c : conns_)
        if (c.fd >= 0 && c.busy && now - c.t_req > limit) {
          c.served = 0;  // a timeout is an error, never retried
          fail(c, c.connecting ? "connect timeout" : "response timeout");
        }
    }
  }
  double cpu_s = cpu.used();
  for (Conn& c : conns_) {
    if (c.fd >= 0 && c.busy) {
      c.served = 0;  // no retry now
      fail(c, "unfinished at the end of the run");
    }
    close_conn(c);
  }
  double rate = static_cast<double>(ok_in_window_) / o_.duration;
  std::string human = strf(
      "get %s c=%d d=%.1fs: %.0f req/s (%llu requests on %llu connections, %llu retried, %llu "
      "errors), p50/p90/p99 %.3f/%.3f/%.3f ms",
      o_.proto.c_str(), o_.conns, o_.duration, rate, static_cast<unsigned long long>(ok_),
      static_cast<unsigned long long>(connects_), static_cast<unsigned long long>(retries_),
      static_cast<unsigned long long>(errors_), lat_.pct(0.5), lat_.pct(0.9), lat_.pct(0.99));
  std::string json = strf(
      "\"conns\":%d,\"seconds\":%.3f,\"requests\":%llu,\"req_per_s\":%.1f,\"connects\":%llu,"
      "\"retries\":%llu,\"errors\":%llu,\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f",
      o_.conns, o_.duration, static_cast<unsigned long long>(ok_), rate,
      static_cast<unsigned long long>(connects_), static_cast<unsigned long long>(retries_),
      static_cast<unsigned long long>(errors_), lat_.pct(0.5), lat_.pct(0.9), lat_.pct(0.99));
  if (cpu_s >= 0) {
    // CPU over the run (including the grace period) against every finished request.
    double per_us = ok_ ? cpu_s * 1e6 / static_cast<double>(ok_) : 0;
    double per_cpu = cpu_s > 0 ? static_cast<double>(ok_) / cpu_s : 0;
    human += strf(", proxy cpu %.2f s (%.1f us/req, %.0f req/cpu-s)", cpu_s, per_us, per_cpu);
    json += strf(",\"proxy_cpu_s\":%.3f,\"cpu_us_per_req\":%.2f,\"req_per_cpu_s\":%.1f", cpu_s,
                 per_us, per_cpu);
  }
  if (!first_error_.empty()) {
    human += "; first error: " + first_error_;
    json += ",\"first_error\":\"" + json_escape(first_error_) + "\"";
  }
  std::printf("%s\n", human.c_str());
  std::printf(
      "JSON "
      "{\"mode\":\"get\",\"proto\":\"%s\",\"proxy\":\"%s\",\"target\":\"%s\",\"label\":\"%s\",%s}"
      "\n",
      o_.proto.c_str(), json_escape(o_.proxy).c_str(), json_escape(o_.target).c_str(),
      json_escape(o_.label).c_str(), json.c_str());
  std::fflush(stdout);
  return ok_ > 0 ? 0 : 1;
}

int Runner::run() {
  if (o_.mode == "rate") return run_rate();
  if (o_.mode == "bulk") return run_bulk();
  return run_idle();
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  if (o.mode == "origin") return run_origin(o);
  if (o.mode != "rate" && o.mode != "bulk" && o.mode != "idle" && o.mode != "get") {
    usage();
    return 2;
  }
  rlim_t nofile = raise_nofile();
  if (o.mode == "idle" && o.count + 64 > nofile)
    die("idle -n %llu needs more file descriptors than RLIMIT_NOFILE allows (%llu)",
        static_cast<unsigned long long>(o.count), static_cast<unsigned long long>(nofile));
  install_signals();
  if (o.mode == "get") return GetRunner(o).run();
  Runner r(o);
  return r.run();
}
