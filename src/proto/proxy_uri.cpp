#include "proto/proxy_uri.hpp"

#include <optional>

#include "proto/socks4.hpp"
#include "proto/socks5.hpp"
#include "proto/text.hpp"

namespace rs::proto {

namespace {

std::optional<ProxyUri::Scheme> parse_scheme(std::string_view s, bool& tls) {
  tls = iequals(s, "https") || iequals(s, "socks5s");
  if (iequals(s, "socks4a") || iequals(s, "socks4")) return ProxyUri::Scheme::kSocks4a;
  if (iequals(s, "socks5") || iequals(s, "socks5h") || iequals(s, "socks5s"))
    return ProxyUri::Scheme::kSocks5;
  if (iequals(s, "http") || iequals(s, "https")) return ProxyUri::Scheme::kHttp;
  return std::nullopt;
}

// Characters that must be escaped to survive in a printed URI's host part are
// all refused by make_address(), so no escaping is needed when printing.
std::string host_for_uri(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

// What the scheme's wire format cannot carry in these credentials, or "".
std::string credential_problem(ProxyUri::Scheme scheme, std::string_view user,
                               std::string_view pass) {
  auto too_long = [&](std::string_view field, size_t size, size_t limit) {
    return std::string(scheme_name(scheme)) + " " + std::string(field) + " is " +
           std::to_string(size) + " bytes, longer than the limit of " + std::to_string(limit);
  };
  switch (scheme) {
    case ProxyUri::Scheme::kSocks4a:
      if (user.size() > socks4::kMaxString)
        return too_long("user id", user.size(), socks4::kMaxString);
      if (user.find('\0') != std::string_view::npos) return "socks4a user id contains a NUL byte";
      break;
    case ProxyUri::Scheme::kSocks5:
      if (user.size() > socks5::kMaxCredential)
        return too_long("user name", user.size(), socks5::kMaxCredential);
      if (pass.size() > socks5::kMaxCredential)
        return too_long("password", pass.size(), socks5::kMaxCredential);
      break;
    case ProxyUri::Scheme::kHttp:
      // RFC 7617: the first ':' of Basic credentials ends the user name.
      if (user.find(':') != std::string_view::npos) return "http user name contains ':'";
      break;
  }
  return {};
}

}  // namespace

std::string_view scheme_name(ProxyUri::Scheme scheme) {
  switch (scheme) {
    case ProxyUri::Scheme::kSocks4a:
      return "socks4a";
    case ProxyUri::Scheme::kSocks5:
      return "socks5";
    case ProxyUri::Scheme::kHttp:
      return "http";
  }
  return "?";
}

Address ProxyUri::address() const {
  // parse_proxy_uri() validated the host, so this only fails for a ProxyUri
  // built by hand; it then stays a name and fails to resolve later.
  if (auto addr = make_address(host, port)) return *addr;
  return Address{host, port};
}

std::string ProxyUri::to_string() const {
  std::string out(scheme_name(scheme));
  if (tls) out += 's';  // https, socks5s
  out += "://";
  if (has_auth) out += "***@";
  out += host_for_uri(host) + ":" + std::to_string(port);
  return out;
}

ProxyUriResult parse_proxy_uri(std::string_view text) {
  // Messages never quote the whole text: it may hold a password.
  auto fail = [](std::string why) { return ProxyUriResult{{}, std::move(why)}; };
  ProxyUri uri;
  size_t sep = text.find("://");
  if (sep == std::string_view::npos) return fail("missing scheme (e.g. socks5://)");
  auto scheme = parse_scheme(text.substr(0, sep), uri.tls);
  if (!scheme) return fail("unknown scheme \"" + std::string(text.substr(0, sep)) + "\"");
  uri.scheme = *scheme;

  // Userinfo ends at the last '@': passwords often hold an unescaped '@'.
  auto rest = text.substr(sep + 3);
  size_t at = rest.rfind('@');
  if (at != std::string_view::npos) {
    auto userinfo = rest.substr(0, at);
    size_t colon = userinfo.find(':');
    auto user = percent_decode(userinfo.substr(0, colon));
    auto pass = colon == std::string_view::npos ? std::optional<std::string>("")
                                                : percent_decode(userinfo.substr(colon + 1));
    if (!user || !pass) return fail("bad percent-escape in credentials");
    // Every scheme sends credentials only along with a user name.
    if (user->empty()) return fail("credentials without a user name");
    if (uri.scheme == ProxyUri::Scheme::kSocks4a && colon != std::string_view::npos)
      return fail("socks4a takes no password");
    if (auto why = credential_problem(uri.scheme, *user, *pass); !why.empty()) return fail(why);
    uri.username = std::move(*user);
    uri.password = std::move(*pass);
    uri.has_auth = true;
    rest = rest.substr(at + 1);
  }

  // The authority ends at the path, query or fragment; only a bare "/" may follow.
  size_t tail = rest.find_first_of("/?#");
  if (tail != std::string_view::npos) {
    if (rest.substr(tail) != "/")
      return fail("unexpected path \"" + std::string(rest.substr(tail)) + "\"");
    rest = rest.substr(0, tail);
  }

  std::string_view host, port;
  if (rest.starts_with('[')) {
    size_t close = rest.find(']');
    if (close == std::string_view::npos) return fail("unterminated IPv6 literal");
    host = rest.substr(1, close - 1);
    if (!parse_ipv6(host)) return fail("bad IPv6 literal \"" + std::string(host) + "\"");
    rest = rest.substr(close + 1);
    if (!rest.starts_with(':')) return fail("missing port");
    port = rest.substr(1);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return fail("missing port");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return fail("IPv6 literal must be in brackets");
    if (host.empty()) return fail("empty host");
    if (!make_address(host, 0)) return fail("invalid host \"" + std::string(host) + "\"");
  }
  if (port.empty()) return fail("missing port");
  auto port_number = parse_port(port);
  if (!port_number || *port_number == 0) return fail("bad port \"" + std::string(port) + "\"");
  uri.host = host;
  uri.port = *port_number;
  return {std::move(uri), {}};
}

ProxyListResult parse_proxy_list(std::string_view text) {
  ProxyListResult result;
  for (;;) {
    size_t comma = text.find(',');
    auto entry = trim_ows(text.substr(0, comma));
    if (entry.empty())
      return {{}, "proxy " + std::to_string(result.proxies.size() + 1) + ": empty entry"};
    auto parsed = parse_proxy_uri(entry);
    if (!parsed.ok())
      return {{}, "proxy " + std::to_string(result.proxies.size() + 1) + ": " + parsed.error};
    result.proxies.push_back(std::move(parsed.uri));
    if (comma == std::string_view::npos) return result;
    text.remove_prefix(comma + 1);
  }
}

}  // namespace rs::proto
