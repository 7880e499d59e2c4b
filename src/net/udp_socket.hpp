// Non-blocking UDP sockets and the address helpers the UDP relays need.
#pragma once

#include <string>

#include "core/fd.hpp"
#include "net/sockaddr.hpp"

namespace rs::net {

// A non-blocking, close-on-exec UDP socket of `bind_to`'s family, bound to it
// (port 0: an ephemeral port). An empty fd and `*err` on failure.
UniqueFd open_udp(const SockAddr& bind_to, std::string* err);

// An ephemeral wildcard address (0.0.0.0:0 or [::]:0) of `family`.
SockAddr any_address(int family);

// ::ffff:a.b.c.d as a.b.c.d; any other address unchanged. A dual-stack
// listener reports IPv4 clients this way; a relay for them is plain IPv4.
SockAddr unmapped(const SockAddr& sa);

// Family, address and port as bytes: a map key for an endpoint.
std::string endpoint_key(const SockAddr& sa);

// Whether both are the same IP address (ports ignored).
bool same_ip(const SockAddr& a, const SockAddr& b);

}  // namespace rs::net
