// Plain HTTP proxying (proto/http_forward.hpp, proto/http_body.hpp). The
// input is a request head or a response head followed by body bytes; the
// first byte picks HEAD or GET as the method a response answers.
//   - absolute-form targets print back to themselves;
//   - a rewritten head parses again, carries no hop-by-hop field, one Host,
//     our Via, and exactly the framing of the head it came from: a proxy that
//     changed the framing would be the smuggling it must refuse;
//   - the body reader gives the same outcome for any split of the body, and
//     passes bytes through unchanged.
#include <algorithm>

#include "fuzz_util.hpp"
#include "proto/http.hpp"
#include "proto/http_body.hpp"
#include "proto/http_forward.hpp"

using namespace rs::proto;
using rs::fuzz::as_text;
using rs::fuzz::Reader;
using rs::fuzz::Rng;
using rs::fuzz::split_sizes;

namespace {

bool same_framing(const BodyFraming& a, const BodyFraming& b) {
  return a.ok() == b.ok() && a.kind == b.kind && a.length == b.length;
}

void check_no_hop_by_hop(const HttpHeaders& headers, bool upgrading) {
  for (const char* name :
       {"Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "TE", "Trailer"}) {
    FUZZ_CHECK(!find_header(headers, name));
  }
  if (!upgrading) FUZZ_CHECK(!find_header(headers, "Upgrade"));
  size_t via = 0;
  for (const auto& [name, value] : headers)
    via += iequals(name, "Via") && value.ends_with(" rulesocks");
  FUZZ_CHECK(via == 1);
}

struct BodyRun {
  BodyReader::Status status = BodyReader::Status::kNeedMore;
  std::string passed;
};

BodyRun run_body(const BodyFraming& framing, std::string_view in, int mode, Rng& rng) {
  BodyReader reader(framing);
  BodyRun out;
  std::string pending;
  size_t pos = 0;
  auto sizes = split_sizes(in.size(), mode, rng);
  if (sizes.empty()) sizes.push_back(0);
  for (size_t n : sizes) {
    pending.append(in.substr(pos, n));
    pos += n;
    size_t used = 0;
    out.status = reader.feed(pending, used);
    FUZZ_CHECK(used <= pending.size());
    out.passed.append(pending, 0, used);
    pending.erase(0, used);
    if (out.status != BodyReader::Status::kNeedMore) break;
    FUZZ_CHECK(pending.empty());
  }
  if (out.status == BodyReader::Status::kError) FUZZ_CHECK(!reader.error().empty());
  return out;
}

void check_body(const BodyFraming& framing, std::string_view body) {
  Rng rng = Rng::of(to_bytes(body));
  BodyRun whole = run_body(framing, body, 0, rng);
  FUZZ_CHECK(body.substr(0, whole.passed.size()) == whole.passed);
  for (int mode : {1, 2}) {
    BodyRun split = run_body(framing, body, mode, rng);
    FUZZ_CHECK(split.status == whole.status);
    if (whole.status != BodyReader::Status::kError) FUZZ_CHECK(split.passed == whole.passed);
  }
  if (whole.status == BodyReader::Status::kDone) {
    // A complete body read alone ends at the same byte.
    BodyRun again = run_body(framing, whole.passed, 0, rng);
    FUZZ_CHECK(again.status == BodyReader::Status::kDone && again.passed == whole.passed);
  }
}

void check_target(std::string_view target) {
  auto t = parse_absolute_target(target);
  if (!t) return;
  FUZZ_CHECK(!t->authority.empty() && t->origin.port != 0);
  FUZZ_CHECK(!t->origin_form.empty() && t->origin_form.front() == '/');
  auto back = parse_absolute_target("http://" + t->authority + t->origin_form);
  FUZZ_CHECK(back && *back == *t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader opts(rs::fuzz::Bytes(data, size));
  const bool head_method = opts.byte() & 1;
  Bytes in = opts.rest();

  if (auto req = parse_http_request(in); req.done()) {
    const auto& head = req.value;
    check_target(head.target);
    auto framing = request_framing(head);
    auto target = parse_absolute_target(head.target);
    if (target && framing.ok()) {
      std::string out = forward_request_head(head, *target);
      auto back = parse_http_request(to_bytes(out), out.size());
      FUZZ_CHECK(back.done() && back.consumed == out.size());
      FUZZ_CHECK(back.value.method == head.method && back.value.target == target->origin_form);
      check_no_hop_by_hop(back.value.headers, is_upgrade(head));
      size_t hosts = 0;
      for (const auto& [name, value] : back.value.headers) hosts += iequals(name, "Host");
      FUZZ_CHECK(hosts == 1 && *back.value.header("Host") == target->authority);
      FUZZ_CHECK(same_framing(request_framing(back.value), framing));
    }
    if (framing.ok()) check_body(framing, as_text(in.subspan(req.consumed)));
  }

  if (auto resp = parse_http_response(in); resp.done()) {
    const auto& head = resp.value;
    const char* method = head_method ? "HEAD" : "GET";
    auto framing = response_framing(head, method);
    if (framing.ok()) {
      for (bool keep : {false, true}) {
        std::string out = forward_response_head(head, keep);
        auto back = parse_http_response(to_bytes(out), out.size());
        FUZZ_CHECK(back.done() && back.consumed == out.size());
        FUZZ_CHECK(back.value.status == head.status);
        check_no_hop_by_hop(back.value.headers, head.status == 101);
        auto again = response_framing(back.value, method);
        // HTTP/1.0 -> 1.1 may only turn "until close" into the same.
        FUZZ_CHECK(same_framing(again, framing));
      }
      check_body(framing, as_text(in.subspan(resp.consumed)));
    }
  }

  // The body reader on raw bytes, chunked.
  check_body({BodyFraming::kChunked, 0, {}}, as_text(in));
  check_target(as_text(in));
  return 0;
}
