#include "proto/socks4.hpp"

#include <fmt/format.h>

namespace rs::proto {

namespace {

using Scan = ByteReader::Scan;

Parsed<Socks4Request> reject(std::string error) {
  return parse_error<Socks4Request>(std::move(error), socks4::kRejected);
}

// SOCKS4A marks a host name with the invalid address 0.0.0.x, x != 0.
bool is_4a_marker(const Ipv4& ip) {
  return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] != 0;
}

}  // namespace

Parsed<Socks4Request> parse_socks4_request(Bytes in) {
  ByteReader r(in);
  Socks4Request req;
  uint8_t version;
  if (!r.u8(version)) return need_more<Socks4Request>();
  if (version != socks4::kVersion) return reject("socks4: bad version " + std::to_string(version));
  if (!r.u8(req.command)) return need_more<Socks4Request>();
  if (req.command != socks4::kConnect && req.command != socks4::kBind)
    return reject("socks4: unknown command " + std::to_string(req.command));
  uint16_t port;
  Ipv4 ip;
  if (!r.u16(port) || !r.array(ip)) return need_more<Socks4Request>();
  switch (r.cstring(socks4::kMaxString, req.userid)) {
    case Scan::kNeedMore:
      return need_more<Socks4Request>();
    case Scan::kTooLong:
      return reject("socks4: userid too long");
    case Scan::kFound:
      break;
  }
  req.is_4a = is_4a_marker(ip);
  if (!req.is_4a) {
    req.target = Address{ip, port};
    return parse_done(r.pos(), std::move(req));
  }
  std::string host;
  switch (r.cstring(socks4::kMaxString, host)) {
    case Scan::kNeedMore:
      return need_more<Socks4Request>();
    case Scan::kTooLong:
      return reject("socks4a: host name too long");
    case Scan::kFound:
      break;
  }
  if (host.empty()) return reject("socks4a: empty host name");
  auto target = make_address(host, port);
  if (!target) return reject("socks4a: invalid host name");
  req.target = std::move(*target);
  return parse_done(r.pos(), std::move(req));
}

std::array<uint8_t, 8> socks4_reply(uint8_t code, Ipv4 ip, uint16_t port) {
  return {socks4::kReplyVersion,
          code,
          static_cast<uint8_t>(port >> 8),
          static_cast<uint8_t>(port & 0xff),
          ip[0],
          ip[1],
          ip[2],
          ip[3]};
}

Built socks4a_request(const Address& target, std::string_view userid) {
  // Names one problem with a NUL-terminated field, or returns "".
  auto cstring_problem = [](std::string_view what, std::string_view s) -> std::string {
    if (s.size() > socks4::kMaxString)
      return fmt::format("{} longer than {} bytes", what, socks4::kMaxString);
    if (s.find('\0') != std::string_view::npos) return fmt::format("{} contains a NUL byte", what);
    return {};
  };
  if (auto why = cstring_problem("user id", userid); !why.empty()) return build_error(why);
  const auto* ip = std::get_if<Ipv4>(&target.host);
  const bool plain = ip != nullptr && !is_4a_marker(*ip);
  // Everything else is sent in the SOCKS4A form, as text.
  const std::string host = plain ? std::string() : target.host_string();
  if (!plain) {
    if (host.empty()) return build_error("empty host name");
    if (auto why = cstring_problem("host name", host); !why.empty()) return build_error(why);
  }

  std::string out;
  out.push_back(static_cast<char>(socks4::kVersion));
  out.push_back(static_cast<char>(socks4::kConnect));
  put_u16(out, target.port);
  Ipv4 dst = plain ? *ip : Ipv4{0, 0, 0, 1};
  out.append(reinterpret_cast<const char*>(dst.data()), dst.size());
  out.append(userid);
  out.push_back('\0');
  if (!plain) {
    out.append(host);
    out.push_back('\0');
  }
  return built(std::move(out));
}

Parsed<uint8_t> parse_socks4_reply(Bytes in) {
  ByteReader r(in);
  uint8_t version, code;
  if (!r.u8(version)) return need_more<uint8_t>();
  if (version != socks4::kReplyVersion && version != socks4::kVersion)
    return parse_error<uint8_t>("socks4: bad reply version " + std::to_string(version));
  if (!r.u8(code)) return need_more<uint8_t>();
  uint16_t port;
  Ipv4 ip;
  if (!r.u16(port) || !r.array(ip)) return need_more<uint8_t>();
  return parse_done(r.pos(), code);
}

}  // namespace rs::proto
