// TLS contexts (OpenSSL): one for the TLS listeners, one for TLS hops.
//
// Ownership: SslCtxPtr/SslPtr own an SSL_CTX/SSL; an SSL keeps a reference on
// its context, so a listener's context may be replaced (SIGHUP) while
// sessions made from the old one go on. Neither closes the socket: that is
// the UniqueFd's job (net/conn.hpp).
//
// Everything here runs on the loop thread.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

namespace rs::net {

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

// Drains OpenSSL's error queue into one line ("certificate verify failed" and
// friends); `fallback` when the queue is empty.
std::string tls_error_text(const char* fallback = "TLS error");

// Why the handshake of `ssl` failed: the certificate verification result when
// that is the cause ("certificate has expired", "Hostname mismatch"),
// otherwise the error queue.
std::string tls_failure(SSL* ssl);

struct TlsServerOptions {
  std::string cert;       // PEM chain, leaf first (--tls-cert)
  std::string key;        // PEM private key (--tls-key)
  std::string client_ca;  // --tls-client-ca: require a client certificate signed by it
};

// TLS 1.2..1.3 server context. Throws std::runtime_error naming the file and
// the reason.
SslCtxPtr make_server_context(const TlsServerOptions& opts);

// The client side of TLS hops and RPC: one context trusting the system store
// plus `ca_file` (--tls-ca), and a session cache per host:port so that the
// connections of a chain to the same server resume instead of doing a full
// handshake.
class TlsClient {
 public:
  // Throws std::runtime_error when `ca_file` cannot be loaded.
  explicit TlsClient(const std::string& ca_file);
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  // A client SSL on the connected socket `fd`, with SNI (names only), the
  // host name or IP address check, and the cached session for host:port.
  // Returns null (tls_error_text() says why) if OpenSSL refuses.
  SslPtr connect(int fd, const std::string& host, uint16_t port);
  // Cached sessions (for tests and /stats).
  size_t cached() const { return cache_.size(); }

 private:
  static int on_new_session(SSL* ssl, SSL_SESSION* sess);

  SslCtxPtr ctx_;
  struct SessionFree {
    void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
  };
  std::unordered_map<std::string, std::unique_ptr<SSL_SESSION, SessionFree>> cache_;
};

}  // namespace rs::net
