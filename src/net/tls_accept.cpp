#include "net/tls_accept.hpp"

#include <cerrno>

namespace rs::net {

TlsAccept::TlsAccept(ev::Loop* loop, UniqueFd fd, SSL_CTX* ctx, double timeout, Done done)
    : conn_(std::move(fd)),
      timeout_(timeout),
      done_(std::move(done)),
      io_(loop, [this](int) { step(); }),
      timer_(loop, [this](int) { finish("TLS handshake timed out"); }) {
  SslPtr ssl(SSL_new(ctx));
  if (ssl && SSL_set_fd(ssl.get(), conn_.fd()) == 1) {
    SSL_set_accept_state(ssl.get());
    conn_.set_tls(std::move(ssl));
  }
}

void TlsAccept::start() {
  io_.set(conn_.fd(), EV_READ);
  io_.start();
  timer_.start(timeout_);
}

void TlsAccept::step() {
  if (!conn_.tls()) {
    finish("cannot start TLS: " + tls_error_text());
    return;
  }
  if (conn_.handshake() == 1) {
    finish({});
    return;
  }
  if (errno == EAGAIN) {
    io_.modify(conn_.wants());
    return;
  }
  finish("TLS handshake failed: " + conn_.error_text());
}

void TlsAccept::finish(std::string error) {
  io_.stop();
  timer_.stop();
  auto done = std::move(done_);
  if (!error.empty()) conn_.reset();
  if (done) done(std::move(conn_), error);
}

}  // namespace rs::net
