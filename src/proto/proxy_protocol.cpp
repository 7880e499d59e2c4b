#include "proto/proxy_protocol.hpp"

#include <cstring>
#include <string_view>
#include <vector>

namespace rs::proto {
namespace {

using namespace proxy_protocol;
constexpr std::string_view kV1Prefix = "PROXY ";

template <class T>
Parsed<T> bad(std::string why) {
  return parse_error<T>("proxy protocol: " + std::move(why));
}

// v1: "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") [SP src SP dst SP sport SP dport] CRLF
Parsed<ProxyHeader> parse_v1(Bytes in) {
  const std::string_view text(reinterpret_cast<const char*>(in.data()),
                              std::min(in.size(), kMaxV1));
  // The first LF ends the line, so that the answer never changes as more
  // bytes arrive; it must follow a CR.
  const size_t lf = text.find('\n');
  if (lf == std::string_view::npos) {
    if (in.size() >= kMaxV1) return bad<ProxyHeader>("v1 header longer than 107 bytes");
    return need_more<ProxyHeader>();
  }
  if (lf < kV1Prefix.size() || text[lf - 1] != '\r')
    return bad<ProxyHeader>("v1 header without CRLF");
  const size_t crlf = lf - 1;
  std::string_view line = text.substr(kV1Prefix.size(), crlf - kV1Prefix.size());
  std::vector<std::string_view> words;
  while (!line.empty()) {
    const size_t sp = line.find(' ');
    words.push_back(line.substr(0, sp));
    if (sp == std::string_view::npos) break;
    line.remove_prefix(sp + 1);
    // Exactly one space between words, none at the end.
    if (line.empty()) return bad<ProxyHeader>("v1 header with a trailing space");
  }
  ProxyHeader h;
  h.version = 1;
  if (words.empty()) return bad<ProxyHeader>("v1 header without a protocol");
  // UNKNOWN may be followed by anything; the receiver ignores it.
  if (words[0] == "UNKNOWN") return parse_done(crlf + 2, h);
  const bool v4 = words[0] == "TCP4";
  if (!v4 && words[0] != "TCP6")
    return bad<ProxyHeader>("v1 header with unknown protocol \"" + std::string(words[0]) + "\"");
  if (words.size() != 5) return bad<ProxyHeader>("v1 header needs 4 fields after the protocol");
  auto sport = parse_port(words[3]);
  auto dport = parse_port(words[4]);
  if (!sport || !dport) return bad<ProxyHeader>("v1 header with a bad port");
  if (v4) {
    auto s = parse_ipv4(words[1]);
    auto d = parse_ipv4(words[2]);
    if (!s || !d) return bad<ProxyHeader>("v1 TCP4 header with a bad IPv4 address");
    h.source = Address{*s, *sport};
    h.destination = Address{*d, *dport};
  } else {
    auto s = parse_ipv6(words[1]);
    auto d = parse_ipv6(words[2]);
    if (!s || !d) return bad<ProxyHeader>("v1 TCP6 header with a bad IPv6 address");
    h.source = Address{*s, *sport};
    h.destination = Address{*d, *dport};
  }
  return parse_done(crlf + 2, h);
}

Parsed<ProxyHeader> parse_v2(Bytes in) {
  if (in.size() < kV2Fixed) return need_more<ProxyHeader>();
  const uint8_t ver_cmd = in[12], fam = in[13];
  const size_t len = static_cast<size_t>(in[14] << 8 | in[15]);
  if ((ver_cmd >> 4) != 2) return bad<ProxyHeader>("v2 header with version not 2");
  const uint8_t cmd = ver_cmd & 0x0f;
  if (cmd > 1) return bad<ProxyHeader>("v2 header with unknown command");
  if (len > kMaxV2Payload) return bad<ProxyHeader>("v2 header longer than 4096 bytes");
  const uint8_t family = fam >> 4, transport = fam & 0x0f;
  if (family > 3 || transport > 2) return bad<ProxyHeader>("v2 header with unknown family");
  // The address block must fit in the declared length (checked before
  // waiting for it: a short length is wrong whatever follows).
  const size_t need = family == 1 ? 12 : family == 2 ? 36 : family == 3 ? 216 : 0;
  if (len < need) return bad<ProxyHeader>("v2 header too short for its address family");
  if (in.size() < kV2Fixed + len) return need_more<ProxyHeader>();
  const size_t total = kV2Fixed + len;
  // LOCAL (health checks), UNSPEC, datagrams and unix sockets: no TCP
  // addresses to take; the connection's own apply.
  if (cmd == 0 || transport != 1 || (family != 1 && family != 2))
    return parse_done(total, ProxyHeader{2, std::nullopt, std::nullopt});
  ByteReader r(in.subspan(kV2Fixed));
  uint16_t sport = 0, dport = 0;
  auto take = [&](auto s, auto d) {
    r.array(s);
    r.array(d);
    r.u16(sport);
    r.u16(dport);
    return parse_done(total, ProxyHeader{2, Address{s, sport}, Address{d, dport}});
  };
  // TLVs (ALPN, authority, CRC, SSL...) are skipped: nothing here uses them.
  return family == 1 ? take(Ipv4{}, Ipv4{}) : take(Ipv6{}, Ipv6{});
}

bool same_family(const Address& a, const Address& b) {
  return (a.is_ipv4() && b.is_ipv4()) || (a.is_ipv6() && b.is_ipv6());
}

}  // namespace

bool maybe_proxy_header(Bytes in) {
  const size_t n1 = std::min(in.size(), kV1Prefix.size());
  if (std::memcmp(in.data(), kV1Prefix.data(), n1) == 0) return true;
  const size_t n2 = std::min(in.size(), sizeof kSignature);
  return std::memcmp(in.data(), kSignature, n2) == 0;
}

Parsed<ProxyHeader> parse_proxy_header(Bytes in) {
  if (in.empty()) return need_more<ProxyHeader>();
  if (!maybe_proxy_header(in)) return bad<ProxyHeader>("no PROXY header");
  if (in[0] == 'P') {
    if (in.size() < kV1Prefix.size()) return need_more<ProxyHeader>();
    return parse_v1(in);
  }
  if (in.size() < sizeof kSignature) return need_more<ProxyHeader>();
  return parse_v2(in);
}

std::string proxy_header_v1(const Address& source, const Address& destination) {
  if (!same_family(source, destination) || source.is_domain()) return "PROXY UNKNOWN\r\n";
  return std::string("PROXY ") + (source.is_ipv4() ? "TCP4 " : "TCP6 ") + source.host_string() +
         " " + destination.host_string() + " " + std::to_string(source.port) + " " +
         std::to_string(destination.port) + "\r\n";
}

std::string proxy_header_v2(const Address& source, const Address& destination) {
  std::string out(reinterpret_cast<const char*>(kSignature), sizeof kSignature);
  const bool ok = same_family(source, destination) && !source.is_domain();
  if (!ok) {
    out += '\x20';  // version 2, LOCAL
    out += '\x00';  // UNSPEC
    put_u16(out, 0);
    return out;
  }
  auto put = [&out](const auto& ip) {
    out.append(reinterpret_cast<const char*>(ip.data()), ip.size());
  };
  out += '\x21';  // version 2, PROXY
  if (source.is_ipv4()) {
    out += '\x11';  // AF_INET, STREAM
    put_u16(out, 12);
    put(std::get<Ipv4>(source.host));
    put(std::get<Ipv4>(destination.host));
  } else {
    out += '\x21';  // AF_INET6, STREAM
    put_u16(out, 36);
    put(std::get<Ipv6>(source.host));
    put(std::get<Ipv6>(destination.host));
  }
  put_u16(out, source.port);
  put_u16(out, destination.port);
  return out;
}

}  // namespace rs::proto
