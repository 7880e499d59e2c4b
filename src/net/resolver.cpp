#include "net/resolver.hpp"

#include <ares.h>
#include <fmt/format.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "core/log.hpp"

namespace rs::net {

namespace {

int hint_family(Family f) {
  if (f == Family::kOnlyV4) return AF_INET;
  if (f == Family::kOnlyV6) return AF_INET6;
  return AF_UNSPEC;
}

// Drops the addresses `f` forbids and moves the preferred family to the front.
void apply_family(std::vector<SockAddr>& addrs, Family f) {
  int only = hint_family(f);
  if (only != AF_UNSPEC) std::erase_if(addrs, [only](auto& a) { return a.family() != only; });
  if (f == Family::kPreferV4 || f == Family::kPreferV6) {
    int first = f == Family::kPreferV4 ? AF_INET : AF_INET6;
    std::stable_partition(addrs.begin(), addrs.end(),
                          [first](auto& a) { return a.family() == first; });
  }
}

std::optional<SockAddr> numeric(const std::string& host, uint16_t port) {
  if (auto ip = proto::parse_ipv4(host)) return SockAddr::from(*ip, port);
  if (auto ip = proto::parse_ipv6(host)) return SockAddr::from(*ip, port);
  return std::nullopt;
}

// "ip" (port 53) or "ip:port" / "[v6]:port", as c-ares wants it.
ares_addr_port_node parse_nameserver(const std::string& s) {
  auto sa = parse_sockaddr(s);
  if (!sa) sa = numeric(s, 53);
  if (!sa) throw std::runtime_error(fmt::format("bad nameserver \"{}\": want ip or ip:port", s));
  ares_addr_port_node node{};
  node.family = sa->family();
  node.udp_port = node.tcp_port = sa->port();
  auto addr = sa->to_address();
  if (auto* v4 = std::get_if<proto::Ipv4>(&addr.host)) {
    std::memcpy(&node.addr.addr4, v4->data(), v4->size());
  } else {
    auto& v6 = std::get<proto::Ipv6>(addr.host);
    std::memcpy(&node.addr.addr6, v6.data(), v6.size());
  }
  return node;
}

struct AddrinfoFree {
  void operator()(ares_addrinfo* ai) const { ares_freeaddrinfo(ai); }
};

}  // namespace

// One lookup. Shared by the Query handle, the c-ares callback argument and the
// finished_ queue, so it lives until the last of them lets go.
struct Resolver::Request {
  Resolver* resolver;
  std::string host;
  uint16_t port;
  Callback cb;  // emptied by cancellation or delivery: it runs at most once
  std::vector<SockAddr> addrs;
  std::string error;
};

Resolver::Query::~Query() {
  req_->cb = nullptr;
}

Resolver::Resolver(ev::Loop* loop, ResolverOptions opts)
    : loop_(loop),
      family_(opts.family),
      timeout_timer_(loop, [this](int) { process(ARES_SOCKET_BAD, ARES_SOCKET_BAD); }),
      later_(loop) {
  // c-ares wants this once per process, before any channel; never undone.
  static const int lib_status = ares_library_init(ARES_LIB_INIT_ALL);
  if (lib_status != ARES_SUCCESS)
    throw std::runtime_error(fmt::format("c-ares: {}", ares_strerror(lib_status)));

  std::optional<ares_addr_port_node> server;
  if (!opts.nameserver.empty()) server = parse_nameserver(opts.nameserver);

  ares_options o{};
  o.sock_state_cb = on_sock_state;
  o.sock_state_cb_data = this;
  // Two tries per server, and c-ares doubles the wait for the second: a third
  // of the budget, then two thirds, spend `timeout` in total on each server.
  o.timeout = std::max(1, static_cast<int>(opts.timeout * 1000 / 3));
  o.tries = 2;
  int status = ares_init_options(&channel_, &o,
                                 ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (status != ARES_SUCCESS)
    throw std::runtime_error(fmt::format("c-ares init: {}", ares_strerror(status)));
  if (server) {
    status = ares_set_servers_ports(channel_, &*server);
    if (status != ARES_SUCCESS) {
      ares_destroy(channel_);
      throw std::runtime_error(
          fmt::format("nameserver \"{}\": {}", opts.nameserver, ares_strerror(status)));
    }
  }
}

Resolver::~Resolver() {
  // Outstanding lookups end with ARES_EDESTRUCTION, which on_addrinfo drops;
  // their sockets close through on_sock_state while the watchers still exist.
  // Requests already in finished_ die with the queue, undelivered.
  ares_destroy(channel_);
}

std::unique_ptr<Resolver::Query> Resolver::resolve(std::string host, uint16_t port, Callback cb) {
  ++queries_;
  auto req = std::make_shared<Request>(Request{this, std::move(host), port, std::move(cb), {}, {}});
  std::unique_ptr<Query> query(new Query(req));
  if (auto addr = numeric(req->host, port)) {
    req->addrs.push_back(*addr);
    ++successes_;
    finish_later(std::move(req));
    return query;
  }
  ares_addrinfo_hints hints{};
  hints.ai_family = hint_family(family_);
  hints.ai_socktype = SOCK_STREAM;
  // c-ares answers /etc/hosts hits before returning; on_addrinfo only queues
  // them, so the callback still runs later from the loop. The heap copy of the
  // shared_ptr is c-ares' reference, released by on_addrinfo.
  ares_getaddrinfo(channel_, req->host.c_str(), nullptr, &hints, on_addrinfo,
                   new std::shared_ptr<Request>(req));
  arm_timer();
  return query;
}

void Resolver::on_addrinfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* res) {
  auto* ref = static_cast<std::shared_ptr<Request>*>(arg);
  std::shared_ptr<Request> req = std::move(*ref);
  delete ref;
  std::unique_ptr<ares_addrinfo, AddrinfoFree> ai(res);
  // The channel (hence the Resolver) is going away, or nobody waits any more.
  if (status == ARES_EDESTRUCTION || !req->cb) return;

  if (status == ARES_SUCCESS) {
    for (auto* node = ai->nodes; node != nullptr; node = node->ai_next) {
      if (auto addr = SockAddr::from_sockaddr(node->ai_addr, node->ai_addrlen)) {
        addr->set_port(req->port);
        req->addrs.push_back(*addr);
      }
    }
    apply_family(req->addrs, req->resolver->family_);
    if (req->addrs.empty()) {
      req->error = fmt::format("{}: no usable address", req->host);
    } else {
      ++req->resolver->successes_;
    }
  } else {
    req->error = fmt::format("{}: {}", req->host,
                             status == ARES_ETIMEOUT ? "timeout" : ares_strerror(status));
  }
  log::verbose("resolve {}: {}", req->host, req->error.empty() ? "ok" : req->error);
  req->resolver->finish_later(std::move(req));
}

void Resolver::on_sock_state(void* self_ptr, int fd, int readable, int writable) {
  auto* self = static_cast<Resolver*>(self_ptr);
  int events = (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);
  auto it = self->ios_.find(fd);
  if (events == 0) {
    if (it == self->ios_.end()) return;
    // c-ares may close the socket from inside this watcher's own callback,
    // where the watcher must not be destroyed: retire it to the next flush.
    it->second->stop();
    self->retired_.push_back(std::move(it->second));
    self->ios_.erase(it);
    self->flush_later();
  } else if (it == self->ios_.end()) {
    auto io = std::make_unique<ev::Io>(self->loop_, [self, fd](int revents) {
      self->process(revents & EV_READ ? fd : ARES_SOCKET_BAD,
                    revents & EV_WRITE ? fd : ARES_SOCKET_BAD);
    });
    io->set(fd, events);
    io->start();
    self->ios_.emplace(fd, std::move(io));
  } else {
    it->second->modify(events);
  }
}

// Lets c-ares handle socket readiness and expired timeouts.
void Resolver::process(int read_fd, int write_fd) {
  ares_process_fd(channel_, read_fd, write_fd);
  arm_timer();
}

// Sets the timer to c-ares' next deadline; none when nothing is outstanding.
void Resolver::arm_timer() {
  timeval tv;
  if (timeval* next = ares_timeout(channel_, nullptr, &tv))
    timeout_timer_.start(static_cast<double>(next->tv_sec) + next->tv_usec * 1e-6);
  else
    timeout_timer_.stop();
}

void Resolver::finish_later(std::shared_ptr<Request> req) {
  finished_.push_back(std::move(req));
  flush_later();
}

void Resolver::flush_later() {
  if (later_.pending() == 0) later_.post([this] { flush(); });
}

void Resolver::flush() {
  retired_.clear();
  auto batch = std::exchange(finished_, {});
  for (auto& req : batch) {
    // Taking the callback out first makes it run once even if it destroys its
    // own Query, and skips requests cancelled by earlier callbacks.
    if (auto cb = std::exchange(req->cb, nullptr)) cb(std::move(req->addrs), std::move(req->error));
  }
}

std::vector<SockAddr> resolve_blocking(const std::string& host, uint16_t port, Family family,
                                       std::string& error) {
  error.clear();
  // Literals bypass family filtering here too, as in Resolver::resolve().
  if (auto addr = numeric(host, port)) return {*addr};
  addrinfo hints{};
  hints.ai_family = hint_family(family);
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
    error = fmt::format("{}: {}", host, ::gai_strerror(rc));
    return {};
  }
  std::vector<SockAddr> addrs;
  for (auto* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (auto addr = SockAddr::from_sockaddr(ai->ai_addr, ai->ai_addrlen)) {
      addr->set_port(port);
      addrs.push_back(*addr);
    }
  }
  ::freeaddrinfo(res);
  apply_family(addrs, family);
  if (addrs.empty()) error = fmt::format("{}: no usable address", host);
  return addrs;
}

}  // namespace rs::net
