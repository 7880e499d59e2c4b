#include "net/conn.hpp"

#include <openssl/err.h>
#include <sys/socket.h>

namespace rs::net {

ssize_t Conn::read(void* buf, size_t len) {
  if (!ssl_) return plain_result(::recv(fd_.get(), buf, len, 0), EV_READ);
  return tls_call(SSL_read_ex, buf, len, true);
}

ssize_t Conn::peek(void* buf, size_t len) {
  if (!ssl_) return plain_result(::recv(fd_.get(), buf, len, MSG_PEEK), EV_READ);
  return tls_call(SSL_peek_ex, buf, len, true);
}

ssize_t Conn::write(const void* buf, size_t len) {
  if (!ssl_) return plain_result(::send(fd_.get(), buf, len, MSG_NOSIGNAL), EV_WRITE);
  return tls_call(SSL_write_ex, buf, len, false);
}

ssize_t Conn::plain_result(ssize_t n, int wants) {
  if (n < 0) {
    errno_ = errno;
    wants_ = wants;
  }
  return n;
}

template <class Call, class Buf>
ssize_t Conn::tls_call(Call call, Buf buf, size_t len, bool reading) {
  size_t n = 0;
  ERR_clear_error();
  const int ret = call(ssl_.get(), buf, len, &n);
  return tls_result(ret, n, reading);
}

int Conn::handshake() {
  ERR_clear_error();
  int ret = SSL_do_handshake(ssl_.get());
  if (ret == 1) return 1;
  switch (SSL_get_error(ssl_.get(), ret)) {
    case SSL_ERROR_WANT_READ:
      wants_ = EV_READ;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      wants_ = EV_WRITE;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_SYSCALL:
      if (ERR_peek_error() == 0) {
        error_ = errno != 0 ? std::string(std::strerror(errno))
                            : std::string("connection closed during the TLS handshake");
        break;
      }
      [[fallthrough]];
    default:
      error_ = tls_failure(ssl_.get());
      break;
  }
  errno_ = errno = EPROTO;
  return -1;
}

ssize_t Conn::tls_result(int ret, size_t n, bool reading) {
  if (ret == 1) return static_cast<ssize_t>(n);
  const int saved = errno;
  switch (SSL_get_error(ssl_.get(), ret)) {
    case SSL_ERROR_WANT_READ:
      wants_ = EV_READ;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_WANT_WRITE:
      wants_ = EV_WRITE;
      errno = EAGAIN;
      return -1;
    case SSL_ERROR_ZERO_RETURN:  // close_notify
      return 0;
    case SSL_ERROR_SYSCALL:
      if (ERR_peek_error() == 0) {
        // With SSL_OP_IGNORE_UNEXPECTED_EOF a bare EOF reads as 0 above;
        // this is the socket's own error.
        ERR_clear_error();
        errno_ = errno = saved != 0 ? saved : (reading ? ECONNRESET : EPIPE);
        error_.clear();
        return -1;
      }
      [[fallthrough]];
    default:
      error_ = tls_error_text();
      errno_ = errno = EPROTO;
      return -1;
  }
}

void Conn::close_notify() {
  if (ssl_) {
    // One close_notify; the answer (if any) is read by whoever still reads.
    ERR_clear_error();
    (void)SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }
}

void Conn::shutdown_write() {
  close_notify();
  ::shutdown(fd_.get(), SHUT_WR);
}

}  // namespace rs::net
