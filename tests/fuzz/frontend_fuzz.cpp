// The inbound handshakes (server/frontend.hpp) as a client drives them: the
// protocol is sniffed from the first byte (or fixed to HTTP, as on an HTTP
// listener) and the frontend is fed the way Session feeds it: everything
// buffered, again after each step while bytes remain.
//
// Input: one option byte (bit 0 auth_required, bit 1 want_credentials, bit 2
// HTTP listener), then the client's bytes.
//
// The conversation is replayed with the bytes arriving in one piece, one at a
// time and in random pieces: the steps, replies, request and leftover bytes
// must be the same. Every reply must read back with the client-side codec, and
// with auth_required no request comes through without a user name.
#include <optional>

#include "fuzz_util.hpp"
#include "net/dial_error.hpp"
#include "proto/http.hpp"
#include "proto/socks4.hpp"
#include "proto/socks5.hpp"
#include "server/frontend.hpp"

using namespace rs;
using rs::fuzz::Rng;
using server::Step;

namespace {

struct Event {
  int status;
  size_t consumed;
  std::string out;
  std::string target;
  std::optional<std::string> username, password;
  std::string error;
  bool operator==(const Event&) const = default;
};

struct Transcript {
  bool sniffed = true;
  std::string name;
  std::vector<Event> events;
  std::string left;  // unconsumed bytes: an incomplete message, or tunnel data
  bool operator==(const Transcript&) const = default;
};

// A complete HTTP response, Content-Length framed, and nothing after it.
proto::HttpResponseHead check_http_response(const std::string& out) {
  auto head = proto::parse_http_response(proto::to_bytes(out));
  FUZZ_CHECK(head.done());
  auto length = proto::content_length(head.value.headers);
  FUZZ_CHECK(length.valid && length.length);
  FUZZ_CHECK(head.consumed + *length.length == out.size());
  return head.value;
}

void check_out(std::string_view name, const Step& s) {
  const std::string& out = s.out;
  if (name == "http") {
    if (s.status == Step::kFail) check_http_response(out);
    FUZZ_CHECK(s.status != Step::kReply);
  } else if (name == "socks5") {
    if (out.empty()) {
      FUZZ_CHECK(s.status == Step::kFail || s.status == Step::kRequest);
    } else if (out.size() == 2) {
      // A method selection or an auth status.
      FUZZ_CHECK(out[0] == proto::socks5::kVersion || out[0] == proto::socks5::kAuthVersion);
    } else {
      FUZZ_CHECK(s.status == Step::kFail);
      auto r = proto::parse_socks5_reply(proto::to_bytes(out));
      FUZZ_CHECK(r.done() && r.consumed == out.size() && r.value.rep != 0);
    }
  } else {
    FUZZ_CHECK(s.status == Step::kFail || s.status == Step::kRequest);
    if (s.status == Step::kFail) {
      auto r = proto::parse_socks4_reply(proto::to_bytes(out));
      FUZZ_CHECK(r.done() && r.consumed == out.size() && r.value == proto::socks4::kRejected);
    }
  }
}

// The final replies, for every dial outcome.
void check_final_replies(server::Frontend& fe) {
  using net::DialError;
  const std::string_view name = fe.name();
  for (DialError err : {DialError::kOk, DialError::kGeneral, DialError::kNotAllowed,
                        DialError::kNetUnreachable, DialError::kHostUnreachable,
                        DialError::kRefused, DialError::kTimeout, DialError::kAddressType}) {
    std::string out = fe.reply(err);
    if (name == "http") {
      if (err == DialError::kOk) {
        auto head = proto::parse_http_response(proto::to_bytes(out));
        FUZZ_CHECK(head.done() && head.consumed == out.size() && head.value.status == 200);
      } else {
        FUZZ_CHECK(check_http_response(out).status == net::http_status(err));
      }
    } else if (name == "socks5") {
      auto r = proto::parse_socks5_reply(proto::to_bytes(out));
      FUZZ_CHECK(r.done() && r.consumed == out.size() && r.value.rep == net::socks5_rep(err));
    } else {
      auto r = proto::parse_socks4_reply(proto::to_bytes(out));
      FUZZ_CHECK(r.done() && r.consumed == out.size());
      FUZZ_CHECK(r.value ==
                 (err == DialError::kOk ? proto::socks4::kGranted : proto::socks4::kRejected));
    }
  }
}

Transcript converse(const server::FrontendOptions& opts, bool http_listener, fuzz::Bytes client,
                    const std::vector<size_t>& chunks, bool check_replies) {
  Transcript t;
  std::unique_ptr<server::Frontend> fe;
  std::string in;
  size_t pos = 0;
  for (size_t n : chunks) {
    in.append(reinterpret_cast<const char*>(client.data() + pos), n);
    pos += n;
    if (!fe) {
      fe = http_listener ? server::make_http_frontend(opts)
                         : server::sniff_frontend(static_cast<uint8_t>(in[0]), opts);
      if (!fe) {
        t.sniffed = false;
        return t;
      }
    }
    while (!in.empty()) {
      Step s = fe->feed(proto::to_bytes(in));
      FUZZ_CHECK(s.consumed <= in.size());
      if (s.status == Step::kNeedMore) {
        FUZZ_CHECK(s.consumed == 0 && s.out.empty());
        break;
      }
      t.name = fe->name();
      check_out(t.name, s);
      if (s.status == Step::kReply) FUZZ_CHECK(s.consumed > 0 && !s.out.empty());
      if (s.status == Step::kFail) FUZZ_CHECK(!s.error.empty());
      if (s.status == Step::kRequest) {
        FUZZ_CHECK(s.consumed > 0 && s.out.empty());
        // --auth-required: no way through without a user name, in any protocol.
        if (opts.auth_required) FUZZ_CHECK(s.request.username && !s.request.username->empty());
        if (s.request.password) FUZZ_CHECK(s.request.username.has_value());
        const auto& target = s.request.target;
        auto back = proto::parse_address(target.to_string());
        FUZZ_CHECK(back && *back == target);
      }
      t.events.push_back({s.status, s.consumed, s.out, s.request.target.to_string(),
                          s.request.username, s.request.password, s.error});
      in.erase(0, s.consumed);
      if (s.status == Step::kForward) {
        // A plain HTTP request: handed over whole, to be read again.
        FUZZ_CHECK(t.name == "http" && s.consumed == 0 && s.out.empty());
      }
      if (s.status == Step::kRequest || s.status == Step::kFail || s.status == Step::kForward) {
        if (s.status == Step::kRequest && check_replies) check_final_replies(*fe);
        t.left = in + std::string(reinterpret_cast<const char*>(client.data() + pos),
                                  client.size() - pos);
        return t;
      }
    }
  }
  if (fe) t.name = fe->name();
  t.left = in;
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(fuzz::Bytes(data, size));
  const uint8_t flags = r.byte();
  const fuzz::Bytes client = r.rest();
  if (client.empty()) return 0;
  server::FrontendOptions opts;
  opts.auth_required = flags & 1;
  opts.want_credentials = flags & 2;
  const bool http_listener = flags & 4;

  Rng rng = Rng::of(client);
  const Transcript whole =
      converse(opts, http_listener, client, fuzz::split_sizes(client.size(), 0, rng), true);
  // Byte by byte re-reads the buffer on every byte: quadratic, so short inputs only.
  const int first_mode = client.size() <= 1024 ? 1 : 2;
  for (int mode = first_mode; mode <= 2; ++mode) {
    Transcript split =
        converse(opts, http_listener, client, fuzz::split_sizes(client.size(), mode, rng), false);
    FUZZ_CHECK(split == whole);
  }
  return 0;
}
