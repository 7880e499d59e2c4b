#include "net/resolver.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <stdexcept>

#include "core/fd.hpp"

namespace rs::net {
namespace {

// A tiny DNS server on 127.0.0.1 (UDP, ephemeral port), served by the test's
// own loop: "fake.test" has A 192.0.2.1 and AAAA 2001:db8::1, every other name
// is NXDOMAIN. A silent server reads queries and never answers.
class FakeDns {
 public:
  FakeDns(ev::Loop* loop, bool silent = false)
      : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)),
        io_(loop, [this](int) { on_readable(); }),
        silent_(silent) {
    auto any_port = *parse_sockaddr("127.0.0.1:0");
    if (!fd_ || ::bind(fd_.get(), any_port.get(), any_port.len) != 0)
      throw std::runtime_error("FakeDns: bind failed");
    io_.set(fd_.get(), EV_READ);
    io_.start();
  }
  std::string address() const { return local_of(fd_.get()).to_string(); }
  int received = 0;
  int answered = 0;

 private:
  void on_readable() {
    uint8_t q[512];
    sockaddr_storage from;
    socklen_t from_len = sizeof from;
    ssize_t n =
        ::recvfrom(fd_.get(), q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
    if (n < 12) return;
    ++received;
    if (silent_) return;

    // The question: labels up to a zero byte, then type and class.
    std::string name;
    size_t pos = 12;
    while (pos < size_t(n) && q[pos] != 0) {
      size_t len = q[pos];
      if (!name.empty()) name += '.';
      name.append(reinterpret_cast<const char*>(q + pos + 1), std::min(len, size_t(n) - pos - 1));
      pos += len + 1;
    }
    size_t question_end = pos + 5;
    if (question_end > size_t(n)) return;
    int qtype = q[pos + 1] << 8 | q[pos + 2];

    std::vector<uint8_t> rdata;
    bool exists = name == "fake.test";
    if (exists && qtype == 1) rdata = {192, 0, 2, 1};
    if (exists && qtype == 28) rdata = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};

    std::vector<uint8_t> r(q, q + question_end);
    r[2] = 0x84 | (q[2] & 0x01);     // QR, AA, copy RD
    r[3] = 0x80 | (exists ? 0 : 3);  // RA, NOERROR or NXDOMAIN
    r[4] = 0, r[5] = 1;              // one question
    r[6] = 0, r[7] = rdata.empty() ? 0 : 1;
    r[8] = r[9] = r[10] = r[11] = 0;  // no authority, no additional
    if (!rdata.empty()) {
      uint8_t rr[] = {0xc0, 12,  // name: pointer to the question
                      0,    uint8_t(qtype),
                      0,    1,
                      0,    0,
                      0,    60,
                      0,    uint8_t(rdata.size())};
      r.insert(r.end(), std::begin(rr), std::end(rr));
      r.insert(r.end(), rdata.begin(), rdata.end());
    }
    ::sendto(fd_.get(), r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), from_len);
    ++answered;
  }

  UniqueFd fd_;
  ev::Io io_;
  bool silent_;
};

struct Result {
  int calls = 0;
  std::vector<std::string> addrs;
  std::string error;
};

Resolver::Callback record(Result& r) {
  return [&r](std::vector<SockAddr> addrs, std::string error) {
    ++r.calls;
    for (auto& a : addrs) r.addrs.push_back(a.to_string());
    r.error = std::move(error);
  };
}

ResolverOptions with_nameserver(std::string ns) {
  ResolverOptions o;
  o.nameserver = std::move(ns);
  return o;
}

class ResolverTest : public ::testing::Test {
 protected:
  ~ResolverTest() override { ev_loop_destroy(loop); }

  // Runs the loop until `done()` holds or `seconds` pass; returns done().
  template <class F>
  bool run_until(F done, double seconds = 5) {
    bool expired = false;
    ev::Timer guard(loop, [&](int) { expired = true; });
    guard.start(seconds);
    while (!done() && !expired) ev_run(loop, EVRUN_ONCE);
    return done();
  }
  void run_for(double seconds) {
    run_until([] { return false; }, seconds);
  }
  // Resolves and waits for the callback, checking it did not run inside resolve().
  Result resolve(Resolver& r, const std::string& host, uint16_t port = 80) {
    Result result;
    auto q = r.resolve(host, port, record(result));
    EXPECT_EQ(result.calls, 0) << "callback ran inside resolve()";
    EXPECT_TRUE(run_until([&] { return result.calls > 0; })) << host;
    run_for(0.01);  // a second call would show up here
    EXPECT_EQ(result.calls, 1);
    return result;
  }
  ResolverOptions fake_options(const FakeDns& dns, Family family = Family::kAny) {
    ResolverOptions o;
    o.family = family;
    o.nameserver = dns.address();
    o.timeout = 2;
    return o;
  }

  ev::Loop* loop = ev_loop_new(0);
};

TEST_F(ResolverTest, NumericIpv4) {
  Resolver r(loop, {});
  auto res = resolve(r, "127.0.0.1", 1080);
  EXPECT_EQ(res.addrs, std::vector<std::string>{"127.0.0.1:1080"});
  EXPECT_EQ(res.error, "");
}

TEST_F(ResolverTest, NumericIpv6) {
  Resolver r(loop, {});
  auto res = resolve(r, "2001:db8::5", 443);
  EXPECT_EQ(res.addrs, std::vector<std::string>{"[2001:db8::5]:443"});
  EXPECT_EQ(res.error, "");
}

TEST_F(ResolverTest, NumericLiteralsIgnoreFamily) {
  ResolverOptions opts;
  opts.family = Family::kOnlyV4;
  Resolver r(loop, opts);
  EXPECT_EQ(resolve(r, "::1").addrs, std::vector<std::string>{"[::1]:80"});
}

TEST_F(ResolverTest, Localhost) {
  FakeDns dns(loop);  // answers NXDOMAIN should /etc/hosts not be consulted
  Resolver r(loop, fake_options(dns));
  auto res = resolve(r, "localhost", 8080);
  EXPECT_EQ(res.error, "");
  ASSERT_FALSE(res.addrs.empty());
  for (auto& a : res.addrs) EXPECT_TRUE(a == "127.0.0.1:8080" || a == "[::1]:8080") << a;
}

TEST_F(ResolverTest, FakeServerAnswers) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns));
  auto res = resolve(r, "fake.test", 443);
  EXPECT_EQ(res.error, "");
  std::sort(res.addrs.begin(), res.addrs.end());
  EXPECT_EQ(res.addrs, (std::vector<std::string>{"192.0.2.1:443", "[2001:db8::1]:443"}));
  EXPECT_GE(dns.answered, 2);  // A and AAAA
}

TEST_F(ResolverTest, NameNotFound) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns));
  auto res = resolve(r, "example.invalid");
  EXPECT_TRUE(res.addrs.empty());
  EXPECT_EQ(res.error, "example.invalid: Domain name not found");
}

TEST_F(ResolverTest, OnionIsRefusedWithoutDns) {
  // c-ares answers this one synchronously; delivery must still be deferred.
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns));
  auto res = resolve(r, "hidden.onion");
  EXPECT_EQ(res.error, "hidden.onion: Domain name not found");
  EXPECT_EQ(dns.received, 0);
}

TEST_F(ResolverTest, Timeout) {
  FakeDns dns(loop, /*silent=*/true);
  auto opts = fake_options(dns);
  opts.timeout = 0.3;
  Resolver r(loop, opts);
  ev_now_update(loop);
  double start = ev_now(loop);
  auto res = resolve(r, "fake.test");
  ev_now_update(loop);
  double elapsed = ev_now(loop) - start;
  EXPECT_TRUE(res.addrs.empty());
  EXPECT_EQ(res.error, "fake.test: timeout");
  EXPECT_GE(elapsed, 0.25);
  EXPECT_LT(elapsed, 1.0);
  EXPECT_GE(dns.received, 2);  // retried once
}

TEST_F(ResolverTest, FamilyFiltering) {
  struct Case {
    Family family;
    std::vector<std::string> want;  // in order; empty = both, any order
  } cases[] = {
      {Family::kOnlyV4, {"192.0.2.1:80"}},
      {Family::kOnlyV6, {"[2001:db8::1]:80"}},
      {Family::kPreferV4, {"192.0.2.1:80", "[2001:db8::1]:80"}},
      {Family::kPreferV6, {"[2001:db8::1]:80", "192.0.2.1:80"}},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(static_cast<int>(c.family));
    FakeDns dns(loop);
    Resolver r(loop, fake_options(dns, c.family));
    auto res = resolve(r, "fake.test");
    EXPECT_EQ(res.error, "");
    EXPECT_EQ(res.addrs, c.want);
    // The Only modes do not even ask for the other family.
    if (c.family == Family::kOnlyV4 || c.family == Family::kOnlyV6) {
      EXPECT_EQ(dns.received, 1);
    }
  }
}

TEST_F(ResolverTest, OnlyV6WithoutAaaaFails) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns, Family::kOnlyV6));
  auto res = resolve(r, "nothing.test");
  EXPECT_TRUE(res.addrs.empty());
  EXPECT_NE(res.error, "");
}

TEST_F(ResolverTest, DroppingQueryCancelsCallback) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns));
  Result dns_result, numeric_result, hosts_result;
  r.resolve("fake.test", 80, record(dns_result)).reset();
  r.resolve("127.0.0.1", 80, record(numeric_result)).reset();
  r.resolve("localhost", 80, record(hosts_result)).reset();
  EXPECT_TRUE(run_until([&] { return dns.answered >= 2; }));
  run_for(0.05);
  EXPECT_EQ(dns_result.calls, 0);
  EXPECT_EQ(numeric_result.calls, 0);
  EXPECT_EQ(hosts_result.calls, 0);
}

TEST_F(ResolverTest, DestroyingResolverCancelsOutstanding) {
  FakeDns dns(loop, /*silent=*/true);
  auto r = std::make_unique<Resolver>(loop, fake_options(dns));
  Result in_flight, finished;
  auto q1 = r->resolve("fake.test", 80, record(in_flight));
  EXPECT_TRUE(run_until([&] { return dns.received >= 1; }));
  auto q2 = r->resolve("127.0.0.1", 80, record(finished));  // queued, not delivered yet
  r.reset();
  run_for(0.05);
  EXPECT_EQ(in_flight.calls, 0);
  EXPECT_EQ(finished.calls, 0);
  q1.reset();  // handles may outlive their Resolver
  q2.reset();
}

TEST_F(ResolverTest, CallbackMayDropItsQueryAndResolveAgain) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns));
  std::unique_ptr<Resolver::Query> first, second;
  Result second_result;
  int first_calls = 0;
  first = r.resolve("fake.test", 80, [&](std::vector<SockAddr> addrs, std::string error) {
    ++first_calls;
    EXPECT_EQ(error, "");
    EXPECT_FALSE(addrs.empty());
    first.reset();
    second = r.resolve("127.0.0.1", 81, record(second_result));
    EXPECT_EQ(second_result.calls, 0);
  });
  EXPECT_TRUE(run_until([&] { return second_result.calls > 0; }));
  EXPECT_EQ(first_calls, 1);
  EXPECT_EQ(second_result.addrs, std::vector<std::string>{"127.0.0.1:81"});
}

TEST_F(ResolverTest, ManyConcurrentQueries) {
  FakeDns dns(loop);
  Resolver r(loop, fake_options(dns, Family::kOnlyV4));
  std::vector<Result> results(20);
  std::vector<std::unique_ptr<Resolver::Query>> queries;
  for (size_t i = 0; i < results.size(); ++i) {
    queries.push_back(r.resolve(i % 2 ? "fake.test" : "missing.test", 80, record(results[i])));
  }
  EXPECT_TRUE(run_until([&] {
    return std::all_of(results.begin(), results.end(), [](auto& x) { return x.calls == 1; });
  }));
  for (size_t i = 0; i < results.size(); ++i) {
    if (i % 2) {
      EXPECT_EQ(results[i].addrs, std::vector<std::string>{"192.0.2.1:80"});
    } else {
      EXPECT_EQ(results[i].error, "missing.test: Domain name not found");
    }
  }
  EXPECT_EQ(r.queries(), 20u);
}

TEST_F(ResolverTest, BadNameserverThrows) {
  for (const char* ns : {"not-an-ip", "1.2.3.4:99999", "[::1]", "dns.google"}) {
    try {
      Resolver r(loop, with_nameserver(ns));
      ADD_FAILURE() << "accepted " << ns;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(ns), std::string::npos) << e.what();
    }
  }
  // The accepted forms.
  Resolver plain(loop, with_nameserver("127.0.0.1"));
  Resolver v6(loop, with_nameserver("::1"));
  Resolver v6_port(loop, with_nameserver("[::1]:5353"));
}

TEST(ResolverBlocking, Literals) {
  std::string error = "stale";
  auto addrs = resolve_blocking("127.0.0.1", 1080, Family::kAny, error);
  ASSERT_EQ(addrs.size(), 1u);
  EXPECT_EQ(addrs[0].to_string(), "127.0.0.1:1080");
  EXPECT_EQ(error, "");
  addrs = resolve_blocking("::", 1080, Family::kOnlyV4, error);
  ASSERT_EQ(addrs.size(), 1u);
  EXPECT_EQ(addrs[0].to_string(), "[::]:1080");
}

TEST(ResolverBlocking, LocalhostFromHostsFile) {
  std::string error;
  auto addrs = resolve_blocking("localhost", 53, Family::kOnlyV4, error);
  EXPECT_EQ(error, "");
  ASSERT_FALSE(addrs.empty());
  EXPECT_EQ(addrs[0].to_string(), "127.0.0.1:53");
}

TEST(ResolverBlocking, EmptyHostFails) {
  std::string error;
  EXPECT_TRUE(resolve_blocking("", 80, Family::kAny, error).empty());
  EXPECT_NE(error, "");
}

}  // namespace
}  // namespace rs::net
