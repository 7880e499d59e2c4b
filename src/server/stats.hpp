// Server-wide counters, read by /stats and neosocksd.stats(). Single thread:
// plain integers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "server/udp_stats.hpp"

namespace rs::server {

// Dials through one upstream chain (label: its hops without credentials).
struct ChainStats {
  // Upper bounds of the connect-latency histogram, seconds (+Inf implied).
  static constexpr std::array<double, 9> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05,  0.1,    0.5,   2.5};
  uint64_t dials = 0, failures = 0;
  std::array<uint64_t, kBuckets.size()> le{};  // successful dials at or under each bound
  double latency_sum = 0;                      // of successful dials, seconds
};

struct Stats {
  // Distinct chains kept by label; the rest count under "other", so that a
  // ruleset making up chains cannot grow /metrics without bound.
  static constexpr size_t kMaxChains = 64;
  static constexpr size_t kLatencySamples = 1024;  // the summary's window

  // One dial ended (a route decision's or await.forward's), after `seconds`.
  void record_dial(const std::string& label, bool ok, double seconds) {
    auto it = chains.find(label);
    if (it == chains.end())
      it = chains.size() < kMaxChains ? chains.emplace(label, ChainStats{}).first
                                      : chains.emplace("other", ChainStats{}).first;
    ChainStats& c = it->second;
    ++c.dials;
    if (!ok) {
      ++c.failures;
      return;
    }
    c.latency_sum += seconds;
    for (size_t i = 0; i < ChainStats::kBuckets.size(); ++i)
      if (seconds <= ChainStats::kBuckets[i]) ++c.le[i];
    connect_latency[connects % kLatencySamples] = seconds;
    ++connects;
    connect_latency_sum += seconds;
  }

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
  // Bytes of finished relays by listener kind, indexed as ListenerKind
  // (server.hpp) orders them: an array, not a map, since every tunnel's end
  // adds to it.
  static constexpr std::array<const char*, 4> kListenerNames{"socks", "http", "forward", "tproxy"};
  std::array<std::array<uint64_t, 2>, kListenerNames.size()> listener_bytes{};  // {up, down}
  std::map<std::string, ChainStats> chains;
  // The last kLatencySamples successful connects (a ring), for the summary.
  std::array<double, kLatencySamples> connect_latency{};
  uint64_t connects = 0;
  double connect_latency_sum = 0;
  UdpStats udp;
};

}  // namespace rs::server
