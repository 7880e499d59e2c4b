// Proxy URIs and host:port addresses (proto/proxy_uri.hpp, proto/address.hpp),
// which reach the parser from the command line and from ruleset results (and
// so from RPC peers and the API). What parses is printed again, credentials
// percent-encoded, and must parse equal.
#include "fuzz_util.hpp"
#include "proto/address.hpp"
#include "proto/proxy_uri.hpp"

using namespace rs::proto;
using rs::fuzz::as_text;

namespace {

std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string print(const ProxyUri& uri) {
  std::string out(scheme_name(uri.scheme));
  out += "://";
  if (uri.has_auth) {
    out += percent_encode(uri.username);
    if (uri.scheme != ProxyUri::Scheme::kSocks4a) out += ":" + percent_encode(uri.password);
    out += "@";
  }
  bool v6 = uri.host.find(':') != std::string::npos;
  out += (v6 ? "[" + uri.host + "]" : uri.host) + ":" + std::to_string(uri.port);
  return out;
}

void check_uri(const ProxyUri& uri) {
  FUZZ_CHECK(uri.port != 0);
  FUZZ_CHECK(!uri.host.empty());
  if (uri.has_auth) FUZZ_CHECK(!uri.username.empty());
  if (!uri.has_auth) FUZZ_CHECK(uri.username.empty() && uri.password.empty());
  if (uri.scheme == ProxyUri::Scheme::kSocks4a) FUZZ_CHECK(uri.password.empty());
  // The host was validated, so the address is numeric or a valid name.
  auto addr = make_address(uri.host, uri.port);
  FUZZ_CHECK(addr.has_value());
  FUZZ_CHECK(uri.address() == *addr);
  // The loggable form never shows credentials, and parses (as a URI without them).
  std::string shown = uri.to_string();
  if (uri.has_auth) FUZZ_CHECK(shown.find("***@") != std::string::npos);
  std::string printed = print(uri);
  auto back = parse_proxy_uri(printed);
  FUZZ_CHECK(back.ok());
  FUZZ_CHECK(back.uri == uri);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text = as_text(rs::fuzz::Bytes(data, size));

  auto one = parse_proxy_uri(text);
  if (one.ok()) check_uri(one.uri);

  auto list = parse_proxy_list(text);
  if (list.ok()) {
    FUZZ_CHECK(!list.proxies.empty());
    std::string printed;
    for (const auto& uri : list.proxies) {
      check_uri(uri);
      printed += (printed.empty() ? "" : ",") + print(uri);
    }
    auto back = parse_proxy_list(printed);
    FUZZ_CHECK(back.ok() && back.proxies == list.proxies);
  } else {
    FUZZ_CHECK(list.proxies.empty());
  }

  if (auto hp = split_host_port(text)) FUZZ_CHECK(!hp->host.empty() && !hp->port.empty());
  if (auto addr = parse_address(text)) {
    auto back = parse_address(addr->to_string());
    FUZZ_CHECK(back && *back == *addr);
    auto made = make_address(addr->host_string(), addr->port);
    FUZZ_CHECK(made && *made == *addr);
  }
  if (auto v4 = parse_ipv4(text)) FUZZ_CHECK(Address{*v4, 0}.host_string() == text);
  if (auto v6 = parse_ipv6(text)) {
    auto again = parse_ipv6(Address{*v6, 0}.host_string());
    FUZZ_CHECK(again && *again == *v6);
  }
  return 0;
}
