// Admission of SOCKS5 UDP associations: at most `total` live ones and at most
// `per_client` from one client IP. A Ticket holds one place and gives it back
// when destroyed; the UdpAdmission must outlive its tickets.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace rs::server {

class UdpAdmission {
 public:
  class Ticket {
   public:
    Ticket(Ticket&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), ip_(std::move(o.ip_)) {}
    Ticket& operator=(Ticket&& o) noexcept {
      if (this != &o) {
        if (owner_) owner_->release(ip_);
        owner_ = std::exchange(o.owner_, nullptr);
        ip_ = std::move(o.ip_);
      }
      return *this;
    }
    Ticket(const Ticket&) = delete;
    ~Ticket() {
      if (owner_) owner_->release(ip_);
    }

   private:
    friend class UdpAdmission;
    Ticket(UdpAdmission* owner, std::string ip) : owner_(owner), ip_(std::move(ip)) {}
    UdpAdmission* owner_;
    std::string ip_;
  };

  void set_limits(size_t total, size_t per_client) {
    total_limit_ = total;
    per_client_limit_ = per_client;
  }
  // `ip` identifies the client (any stable key of its address); nullopt when
  // a limit is reached.
  std::optional<Ticket> admit(const std::string& ip) {
    if (live_ >= total_limit_) return std::nullopt;
    size_t& n = per_client_[ip];
    if (n >= per_client_limit_) return std::nullopt;
    ++n;
    ++live_;
    return Ticket(this, ip);
  }
  size_t live() const { return live_; }

 private:
  void release(const std::string& ip) {
    --live_;
    auto it = per_client_.find(ip);
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
  }
  size_t total_limit_ = 0, per_client_limit_ = 0;
  size_t live_ = 0;
  std::unordered_map<std::string, size_t> per_client_;
};

}  // namespace rs::server
