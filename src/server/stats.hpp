// Server-wide counters, read by /stats and neosocksd.stats(). Single thread:
// plain integers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "server/udp_stats.hpp"

namespace rs::server {

struct Stats {
  size_t sessions = 0;  // live sessions (half-open and relaying)
  size_t halfopen = 0;  // accepted but not yet relaying
  size_t sessions_peak = 0;
  uint64_t accepted = 0;
  uint64_t refused = 0;   // dropped by --max-sessions / --max-startups or accept errors
  uint64_t requests = 0;  // handshakes that produced a request
  uint64_t success = 0;   // requests that reached the relay
  uint64_t rejected = 0;  // refused by the ruleset or by authentication
  uint64_t dial_failed = 0;
  uint64_t timed_out = 0;                 // -t ran out while routing or dialing
  uint64_t bad_requests = 0;              // protocol errors and timeouts in the handshake
  uint64_t bytes_up = 0, bytes_down = 0;  // finished relays; live ones are added on read
  uint64_t api_requests = 0;              // API request heads; never in `requests`
  uint64_t api_successes = 0;             // API requests answered with a 2xx status
  uint64_t api_unauthorized = 0;          // API requests refused 401 or 403 (access rules)
  UdpStats udp;
};

}  // namespace rs::server
