// Counters of SOCKS5 UDP associations, part of the server's Stats (/stats,
// /metrics). Single thread: plain integers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rs::server {

struct UdpStats {
  size_t associations = 0;      // live
  uint64_t associated = 0;      // UDP ASSOCIATE requests granted
  uint64_t refused = 0;         // refused by --udp-max-associations / --udp-max-per-client
  uint64_t datagrams_up = 0;    // client -> destination, sent
  uint64_t datagrams_down = 0;  // destination -> client, sent
  uint64_t bytes_up = 0, bytes_down = 0;  // payload bytes of those
  // Datagrams dropped, by why:
  uint64_t dropped_foreign = 0;    // to the relay from an address that is not the client
  uint64_t dropped_fragment = 0;   // FRAG other than 0
  uint64_t dropped_malformed = 0;  // a header that does not parse
  uint64_t dropped_rejected = 0;  // to a destination the ruleset refused, or that failed to resolve
  uint64_t dropped_overflow = 0;  // beyond --udp-max-pending, or a full socket buffer
  uint64_t dropped_unsolicited = 0;  // from an address the client never sent to
};

}  // namespace rs::server
