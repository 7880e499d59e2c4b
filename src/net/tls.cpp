#include "net/tls.hpp"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <stdexcept>

namespace rs::net {
namespace {

// Past this many servers the cache starts again: a chain talks to a handful.
constexpr size_t kMaxCachedSessions = 1024;

// The per-connection cache key ("host:port") and its owner, kept on the SSL
// so that a session ticket arriving after the handshake (TLS 1.3) finds
// where to go.
struct CacheSlot {
  TlsClient* client;
  std::string key;
};

void free_slot(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<CacheSlot*>(ptr);
}

int slot_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_slot);
  return index;
}

void limit_versions(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // Partial writes let the relay hand SSL_write a whole chunk and keep what
  // was not taken; the chunk may sit elsewhere when a write is retried.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  // Most clients end a connection without close_notify: that is EOF, not an
  // error (what is relayed is the application's own stream, which carries
  // its own framing). Renegotiation is refused outright.
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + tls_error_text("unknown error"));
}

}  // namespace

std::string tls_error_text(const char* fallback) {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    // "error:0A000086:SSL routines::certificate verify failed": the reason is
    // the last field.
    std::string_view s(buf);
    auto colon = s.rfind(':');
    if (colon != std::string_view::npos) s.remove_prefix(colon + 1);
    if (!out.empty()) out += "; ";
    out += s;
  }
  return out.empty() ? fallback : out;
}

std::string tls_failure(SSL* ssl) {
  const long result = SSL_get_verify_result(ssl);
  if (result != X509_V_OK) {
    ERR_clear_error();
    return std::string("certificate verify failed: ") + X509_verify_cert_error_string(result);
  }
  return tls_error_text("handshake failed");
}

SslCtxPtr make_server_context(const TlsServerOptions& opts) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) fail("TLS server context");
  limit_versions(ctx.get());
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), opts.cert.c_str()) != 1)
    fail("--tls-cert " + opts.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), opts.key.c_str(), SSL_FILETYPE_PEM) != 1)
    fail("--tls-key " + opts.key);
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    fail("--tls-key " + opts.key + " does not match --tls-cert " + opts.cert);
  if (!opts.client_ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), opts.client_ca.c_str(), nullptr) != 1)
      fail("--tls-client-ca " + opts.client_ca);
    // Tell clients which CA we take, so that one with several certificates
    // picks the right one.
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(opts.client_ca.c_str());
    if (names != nullptr) SSL_CTX_set_client_CA_list(ctx.get(), names);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  // Server-side session tickets (OpenSSL's default) let returning clients resume.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_SERVER);
  static const unsigned char kSessionId[] = "rulesocks";
  SSL_CTX_set_session_id_context(ctx.get(), kSessionId, sizeof kSessionId - 1);
  return ctx;
}

TlsClient::TlsClient(const std::string& ca_file) : ctx_(SSL_CTX_new(TLS_client_method())) {
  if (!ctx_) fail("TLS client context");
  limit_versions(ctx_.get());
  if (SSL_CTX_set_default_verify_paths(ctx_.get()) != 1) fail("system trust store");
  if (!ca_file.empty() && SSL_CTX_load_verify_locations(ctx_.get(), ca_file.c_str(), nullptr) != 1)
    fail("--tls-ca " + ca_file);
  SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
  // The cache is ours (keyed by host:port, not by OpenSSL's session id).
  SSL_CTX_set_session_cache_mode(ctx_.get(),
                                 SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx_.get(), on_new_session);
  slot_index();
}

TlsClient::~TlsClient() = default;

SslPtr TlsClient::connect(int fd, const std::string& host, uint16_t port) {
  SslPtr ssl(SSL_new(ctx_.get()));
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) return nullptr;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  unsigned char ip[16];
  const bool v4 = inet_pton(AF_INET, host.c_str(), ip) == 1;
  const bool v6 = !v4 && inet_pton(AF_INET6, host.c_str(), ip) == 1;
  if (v4 || v6) {
    // RFC 6066: no SNI for addresses; the certificate must name the IP.
    if (X509_VERIFY_PARAM_set1_ip(param, ip, v4 ? 4 : 16) != 1) return nullptr;
  } else {
    if (SSL_set_tlsext_host_name(ssl.get(), host.c_str()) != 1) return nullptr;
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) != 1) return nullptr;
  }
  std::string key = host + ":" + std::to_string(port);
  if (auto it = cache_.find(key); it != cache_.end()) SSL_set_session(ssl.get(), it->second.get());
  SSL_set_ex_data(ssl.get(), slot_index(), new CacheSlot{this, std::move(key)});
  SSL_set_connect_state(ssl.get());
  return ssl;
}

int TlsClient::on_new_session(SSL* ssl, SSL_SESSION* sess) {
  auto* slot = static_cast<CacheSlot*>(SSL_get_ex_data(ssl, slot_index()));
  if (slot == nullptr) return 0;
  auto& cache = slot->client->cache_;
  if (cache.size() >= kMaxCachedSessions && !cache.contains(slot->key)) cache.clear();
  cache[slot->key].reset(sess);
  return 1;  // we keep the reference
}

}  // namespace rs::net
