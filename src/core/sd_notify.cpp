#include "core/sd_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "core/fd.hpp"
#include "core/log.hpp"

namespace rs::sd {

bool send_notification(std::string_view address, std::string_view state, std::string* err) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  // An abstract name keeps its length in the address length (no NUL end);
  // a path needs room for its terminating NUL.
  bool abstract = !address.empty() && address[0] == '@';
  if (address.empty() || (!abstract && address[0] != '/')) {
    *err = "not an AF_UNIX path or @abstract name (unsupported address)";
    return false;
  }
  if (address.size() + (abstract ? 0 : 1) > sizeof(sun.sun_path)) {
    *err = "address too long for AF_UNIX";
    return false;
  }
  std::memcpy(sun.sun_path, address.data(), address.size());
  if (abstract) sun.sun_path[0] = '\0';
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());

  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) {
    *err = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  ssize_t n;
  do {
    n = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&sun), len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    *err = std::string("sendto: ") + std::strerror(errno);
    return false;
  }
  return true;  // a datagram goes whole or not at all
}

bool notify(std::string_view state) {
  const char* address = std::getenv("NOTIFY_SOCKET");
  if (!address || !*address) return false;
  std::string err;
  if (!send_notification(address, state, &err)) {
    log::warning("sd_notify to NOTIFY_SOCKET={}: {}", address, err);
    return false;
  }
  log::debug("sd_notify: {}", state);
  return true;
}

std::string reloading_state() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
              static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
  return "RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec);
}

}  // namespace rs::sd
