#include "server/udp_forward.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "core/log.hpp"
#include "net/udp_socket.hpp"
#include "server/server.hpp"

namespace rs::server {
namespace {
constexpr int kBatch = 64;  // datagrams per callback: a flood yields to the loop
constexpr size_t kMaxDatagram = 65535;

uint8_t* scratch() {
  thread_local std::vector<uint8_t> buf(kMaxDatagram);
  return buf.data();
}
}  // namespace

struct UdpForwarder::Flow {
  Flow(ev::Loop* loop, UdpAdmission::Ticket t) : ticket(std::move(t)), io(loop) {}
  UdpAdmission::Ticket ticket;
  net::SockAddr client;
  UniqueFd fd;  // connected to the target
  ev::Io io;
  double last_active = 0;
};

UdpForwarder::UdpForwarder(Server& server, const net::SockAddr& listen, const net::SockAddr& target)
    : server_(server),
      target_(target),
      io_(server.loop(), [this](int) { on_listen_readable(); }),
      sweep_(server.loop(), [this](int) { on_sweep(); }) {
  std::string err;
  fd_ = net::open_udp(listen, &err);
  if (!fd_) throw std::runtime_error("udp://" + listen.to_string() + ": " + err);
  admission_.set_limits(server.config().udp.max_associations, server.config().udp.max_per_client);
}

UdpForwarder::~UdpForwarder() {
  stop();
}

net::SockAddr UdpForwarder::address() const {
  return net::local_of(fd_.get());
}

void UdpForwarder::start() {
  io_.set(fd_.get(), EV_READ);
  io_.start();
  // Idle flows are found by a sweep rather than one timer each.
  const double t = server_.config().udp.timeout;
  sweep_.start(t / 4, t / 4);
}

void UdpForwarder::stop() {
  io_.stop();
  sweep_.stop();
  flows_.clear();  // no flow callback is running: stop() is called from outside them
}

void UdpForwarder::on_sweep() {
  const double now = ev_now(server_.loop());
  const double timeout = server_.config().udp.timeout;
  std::erase_if(flows_, [&](const auto& kv) { return now - kv.second->last_active >= timeout; });
}

void UdpForwarder::on_listen_readable() {
  auto& st = server_.stats().udp;
  uint8_t* buf = scratch();
  for (int i = 0; i < kBatch; ++i) {
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t n = recvfrom(fd_.get(), buf, kMaxDatagram, 0, reinterpret_cast<sockaddr*>(&ss), &len);
    if (n < 0) return;  // EAGAIN, or an ICMP error for an earlier reply
    auto from = net::SockAddr::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    if (!from) continue;
    const std::string key = net::endpoint_key(*from);
    auto it = flows_.find(key);
    if (it == flows_.end()) {
      auto ticket = admission_.admit(net::unmapped(*from).to_address().host_string());
      if (!ticket) {
        ++st.dropped_overflow;
        continue;
      }
      auto flow = std::make_unique<Flow>(server_.loop(), std::move(*ticket));
      flow->client = *from;
      std::string err;
      flow->fd = net::open_udp(net::any_address(target_.family()), &err);
      if (flow->fd && connect(flow->fd.get(), target_.get(), target_.len) != 0) {
        err = std::string("connect: ") + std::strerror(errno);
        flow->fd.reset();
      }
      if (!flow->fd) {
        log::warning("udp forward {} -> {}: {}", *from, target_, err);
        ++st.dropped_rejected;
        continue;
      }
      Flow* f = flow.get();
      flow->io.set_callback([this, f](int) { on_flow_readable(*f); });
      flow->io.set(flow->fd.get(), EV_READ);
      flow->io.start();
      log::debug("udp forward: {} -> {}", *from, target_);
      it = flows_.emplace(key, std::move(flow)).first;
    }
    Flow& f = *it->second;
    f.last_active = ev_now(server_.loop());
    if (send(f.fd.get(), buf, static_cast<size_t>(n), 0) < 0) {
      ++st.dropped_overflow;
      continue;
    }
    ++st.datagrams_up;
    st.bytes_up += static_cast<uint64_t>(n);
  }
}

void UdpForwarder::on_flow_readable(Flow& f) {
  auto& st = server_.stats().udp;
  uint8_t* buf = scratch();
  for (int i = 0; i < kBatch; ++i) {
    ssize_t n = recv(f.fd.get(), buf, kMaxDatagram, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      continue;  // ECONNREFUSED: the target's port is closed; UDP cannot tell the client
    }
    if (sendto(fd_.get(), buf, static_cast<size_t>(n), 0, f.client.get(), f.client.len) < 0) {
      ++st.dropped_overflow;
      continue;
    }
    f.last_active = ev_now(server_.loop());
    ++st.datagrams_down;
    st.bytes_down += static_cast<uint64_t>(n);
  }
}

}  // namespace rs::server
