// marshal(...) -> the arguments as Lua source, separated by commas. load("return " .. s)()
// gives back equal values: integers stay integers, floats are exact, strings may hold any bytes
// and tables nest. This is also the RPC wire format, so it is built in one linear pass with no
// per-table allocations.
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

// Lua's parser gives up at about 196 nested table constructors (LUAI_MAXCCALLS, shared with the
// C calls already on the stack where load() runs), so deeper output could not be read back.
constexpr int kMaxDepth = 128;

// A key of a table's hash part, reduced to what sorting needs. The order is fixed so that equal
// tables always marshal to the same text: booleans, integers, floats, strings (bytewise), then
// tables in traversal order, which is all Lua offers for them.
enum Rank { kBoolean, kInteger, kFloat, kString, kOther };

struct Key {
  Rank rank;
  lua_Integer i;     // kBoolean (0 or 1), kInteger
  lua_Number n;      // kFloat
  const char* s;     // kString; the scratch table keeps the string alive
  size_t len;        // kString
  lua_Integer slot;  // where the key itself sits in the scratch table
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

// The C memory of one call: the output and a stack of keys being sorted. It lives in a userdata
// whose __gc frees it, so a Lua error while marshalling cannot leak it, and it comes from the
// state's allocator, so the host's memory limits apply.
struct Scratch {
  lua_Alloc alloc;
  void* ud;
  char* out;
  size_t len;
  size_t cap;
  Key* keys;
  size_t keys_cap;
};

void release(Scratch* s) {
  if (s->out != nullptr) s->alloc(s->ud, s->out, s->cap, 0);
  if (s->keys != nullptr) s->alloc(s->ud, s->keys, s->keys_cap * sizeof(Key), 0);
  s->out = nullptr;
  s->keys = nullptr;
  s->len = s->cap = s->keys_cap = 0;
}

int scratch_gc(lua_State* L) {
  release(static_cast<Scratch*>(lua_touserdata(L, 1)));
  return 0;
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
  Marshaller(lua_State* L, Scratch* s) : L_(L), s_(s) {
    lua_newtable(L);  // keys of the hash parts being written: keys_[1..used_]
    keys_ = lua_gettop(L);
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
    ++s_->len;
  }
  void put(const char* s) {
    const size_t n = std::strlen(s);
    std::memcpy(reserve(n), s, n);
    s_->len += n;
  }

 private:
  // Grows a block from the state's allocator to hold at least `need` elements, doubling.
  template <class T>
  void grow(T*& data, size_t& cap, size_t need) {
    size_t n = std::max<size_t>(cap, 256 / sizeof(T) + 1);
    while (n < need) {
      if (n > SIZE_MAX / 2 / sizeof(T)) luaL_error(L_, "marshal: output too large");
      n *= 2;
    }
    void* p = s_->alloc(s_->ud, data, cap * sizeof(T), n * sizeof(T));
    if (p == nullptr) {
      // Lua collects garbage before it gives up on an allocation of its own;
      // this one goes to the allocator directly, so do the same here.
      lua_gc(L_, LUA_GCCOLLECT);
      p = s_->alloc(s_->ud, data, cap * sizeof(T), n * sizeof(T));
    }
    if (p == nullptr) luaL_error(L_, "marshal: out of memory");
    data = static_cast<T*>(p);
    cap = n;
  }

  char* reserve(size_t n) {
    if (s_->cap - s_->len < n) grow(s_->out, s_->cap, s_->len + n);
    return s_->out + s_->len;
  }

  void integer(lua_Integer i) {
    // "-9223372036854775808" would read back as a float (it is "-" applied to a numeral too big
    // for an integer); a hexadecimal numeral wraps around to the integer itself.
    if (i == LUA_MININTEGER) return put("0x8000000000000000");
    char* out = reserve(24);
    s_->len += std::to_chars(out, out + 24, i).ptr - out;
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
    s_->len += end - out;
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
      s_->len += p - out;
      done += n;
    }
    put('"');
  }

  void table(int idx) {
    if (depth_ == kMaxDepth) too_deep();
    luaL_checkstack(L_, 4, "marshal");
    path_[depth_++] = idx;
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
  }

  // A cycle always ends up here, so cycles cost nothing to detect until then: the tables on the
  // current path are all still on the stack. A table met again on another path is not a cycle
  // and is simply written again.
  [[noreturn]] void too_deep() {
    for (int i = 0; i < depth_; ++i) {
      for (int j = i + 1; j < depth_; ++j) {
        if (lua_rawequal(L_, path_[i], path_[j])) luaL_error(L_, "marshal: circular reference");
      }
    }
    luaL_error(L_, "marshal: nesting deeper than %d", kMaxDepth);
    __builtin_unreachable();
  }

  // Writes the pairs of t[idx] whose keys are not in 1..n, sorted by key. Nested calls stack
  // their keys above ours in keys_ and s_->keys.
  void hash_part(int idx, lua_Integer n) {
    const size_t base = used_;
    lua_pushnil(L_);
    while (lua_next(L_, idx) != 0) {
      lua_pop(L_, 1);
      if (lua_isinteger(L_, -1)) {
        const lua_Integer k = lua_tointeger(L_, -1);
        if (k >= 1 && k <= n) continue;
      }
      if (used_ == s_->keys_cap) grow(s_->keys, s_->keys_cap, used_ + 1);
      lua_pushvalue(L_, -1);
      lua_rawseti(L_, keys_, static_cast<lua_Integer>(++used_));
      s_->keys[used_ - 1] = make_key(static_cast<lua_Integer>(used_));
    }
    const size_t end = used_;
    std::sort(s_->keys + base, s_->keys + end);
    for (size_t i = base; i < end; ++i) {
      if (n > 0 || i > base) put(',');
      put('[');
      // s_->keys is indexed afresh each time: writing a value may move it.
      lua_rawgeti(L_, keys_, s_->keys[i].slot);
      value(lua_gettop(L_));
      put("]=");
      lua_rawget(L_, idx);
      value(lua_gettop(L_));
      lua_pop(L_, 1);
    }
    used_ = base;
  }

  // Describes the key on top of the stack.
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
  Scratch* s_;
  int keys_ = 0;
  size_t used_ = 0;
  int depth_ = 0;
  int path_[kMaxDepth] = {};  // stack indexes of the tables being written, outermost first
};

int marshal(lua_State* L) {
  const int nargs = lua_gettop(L);
  auto* s = static_cast<Scratch*>(lua_newuserdatauv(L, sizeof(Scratch), 0));
  *s = Scratch{};
  s->alloc = lua_getallocf(L, &s->ud);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
  Marshaller m(L, s);
  for (int i = 1; i <= nargs; ++i) {
    if (i > 1) m.put(',');
    m.value(i);
  }
  lua_pushlstring(L, s->out, s->len);
  release(s);  // now rather than at the next collection
  return 1;
}

}  // namespace

int luaopen_rs_marshal(lua_State* L) {
  // The scratch metatable, kept as an upvalue so that each call needs no registry lookup.
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, scratch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcclosure(L, guarded<marshal>, 1);
  return 1;
}

}  // namespace rs::ruleset
