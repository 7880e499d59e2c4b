#include "server/udp_associate.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "core/log.hpp"
#include "net/udp_socket.hpp"
#include "proto/socks5.hpp"
#include "proto/socks5_udp.hpp"
#include "server/routing.hpp"
#include "server/server.hpp"

namespace rs::server {
namespace {

// Datagrams read per readiness callback: a flood on one socket yields to the
// rest of the loop (TCP sessions included) after this many.
constexpr int kBatch = 64;
// Destinations one association may have: each costs a routing and a map entry.
constexpr size_t kMaxDestinations = 1024;
// The largest UDP datagram, read after room for the longest SOCKS5 UDP
// header: a header can then be put in front of a payload without copying it.
constexpr size_t kMaxDatagram = 65535;
constexpr size_t kHeadroom = proto::socks5_udp::kMaxHeader;

// One buffer for every association: the loop runs one callback at a time.
uint8_t* scratch() {
  thread_local std::vector<uint8_t> buf(kHeadroom + kMaxDatagram);
  return buf.data();
}

bool would_block(int e) {
  return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS;
}

}  // namespace

struct UdpAssociation::Dest {
  enum class State { kRouting, kResolving, kReady, kRejected } state = State::kRouting;
  proto::Address asked;    // as the client wrote it
  net::SockAddr addr;      // kReady, direct: where its datagrams go
  Upstream* up = nullptr;  // through a socks5:// hop instead
  proto::Address target;   // with `up`: the destination the hop is asked for
  std::unique_ptr<Cancellable> routing;
  std::unique_ptr<net::Resolver::Query> query;
  std::vector<std::string> pending;  // payloads held until kReady
};

struct UdpAssociation::Upstream {
  Upstream(ev::Loop* loop, proto::ProxyUri uri)
      : hop(std::move(uri)), control_io(loop), udp_io(loop) {}
  enum class State { kDialing, kReady, kFailed } state = State::kDialing;
  proto::ProxyUri hop;
  std::unique_ptr<net::Dialer> dialer;
  // The hop's association lives as long as this TCP connection.
  net::Conn control;  // plain, or TLS through a socks5s:// hop
  UniqueFd udp;       // connected to the hop's relay: only it can send to us here
  ev::Io control_io, udp_io;
  // What a reply whose header names an address (to_string()) is reported as.
  std::unordered_map<std::string, proto::Address> replies;
};

std::unique_ptr<UdpAssociation> UdpAssociation::create(Server& server, int control_fd,
                                                       const net::SockAddr& peer,
                                                       const ClientRequest& request, uint8_t* rep,
                                                       std::string* why) {
  *rep = proto::socks5::kGeneralFailure;
  const net::SockAddr client = net::unmapped(peer);
  auto ticket = server.udp_admission().admit(client.to_address().host_string());
  if (!ticket) {
    ++server.stats().udp.refused;
    *why = "udp: association limit reached (--udp-max-associations / --udp-max-per-client)";
    return nullptr;
  }
  std::unique_ptr<UdpAssociation> a(
      new UdpAssociation(server, client, request, std::move(*ticket)));
  // The address the client reached, with an ephemeral port: a relay on the
  // wildcard would take datagrams on every interface.
  net::SockAddr local = net::unmapped(net::local_of(control_fd));
  if (local.len == 0 || net::is_wildcard(local)) {
    *why = "udp: no local address for the relay";
    return nullptr;
  }
  local.set_port(0);
  a->relay_ = net::open_udp(local, why);
  if (!a->relay_) return nullptr;
  return a;
}

UdpAssociation::UdpAssociation(Server& server, const net::SockAddr& peer,
                               const ClientRequest& request, UdpAdmission::Ticket ticket)
    : server_(server),
      peer_(peer),
      client_(peer),
      username_(request.username),
      password_(request.password),
      ticket_(std::move(ticket)),
      control_io_(server.loop(), [this](int) { on_control(); }),
      relay_io_(server.loop(), [this](int) { on_client_readable(); }),
      out4_io_(server.loop(), [this](int) { on_upstream_readable(AF_INET); }),
      out6_io_(server.loop(), [this](int) { on_upstream_readable(AF_INET6); }),
      timer_(server.loop(), [this](int) { on_timer(); }) {
  // DST.PORT of the request is the port the client will send from, when it
  // knows it; its DST.ADDR is not trusted: datagrams must come from the IP
  // of the control connection.
  if (request.target.port != 0) {
    client_.set_port(request.target.port);
    client_port_known_ = true;
  }
  ++server_.stats().udp.associations;
}

UdpAssociation::~UdpAssociation() {
  stop();
  --server_.stats().udp.associations;
}

bool UdpAssociation::start(net::Conn control, std::function<void()> on_end) {
  control_ = std::move(control);
  on_end_ = std::move(on_end);
  net::SockAddr bound = net::local_of(relay_.get());
  proto::Address advertised = bound.to_address();
  const auto& adv = server_.config().udp.advertise;
  if (!adv.empty()) advertised = *proto::make_address(adv, advertised.port);
  const std::string reply = proto::socks5_reply(proto::socks5::kSucceeded, advertised);
  if (control_.write(reply.data(), reply.size()) != static_cast<ssize_t>(reply.size()))
    return false;
  ++server_.stats().udp.associated;
  ++server_.stats().success;  // the request was served, as a relayed CONNECT is
  log::info("{}: socks5 udp associate: relay {} (advertised {})", peer_, bound, advertised);
  control_io_.set(control_.fd(), EV_READ);
  control_io_.start();
  relay_io_.set(relay_.get(), EV_READ);
  relay_io_.start();
  last_active_ = ev_now(server_.loop());
  timer_.start(server_.config().udp.timeout);
  return true;
}

void UdpAssociation::stop() {
  control_io_.stop();
  relay_io_.stop();
  out4_io_.stop();
  out6_io_.stop();
  timer_.stop();
  // Handles may be inside their own callbacks: destroy them later.
  for (auto& [key, d] : dests_) {
    server_.deferred().dispose(std::move(d->routing));
    server_.deferred().dispose(std::move(d->query));
  }
  for (auto& [key, up] : upstreams_) {
    up->control_io.stop();
    up->udp_io.stop();
    if (up->dialer) up->dialer->cancel();
    server_.deferred().dispose(std::move(up->dialer));
  }
}

void UdpAssociation::end(const std::string& why) {
  if (ended_) return;
  ended_ = true;
  log::debug("{}: udp association ended: {}", peer_, why);
  stop();
  if (on_end_) on_end_();
}

void UdpAssociation::touch() {
  last_active_ = ev_now(server_.loop());
}

void UdpAssociation::on_timer() {
  const double timeout = server_.config().udp.timeout;
  const double idle = ev_now(server_.loop()) - last_active_;
  // Refreshing a timer per datagram would cost a heap operation each; the
  // timer instead wakes up at the deadline and looks at the last activity.
  if (idle < timeout) {
    timer_.start(timeout - idle);
    return;
  }
  end("idle timeout");
}

void UdpAssociation::on_control() {
  char buf[512];
  ssize_t n = control_.read(buf, sizeof buf);
  if (n > 0) return;  // nothing more is expected on it: ignored
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  end(n == 0 ? "control connection closed"
             : std::string("control connection: ") + std::strerror(errno));
}

void UdpAssociation::on_client_readable() {
  auto& st = server_.stats().udp;
  uint8_t* buf = scratch();
  for (int i = 0; i < kBatch && !ended_; ++i) {
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t n = recvfrom(relay_.get(), buf + kHeadroom, kMaxDatagram, 0,
                         reinterpret_cast<sockaddr*>(&ss), &len);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        log::debug("{}: udp relay recv: {}", peer_, std::strerror(errno));
      return;
    }
    auto from = net::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    if (!from || !net::same_ip(net::unmapped(*from), client_) ||
        (client_port_known_ && from->port() != client_.port())) {
      ++st.dropped_foreign;
      continue;
    }
    if (!client_port_known_) {
      // The client sends from the first port we see; later datagrams must too.
      client_.set_port(from->port());
      client_port_known_ = true;
    }
    from_client({buf + kHeadroom, static_cast<size_t>(n)});
  }
}

void UdpAssociation::from_client(proto::Bytes datagram) {
  auto& st = server_.stats().udp;
  auto h = proto::parse_socks5_udp_header(datagram);
  if (!h.done()) {
    ++st.dropped_malformed;
    log::debug("{}: udp: {}", peer_, h.error);
    return;
  }
  if (h.value.frag != 0) {
    ++st.dropped_fragment;
    return;
  }
  proto::Bytes payload = datagram.subspan(h.consumed);
  touch();
  // RSV(2) FRAG(1), then the address as written: the destination's key.
  const std::string_view key(reinterpret_cast<const char*>(datagram.data()) + 3, h.consumed - 3);
  auto it = dests_.find(key);
  if (it == dests_.end()) {
    if (dests_.size() >= kMaxDestinations) {
      ++st.dropped_overflow;
      return;
    }
    auto d = std::make_unique<Dest>();
    d->asked = std::move(h.value.addr);
    it = dests_.emplace(std::string(key), std::move(d)).first;
    Dest& dest = *it->second;
    dest.pending.emplace_back(reinterpret_cast<const char*>(payload.data()), payload.size());
    pending_bytes_ += payload.size();
    route(dest);
    return;
  }
  Dest& d = *it->second;
  switch (d.state) {
    case Dest::State::kReady:
      send_up(d, payload);
      return;
    case Dest::State::kRejected:
      ++st.dropped_rejected;
      return;
    case Dest::State::kRouting:
    case Dest::State::kResolving:
      if (pending_bytes_ + payload.size() > server_.config().udp.max_pending) {
        ++st.dropped_overflow;
        return;
      }
      d.pending.emplace_back(reinterpret_cast<const char*>(payload.data()), payload.size());
      pending_bytes_ += payload.size();
      return;
  }
}

void UdpAssociation::route(Dest& d) {
  ruleset::Engine* engine = server_.engine();
  if (engine == nullptr) {
    decide(d, d.asked, server_.proxy_chain());
    return;
  }
  ruleset::Request req = routing_request(ClientRequest{d.asked, username_, password_}, peer_);
  req.udp = true;
  Dest* dp = &d;
  d.routing = engine->route(std::move(req),
                            [this, dp](std::optional<ruleset::Decision> decision, std::string why) {
                              on_routed(*dp, std::move(decision), why);
                            });
}

void UdpAssociation::on_routed(Dest& d, std::optional<ruleset::Decision> decision,
                               const std::string& why) {
  server_.deferred().dispose(std::move(d.routing));
  if (ended_) return;
  if (!decision) {
    reject(d, why.empty() ? "refused by the ruleset" : why);
    return;
  }
  std::vector<proto::ProxyUri> chain = decision_chain(server_.proxy_chain(), *decision);
  decide(d, std::move(decision->target), chain);
}

void UdpAssociation::decide(Dest& d, proto::Address target,
                            const std::vector<proto::ProxyUri>& chain) {
  if (chain.size() == 1 && chain[0].scheme == proto::ProxyUri::Scheme::kSocks5) {
    via_upstream(d, std::move(target), chain[0]);
    return;
  }
  if (!chain.empty()) {
    log::warning("{}: udp {}: the proxy chain (first hop {}) cannot carry UDP: refused", peer_,
                 d.asked, chain.front().address());
    reject(d, "the proxy chain cannot carry UDP");
    return;
  }
  if (const auto* v4 = std::get_if<proto::Ipv4>(&target.host)) {
    ready(d, net::SockAddr::from(*v4, target.port));
    return;
  }
  if (const auto* v6 = std::get_if<proto::Ipv6>(&target.host)) {
    ready(d, net::unmapped(net::SockAddr::from(*v6, target.port)));
    return;
  }
  d.state = Dest::State::kResolving;
  Dest* dp = &d;
  d.query =
      server_.resolver().resolve(target.host_string(), target.port,
                                 [this, dp](std::vector<net::SockAddr> addrs, std::string error) {
                                   server_.deferred().dispose(std::move(dp->query));
                                   if (ended_) return;
                                   if (addrs.empty()) {
                                     reject(*dp, error);
                                     return;
                                   }
                                   ready(*dp, net::unmapped(addrs.front()));
                                 });
}

void UdpAssociation::ready(Dest& d, const net::SockAddr& addr) {
  const unsigned blocked = server_.dial_options().blocked_classes;
  const net::AddrClass cls = net::classify(addr);
  // Through a hop, the hop's own policy applies (as for TCP chains).
  if (d.up == nullptr && (blocked & net::class_bit(cls)) != 0) {
    reject(d, fmt::format("{} is a {} address (--block-outbound)", addr, net::to_string(cls)));
    return;
  }
  d.state = Dest::State::kReady;
  if (d.up == nullptr) {
    d.addr = addr;
    replies_.emplace(net::endpoint_key(addr), d.asked);
    log::debug("{}: udp {} -> {}", peer_, d.asked, addr);
  }
  std::vector<std::string> held = std::move(d.pending);
  d.pending.clear();
  for (const auto& p : held) {
    pending_bytes_ -= p.size();
    send_up(d, proto::to_bytes(p));
  }
}

void UdpAssociation::reject(Dest& d, const std::string& why) {
  log::info("{}: socks5 udp {}: {}", peer_, d.asked, why);
  d.state = Dest::State::kRejected;
  server_.stats().udp.dropped_rejected += d.pending.size();
  for (const auto& p : d.pending) pending_bytes_ -= p.size();
  d.pending.clear();
  d.pending.shrink_to_fit();
}

int UdpAssociation::upstream_fd(int family) {
  UniqueFd& fd = family == AF_INET6 ? out6_ : out4_;
  if (fd) return fd.get();
  std::string err;
  fd = net::open_udp(net::any_address(family), &err);
  if (!fd) {
    log::warning("{}: udp: outbound socket: {}", peer_, err);
    return -1;
  }
  const auto& netdev = server_.dial_options().netdev;
  if (!netdev.empty())
    setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, netdev.data(),
               static_cast<socklen_t>(netdev.size()));
  ev::Io& io = family == AF_INET6 ? out6_io_ : out4_io_;
  io.set(fd.get(), EV_READ);
  io.start();
  return fd.get();
}

void UdpAssociation::send_up(Dest& d, proto::Bytes payload) {
  auto& st = server_.stats().udp;
  if (d.up != nullptr) {
    if (d.up->state != Upstream::State::kReady) {
      ++st.dropped_rejected;
      return;
    }
    // Header for the hop, then the payload, in one datagram. The payload may
    // already be in the scratch buffer (just received): memmove, not memcpy.
    uint8_t head[proto::socks5_udp::kMaxHeader];
    auto hlen = proto::put_socks5_udp_header(head, d.target);
    if (!hlen || payload.size() > kMaxDatagram) {
      ++st.dropped_malformed;
      return;
    }
    uint8_t* at = scratch() + kHeadroom;
    std::memmove(at, payload.data(), payload.size());
    std::memcpy(at - *hlen, head, *hlen);
    ssize_t n = send(d.up->udp.get(), at - *hlen, *hlen + payload.size(), 0);
    if (n < 0) {
      ++(would_block(errno) ? st.dropped_overflow : st.dropped_rejected);
      return;
    }
    ++st.datagrams_up;
    st.bytes_up += payload.size();
    return;
  }
  int fd = upstream_fd(d.addr.family());
  if (fd < 0) {
    ++st.dropped_rejected;
    return;
  }
  ssize_t n = sendto(fd, payload.data(), payload.size(), 0, d.addr.get(), d.addr.len);
  if (n < 0) {
    if (would_block(errno)) {
      ++st.dropped_overflow;
    } else {
      ++st.dropped_rejected;
      log::debug("{}: udp sendto {}: {}", peer_, d.addr, std::strerror(errno));
    }
    return;
  }
  ++st.datagrams_up;
  st.bytes_up += static_cast<uint64_t>(n);
}

void UdpAssociation::on_upstream_readable(int family) {
  auto& st = server_.stats().udp;
  const int fd = family == AF_INET6 ? out6_.get() : out4_.get();
  uint8_t* buf = scratch();
  uint8_t* payload = buf + kHeadroom;
  for (int i = 0; i < kBatch && !ended_; ++i) {
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t n = recvfrom(fd, payload, kMaxDatagram, 0, reinterpret_cast<sockaddr*>(&ss), &len);
    if (n < 0) {
      // ECONNREFUSED and the like report an ICMP error for an earlier
      // datagram: UDP gives no way to tell the client, so it is skipped.
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      continue;
    }
    auto from = net::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    auto it = from ? replies_.find(net::endpoint_key(net::unmapped(*from))) : replies_.end();
    if (it == replies_.end()) {
      ++st.dropped_unsolicited;
      continue;
    }
    to_client(payload, static_cast<size_t>(n), it->second);
  }
}

void UdpAssociation::to_client(uint8_t* payload, size_t n, const proto::Address& from) {
  // `payload` has at least kHeadroom bytes of room before it, for the header.
  auto& st = server_.stats().udp;
  uint8_t head[proto::socks5_udp::kMaxHeader];
  auto hlen = proto::put_socks5_udp_header(head, from);
  if (!hlen) return;  // cannot happen: the client or a hop wrote this address
  uint8_t* start = payload - *hlen;
  std::memcpy(start, head, *hlen);
  ssize_t sent = sendto(relay_.get(), start, *hlen + n, 0, client_.get(), client_.len);
  if (sent < 0) {
    ++st.dropped_overflow;
    return;
  }
  touch();
  ++st.datagrams_down;
  st.bytes_down += n;
}

void UdpAssociation::via_upstream(Dest& d, proto::Address target, const proto::ProxyUri& hop) {
  const std::string key = hop.to_string();
  auto it = upstreams_.find(key);
  if (it == upstreams_.end()) {
    auto up = std::make_unique<Upstream>(server_.loop(), hop);
    Upstream* u = up.get();
    u->dialer =
        std::make_unique<net::Dialer>(server_.loop(), &server_.resolver(), server_.dial_options());
    u->dialer->set_last_command(proto::socks5::kUdpAssociate);
    it = upstreams_.emplace(key, std::move(up)).first;
    // DST 0.0.0.0:0: our port is not known before the connection is made;
    // the hop learns it from our first datagram.
    u->dialer->start(proto::Address{proto::Ipv4{}, 0}, {hop}, &server_.protected_addresses(),
                     [this, u](net::Conn conn, net::DialError, const std::string& msg) {
                       on_upstream_dialed(*u, std::move(conn), msg);
                     });
  }
  Upstream& up = *it->second;
  if (up.state == Upstream::State::kFailed) {
    reject(d, "the socks5 hop " + hop.address().to_string() + " failed");
    return;
  }
  d.up = &up;
  d.target = std::move(target);
  up.replies.emplace(d.target.to_string(), d.asked);
  if (up.state == Upstream::State::kReady) {
    ready(d, {});
    return;
  }
  d.state = Dest::State::kResolving;  // held until the hop answers
}

void UdpAssociation::on_upstream_dialed(Upstream& up, net::Conn conn, const std::string& error) {
  const proto::Address bound = up.dialer ? up.dialer->last_bound() : proto::Address{};
  server_.deferred().dispose(std::move(up.dialer));
  if (ended_) return;
  if (!conn) {
    upstream_failed(up, error);
    return;
  }
  // The hop relays where its reply says; a wildcard (or a name) there means
  // the address we reached it on.
  net::SockAddr relay = net::unmapped(net::peer_of(conn.fd()));
  relay.set_port(bound.port);
  if (!bound.is_domain()) {
    const net::SockAddr said = net::unmapped(
        bound.is_ipv4() ? net::SockAddr::from(std::get<proto::Ipv4>(bound.host), bound.port)
                        : net::SockAddr::from(std::get<proto::Ipv6>(bound.host), bound.port));
    if (!net::is_wildcard(said)) relay = said;
  }
  net::SockAddr local = net::unmapped(net::local_of(conn.fd()));
  local.set_port(0);
  std::string err;
  up.udp = net::open_udp(
      local.family() == relay.family() ? local : net::any_address(relay.family()), &err);
  if (up.udp && connect(up.udp.get(), relay.get(), relay.len) != 0) {
    err = std::string("connect: ") + std::strerror(errno);
    up.udp.reset();
  }
  if (!up.udp) {
    upstream_failed(up, "udp socket for " + relay.to_string() + ": " + err);
    return;
  }
  up.control = std::move(conn);
  up.state = Upstream::State::kReady;
  log::debug("{}: udp through {}: relay {}", peer_, up.hop.address(), relay);
  Upstream* u = &up;
  up.control_io.set_callback([this, u](int) {
    char buf[512];
    ssize_t n = u->control.read(buf, sizeof buf);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) return;
    upstream_failed(*u, "its control connection closed");
  });
  up.control_io.set(up.control.fd(), EV_READ);
  up.control_io.start();
  up.udp_io.set_callback([this, u](int) { on_upstream_udp(*u); });
  up.udp_io.set(up.udp.get(), EV_READ);
  up.udp_io.start();
  for (auto& [key, d] : dests_)
    if (d->up == &up && d->state == Dest::State::kResolving) ready(*d, {});
}

void UdpAssociation::upstream_failed(Upstream& up, const std::string& why) {
  log::info("{}: udp through the socks5 hop {}: {}", peer_, up.hop.address(), why);
  up.state = Upstream::State::kFailed;
  up.control_io.stop();
  up.udp_io.stop();
  for (auto& [key, d] : dests_)
    if (d->up == &up && d->state != Dest::State::kRejected) reject(*d, "its socks5 hop failed");
}

void UdpAssociation::on_upstream_udp(Upstream& up) {
  auto& st = server_.stats().udp;
  uint8_t* buf = scratch();
  uint8_t* in = buf + kHeadroom;
  for (int i = 0; i < kBatch && !ended_; ++i) {
    ssize_t n = recv(up.udp.get(), in, kMaxDatagram, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      continue;  // an ICMP error for an earlier datagram
    }
    auto h = proto::parse_socks5_udp_header({in, static_cast<size_t>(n)});
    if (!h.done() || h.value.frag != 0) {
      ++(h.done() ? st.dropped_fragment : st.dropped_malformed);
      continue;
    }
    // Only the hop can send to this connected socket, and it vouches for the
    // source it names; a name or rewrite is reported as the client wrote it.
    auto it = up.replies.find(h.value.addr.to_string());
    const proto::Address& from = it != up.replies.end() ? it->second : h.value.addr;
    to_client(in + h.consumed, static_cast<size_t>(n) - h.consumed, from);
  }
}

}  // namespace rs::server
