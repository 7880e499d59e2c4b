#include "net/dialer.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "core/log.hpp"
#include "proto/socks5.hpp"

namespace rs::net {

void tune_socket(int fd, const DialOptions& opts) {
  int on = 1;
  if (opts.nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  if (opts.keepalive) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  if (opts.sndbuf > 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opts.sndbuf, sizeof opts.sndbuf);
  if (opts.rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opts.rcvbuf, sizeof opts.rcvbuf);
}

namespace {

// Before connecting: the denied address itself, or a wildcard destination
// (which connects locally) on a denied wildcard listener's port.
bool is_denied(const SockAddr& sa, const std::vector<SockAddr>& deny) {
  for (const auto& d : deny) {
    if (d.port() != sa.port()) continue;
    if (d.to_string() == sa.to_string()) return true;
    if (is_wildcard(d) && is_wildcard(sa)) return true;
  }
  return false;
}

// Once connected: a wildcard listener is reachable at every address of this
// host, which no list can name. Those are the loopback ones, and the others
// (LAN addresses) are recognised because a connection to one of this host's
// own addresses has that same address at its local end.
bool reaches_denied_wildcard(int fd, const SockAddr& sa, const std::vector<SockAddr>& deny) {
  for (const auto& d : deny) {
    if (d.port() != sa.port() || !is_wildcard(d)) continue;
    return is_loopback(sa) || local_of(fd).to_address().host == sa.to_address().host;
  }
  return false;
}

}  // namespace

Dialer::Dialer(ev::Loop* loop, Resolver* resolver, const DialOptions& opts)
    : loop_(loop),
      resolver_(resolver),
      opts_(opts),
      io_(loop, [this](int ev) { on_io(ev); }),
      timer_(loop, [this](int) { finish(DialError::kTimeout, "timed out"); }),
      later_(loop) {}

Dialer::~Dialer() = default;

void Dialer::start(proto::Address target, std::vector<proto::ProxyUri> chain,
                   const std::vector<SockAddr>* deny, Callback cb) {
  target_ = std::move(target);
  deny_ = deny;
  chain_ = std::move(chain);
  cb_ = std::move(cb);
  timer_.start(opts_.timeout);
  const proto::Address first = chain_.empty() ? target_ : chain_.front().address();
  stage_ = Stage::kResolving;
  // Numeric addresses skip the resolver; the resolver handles the rest
  // (and never answers synchronously).
  if (first.is_ipv4()) {
    addrs_.push_back(SockAddr::from(std::get<proto::Ipv4>(first.host), first.port));
  } else if (first.is_ipv6()) {
    addrs_.push_back(SockAddr::from(std::get<proto::Ipv6>(first.host), first.port));
  } else {
    query_ = resolver_->resolve(first.host_string(), first.port,
                                [this](std::vector<SockAddr> addrs, std::string error) {
                                  query_.reset();
                                  if (addrs.empty()) {
                                    finish(DialError::kHostUnreachable, error);
                                    return;
                                  }
                                  addrs_ = std::move(addrs);
                                  connect_next();
                                });
    return;
  }
  // Connect now (no loop iteration lost); a failure found here is delivered
  // from the loop, since the callback never runs inside start().
  in_start_ = true;
  connect_next();
  in_start_ = false;
}

void Dialer::connect_next() {
  stage_ = Stage::kConnecting;
  while (next_addr_ < addrs_.size()) {
    const SockAddr& sa = addrs_[next_addr_++];
    if (const AddrClass c = classify(sa); opts_.blocked_classes & class_bit(c)) {
      last_error_ = DialError::kNotAllowed;
      last_message_ =
          fmt::format("{} is a {} address, blocked by --block-outbound", sa, to_string(c));
      continue;
    }
    if (chain_.empty() && deny_ && is_denied(sa, *deny_)) {
      last_error_ = DialError::kNotAllowed;
      last_message_ = fmt::format("{} is not reachable through the proxy", sa.to_string());
      continue;
    }
    UniqueFd fd(socket(sa.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!fd) {
      last_error_ = DialError::kGeneral;
      last_message_ = fmt::format("socket: {}", std::strerror(errno));
      continue;
    }
    if (!opts_.netdev.empty() &&
        setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, opts_.netdev.data(),
                   static_cast<socklen_t>(opts_.netdev.size())) != 0) {
      last_error_ = DialError::kGeneral;
      last_message_ = fmt::format("bind to device {}: {}", opts_.netdev, std::strerror(errno));
      continue;
    }
    tune_socket(fd.get(), opts_);
    if (connect(fd.get(), sa.get(), sa.len) != 0 && errno != EINPROGRESS) {
      last_error_ = from_errno(errno);
      last_message_ = fmt::format("connect {}: {}", sa.to_string(), std::strerror(errno));
      log::debug("{}", last_message_);
      continue;
    }
    conn_ = Conn(std::move(fd));
    io_.set(conn_.fd(), EV_WRITE);
    io_.start();
    return;
  }
  finish(last_error_, last_message_.empty() ? "no address to connect to" : last_message_);
}

void Dialer::on_connect() {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(conn_.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    last_error_ = from_errno(err);
    last_message_ =
        fmt::format("connect {}: {}", addrs_[next_addr_ - 1].to_string(), std::strerror(err));
    log::debug("{}", last_message_);
    io_.stop();
    conn_.reset();
    connect_next();
    return;
  }
  io_.stop();
  const SockAddr& sa = addrs_[next_addr_ - 1];
  if (chain_.empty() && deny_ && reaches_denied_wildcard(conn_.fd(), sa, *deny_)) {
    last_error_ = DialError::kNotAllowed;
    last_message_ = fmt::format("{} is not reachable through the proxy", sa.to_string());
    conn_.reset();
    connect_next();
    return;
  }
  if (opts_.self != nullptr && !opts_.self->record(conn_.fd(), sa)) {
    conn_.reset();
    finish(DialError::kNotAllowed, "too many connections to the API through the proxy");
    return;
  }
  hop_ = 0;
  begin_hop();
}

void Dialer::begin_hop() {
  if (hop_ >= chain_.size()) {
    if (opts_.tls_target && !target_tls_) {
      target_tls_ = true;
      start_tls(target_.host_string(), target_.port, "https://" + target_.to_string());
      return;
    }
    finish(DialError::kOk, {});
    return;
  }
  const proto::ProxyUri& hop = chain_[hop_];
  if (hop.tls) {
    start_tls(hop.host, hop.port, hop.to_string());
    return;
  }
  start_hop();
}

void Dialer::start_tls(const std::string& host, uint16_t port, const std::string& name) {
  tls_peer_ = name;
  if (conn_.tls()) {
    finish(DialError::kGeneral,
           fmt::format("{}: TLS inside TLS is not supported: a chain speaks TLS to one hop "
                       "(or to an https:// RPC target) only",
                       name));
    return;
  }
  if (opts_.tls == nullptr) {
    finish(DialError::kGeneral, fmt::format("{}: TLS is not available", name));
    return;
  }
  SslPtr ssl = opts_.tls->connect(conn_.fd(), host, port);
  if (!ssl) {
    finish(DialError::kGeneral, fmt::format("{}: {}", name, tls_error_text()));
    return;
  }
  conn_.set_tls(std::move(ssl));
  stage_ = Stage::kTls;
  io_.set(conn_.fd(), EV_WRITE);
  io_.start();
}

void Dialer::on_tls() {
  if (conn_.handshake() == 1) {
    if (hop_ >= chain_.size()) {
      finish(DialError::kOk, {});
    } else {
      start_hop();
    }
    return;
  }
  if (errno == EAGAIN) {
    io_.modify(conn_.wants());
    return;
  }
  // A certificate we do not accept: the host is not the one asked for; any
  // other failure: the hop refused to talk TLS with us.
  const std::string why = conn_.error_text();
  const bool verify = why.starts_with("certificate verify failed");
  finish(verify ? DialError::kHostUnreachable : DialError::kRefused,
         fmt::format("{}: TLS: {}", tls_peer_, why));
}

void Dialer::start_hop() {
  const bool last = hop_ + 1 == chain_.size();
  const proto::Address next = last ? target_ : chain_[hop_ + 1].address();
  if (last && last_command_ != proto::socks5::kConnect &&
      chain_[hop_].scheme != proto::ProxyUri::Scheme::kSocks5) {
    finish(DialError::kGeneral, fmt::format("{} is not a socks5 hop: it cannot BIND or carry UDP",
                                            chain_[hop_].address()));
    return;
  }
  hs_ = std::make_unique<HopHandshake>(chain_[hop_], next,
                                       last ? last_command_ : proto::socks5::kConnect);
  stage_ = Stage::kHandshake;
  auto first = hs_->start();
  if (first.status == HopHandshake::Step::kError) {
    finish(first.error, first.message);
    return;
  }
  out_ = std::move(first.out);
  in_.clear();
  io_.set(conn_.fd(), EV_WRITE);
  io_.start();
}

void Dialer::on_io(int /*revents*/) {
  if (stage_ == Stage::kConnecting) {
    on_connect();
    return;
  }
  if (stage_ == Stage::kTls) {
    on_tls();
    return;
  }
  if (stage_ != Stage::kHandshake) return;
  // Writing while there is something to write, reading otherwise: a TLS
  // socket may have to wait for the other event than the one it does.
  if (!out_.empty()) {
    ssize_t n = conn_.write(out_.data(), out_.size());
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        io_.modify(conn_.wants());
        return;
      }
      finish(errno == EPROTO ? DialError::kGeneral : from_errno(errno),
             fmt::format("{}: send: {}", chain_[hop_].to_string(), conn_.error_text()));
      return;
    }
    out_.erase(0, static_cast<size_t>(n));
    if (out_.empty()) io_.modify(EV_READ);
    return;
  }
  // Peek rather than read, so that bytes after the hop's reply (the target
  // may speak first) stay in the socket for the relay.
  uint8_t buf[4096];
  ssize_t n = conn_.peek(buf, sizeof buf);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) {
      io_.modify(conn_.wants());
      return;
    }
    finish(errno == EPROTO ? DialError::kGeneral : from_errno(errno),
           fmt::format("{}: recv: {}", chain_[hop_].to_string(), conn_.error_text()));
    return;
  }
  if (n == 0) {
    finish(DialError::kGeneral,
           fmt::format("{}: connection closed during handshake", chain_[hop_].to_string()));
    return;
  }
  const size_t held = in_.size();
  in_.insert(in_.end(), buf, buf + n);
  auto step = hs_->feed(in_);
  switch (step.status) {
    case HopHandshake::Step::kNeedMore:
      // Everything peeked belongs to the incomplete reply: take it.
      if (in_.size() > 16384) {
        finish(DialError::kGeneral,
               fmt::format("{}: handshake reply too long", chain_[hop_].to_string()));
        return;
      }
      (void)conn_.read(buf, static_cast<size_t>(n));
      return;
    case HopHandshake::Step::kError:
      finish(step.error, step.message);
      return;
    case HopHandshake::Step::kSend:
    case HopHandshake::Step::kDone:
      // Consume exactly the reply's bytes still sitting in the socket.
      (void)conn_.read(buf, step.consumed - held);
      in_.clear();
      break;
  }
  if (step.status == HopHandshake::Step::kSend) {
    out_ = std::move(step.out);
    io_.modify(EV_WRITE);
    return;
  }
  if (hop_ + 1 == chain_.size()) last_bound_ = hs_->bound();
  ++hop_;
  begin_hop();
}

void Dialer::cancel() {
  stage_ = Stage::kDone;
  io_.stop();
  timer_.stop();
  later_.cancel();
  query_.reset();
  conn_.reset();
  cb_ = nullptr;
}

void Dialer::finish(DialError err, std::string msg) {
  if (stage_ == Stage::kDone) return;
  if (in_start_) {
    last_error_ = err;
    last_message_ = std::move(msg);
    later_.post([this] { finish(last_error_, last_message_); });
    return;
  }
  Conn conn = err == DialError::kOk ? std::move(conn_) : Conn{};
  auto cb = std::move(cb_);
  cancel();
  cb(std::move(conn), err, msg);
}

}  // namespace rs::net
