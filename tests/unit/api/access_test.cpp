// API access rules: the key compare, the credentials a request presents, and
// the ApiServer refusing requests through our own proxy whichever of the
// dial's completion and the API's accept comes first.
#include "api/access.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <chrono>
#include <future>
#include <thread>

#include "fixture.hpp"
#include "net/dialer.hpp"

namespace rs::api::test {
namespace {

constexpr char kKey[] = "s3cret-key";

TEST(ConstantTimeEqualTest, Compares) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abd", "abc"));
  EXPECT_FALSE(constant_time_equal("xbc", "abc"));
  EXPECT_FALSE(constant_time_equal("ab", "abc"));
  EXPECT_FALSE(constant_time_equal("abcabc", "abc"));  // cycles the key: still unequal
  EXPECT_FALSE(constant_time_equal("abcd", "abc"));
  EXPECT_FALSE(constant_time_equal("", "abc"));
  EXPECT_FALSE(constant_time_equal("", ""));  // no key matches nothing
  EXPECT_FALSE(constant_time_equal("a", ""));
  EXPECT_TRUE(constant_time_equal(std::string_view("a\0b", 3), std::string_view("a\0b", 3)));
  EXPECT_FALSE(constant_time_equal(std::string_view("a\0c", 3), std::string_view("a\0b", 3)));
}

TEST(PresentedKeysTest, BearerAndXApiKey) {
  proto::HttpHeaders h = {{"Host", "x"},
                          {"Authorization", "Bearer one"},
                          {"authorization", "bearer\t two "},
                          {"AUTHORIZATION", "BEARER three"},
                          {"X-API-Key", " four "},
                          {"x-api-key", "five"}};
  auto keys = presented_keys(h);
  ASSERT_EQ(keys.size(), 5u);
  EXPECT_EQ(keys[0], "one");
  EXPECT_EQ(keys[1], "two");
  EXPECT_EQ(keys[2], "three");
  EXPECT_EQ(keys[3], "four");
  EXPECT_EQ(keys[4], "five");
}

TEST(PresentedKeysTest, OtherSchemesAndEmptyValuesPresentNothing) {
  proto::HttpHeaders h = {{"Authorization", "Basic dXNlcjpwYXNz"},
                          {"Authorization", "Bearer"},
                          {"Authorization", "Bearer   "},
                          {"Authorization", "Bearerabc"},
                          {"Authorization", "abc"},
                          {"X-API-Key", ""},
                          {"X-API-Key", "  "},
                          {"Proxy-Authorization", "Bearer p"},
                          {"X-API-Keys", "k"}};
  EXPECT_TRUE(presented_keys(h).empty());
}

TEST(ValidApiKeyTest, VisibleAsciiOnly) {
  EXPECT_TRUE(valid_api_key("abc-DEF_123~!"));
  EXPECT_FALSE(valid_api_key("a b"));
  EXPECT_FALSE(valid_api_key("a\r\nX: y"));
  EXPECT_FALSE(valid_api_key("caf\xc3\xa9"));
}

class AccessTest : public ApiFixture {
 protected:
  void SetUp() override {}
  void start(std::string key, bool exposed, bool with_engine = false) {
    ApiOptions opts;
    opts.access.key = std::move(key);
    opts.access.exposed_listeners = exposed;
    opts.self = &reg_;
    start_server(opts, with_engine);
  }
  // rpc_call with `key` to our server; waits for its callback.
  std::pair<bool, std::string> rpc_with(const std::string& key) {
    auto done = std::make_shared<std::promise<std::pair<bool, std::string>>>();
    auto fut = done->get_future();
    std::unique_ptr<Cancellable> handle;
    loop_.call([&] {
      net::DialOptions opts;
      opts.timeout = 5;
      handle = rpc_call(
          loop_.loop(), nullptr, opts, "return 7", addr_.to_address(), {},
          [done](bool ok, std::string body) {
            done->set_value({ok, std::move(body)});
          },
          key);
    });
    if (fut.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      loop_.call([&] { handle.reset(); });
      return {false, "no callback"};
    }
    loop_.call([&] { handle.reset(); });
    return fut.get();
  }
  void record(const net::SockAddr& local) {
    loop_.call([&] { reg_.add(local); });
  }
  size_t recorded() {
    return loop_.call([&] { return reg_.size(); });
  }
  size_t connections() {
    return loop_.call([&] { return server_->connections(); });
  }
  bool wait_for(const std::function<bool()>& pred) {
    for (int i = 0; i < 500; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  std::optional<Response> send_on(int fd, std::string_view request) {
    if (!send_all(fd, request)) return std::nullopt;
    std::string buf;
    return read_response(fd, buf);
  }

  net::SelfConnections reg_;  // outlives the server (TearDown stops it first)
};

TEST_F(AccessTest, KeyRequiredExceptHealthy) {
  start(kKey, false);
  auto r = test::exchange(addr_, test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->header("WWW-Authenticate").value_or(""), "Bearer");
  EXPECT_EQ(r->header("Connection").value_or(""), "close");
  r = test::exchange(addr_, test::get("/stats", "X-API-Key: wrong\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(backend_.unauthorized, 2);
  r = test::exchange(addr_, test::get("/stats", "Authorization: Bearer s3cret-key\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = test::exchange(addr_, test::get("/stats", "X-API-Key: s3cret-key\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = test::exchange(addr_, test::get("/healthy"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = test::exchange(addr_, test::get("/metrics"));  // scrapers carry no key
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(backend_.unauthorized, 2);
}

TEST_F(AccessTest, RefusedBeforeTheBodyIsRead) {
  start(kKey, false);
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(fd);
  // A large body announced, none sent: the answer comes anyway.
  auto r = send_on(fd.get(),
                   "POST /ruleset/invoke HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
}

// The API accepts first; our dial is recorded later, before request bytes.
TEST_F(AccessTest, ProxiedAfterAccept) {
  start({}, true);
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(fd);
  ASSERT_TRUE(wait_for([&] { return connections() == 1; }));
  record(net::local_of(fd.get()));
  auto r = send_on(fd.get(), test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_NE(r->text().find("--api-key"), std::string::npos) << r->text();
  EXPECT_EQ(backend_.unauthorized, 1);
  fd.reset();
  // Forgotten once the API connection closes.
  EXPECT_TRUE(wait_for([&] { return recorded() == 0; }));
}

// Our dial is recorded before the API has even seen the connection.
TEST_F(AccessTest, ProxiedBeforeAccept) {
  start({}, true);
  const net::SockAddr any = loopback(0);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(fd.get(), any.get(), any.len), 0);
  record(net::local_of(fd.get()));
  ASSERT_EQ(::connect(fd.get(), addr_.get(), addr_.len), 0);
  set_timeouts(fd.get(), 10);
  auto r = send_on(fd.get(), test::get("/healthy"));  // liveness stays open
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = send_on(fd.get(), post("/ruleset/gc", ""));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  fd.reset();
  EXPECT_TRUE(wait_for([&] { return recorded() == 0; }));
}

// The real Dialer records its connection: no help from the test.
TEST_F(AccessTest, DialerRecordsItsConnection) {
  start({}, true);
  loop_.call([&] { reg_.watch(addr_); });
  auto done = std::make_shared<std::promise<int>>();
  auto fut = done->get_future();
  net::DialOptions opts;
  opts.timeout = 5;
  opts.self = &reg_;
  std::unique_ptr<net::Dialer> dialer;
  loop_.call([&] {
    dialer = std::make_unique<net::Dialer>(loop_.loop(), nullptr, opts);
    dialer->start(addr_.to_address(), {}, nullptr,
                  [done](net::Conn conn, net::DialError, const std::string&) {
                    done->set_value(conn.release_fd().release());
                  });
  });
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  UniqueFd fd(fut.get());
  ASSERT_TRUE(fd);
  loop_.call([&] { dialer.reset(); });
  EXPECT_EQ(recorded(), 1u);
  // The dialled socket is non-blocking: make it blocking for the test's reads.
  int flags = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  set_timeouts(fd.get(), 10);
  auto r = send_on(fd.get(), test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  // A direct client is served.
  r = test::exchange(addr_, test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(AccessTest, ProxiedServedWhileListenersAreOnLoopback) {
  start({}, false);
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(fd);
  record(net::local_of(fd.get()));
  auto r = send_on(fd.get(), test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(AccessTest, ProxiedWithAKeyNeedsTheKey) {
  start(kKey, false);
  UniqueFd fd = connect_to(addr_);
  ASSERT_TRUE(fd);
  record(net::local_of(fd.get()));
  auto r = send_on(fd.get(), test::get("/stats", "X-API-Key: s3cret-key\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = send_on(fd.get(), test::get("/stats"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
}

TEST_F(AccessTest, RpcCallSendsTheKey) {
  start(kKey, false, true);
  auto [ok, body] = rpc_with(kKey);
  EXPECT_TRUE(ok) << body;
  EXPECT_EQ(body, "return true,7");
  std::tie(ok, body) = rpc_with("wrong");
  EXPECT_FALSE(ok);
  EXPECT_NE(body.find("HTTP 401"), std::string::npos) << body;
  std::tie(ok, body) = rpc_with("");
  EXPECT_FALSE(ok);
  EXPECT_NE(body.find("401"), std::string::npos) << body;
}

}  // namespace
}  // namespace rs::api::test
