// sd_notify: datagrams to a path and to an abstract AF_UNIX socket, the
// NOTIFY_SOCKET environment variable, and addresses that cannot work.
#include "core/sd_notify.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "core/fd.hpp"

namespace rs::sd {
namespace {

// A bound AF_UNIX datagram socket standing in for systemd's notify socket.
struct Receiver {
  explicit Receiver(const std::string& address) : address(address) {
    fd.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, address.data(), address.size());
    if (address[0] == '@') sun.sun_path[0] = '\0';
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), len) == 0;
    timeval tv{10, 0};  // bounded wait: a missing datagram fails, never hangs
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~Receiver() {
    if (address[0] == '/') ::unlink(address.c_str());
  }
  std::string receive() {
    char buf[512];
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    return n < 0 ? std::string("(nothing)") : std::string(buf, static_cast<size_t>(n));
  }
  std::string address;
  UniqueFd fd;
  bool bound = false;
};

std::string temp_path() {
  char dir[] = "/tmp/sd_notify_test.XXXXXX";
  EXPECT_NE(::mkdtemp(dir), nullptr);
  return std::string(dir) + "/notify";
}

TEST(SdNotify, SendsToAPathSocket) {
  Receiver r(temp_path());
  ASSERT_TRUE(r.bound);
  std::string err;
  ASSERT_TRUE(send_notification(r.address, "READY=1", &err)) << err;
  EXPECT_EQ(r.receive(), "READY=1");
  ::rmdir(r.address.substr(0, r.address.rfind('/')).c_str());
}

TEST(SdNotify, SendsToAnAbstractSocket) {
  Receiver r("@rulesocks-sd-notify-test-" + std::to_string(::getpid()));
  ASSERT_TRUE(r.bound);
  std::string err;
  ASSERT_TRUE(send_notification(r.address, "STOPPING=1", &err)) << err;
  EXPECT_EQ(r.receive(), "STOPPING=1");
}

TEST(SdNotify, NotifyReadsNotifySocket) {
  Receiver r("@rulesocks-sd-notify-env-" + std::to_string(::getpid()));
  ASSERT_TRUE(r.bound);
  ::setenv("NOTIFY_SOCKET", r.address.c_str(), 1);
  EXPECT_TRUE(notify("READY=1\nSTATUS=ok"));
  EXPECT_EQ(r.receive(), "READY=1\nSTATUS=ok");
  ::unsetenv("NOTIFY_SOCKET");
  EXPECT_FALSE(notify("READY=1"));  // not under systemd: nothing to do
  ::setenv("NOTIFY_SOCKET", "", 1);
  EXPECT_FALSE(notify("READY=1"));
  ::unsetenv("NOTIFY_SOCKET");
}

TEST(SdNotify, RefusesUnusableAddresses) {
  std::string err;
  EXPECT_FALSE(send_notification("", "READY=1", &err));
  EXPECT_FALSE(send_notification("vsock:2:1234", "READY=1", &err));
  EXPECT_NE(err.find("unsupported"), std::string::npos) << err;
  EXPECT_FALSE(send_notification("/" + std::string(200, 'x'), "READY=1", &err));
  EXPECT_NE(err.find("too long"), std::string::npos) << err;
  // Nobody listens there: sendto fails and says so.
  EXPECT_FALSE(send_notification("/nonexistent/rulesocks/notify", "READY=1", &err));
  EXPECT_NE(err.find("sendto"), std::string::npos) << err;
}

TEST(SdNotify, ReloadingCarriesAMonotonicTimestamp) {
  std::string s = reloading_state();
  ASSERT_EQ(s.rfind("RELOADING=1\nMONOTONIC_USEC=", 0), 0u) << s;
  std::string usec = s.substr(std::strlen("RELOADING=1\nMONOTONIC_USEC="));
  ASSERT_FALSE(usec.empty());
  EXPECT_EQ(usec.find_first_not_of("0123456789"), std::string::npos) << usec;
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  EXPECT_LE(std::stoull(usec), static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
                                   static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL);
}

}  // namespace
}  // namespace rs::sd
