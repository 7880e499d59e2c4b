// SOCKS5 codecs (RFC 1928, RFC 1929), server and client side: greeting,
// username/password request, request, bare address, method selection, auth
// status and reply. Every reader runs on every input under the codec contract;
// what a reader accepts is rebuilt with the matching writer and must read back
// the same (request, reply, address, auth).
#include "fuzz_util.hpp"
#include "proto/socks5.hpp"

using namespace rs::proto;
using rs::fuzz::check_codec;

namespace {

void check_address(const Address& addr) {
  if (const auto* name = std::get_if<std::string>(&addr.host)) {
    FUZZ_CHECK(!name->empty() && name->size() <= 255);
    // Numeric literals never stay names.
    FUZZ_CHECK(!parse_ipv4(*name) && !parse_ipv6(*name));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);

  auto greeting = check_codec(parse_socks5_greeting, in);
  if (greeting.done()) {
    const auto& methods = greeting.value.methods;
    FUZZ_CHECK(!methods.empty() && methods.size() <= 255);
    FUZZ_CHECK(greeting.consumed == 2 + methods.size());
    for (uint8_t m : methods) FUZZ_CHECK(greeting.value.offers(m));
  }

  auto auth = check_codec(parse_socks5_auth, in);
  if (auth.done()) {
    auto built = socks5_auth_request(auth.value.username, auth.value.password);
    FUZZ_CHECK(built.ok() && !built.bytes.empty());
    const std::string& again = built.bytes;
    auto back = parse_socks5_auth(to_bytes(again));
    FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == auth.value);
  }

  auto req = check_codec(parse_socks5_request, in);
  if (req.failed()) {
    FUZZ_CHECK(req.code == socks5::kGeneralFailure || req.code == socks5::kCommandNotSupported ||
               req.code == socks5::kAddressTypeNotSupported);
  }
  if (req.done()) {
    check_address(req.value.target);
    auto built = socks5_request(req.value.target, req.value.command);
    FUZZ_CHECK(built.ok() && !built.bytes.empty());
    const std::string& again = built.bytes;
    auto back = parse_socks5_request(to_bytes(again));
    FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == req.value);
  }

  auto addr = check_codec(parse_socks5_address, in);
  if (addr.done()) {
    check_address(addr.value);
    std::string again;
    FUZZ_CHECK(append_socks5_address(again, addr.value));
    auto back = parse_socks5_address(to_bytes(again));
    FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == addr.value);
  }

  auto method = check_codec(parse_method_selection, in);
  if (method.done()) {
    auto built = method_reply(method.value);
    auto back = parse_method_selection(Bytes(built));
    FUZZ_CHECK(back.done() && back.value == method.value);
  }

  auto status = check_codec(parse_auth_reply, in);
  if (status.done()) {
    auto built = auth_reply(status.value);
    auto back = parse_auth_reply(Bytes(built));
    FUZZ_CHECK(back.done() && back.value == status.value);
  }

  auto reply = check_codec(parse_socks5_reply, in);
  if (reply.done()) {
    check_address(reply.value.bound);
    std::string again = socks5_reply(reply.value.rep, reply.value.bound);
    auto back = parse_socks5_reply(to_bytes(again));
    FUZZ_CHECK(back.done() && back.consumed == again.size() && back.value == reply.value);
  }
  return 0;
}
