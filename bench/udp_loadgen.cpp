// rs-udpgen: the UDP workload of bench/udp_compare.
//
//   rs-udpgen echo --listen 127.0.0.1:PORT
//       a UDP echo server (one thread, answers every datagram with itself)
//   rs-udpgen run --target 127.0.0.1:PORT [--socks5 127.0.0.1:PORT] [-c 16]
//                 [--size 512] [--window 4] [--seconds 5]
//       c flows (with --socks5: c UDP associations), each keeping `window`
//       datagrams of `size` bytes in flight to the echo target; prints one
//       JSON line: {"datagrams": echoes received, "seconds": ..., "lost": ...}
//
// A flow that gets no echo for 200 ms counts its datagrams in flight as lost
// and sends a fresh window, so that losses never stall the run.
// Needs nothing but libc (IPv4 loopback only).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

sockaddr_in parse(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr, "bad address %s\n", s.c_str());
    std::exit(2);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(s.c_str() + colon + 1)));
  if (inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) != 1) {
    std::fprintf(stderr, "bad address %s\n", s.c_str());
    std::exit(2);
  }
  return a;
}

int echo(const sockaddr_in& listen) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&listen), sizeof listen) != 0)
    die("echo: bind");
  std::vector<char> buf(65536);
  for (;;) {
    sockaddr_in from{};
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) continue;
    (void)sendto(fd, buf.data(), static_cast<size_t>(n), 0, reinterpret_cast<sockaddr*>(&from),
                 len);
  }
}

bool read_exact(int fd, unsigned char* p, size_t n) {
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) return false;
    p += r, n -= static_cast<size_t>(r);
  }
  return true;
}

struct Flow {
  int udp = -1, control = -1;
  int in_flight = 0;
  double last = 0;
};

// Opens a UDP association with the SOCKS5 server `proxy`; the UDP socket is
// connected to its relay.
void associate(Flow& f, const sockaddr_in& proxy) {
  f.control = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(f.control, reinterpret_cast<const sockaddr*>(&proxy), sizeof proxy) != 0)
    die("connect to the proxy");
  sockaddr_in mine{};
  socklen_t len = sizeof mine;
  getsockname(f.udp, reinterpret_cast<sockaddr*>(&mine), &len);
  unsigned char req[13] = {5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0};
  std::memcpy(req + 11, &mine.sin_port, 2);
  unsigned char rep[12];
  if (send(f.control, req, sizeof req, 0) != sizeof req || !read_exact(f.control, rep, 2) ||
      !read_exact(f.control, rep + 2, 10) || rep[3] != 0 || rep[1] != 0 || rep[5] != 1) {
    std::fprintf(stderr, "UDP ASSOCIATE refused\n");
    std::exit(1);
  }
  sockaddr_in relay{};
  relay.sin_family = AF_INET;
  std::memcpy(&relay.sin_addr, rep + 6, 4);
  std::memcpy(&relay.sin_port, rep + 10, 2);
  if (relay.sin_addr.s_addr == 0) relay.sin_addr = proxy.sin_addr;
  if (connect(f.udp, reinterpret_cast<const sockaddr*>(&relay), sizeof relay) != 0)
    die("connect to the relay");
}

int run(const sockaddr_in& target, const sockaddr_in* proxy, int c, size_t size, int window,
        double seconds) {
  std::vector<unsigned char> dgram;
  size_t head = 0;
  if (proxy) {
    unsigned char h[10] = {0, 0, 0, 1};
    std::memcpy(h + 4, &target.sin_addr, 4);
    std::memcpy(h + 8, &target.sin_port, 2);
    dgram.assign(h, h + 10);
    head = 10;
  }
  dgram.resize(head + size, 'x');
  std::vector<Flow> flows(static_cast<size_t>(c));
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (auto& f : flows) {
    f.udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (f.udp < 0 || bind(f.udp, reinterpret_cast<sockaddr*>(&any), sizeof any) != 0) die("udp");
    if (proxy)
      associate(f, *proxy);
    else if (connect(f.udp, reinterpret_cast<const sockaddr*>(&target), sizeof target) != 0)
      die("connect");
  }
  auto fill = [&](Flow& f) {
    while (f.in_flight < window) {
      if (send(f.udp, dgram.data(), dgram.size(), 0) < 0) break;
      ++f.in_flight;
    }
    f.last = now();
  };
  for (auto& f : flows) fill(f);
  std::vector<pollfd> pfds(flows.size());
  for (size_t i = 0; i < flows.size(); ++i) pfds[i] = {flows[i].udp, POLLIN, 0};
  uint64_t got = 0, lost = 0;
  std::vector<unsigned char> buf(65536);
  const double start = now(), end = start + seconds;
  while (now() < end) {
    int r = poll(pfds.data(), pfds.size(), 50);
    if (r < 0) continue;
    const double t = now();
    for (size_t i = 0; i < flows.size(); ++i) {
      Flow& f = flows[i];
      if (pfds[i].revents & POLLIN) {
        for (;;) {
          ssize_t n = recv(f.udp, buf.data(), buf.size(), MSG_DONTWAIT);
          if (n < 0) break;
          if (static_cast<size_t>(n) == dgram.size()) ++got;
          if (f.in_flight > 0) --f.in_flight;
        }
        fill(f);
      } else if (t - f.last > 0.2) {
        lost += static_cast<uint64_t>(f.in_flight);
        f.in_flight = 0;
        fill(f);
      }
    }
  }
  const double took = now() - start;
  std::printf("{\"datagrams\": %llu, \"seconds\": %.3f, \"lost\": %llu}\n",
              static_cast<unsigned long long>(got), took, static_cast<unsigned long long>(lost));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: rs-udpgen echo --listen ADDR | run --target ADDR [--socks5 ADDR] "
                 "[-c N] [--size B] [--window W] [--seconds S]\n");
    return 2;
  }
  std::string mode = argv[1], listen, target, socks5;
  int c = 16, window = 4;
  size_t size = 512;
  double seconds = 5;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string a = argv[i], v = argv[i + 1];
    if (a == "--listen")
      listen = v;
    else if (a == "--target")
      target = v;
    else if (a == "--socks5")
      socks5 = v;
    else if (a == "-c")
      c = std::atoi(v.c_str());
    else if (a == "--size")
      size = static_cast<size_t>(std::atol(v.c_str()));
    else if (a == "--window")
      window = std::atoi(v.c_str());
    else if (a == "--seconds")
      seconds = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (mode == "echo") return echo(parse(listen));
  if (mode == "run") {
    sockaddr_in p{};
    if (!socks5.empty()) p = parse(socks5);
    return run(parse(target), socks5.empty() ? nullptr : &p, c, size, window, seconds);
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
