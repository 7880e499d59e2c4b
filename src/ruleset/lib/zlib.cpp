// zlib.compress/uncompress (zlib format) and zlib.gzip/gunzip (gzip format) for rulesets.
#include <string>
#include <string_view>
#include <utility>

#include "proto/zlib_codec.hpp"
#include "ruleset/lib/libs.hpp"
#include "ruleset/lib/lua_util.hpp"

namespace rs::ruleset {
namespace {

using proto::Compression;

// Holds the C++ side of one call in a userdata, so a Lua error (say, out of memory while pushing
// the result) cannot leak it.
struct Result {
  std::string out;
  std::string err;
};
constexpr char kResultBox[] = "rs.zlib.Result";

// The C++ work runs in these helpers, whose temporaries are gone before the caller may raise.
bool run_inflate(Result* r, std::string_view in, Compression format) {
  proto::Inflated inflated = proto::inflate_body(in, format);
  r->out = std::move(inflated.data);
  r->err = std::move(inflated.message);
  return inflated.ok();
}

void run_deflate(Result* r, std::string_view in, Compression format, int level) {
  r->out = proto::deflate_body(in, format, level);
}

// Frees the C++ copy right away instead of at the next collection: it may be 64 MiB.
int push_out(lua_State* L, Result* r) {
  lua_pushlstring(L, r->out.data(), r->out.size());
  std::string().swap(r->out);
  return 1;
}

// compress(s [, level]) -> compressed string
template <Compression F>
int compress(lua_State* L) {
  size_t len = 0;
  const char* s = luaL_checklstring(L, 1, &len);
  const lua_Integer level = luaL_optinteger(L, 2, -1);
  luaL_argcheck(L, level >= -1 && level <= 9, 2, "level must be -1..9");
  Result* r = push_boxed<Result>(L, kResultBox);
  run_deflate(r, {s, len}, F, static_cast<int>(level));
  return push_out(L, r);
}

// uncompress(z) -> original string; raises "zlib: ..." on bad input or oversized output
template <Compression F>
int uncompress(lua_State* L) {
  size_t len = 0;
  const char* s = luaL_checklstring(L, 1, &len);
  Result* r = push_boxed<Result>(L, kResultBox);
  if (!run_inflate(r, {s, len}, F)) return luaL_error(L, "zlib: %s", r->err.c_str());
  return push_out(L, r);
}

}  // namespace

int luaopen_rs_zlib(lua_State* L) {
  static constexpr luaL_Reg kFuncs[] = {
      {"compress", guarded<compress<Compression::kZlib>>},
      {"uncompress", guarded<uncompress<Compression::kZlib>>},
      {"gzip", guarded<compress<Compression::kGzip>>},
      {"gunzip", guarded<uncompress<Compression::kGzip>>},
      {nullptr, nullptr},
  };
  luaL_newlib(L, kFuncs);
  return 1;
}

}  // namespace rs::ruleset
