#include "proto/socks5.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace rs::proto {

namespace {

constexpr size_t kMaxDomain = 255;

// The fixed part before ATYP in requests and replies: VER, CMD/REP, RSV.
constexpr size_t kHeaderSize = 3;

std::string version_error(std::string_view what, uint8_t version) {
  return "socks5: bad " + std::string(what) + " version " + std::to_string(version);
}

bool fits_domain(const std::string& name) {
  return !name.empty() && name.size() <= kMaxDomain;
}

}  // namespace

bool Socks5Greeting::offers(uint8_t method) const {
  return std::find(methods.begin(), methods.end(), method) != methods.end();
}

Parsed<Socks5Greeting> parse_socks5_greeting(Bytes in) {
  ByteReader r(in);
  uint8_t version, count;
  if (!r.u8(version)) return need_more<Socks5Greeting>();
  if (version != socks5::kVersion)
    return parse_error<Socks5Greeting>(version_error("greeting", version));
  if (!r.u8(count)) return need_more<Socks5Greeting>();
  if (count == 0) return parse_error<Socks5Greeting>("socks5: greeting offers no method");
  if (r.remaining() < count) return need_more<Socks5Greeting>();
  Socks5Greeting greeting;
  greeting.methods.assign(in.begin() + r.pos(), in.begin() + r.pos() + count);
  return parse_done(r.pos() + count, std::move(greeting));
}

std::array<uint8_t, 2> method_reply(uint8_t method) {
  return {socks5::kVersion, method};
}

Parsed<Socks5Auth> parse_socks5_auth(Bytes in) {
  ByteReader r(in);
  Socks5Auth auth;
  uint8_t version, ulen, plen;
  if (!r.u8(version)) return need_more<Socks5Auth>();
  if (version != socks5::kAuthVersion)
    return parse_error<Socks5Auth>(version_error("auth", version));
  if (!r.u8(ulen)) return need_more<Socks5Auth>();
  if (ulen == 0) return parse_error<Socks5Auth>("socks5: empty username");
  if (!r.text(ulen, auth.username) || !r.u8(plen) || !r.text(plen, auth.password))
    return need_more<Socks5Auth>();
  return parse_done(r.pos(), std::move(auth));
}

std::array<uint8_t, 2> auth_reply(bool ok) {
  return {socks5::kAuthVersion, static_cast<uint8_t>(ok ? 0 : 1)};
}

Parsed<Address> parse_socks5_address(Bytes in) {
  ByteReader r(in);
  Address addr;
  uint8_t atyp;
  if (!r.u8(atyp)) return need_more<Address>();
  switch (atyp) {
    case socks5::kAtypIpv4: {
      Ipv4 ip;
      if (!r.array(ip)) return need_more<Address>();
      addr.host = ip;
      break;
    }
    case socks5::kAtypIpv6: {
      Ipv6 ip;
      if (!r.array(ip)) return need_more<Address>();
      addr.host = ip;
      break;
    }
    case socks5::kAtypDomain: {
      uint8_t len;
      std::string name;
      if (!r.u8(len)) return need_more<Address>();
      if (len == 0) return parse_error<Address>("socks5: empty host name", socks5::kGeneralFailure);
      if (!r.text(len, name)) return need_more<Address>();
      // The port is not known yet; it is filled in below.
      auto parsed = make_address(name, 0);
      if (!parsed)
        return parse_error<Address>("socks5: invalid host name", socks5::kGeneralFailure);
      addr = std::move(*parsed);
      break;
    }
    default:
      return parse_error<Address>("socks5: unknown address type " + std::to_string(atyp),
                                  socks5::kAddressTypeNotSupported);
  }
  if (!r.u16(addr.port)) return need_more<Address>();
  return parse_done(r.pos(), std::move(addr));
}

bool append_socks5_address(std::string& out, const Address& addr) {
  if (const auto* v4 = std::get_if<Ipv4>(&addr.host)) {
    out.push_back(static_cast<char>(socks5::kAtypIpv4));
    out.append(reinterpret_cast<const char*>(v4->data()), v4->size());
  } else if (const auto* v6 = std::get_if<Ipv6>(&addr.host)) {
    out.push_back(static_cast<char>(socks5::kAtypIpv6));
    out.append(reinterpret_cast<const char*>(v6->data()), v6->size());
  } else {
    const auto& name = std::get<std::string>(addr.host);
    if (!fits_domain(name)) return false;
    out.push_back(static_cast<char>(socks5::kAtypDomain));
    out.push_back(static_cast<char>(name.size()));
    out.append(name);
  }
  put_u16(out, addr.port);
  return true;
}

Parsed<Socks5Request> parse_socks5_request(Bytes in) {
  ByteReader r(in);
  Socks5Request req;
  uint8_t version, reserved;
  if (!r.u8(version)) return need_more<Socks5Request>();
  if (version != socks5::kVersion)
    return parse_error<Socks5Request>(version_error("request", version), socks5::kGeneralFailure);
  if (!r.u8(req.command)) return need_more<Socks5Request>();
  if (req.command < socks5::kConnect || req.command > socks5::kUdpAssociate)
    return parse_error<Socks5Request>("socks5: unknown command " + std::to_string(req.command),
                                      socks5::kCommandNotSupported);
  if (!r.u8(reserved)) return need_more<Socks5Request>();
  auto addr = parse_socks5_address(in.subspan(kHeaderSize));
  if (addr.failed()) return parse_error<Socks5Request>(addr.error, addr.code);
  if (!addr.done()) return need_more<Socks5Request>();
  req.target = std::move(addr.value);
  return parse_done(kHeaderSize + addr.consumed, std::move(req));
}

std::string socks5_reply(uint8_t rep, const Address& bound) {
  std::string out{static_cast<char>(socks5::kVersion), static_cast<char>(rep), 0};
  if (!append_socks5_address(out, bound)) append_socks5_address(out, Address{});
  return out;
}

std::string socks5_greeting(bool with_password) {
  if (with_password) return {socks5::kVersion, 2, socks5::kMethodNoAuth, socks5::kMethodPassword};
  return {socks5::kVersion, 1, socks5::kMethodNoAuth};
}

Parsed<uint8_t> parse_method_selection(Bytes in) {
  ByteReader r(in);
  uint8_t version, method;
  if (!r.u8(version)) return need_more<uint8_t>();
  if (version != socks5::kVersion)
    return parse_error<uint8_t>(version_error("method selection", version));
  if (!r.u8(method)) return need_more<uint8_t>();
  return parse_done(r.pos(), method);
}

Built socks5_auth_request(std::string_view username, std::string_view password) {
  if (username.empty()) return build_error("empty user name");
  if (username.size() > socks5::kMaxCredential)
    return build_error(fmt::format("user name longer than {} bytes", socks5::kMaxCredential));
  if (password.size() > socks5::kMaxCredential)
    return build_error(fmt::format("password longer than {} bytes", socks5::kMaxCredential));
  std::string out{static_cast<char>(socks5::kAuthVersion), static_cast<char>(username.size())};
  out.append(username);
  out.push_back(static_cast<char>(password.size()));
  out.append(password);
  return built(std::move(out));
}

Parsed<bool> parse_auth_reply(Bytes in) {
  ByteReader r(in);
  uint8_t version, status;
  if (!r.u8(version)) return need_more<bool>();
  if (version != socks5::kAuthVersion && version != socks5::kVersion)
    return parse_error<bool>(version_error("auth reply", version));
  if (!r.u8(status)) return need_more<bool>();
  return parse_done(r.pos(), status == 0);
}

Built socks5_request(const Address& target, uint8_t command) {
  std::string out{static_cast<char>(socks5::kVersion), static_cast<char>(command), 0};
  if (!append_socks5_address(out, target))
    return build_error(target.host_string().empty() ? "empty host name"
                                                    : "host name longer than 255 bytes");
  return built(std::move(out));
}

Parsed<Socks5Reply> parse_socks5_reply(Bytes in) {
  ByteReader r(in);
  Socks5Reply reply;
  uint8_t version, reserved;
  if (!r.u8(version)) return need_more<Socks5Reply>();
  if (version != socks5::kVersion) return parse_error<Socks5Reply>(version_error("reply", version));
  if (!r.u8(reply.rep) || !r.u8(reserved)) return need_more<Socks5Reply>();
  auto addr = parse_socks5_address(in.subspan(kHeaderSize));
  if (addr.failed()) return parse_error<Socks5Reply>(addr.error);
  if (!addr.done()) return need_more<Socks5Reply>();
  reply.bound = std::move(addr.value);
  return parse_done(kHeaderSize + addr.consumed, std::move(reply));
}

}  // namespace rs::proto
