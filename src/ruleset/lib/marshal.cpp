// marshal(...) -> the arguments as Lua source, separated by commas. load("return " .. s)()
// gives back equal values: integers stay integers, floats are exact, strings may hold any bytes
// and tables nest. This is also the RPC wire format, so it is built in one linear pass.
#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ruleset/lib/libs.hpp"
#include "ruleset/lib/lua_util.hpp"

namespace rs::ruleset {
namespace {

static_assert(sizeof(lua_Integer) == 8, "the spelling of math.mininteger below assumes 64 bits");

constexpr int kMaxDepth = 200;

// Growable output. It lives in a userdata whose __gc frees it, so a Lua error while marshalling
// cannot leak it; the memory comes from the state's allocator, so the host's limits apply.
struct Buffer {
  char* data;
  size_t len;
  size_t cap;
  lua_Alloc alloc;
  void* ud;
};

void release(Buffer* b) {
  if (b->data != nullptr) b->alloc(b->ud, b->data, b->cap, 0);
  b->data = nullptr;
  b->len = b->cap = 0;
}

int buffer_gc(lua_State* L) {
  release(static_cast<Buffer*>(lua_touserdata(L, 1)));
  return 0;
}

// A key of a table's hash part, reduced to what sorting needs. The order is fixed so that equal
// tables always marshal to the same text: booleans, integers, floats, strings (bytewise), then
// tables in traversal order, which is all Lua offers for them.
enum Rank { kBoolean, kInteger, kFloat, kString, kOther };

struct Key {
  Rank rank;
  lua_Integer i;   // kBoolean (0 or 1), kInteger
  lua_Number n;    // kFloat
  const char* s;   // kString, anchored by the scratch table that holds the key
  size_t len;      // kString
  lua_Integer slot;  // index in that scratch table
};

bool operator<(const Key& a, const Key& b) {
  if (a.rank != b.rank) return a.rank < b.rank;
  switch (a.rank) {
    case kBoolean:
    case kInteger:
      return a.i < b.i;
    case kFloat:
      return a.n < b.n;
    case kString: {
      const int c = std::memcmp(a.s, b.s, std::min(a.len, b.len));
      return c != 0 ? c < 0 : a.len < b.len;
    }
    default:
      return a.slot < b.slot;
  }
}

// Escapes for the bytes that cannot appear as they are between double quotes; 0 means the byte
// is copied. Everything else non-printable becomes "\xHH", which keeps the output plain ASCII.
constexpr auto kEscape = [] {
  struct {
    char e[256];
  } t{};
  for (int c = 0; c < 256; ++c) t.e[c] = (c < 0x20 || c >= 0x7f) ? 'x' : 0;
  t.e['"'] = '"';
  t.e['\\'] = '\\';
  t.e['\n'] = 'n';
  t.e['\r'] = 'r';
  t.e['\t'] = 't';
  return t;
}();

// Trivially destructible on purpose: every method may raise a Lua error.
class Marshaller {
 public:
  Marshaller(lua_State* L, Buffer* buf) : L_(L), buf_(buf) {
    lua_newtable(L);  // the tables on the current path, for cycle detection
    visiting_ = lua_gettop(L);
  }

  void value(int idx) {
    switch (lua_type(L_, idx)) {
      case LUA_TNIL:
        return put("nil");
      case LUA_TBOOLEAN:
        return put(lua_toboolean(L_, idx) ? "true" : "false");
      case LUA_TNUMBER:
        if (lua_isinteger(L_, idx)) return integer(lua_tointeger(L_, idx));
        return number(lua_tonumber(L_, idx));
      case LUA_TSTRING: {
        size_t len = 0;
        const char* s = lua_tolstring(L_, idx, &len);
        return string(s, len);
      }
      case LUA_TTABLE:
        return table(idx);
      default:
        luaL_error(L_, "marshal: %s is not supported", luaL_typename(L_, idx));
    }
  }

  void put(char c) {
    *reserve(1) = c;
    ++buf_->len;
  }
  void put(const char* s) {
    const size_t n = std::strlen(s);
    std::memcpy(reserve(n), s, n);
    buf_->len += n;
  }

 private:
  char* reserve(size_t n) {
    if (buf_->cap - buf_->len < n) grow(n);
    return buf_->data + buf_->len;
  }

  void grow(size_t n) {
    size_t cap = std::max<size_t>(buf_->cap, 256);
    while (cap - buf_->len < n) {
      if (cap > SIZE_MAX / 2) luaL_error(L_, "marshal: output too large");
      cap *= 2;
    }
    void* data = buf_->alloc(buf_->ud, buf_->data, buf_->cap, cap);
    if (data == nullptr) luaL_error(L_, "marshal: out of memory");
    buf_->data = static_cast<char*>(data);
    buf_->cap = cap;
  }

  void integer(lua_Integer i) {
    // "-9223372036854775808" would read back as a float (it is "-" applied to a numeral too big
    // for an integer); a hexadecimal numeral wraps around to the integer itself.
    if (i == LUA_MININTEGER) return put("0x8000000000000000");
    char* out = reserve(24);
    buf_->len += std::to_chars(out, out + 24, i).ptr - out;
  }

  void number(lua_Number x) {
    if (std::isnan(x)) return put("(0/0)");
    // Too large for a double, so these read back as infinities.
    if (std::isinf(x)) return put(x > 0 ? "1e+1000" : "-1e+1000");
    char* out = reserve(40);
    // The shortest text that reads back as the same double; locale-independent.
    char* end = std::to_chars(out, out + 38, x).ptr;
    // Make it look like a float ("1" would read back as the integer 1).
    if (std::find_if(out, end, [](char c) { return c == '.' || c == 'e'; }) == end) {
      *end++ = '.';
      *end++ = '0';
    }
    buf_->len += end - out;
  }

  void string(const char* s, size_t len) {
    put('"');
    // In slices, so each reservation covers the worst case (4 bytes out per byte in) without
    // reserving four times a large string up front.
    constexpr size_t kSlice = 4096;
    for (size_t done = 0; done < len;) {
      const size_t n = std::min(kSlice, len - done);
      char* const out = reserve(4 * n);
      char* p = out;
      for (const char* c = s + done; c != s + done + n; ++c) {
        const auto byte = static_cast<unsigned char>(*c);
        const char e = kEscape.e[byte];
        if (e == 0) {
          *p++ = *c;
        } else if (e != 'x') {
          *p++ = '\\';
          *p++ = e;
        } else {
          *p++ = '\\';
          *p++ = 'x';
          *p++ = "0123456789abcdef"[byte >> 4];
          *p++ = "0123456789abcdef"[byte & 15];
        }
      }
      buf_->len += p - out;
      done += n;
    }
    put('"');
  }

  void table(int idx) {
    if (depth_ >= kMaxDepth) luaL_error(L_, "marshal: nesting deeper than %d", kMaxDepth);
    luaL_checkstack(L_, 8, "marshal: nesting too deep");
    lua_pushvalue(L_, idx);
    if (lua_rawget(L_, visiting_) != LUA_TNIL) luaL_error(L_, "marshal: circular reference");
    lua_pop(L_, 1);
    mark(idx, true);
    ++depth_;
    put('{');
    // The sequence 1..n as a plain list, then everything else as [k]=v.
    lua_Integer n = 0;
    while (lua_rawgeti(L_, idx, n + 1) != LUA_TNIL) {
      if (n > 0) put(',');
      value(lua_gettop(L_));
      lua_pop(L_, 1);
      ++n;
    }
    lua_pop(L_, 1);
    hash_part(idx, n);
    put('}');
    --depth_;
    // Only the current path counts: a table met again elsewhere is simply written again.
    mark(idx, false);
  }

  void mark(int idx, bool on_path) {
    lua_pushvalue(L_, idx);
    if (on_path) {
      lua_pushboolean(L_, 1);
    } else {
      lua_pushnil(L_);
    }
    lua_rawset(L_, visiting_);
  }

  // Writes the pairs of t[idx] whose keys are not in 1..n, sorted by key.
  void hash_part(int idx, lua_Integer n) {
    lua_newtable(L_);
    const int keys = lua_gettop(L_);
    lua_Integer count = 0;
    lua_pushnil(L_);
    while (lua_next(L_, idx) != 0) {
      lua_pop(L_, 1);
      if (lua_isinteger(L_, -1)) {
        const lua_Integer k = lua_tointeger(L_, -1);
        if (k >= 1 && k <= n) continue;
      }
      lua_pushvalue(L_, -1);
      lua_rawseti(L_, keys, ++count);
    }
    if (count == 0) return lua_pop(L_, 1);
    auto* sorted =
        static_cast<Key*>(lua_newuserdatauv(L_, static_cast<size_t>(count) * sizeof(Key), 0));
    for (lua_Integer i = 1; i <= count; ++i) {
      lua_rawgeti(L_, keys, i);
      sorted[i - 1] = make_key(i);
      lua_pop(L_, 1);
    }
    std::sort(sorted, sorted + count);
    for (lua_Integer i = 0; i < count; ++i) {
      if (n > 0 || i > 0) put(',');
      put('[');
      lua_rawgeti(L_, keys, sorted[i].slot);
      value(lua_gettop(L_));
      put("]=");
      lua_rawget(L_, idx);
      value(lua_gettop(L_));
      lua_pop(L_, 1);
    }
    lua_pop(L_, 2);
  }

  // Describes the key on top of the stack, found at keys[slot].
  Key make_key(lua_Integer slot) {
    Key k{kOther, 0, 0, nullptr, 0, slot};
    switch (lua_type(L_, -1)) {
      case LUA_TBOOLEAN:
        k.rank = kBoolean;
        k.i = lua_toboolean(L_, -1);
        break;
      case LUA_TNUMBER:
        if (lua_isinteger(L_, -1)) {
          k.rank = kInteger;
          k.i = lua_tointeger(L_, -1);
        } else {
          k.rank = kFloat;
          k.n = lua_tonumber(L_, -1);
        }
        break;
      case LUA_TSTRING:
        k.rank = kString;
        k.s = lua_tolstring(L_, -1, &k.len);
        break;
      default:
        break;
    }
    return k;
  }

  lua_State* L_;
  Buffer* buf_;
  int visiting_ = 0;
  int depth_ = 0;
};

int marshal(lua_State* L) {
  const int nargs = lua_gettop(L);
  auto* buf = static_cast<Buffer*>(lua_newuserdatauv(L, sizeof(Buffer), 0));
  *buf = Buffer{nullptr, 0, 0, nullptr, nullptr};
  buf->alloc = lua_getallocf(L, &buf->ud);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
  Marshaller m(L, buf);
  for (int i = 1; i <= nargs; ++i) {
    if (i > 1) m.put(',');
    m.value(i);
  }
  lua_pushlstring(L, buf->data, buf->len);
  release(buf);  // now rather than at the next collection
  return 1;
}

}  // namespace

int luaopen_rs_marshal(lua_State* L) {
  // The buffer's metatable, kept as an upvalue so that each call needs no registry lookup.
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, buffer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcclosure(L, guarded<marshal>, 1);
  return 1;
}

}  // namespace rs::ruleset
