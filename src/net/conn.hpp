// A connected stream socket, plain or TLS: what the handshake code, the
// dialer and the relay read and write through.
//
// Plain and TLS are one branch apart, not a virtual call: read() and write()
// are recv(2)/send(2) on a plain socket and SSL_read/SSL_write on a TLS one,
// with the same contract either way: > 0 bytes moved, 0 end of stream, -1
// with errno set. EAGAIN means "try again once wants() is ready": a TLS read
// may have to wait for the socket to be writable and a write for it to be
// readable. Any other errno is a failure; error_text() names it (for TLS,
// EPROTO and OpenSSL's reason).
//
// Ownership: a Conn owns its socket and its SSL (which never closes the
// socket itself); moving it moves both.
#pragma once

#include <ev.h>
#include <sys/types.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/fd.hpp"
#include "net/tls.hpp"

namespace rs::net {

class Conn {
 public:
  Conn() = default;
  explicit Conn(UniqueFd fd, SslPtr ssl = {}) : fd_(std::move(fd)), ssl_(std::move(ssl)) {}

  int fd() const { return fd_.get(); }
  SSL* ssl() const { return ssl_.get(); }
  bool tls() const { return ssl_ != nullptr; }
  explicit operator bool() const { return static_cast<bool>(fd_); }
  // Gives up the socket for code that speaks plain only; requires !tls().
  UniqueFd release_fd() { return std::move(fd_); }
  void reset() {
    ssl_.reset();
    fd_.reset();
  }
  // Makes this a TLS connection over its socket (after a plain prefix, e.g.
  // once a hop's TCP connection is up).
  void set_tls(SslPtr ssl) { ssl_ = std::move(ssl); }

  ssize_t read(void* buf, size_t len);
  // Like read() but leaves the bytes to be read again (MSG_PEEK, SSL_peek).
  ssize_t peek(void* buf, size_t len);
  ssize_t write(const void* buf, size_t len);
  // Runs the TLS handshake as far as it goes: 1 done, -1 with errno EAGAIN
  // (wait for wants()) or EPROTO (failed; error_text() names the reason).
  int handshake();
  // The events the last EAGAIN waits for: EV_READ or EV_WRITE.
  int wants() const { return wants_; }
  // Bytes already decrypted and not read yet: no socket event will announce them.
  bool pending() const { return ssl_ && SSL_has_pending(ssl_.get()) == 1; }
  // Ends the write side: close_notify for TLS, then shutdown(SHUT_WR).
  void shutdown_write();
  // The TLS part of that alone, for a socket about to be closed (close(2)
  // sends the FIN itself). Nothing for a plain one.
  void close_notify();
  // What the last failed call hit (-1 with an errno other than EAGAIN).
  std::string error_text() const { return error_.empty() ? std::strerror(errno_) : error_; }

 private:
  ssize_t plain_result(ssize_t n, int wants);
  template <class Call, class Buf>
  ssize_t tls_call(Call call, Buf buf, size_t len, bool reading);
  ssize_t tls_result(int ret, size_t n, bool reading);

  UniqueFd fd_;
  SslPtr ssl_;
  int wants_ = EV_READ;
  int errno_ = 0;
  std::string error_;
};

}  // namespace rs::net
