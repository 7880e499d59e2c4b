// net/tls.*, net/conn.* and the relay over TLS, on socketpairs with a
// self-signed certificate made here (no files from the tree, no network).
#include "net/tls.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "core/loop.hpp"
#include "net/conn.hpp"
#include "net/relay.hpp"

namespace rs::net {
namespace {

// A self-signed certificate for `names` (subjectAltName syntax), its key,
// both in PEM files under a temporary directory removed at the end.
class TestCert {
 public:
  explicit TestCert(const std::string& san, long days = 30) {
    char tmpl[] = "/tmp/rulesocks-tls-test-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
    dir_ = tmpl;
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), std::random_device{}() & 0x7fffffff);
    X509_gmtime_adj(X509_getm_notBefore(x), days < 0 ? 2 * days * 86400 : 0);
    X509_gmtime_adj(X509_getm_notAfter(x), days * 86400);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("rulesocks test"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_subject_alt_name, san.c_str()},
                              std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
      X509_add_ext(x, ext, -1);
      X509_EXTENSION_free(ext);
    }
    X509_sign(x, key, EVP_sha256());
    FILE* f = std::fopen(cert().c_str(), "w");
    PEM_write_X509(f, x);
    std::fclose(f);
    f = std::fopen(key_file().c_str(), "w");
    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
  }
  ~TestCert() { std::filesystem::remove_all(dir_); }
  std::string cert() const { return dir_ + "/cert.pem"; }
  std::string key_file() const { return dir_ + "/key.pem"; }

 private:
  std::string dir_;
};

struct Pair {
  UniqueFd a, b;
};
Pair socket_pair() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("sp");
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}
void set_nonblocking(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

// Runs both handshakes (each side non-blocking) until both are done; the
// error text of the first side that fails otherwise.
std::string handshake(Conn& server, Conn& client) {
  bool s_done = false, c_done = false;
  for (int i = 0; i < 1000 && !(s_done && c_done); ++i) {
    for (auto [conn, done] : {std::pair{&server, &s_done}, std::pair{&client, &c_done}}) {
      if (*done) continue;
      if (conn->handshake() == 1) {
        *done = true;
      } else if (errno != EAGAIN) {
        return (conn == &server ? "server: " : "client: ") + conn->error_text();
      }
    }
    pollfd p[2] = {{server.fd(), POLLIN, 0}, {client.fd(), POLLIN, 0}};
    poll(p, 2, 10);
  }
  return s_done && c_done ? "" : "handshake did not finish";
}

class TlsTest : public ::testing::Test {
 protected:
  TestCert cert_{"DNS:localhost,IP:127.0.0.1"};
  SslCtxPtr server_ctx_ = make_server_context({cert_.cert(), cert_.key_file(), {}});
  TlsClient client_{cert_.cert()};

  // A server and a client Conn on the two ends of a non-blocking socketpair.
  std::pair<Conn, Conn> make(const std::string& host, SSL_CTX* ctx = nullptr) {
    auto [a, b] = socket_pair();
    set_nonblocking(a.get());
    set_nonblocking(b.get());
    SslPtr s(SSL_new(ctx ? ctx : server_ctx_.get()));
    SSL_set_fd(s.get(), a.get());
    SSL_set_accept_state(s.get());
    SslPtr c = client_.connect(b.get(), host, 443);
    EXPECT_TRUE(c);
    return {Conn(std::move(a), std::move(s)), Conn(std::move(b), std::move(c))};
  }
};

TEST_F(TlsTest, HandshakeThenBytesBothWaysAndCloseNotifyIsEof) {
  auto [server, client] = make("localhost");
  ASSERT_EQ(handshake(server, client), "");
  EXPECT_EQ(SSL_version(server.ssl()), TLS1_3_VERSION);
  ASSERT_EQ(client.write("ping", 4), 4);
  char buf[16];
  ssize_t n = -1;
  for (int i = 0; i < 100 && (n = server.read(buf, sizeof buf)) < 0 && errno == EAGAIN; ++i)
    usleep(1000);
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  // Nothing more: EAGAIN, waiting to read.
  EXPECT_EQ(server.read(buf, sizeof buf), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(server.wants(), EV_READ);
  client.shutdown_write();
  for (int i = 0; i < 100 && (n = server.read(buf, sizeof buf)) < 0 && errno == EAGAIN; ++i)
    usleep(1000);
  EXPECT_EQ(n, 0);
  // Half-close: the server may still answer.
  ASSERT_EQ(server.write("pong", 4), 4);
  for (int i = 0; i < 100 && (n = client.read(buf, sizeof buf)) < 0 && errno == EAGAIN; ++i)
    usleep(1000);
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, 4), "pong");
}

TEST_F(TlsTest, IpAddressIsCheckedAgainstTheCertificate) {
  auto [server, client] = make("127.0.0.1");
  EXPECT_EQ(handshake(server, client), "");
  auto [server2, client2] = make("127.0.0.2");
  std::string err = handshake(server2, client2);
  EXPECT_NE(err.find("client: certificate verify failed: IP address mismatch"), std::string::npos)
      << err;
}

TEST_F(TlsTest, WrongHostNameNamesTheReason) {
  auto [server, client] = make("other.example");
  std::string err = handshake(server, client);
  EXPECT_NE(err.find("client: certificate verify failed: hostname mismatch"), std::string::npos)
      << err;
}

TEST_F(TlsTest, ExpiredCertificateNamesTheReason) {
  TestCert old("DNS:localhost", -1);
  TlsClient trusting(old.cert());
  SslCtxPtr ctx = make_server_context({old.cert(), old.key_file(), {}});
  auto [a, b] = socket_pair();
  set_nonblocking(a.get());
  set_nonblocking(b.get());
  SslPtr s(SSL_new(ctx.get()));
  SSL_set_fd(s.get(), a.get());
  SSL_set_accept_state(s.get());
  Conn server(std::move(a), std::move(s));
  SslPtr c = trusting.connect(b.get(), "localhost", 443);
  Conn client(std::move(b), std::move(c));
  std::string err = handshake(server, client);
  EXPECT_NE(err.find("certificate has expired"), std::string::npos) << err;
}

TEST_F(TlsTest, PlainTextClientFailsTheServerHandshake) {
  auto [a, b] = socket_pair();
  set_nonblocking(a.get());
  SslPtr s(SSL_new(server_ctx_.get()));
  SSL_set_fd(s.get(), a.get());
  SSL_set_accept_state(s.get());
  Conn server(std::move(a), std::move(s));
  const char socks[] = "\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50";
  ASSERT_EQ(::send(b.get(), socks, sizeof socks - 1, 0), static_cast<ssize_t>(sizeof socks - 1));
  EXPECT_EQ(server.handshake(), -1);
  EXPECT_EQ(errno, EPROTO);
  EXPECT_FALSE(server.error_text().empty());
}

TEST_F(TlsTest, SecondConnectionToTheSameServerResumes) {
  {
    auto [server, client] = make("localhost");
    ASSERT_EQ(handshake(server, client), "");
    EXPECT_FALSE(SSL_session_reused(client.ssl()));
    // TLS 1.3 tickets come after the handshake: read to take them in.
    char buf[1];
    EXPECT_EQ(client.read(buf, 1), -1);
    // A connection dropped without close_notify spoils its session (OpenSSL
    // marks it not resumable); relays end with one.
    client.shutdown_write();
  }
  EXPECT_EQ(client_.cached(), 1u);
  auto [server, client] = make("localhost");
  ASSERT_EQ(handshake(server, client), "");
  EXPECT_TRUE(SSL_session_reused(client.ssl()));
}

TEST_F(TlsTest, ContextErrorsNameTheFile) {
  try {
    make_server_context({"/nonexistent/cert.pem", cert_.key_file(), {}});
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--tls-cert /nonexistent/cert.pem"), std::string::npos)
        << e.what();
  }
  TestCert other("DNS:localhost");
  try {
    make_server_context({cert_.cert(), other.key_file(), {}});
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--tls-key"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TlsClient("/nonexistent/ca.pem"), std::runtime_error);
}

// The relay between a TLS client leg and a plain upstream: several MiB each
// way in large writes, then close_notify passed on as EOF and back.
TEST_F(TlsTest, RelayMovesBytesBetweenTlsAndPlainLegs) {
  for (bool splice : {false, true}) {
    SCOPED_TRACE(splice ? "use_splice" : "copy");
    auto [server, client] = make("localhost");
    ASSERT_EQ(handshake(server, client), "");
    // up_a: the relay's upstream socket; up_b: the upstream, blocking, in a thread.
    auto [up_a, up_b] = socket_pair();
    set_nonblocking(up_a.get());
    constexpr size_t kBytes = 6 * 1024 * 1024;
    std::string up(kBytes, '\0'), down(kBytes, '\0');
    std::mt19937 rng(splice ? 2 : 1);
    for (auto& c : up) c = static_cast<char>(rng());
    for (auto& c : down) c = static_cast<char>(rng());

    ev::Loop* loop = ev_loop_new(EVFLAG_AUTO);
    bool done = false;
    std::string reason;
    RelayStats stats;
    auto relay = std::make_unique<Relay>(loop, std::move(server), Conn(std::move(up_a)),
                                         RelayOptions{.use_splice = splice},
                                         [&](const RelayStats& st, std::string_view why) {
                                           done = true;
                                           stats = st;
                                           reason = why;
                                         });
    relay->start();
    // The client's TLS, driven from a thread over a blocking socket.
    int cfd = client.fd();
    fcntl(cfd, F_SETFL, fcntl(cfd, F_GETFL) & ~O_NONBLOCK);
    auto client_side = std::async(std::launch::async, [&client, &up] {
      for (size_t off = 0; off < up.size();) {
        ssize_t n = client.write(up.data() + off, std::min<size_t>(up.size() - off, 200000));
        if (n <= 0) return std::string("client write failed");
        off += static_cast<size_t>(n);
      }
      client.shutdown_write();
      std::string got;
      char buf[65536];
      for (ssize_t n; (n = client.read(buf, sizeof buf)) > 0;) got.append(buf, n);
      return got;
    });
    auto upstream_side = std::async(std::launch::async, [fd = up_b.get(), &down] {
      std::string got;
      char buf[65536];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) got.append(buf, n);
      for (size_t off = 0; off < down.size();) {
        ssize_t n = ::write(fd, down.data() + off, down.size() - off);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      ::shutdown(fd, SHUT_WR);
      return got;
    });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done && std::chrono::steady_clock::now() < deadline) ev_run(loop, EVRUN_ONCE);
    ASSERT_TRUE(done);
    EXPECT_EQ(reason, Relay::kFinished);
    EXPECT_EQ(stats.up, kBytes);
    EXPECT_EQ(stats.down, kBytes);
    std::string got_up = upstream_side.get();
    std::string got_down = client_side.get();
    EXPECT_TRUE(got_up == up) << got_up.size();
    EXPECT_TRUE(got_down == down) << got_down.size();
    relay.reset();
    ev_loop_destroy(loop);
  }
}

}  // namespace
}  // namespace rs::net
