-- libruleset.lua: the rule table library for rulesocks rulesets.
--
-- A ruleset loads it with
--
--     _G.libruleset = require("libruleset")
--
-- fills the global rule tables (redirect_name, hosts, redirect, route, redirect6,
-- route6, route_default) and returns the library (or a table that falls back to
-- it). The names and behaviour follow neosocksd's library of the same name, so
-- that rulesets written for neosocksd run unchanged. It is plain Lua 5.4 built on
-- the host's globals: neosocksd.*, await.*, marshal, regex.
--
-- Sections:
--   utilities    printf, errorf, string.startswith/endswith, table.get,
--                package.replace, list, rlist, unmarshal, regex.compat
--   logging      log, logf, evlog, evlogf, format_timestamp
--   routines     async (futures), await.callback
--   addresses    parse_cidr, parse_cidr6
--   matchers     inet, inet6, match, composite
--   actions      rule, lb
--   RPC          rpc, msgh, await.rpcall, neosocksd.sendmsg
--   callbacks    resolve, route, route6, tick, stats (the returned table)
--
-- Rule tables are ordered lists of { matcher, action, tag }; the first rule
-- whose matcher returns true decides. In the redirect tables matchers see the
-- request address ("host:port", "1.2.3.4:80", "[::1]:80"); in route they see
-- (ip, addr) and in route6 (ip_high, ip_low, addr), like neosocksd, where ip is
-- the integer form of the address. Every matcher made by this library accepts
-- both forms, so any of them can go in any table.

local _G = _G
local type, select, pairs, ipairs = type, select, pairs, ipairs
local tostring, tonumber, error, pcall = tostring, tonumber, error, pcall
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local load = load
local sfind, smatch, sgmatch, sgsub = string.find, string.match, string.gmatch, string.gsub
local ssub, slower, sformat, sbyte, srep = string.sub, string.lower, string.format, string.byte, string.rep
local tconcat, tinsert, tunpack, tsort, tmove = table.concat, table.insert, table.unpack, table.sort, table.move
local mfloor, mceil, mtointeger = math.floor, math.ceil, math.tointeger
local co_running, co_yield, co_resume, co_status = coroutine.running, coroutine.yield, coroutine.resume,
    coroutine.status
local co_isyieldable = coroutine.isyieldable

local neosocksd = _G.neosocksd
if type(neosocksd) ~= "table" then
    error("libruleset: the host's neosocksd table is missing", 2)
end
local parse_ipv4, parse_ipv6 = neosocksd.parse_ipv4, neosocksd.parse_ipv6
local await = rawget(_G, "await")
if type(await) ~= "table" then
    await = {}
    _G.await = await
end

local M = {} -- the ruleset table this module returns

local function pack(...)
    return { n = select("#", ...), ... }
end

-- [[ utilities ]] --

function _G.printf(fmt, ...)
    return _G.print(sformat(fmt, ...))
end

function _G.errorf(fmt, ...)
    error(sformat(fmt, ...), 2)
end

function string.startswith(s, prefix)
    return ssub(s, 1, #prefix) == prefix
end

function string.endswith(s, suffix)
    local n = #suffix
    return n == 0 or ssub(s, -n) == suffix
end

-- table.get(t, k1, k2, ...) = t[k1][k2]..., or nil as soon as a level is missing.
function table.get(t, ...)
    local v = t
    for i = 1, select("#", ...) do
        if type(v) ~= "table" then
            return nil
        end
        v = v[(select(i, ...))]
    end
    return v
end

-- package.replace(name, module): installs a new version of a loaded module.
-- `module` may also be a function (a loaded chunk) returning the module. Like
-- the API's /ruleset/update?module=name, _G[name] follows if it referred to the
-- old module.
function package.replace(name, module)
    if type(module) == "function" then
        module = module(name)
    end
    if module == nil then
        module = true
    end
    local loaded = package.loaded
    local old = loaded[name]
    loaded[name] = module
    if old ~= nil and rawget(_G, name) == old then
        _G[name] = module
    end
    return module
end

-- unmarshal(s): the values marshal() encoded in s. The text is loaded as data
-- only: no bytecode and an empty environment, so it reaches no globals.
function _G.unmarshal(s)
    if type(s) ~= "string" then
        error("unmarshal: string expected, got " .. type(s), 2)
    end
    local f, err = load("return " .. s, "=unmarshal", "t", {})
    if not f then
        error("unmarshal: " .. tostring(err), 2)
    end
    return f()
end

-- [[ list: array with methods ]] --
local list = {}
local list_mt = { __name = "list", __index = list }

function list:new(t)
    return setmetatable(t or {}, list_mt)
end

function list:pack(...)
    return setmetatable({ ... }, list_mt)
end

function list:check(t)
    if type(t) == "table" and getmetatable(t) == list_mt then
        return t
    end
    return nil
end

list.iter = ipairs
list.unpack = tunpack
list.concat = tconcat
list.remove = table.remove

-- l:insert(v) appends, l:insert(pos, v) inserts at pos; returns l.
function list:insert(...)
    if select("#", ...) >= 2 then
        tinsert(self, ...)
    else
        self[#self + 1] = ...
    end
    return self
end

function list:insertf(fmt, ...)
    self[#self + 1] = sformat(fmt, ...)
    return self
end

function list:append(t)
    return tmove(t, 1, #t, #self + 1, self)
end

function list:len()
    return #self
end

function list:sort(cmp)
    tsort(self, cmp)
    return self
end

-- in place, like neosocksd's
function list:map(f)
    for i = 1, #self do
        self[i] = f(self[i])
    end
    return self
end

function list:filter(f)
    local out, n = list:new(), 0
    for i = 1, #self do
        local v = self[i]
        if f(v) then
            n = n + 1
            out[n] = v
        end
    end
    return out
end

function list:reverse()
    local n = #self
    for i = 1, n // 2 do
        local j = n - i + 1
        self[i], self[j] = self[j], self[i]
    end
    return self
end

function list:clone()
    return list:new():append(self)
end

function list:totable()
    return setmetatable(self, nil)
end

_G.list = list

-- [[ rlist: ring buffer of fixed capacity ]] --
-- r:get(1) is the newest item, r:get(r.len) (or r:get(-1)) the oldest; the
-- count is the field r.len (a method of that name would be hidden by it).
local rlist = {}
local rlist_mt = { __name = "rlist", __index = rlist }

function rlist:new(cap, t)
    cap = mtointeger(cap)
    if not cap or cap < 1 then
        error("rlist:new: the capacity must be a positive integer", 2)
    end
    t = t or {}
    local n = #t
    if n > cap then -- keep the newest `cap`
        tmove(t, n - cap + 1, n, 1)
        for i = cap + 1, n do
            t[i] = nil
        end
        n = cap
    end
    t.cap, t.len, t.pos = cap, n, n % cap + 1
    return setmetatable(t, rlist_mt)
end

function rlist:check(t)
    if type(t) == "table" and getmetatable(t) == rlist_mt then
        return t
    end
    return nil
end

function rlist:push(v)
    local pos, cap = self.pos, self.cap
    self[pos] = v
    self.pos = pos % cap + 1
    if self.len < cap then
        self.len = self.len + 1
    end
    return self
end

function rlist:get(i)
    local len = self.len
    if i < 0 then
        i = len + i + 1
    end
    if i < 1 or i > len then
        return nil
    end
    local p = self.pos - i
    if p < 1 then
        p = p + self.cap
    end
    return self[p]
end

function rlist:clear()
    for i = 1, self.cap do
        self[i] = nil
    end
    self.len, self.pos = 0, 1
    return self
end

local function rlist_next(self, i)
    i = i + 1
    if i > self.len then
        return nil
    end
    return i, self:get(i)
end

local function rlist_prev(self, i)
    i = i - 1
    if i < 1 then
        return nil
    end
    return i, self:get(i)
end

-- newest first: for i, v in r:iter() (i = 1 is the newest)
function rlist:iter()
    return rlist_next, self, 0
end

-- oldest first: for i, v in r:reviter() (i counts down to 1, the newest)
function rlist:reviter()
    return rlist_prev, self, self.len + 1
end

-- the items as a plain list, oldest first
function rlist:totable()
    local t, n = {}, self.len
    for i = 1, n do
        t[i] = self:get(n - i + 1)
    end
    return t
end

_G.rlist = rlist

-- [[ regex.compat ]] --
-- regex.compat(pattern): the pattern with Perl-style class escapes spelled as
-- POSIX bracket expressions, so that one pattern means the same with either
-- regex back end (PCRE2, or the C library's ERE, which knows no \d). Outside a
-- bracket expression \d \w \s become [[:digit:]] [[:alnum:]_] [[:space:]] and
-- \D \W \S their negations; inside one, \d \w \s become the class names
-- ("[\w.-]" -> "[[:alnum:]_.-]"). \t \n \r \f \v become the characters.
-- Every other escape (\. \b \\ ...) is left as it is: both back ends read
-- those alike.
local perl_class = { d = "[:digit:]", w = "[:alnum:]_", s = "[:space:]" }
local perl_negated = { D = "d", W = "w", S = "s" }
local perl_control = { t = "\t", n = "\n", r = "\r", f = "\f", v = "\v" }

local function regex_compat(pattern)
    if type(pattern) ~= "string" then
        error(sformat("regex.compat: string expected, got %s", type(pattern)), 2)
    end
    local out, n, i, len = {}, 0, 1, #pattern
    local function put(s)
        n = n + 1
        out[n] = s
    end
    local bracket = false -- inside [...]
    while i <= len do
        local c = ssub(pattern, i, i)
        local e = ssub(pattern, i + 1, i + 1)
        if c == "\\" and e ~= "" then
            local class = perl_class[e]
            if class then
                put(bracket and class or "[" .. class .. "]")
            elseif perl_negated[e] and not bracket then
                put("[^" .. perl_class[perl_negated[e]] .. "]")
            elseif perl_control[e] then
                put(perl_control[e])
            else
                put(c .. e)
            end
            i = i + 2
        elseif bracket then
            local close = (e == ":" or e == "." or e == "=") and c == "[" and sfind(pattern, e .. "]", i + 2, true)
            if close then -- [:alpha:], [.x.], [=x=] as a whole
                put(ssub(pattern, i, close + 1))
                i = close + 2
            else
                if c == "]" then
                    bracket = false
                end
                put(c)
                i = i + 1
            end
        elseif c == "[" then
            -- "[", an optional "^", then a "]" that is a member, not the end
            local j = i + 1
            if ssub(pattern, j, j) == "^" then
                j = j + 1
            end
            if ssub(pattern, j, j) == "]" then
                j = j + 1
            end
            put(ssub(pattern, i, j - 1))
            bracket = true
            i = j
        else
            put(c)
            i = i + 1
        end
    end
    return tconcat(out)
end

if type(rawget(_G, "regex")) == "table" then
    _G.regex.compat = regex_compat
end

-- [[ logging ]] --
_G.RECENT_EVENTS_LIMIT = rawget(_G, "RECENT_EVENTS_LIMIT") or 16
local recent_events = rlist:check(rawget(_G, "recent_events")) or rlist:new(_G.RECENT_EVENTS_LIMIT)
_G.recent_events = recent_events

-- "2006-01-02T15:04:05+07:00" in local time; t defaults to now.
function _G.format_timestamp(t)
    t = mfloor(tonumber(t) or os.time())
    local s = os.date("%Y-%m-%dT%H:%M:%S%z", t)
    return (sgsub(s, "([+-]%d%d)(%d%d)$", "%1:%2"))
end

local function tostrings(...)
    local n = select("#", ...)
    if n == 1 then
        return tostring((...))
    end
    local t = {}
    for i = 1, n do
        t[i] = tostring((select(i, ...)))
    end
    return tconcat(t, "\t")
end

-- "file.lua:12" of the function 3 levels above the caller of emit
local function where()
    local info = debug.getinfo(4, "Sl")
    if not info then
        return "?"
    end
    local src = info.source or "?"
    local c = sbyte(src, 1)
    if c == 64 then -- "@path/to/file.lua"
        src = smatch(src, "[^/]*$", 2)
    elseif c == 61 then -- "=name"
        src = "<" .. ssub(src, 2) .. ">"
    else
        src = info.short_src
    end
    return sformat("%s:%d", src, info.currentline or 0)
end

-- Called directly (not as a tail call) by the functions below, so that level 4
-- is their caller.
local function emit(msg)
    if rawget(_G, "NDEBUG") then
        return
    end
    _G.print(sformat("%s %s", where(), msg))
end

local function addevent(msg)
    local now = os.time()
    local last = recent_events:get(1)
    if last and last.msg == msg then
        last.count = last.count + 1
        last.tstamp = now
        return
    end
    recent_events:push({ msg = msg, count = 1, tstamp = now })
end

-- log(...) and logf(fmt, ...) write one line to the server log, with the source
-- position (suppressed when _G.NDEBUG is set).
function _G.log(...)
    emit(tostrings(...))
end

function _G.logf(fmt, ...)
    emit(sformat(fmt, ...))
end

-- evlog and evlogf also record the line in the recent events that ruleset.stats
-- shows (repeats of the newest event are counted, not repeated).
function _G.evlog(...)
    local msg = tostrings(...)
    addevent(msg)
    emit(msg)
end

function _G.evlogf(fmt, ...)
    local msg = sformat(fmt, ...)
    addevent(msg)
    emit(msg)
end

-- [[ routines ]] --

-- Resumes a routine parked by future:get() or await.callback. It runs until its
-- next wait, nested in the caller.
local function wake(co)
    if co_status(co) ~= "suspended" then
        return -- finished, cancelled, or already running
    end
    local ok, err = co_resume(co)
    if not ok then
        evlogf("async: a resumed routine failed: %s", tostring(err))
    end
end

local function park(what)
    local _, ismain = co_running()
    if ismain or not co_isyieldable() then
        error(what .. ": not in an asynchronous routine", 3)
    end
    return co_yield()
end

local future = {}
local future_mt = { __name = "future", __index = future }

-- future:get() (alias future:wait()) waits for the routine and returns what
-- finish received: true, results... or false, error.
function future:get()
    if not self.done then
        local co = co_running()
        local waiters = self.waiters
        if not waiters then
            waiters = {}
            self.waiters = waiters
        end
        waiters[#waiters + 1] = co
        repeat
            park("future:get")
        until self.done
    end
    local r = self.result
    return tunpack(r, 1, r.n)
end

future.wait = future.get

function future:isdone()
    return self.done
end

-- async(f, ...) runs f(...) as an asynchronous routine until its first wait and
-- returns a future for its results.
function _G.async(f, ...)
    local fut = setmetatable({ done = false }, future_mt)
    local function finish(...)
        fut.result = pack(...)
        fut.done = true
        local waiters = fut.waiters
        if waiters then
            fut.waiters = nil
            for i = 1, #waiters do
                wake(waiters[i])
            end
        end
    end
    local co, err = neosocksd.async(finish, f, ...)
    if not co and not fut.done then
        finish(false, err)
    end
    return fut
end

-- await.callback(fn, ...): calls fn(callback, ...) and waits until something
-- calls callback(...); returns the arguments of that (first) call.
function await.callback(fn, ...)
    local co = co_running()
    local result, waiting
    local function callback(...)
        if result then
            return
        end
        result = pack(...)
        if waiting then
            wake(co)
        end
    end
    fn(callback, ...)
    if not result then
        waiting = true
        repeat
            park("await.callback")
        until result
    end
    return tunpack(result, 1, result.n)
end

-- [[ addresses ]] --

local function mask4(len)
    return ~((1 << (32 - len)) - 1) & 0xFFFFFFFF
end

-- the mask of the first `len` bits of a 64-bit half (len in 0..64)
local function mask64(len)
    return ~((1 << (64 - len)) - 1)
end

-- "addr/len" or a bare "addr" (a full-length prefix) -> addr, len; nil when
-- malformed or the length is too long. `brackets`: IPv6 may come in [].
local function split_cidr(s, maxlen, brackets, level)
    if type(s) ~= "string" then
        error(sformat("CIDR string expected, got %s", type(s)), level + 1)
    end
    local open, close = "", ""
    if brackets then
        open, close = "%[?", "%]?"
    end
    local addr, len = smatch(s, "^%s*" .. open .. "([^/%s%]]+)" .. close .. "/(%d+)%s*$")
    if addr then
        len = tonumber(len)
    else
        addr, len = smatch(s, "^%s*" .. open .. "([^/%s%]]+)" .. close .. "%s*$"), maxlen
    end
    if addr and len <= maxlen then
        return addr, len
    end
    return nil
end

local function cidr4(s, level)
    local addr, len = split_cidr(s, 32, false, level)
    local ip = addr and parse_ipv4(addr)
    if not ip then
        error(sformat("invalid IPv4 CIDR %q", s), level)
    end
    if ip & mask4(len) ~= ip then
        error(sformat("invalid IPv4 CIDR %q: host bits are set", s), level)
    end
    return ip, len
end

local function cidr6(s, level)
    local addr, len = split_cidr(s, 128, true, level)
    local hi, lo
    if addr then
        hi, lo = parse_ipv6(addr)
    end
    if not hi then
        error(sformat("invalid IPv6 CIDR %q", s), level)
    end
    local aligned
    if len <= 64 then
        aligned = hi & mask64(len) == hi and lo == 0
    else
        aligned = lo & mask64(len - 64) == lo
    end
    if not aligned then
        error(sformat("invalid IPv6 CIDR %q: host bits are set", s), level)
    end
    return hi, lo, len
end

-- parse_cidr("10.0.0.0/8") -> subnet (integer), prefix length. A bare address
-- is a /32. Raises on errors, also when bits beyond the prefix are set.
function _G.parse_cidr(s)
    return cidr4(s, 3)
end

-- parse_cidr6("fe80::/10") -> high 64 bits, low 64 bits, prefix length.
function _G.parse_cidr6(s)
    return cidr6(s, 3)
end

-- RFC 5952 text of an IPv6 address given as two 64-bit halves.
local function format_ipv6(hi, lo)
    local g = {}
    for i = 0, 3 do
        g[i + 1] = (hi >> (48 - 16 * i)) & 0xFFFF
        g[i + 5] = (lo >> (48 - 16 * i)) & 0xFFFF
    end
    if g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 and g[5] == 0 and g[6] == 0xFFFF then
        return sformat("::ffff:%d.%d.%d.%d", g[7] >> 8, g[7] & 0xFF, g[8] >> 8, g[8] & 0xFF)
    end
    local best, bestlen, i = 0, 1, 1
    while i <= 8 do
        if g[i] == 0 then
            local j = i
            while j < 8 and g[j + 1] == 0 do
                j = j + 1
            end
            if j - i + 1 > bestlen then
                best, bestlen = i, j - i + 1
            end
            i = j + 1
        else
            i = i + 1
        end
    end
    local parts = {}
    for k = 1, 8 do
        parts[k] = sformat("%x", g[k])
    end
    if best == 0 then
        return tconcat(parts, ":")
    end
    return tconcat(parts, ":", 1, best - 1) .. "::" .. tconcat(parts, ":", best + bestlen, 8)
end
M.format_ipv6 = format_ipv6

-- Host names compare in lower case without a trailing dot; IPv6 literals in
-- their RFC 5952 form.
local function normhost(h)
    if sfind(h, ":", 1, true) then
        local hi, lo = parse_ipv6(h)
        if hi then
            return format_ipv6(hi, lo)
        end
        return slower(h)
    end
    h = slower(h)
    if sbyte(h, -1) == 46 then
        h = ssub(h, 1, -2)
    end
    return h
end

-- "host:port" -> normalized host, port (integer); nil if malformed. The last
-- answer is kept: a request meets many matchers in a row.
local last_addr, last_host, last_port
local function hostport(addr)
    if addr == last_addr then
        return last_host, last_port
    end
    if type(addr) ~= "string" then
        return nil
    end
    local host, port
    if sbyte(addr, 1) == 91 then -- "["
        host, port = smatch(addr, "^%[([^%]]+)%]:(%d+)$")
    else
        host, port = smatch(addr, "^([^:]+):(%d+)$")
    end
    if host then
        port = tonumber(port)
        if port > 65535 then
            host, port = nil, nil
        else
            host = normhost(host)
        end
    end
    last_addr, last_host, last_port = addr, host, port
    return host, port
end

-- "host:port" split as written (IPv6 keeps its brackets); nil if malformed.
local function rawsplit(addr)
    if sbyte(addr, 1) == 91 then
        return smatch(addr, "^(%[[^%]]+%]):(%d+)$")
    end
    return smatch(addr, "^([^:]+):(%d+)$")
end

-- The address a matcher looks at: its first argument when that is a string,
-- else the last one (route tables pass the address after the integers).
local function subject(a, ...)
    if type(a) == "string" then
        return a
    end
    local n = select("#", ...)
    if n > 0 then
        local s = select(n, ...)
        if type(s) == "string" then
            return s
        end
    end
    return nil
end

-- [[ _G.route matchers: IPv4 ]] --
local inet = {}

-- The IPv4 address of a matcher's arguments: (ip), (ip, addr) or (addr). In a
-- route6 table, (high, low, addr), it has none.
local function ipv4_of(a, ...)
    if type(a) == "number" then
        if select("#", ...) >= 2 then
            return nil
        end
        return a
    end
    local host = hostport(subject(a, ...))
    return host and parse_ipv4(host)
end

-- inet.subnet("10.0.0.0/8") or inet.subnet({ cidr, ... }). A list is matched by
-- one hash lookup per distinct prefix length in it.
function inet.subnet(s)
    if type(s) ~= "table" then
        local subnet, len = cidr4(s, 3)
        local mask = mask4(len)
        return function(...)
            local ip = ipv4_of(...)
            return ip ~= nil and ip & mask == subnet
        end
    end
    local buckets = {}
    for _, v in pairs(s) do
        local subnet, len = cidr4(v, 3)
        local set = buckets[len]
        if not set then
            set = {}
            buckets[len] = set
        end
        set[subnet] = true
    end
    if buckets[0] then
        return function(...)
            return ipv4_of(...) ~= nil
        end
    end
    local masks, sets, n = {}, {}, 0
    for len = 32, 1, -1 do
        if buckets[len] then
            n = n + 1
            masks[n], sets[n] = mask4(len), buckets[len]
        end
    end
    return function(...)
        local ip = ipv4_of(...)
        if ip == nil then
            return false
        end
        for i = 1, n do
            if sets[i][ip & masks[i]] then
                return true
            end
        end
        return false
    end
end

_G.inet = inet

-- [[ _G.route6 matchers: IPv6 ]] --
local inet6 = {}

-- The IPv6 address of a matcher's arguments: (high, low), (high, low, addr) or
-- (addr). In a route table, (ip, addr), it has none.
local function ipv6_of(a, b, ...)
    if type(a) == "number" then
        if type(b) == "number" then
            return a, b
        end
        return nil
    end
    local host = hostport(subject(a, b, ...))
    if host then
        return parse_ipv6(host)
    end
    return nil
end

function inet6.subnet(s)
    if type(s) ~= "table" then
        local hi0, lo0, len = cidr6(s, 3)
        if len <= 64 then
            local mask = mask64(len)
            return function(...)
                local hi = ipv6_of(...)
                return hi ~= nil and hi & mask == hi0
            end
        end
        local mask = mask64(len - 64)
        return function(...)
            local hi, lo = ipv6_of(...)
            return hi == hi0 and lo & mask == lo0
        end
    end
    -- buckets[len]: for len <= 64 a set of masked high halves, else a map from
    -- the high half to a set of masked low halves
    local buckets = {}
    for _, v in pairs(s) do
        local hi, lo, len = cidr6(v, 3)
        local set = buckets[len]
        if not set then
            set = {}
            buckets[len] = set
        end
        if len <= 64 then
            set[hi] = true
        else
            local sub = set[hi]
            if not sub then
                sub = {}
                set[hi] = sub
            end
            sub[lo] = true
        end
    end
    if buckets[0] then
        return function(...)
            return ipv6_of(...) ~= nil
        end
    end
    local lens, masks, sets, n = {}, {}, {}, 0
    for len = 128, 1, -1 do
        if buckets[len] then
            n = n + 1
            lens[n], sets[n] = len, buckets[len]
            masks[n] = len <= 64 and mask64(len) or mask64(len - 64)
        end
    end
    return function(...)
        local hi, lo = ipv6_of(...)
        if hi == nil then
            return false
        end
        for i = 1, n do
            if lens[i] <= 64 then
                if sets[i][hi & masks[i]] then
                    return true
                end
            else
                local sub = sets[i][hi]
                if sub and sub[lo & masks[i]] then
                    return true
                end
            end
        end
        return false
    end
end

_G.inet6 = inet6

-- [[ _G.redirect* matchers: the request address ]] --
local match = {}

local function strings_of(s, what, level)
    if type(s) == "string" then
        return { s }
    end
    if type(s) ~= "table" then
        error(sformat("%s: string or list of strings expected, got %s", what, type(s)), level)
    end
    local t = {}
    for _, v in pairs(s) do
        if type(v) ~= "string" then
            error(sformat("%s: string expected in the list, got %s", what, type(v)), level)
        end
        t[#t + 1] = v
    end
    return t
end

function match.any()
    return function()
        return true
    end
end

-- match.exact("host:port" or list): the whole address; host names ignore case
-- and a trailing dot, IPv6 literals compare by value.
function match.exact(s)
    local want = {} -- want[host][port] = true
    for _, v in ipairs(strings_of(s, "match.exact", 3)) do
        local host, port = hostport(v)
        if not host then
            error(sformat("match.exact: %q is not a \"host:port\" address", v), 2)
        end
        local ports = want[host]
        if not ports then
            ports = {}
            want[host] = ports
        end
        ports[port] = true
    end
    return function(...)
        local host, port = hostport(subject(...))
        if not host then
            return false
        end
        local ports = want[host]
        return ports ~= nil and ports[port] == true
    end
end

-- match.host("example.com" or list): the host, any port.
function match.host(s)
    local want = {}
    for _, v in ipairs(strings_of(s, "match.host", 3)) do
        if sbyte(v, 1) == 91 then
            v = smatch(v, "^%[(.*)%]$") or v
        end
        want[normhost(v)] = true
    end
    return function(...)
        local host = hostport(subject(...))
        return host ~= nil and want[host] == true
    end
end

-- match.port(80), match.port(from, to), or match.port({ 80, 443, { 8000, 8999 } }):
-- a list holds ports and { from, to } ranges.
function match.port(from, to)
    local ports, ranges = {}, {}
    local function add(a, b)
        a, b = mtointeger(a), mtointeger(b or a)
        if not a or not b then
            error("match.port: integer ports expected", 4)
        end
        if a == b then
            ports[a] = true
        else
            ranges[#ranges + 1] = { a, b }
        end
    end
    if type(from) == "table" then
        for _, v in pairs(from) do
            if type(v) == "table" then
                add(v[1], v[2])
            else
                add(v)
            end
        end
    else
        add(from, to)
    end
    local nranges = #ranges
    return function(...)
        local _, port = hostport(subject(...))
        if not port then
            return false
        end
        if ports[port] then
            return true
        end
        for i = 1, nranges do
            local r = ranges[i]
            if r[1] <= port and port <= r[2] then
                return true
            end
        end
        return false
    end
end

-- "*.Example.COM." -> "example.com"
local function normdomain(d)
    d = slower(d)
    d = sgsub(d, "^%*?%.+", "")
    d = sgsub(d, "%.+$", "")
    return d
end

-- Adds a domain to a suffix tree of labels: tree.com.example = true matches
-- example.com and every name under it.
local function tree_add(tree, d)
    local labels, n = {}, 0
    for l in sgmatch(d, "[^.]+") do
        n = n + 1
        labels[n] = l
    end
    if n == 0 then
        return true -- the root: everything
    end
    local node = tree
    for i = n, 2, -1 do
        local l = labels[i]
        local nx = node[l]
        if nx == nil then
            nx = {}
            node[l] = nx
        elseif type(nx) ~= "table" then
            return false -- a shorter suffix already covers it
        end
        node = nx
    end
    node[labels[1]] = true
    return false
end

local labels_scratch = {}

local function tree_match(tree, host)
    local n = 0
    local labels = labels_scratch
    for l in sgmatch(host, "[^.]+") do
        n = n + 1
        labels[n] = l
    end
    local node = tree
    for i = n, 1, -1 do
        node = node[labels[i]]
        if type(node) ~= "table" then
            return node ~= nil and node ~= false
        end
    end
    return false
end

-- match.domaintree(list of domains or a prebuilt tree): a domain and all names
-- under it, in time proportional to the number of labels of the host.
function match.domaintree(t)
    if type(t) ~= "table" then
        error("match.domaintree: list of domains or tree expected", 2)
    end
    local tree, all = t, false
    if type(t[1]) == "string" then
        tree = {}
        for _, v in ipairs(t) do
            if type(v) ~= "string" then
                error("match.domaintree: string expected in the list", 2)
            end
            if tree_add(tree, normdomain(v)) then
                all = true
            end
        end
    end
    if all then
        return function(...)
            return hostport(subject(...)) ~= nil
        end
    end
    return function(...)
        local host = hostport(subject(...))
        return host ~= nil and tree_match(tree, host)
    end
end

-- match.domain("example.com" or ".example.com" or list): the domain itself and
-- every name under it.
function match.domain(s)
    if type(s) == "table" then
        return match.domaintree(strings_of(s, "match.domain", 3))
    end
    if type(s) ~= "string" then
        error("match.domain: string or list of strings expected", 2)
    end
    local d = normdomain(s)
    if d == "" then
        return function(...)
            return hostport(subject(...)) ~= nil
        end
    end
    local suffix = "." .. d
    local n = -#suffix
    return function(...)
        local host = hostport(subject(...))
        return host ~= nil and (host == d or ssub(host, n) == suffix)
    end
end

-- match.pattern(lua_pattern or list): string.find on the raw address.
function match.pattern(s)
    local pats = strings_of(s, "match.pattern", 3)
    local n = #pats
    return function(...)
        local addr = subject(...)
        if not addr then
            return false
        end
        for i = 1, n do
            if sfind(addr, pats[i]) then
                return true
            end
        end
        return false
    end
end

-- match.regex(re or list): regex.compile(re):find on the raw address.
function match.regex(s)
    local res = strings_of(s, "match.regex", 3)
    local n = #res
    for i = 1, n do
        res[i] = _G.regex.compile(res[i])
    end
    return function(...)
        local addr = subject(...)
        if not addr then
            return false
        end
        for i = 1, n do
            if res[i]:find(addr) then
                return true
            end
        end
        return false
    end
end

_G.match = match

-- [[ composite matchers ]] --
local composite = {}

function composite.inverse(m)
    return function(...)
        return not m(...)
    end
end

function composite.anyof(t)
    local n = #t
    return function(...)
        for i = 1, n do
            if t[i](...) then
                return true
            end
        end
        return false
    end
end

function composite.allof(t)
    local n = #t
    return function(...)
        for i = 1, n do
            if not t[i](...) then
                return false
            end
        end
        return true
    end
end

-- composite.maybe(t, k): t[k](...) if t[k] is set at the time of the request,
-- else false. For matchers loaded later, like composite.maybe(_G, "biglist").
function composite.maybe(t, k)
    return function(...)
        local m = t[k]
        if m then
            return m(...)
        end
        return false
    end
end

local matchtab -- defined with the callbacks

-- composite.subchain(t, k): runs the rule table t[k] as one rule; its first
-- matching rule decides, with its own action and tag.
function composite.subchain(t, k)
    return function(...)
        local tab = t[k]
        if tab then
            return matchtab(tab, ...)
        end
        return nil
    end
end

_G.composite = composite

-- [[ actions ]] --
-- An action gets the request address and returns addr, proxyN, ..., proxy1
-- (nil to reject). Proxies are given to rule.* in dial order, first hop first.
local rule = {}

local function reversed(...)
    local n = select("#", ...)
    local t = {}
    for i = 1, n do
        local v = select(i, ...)
        if type(v) ~= "string" then
            error(sformat("proxy URI string expected, got %s", type(v)), 3)
        end
        t[n - i + 1] = v
    end
    return t, n
end

-- The destination of rule.redirect/rule.loopback: a function from the request
-- address to the new one. "host:port" replaces both; "host" (or "host:", or a
-- bare or bracketed IPv6 address) keeps the request's port; ":port" keeps its
-- host.
local function destination(dst, what)
    if type(dst) ~= "string" then
        error(sformat("%s: address string expected, got %s", what, type(dst)), 3)
    end
    local host, port
    if sbyte(dst, 1) == 91 then
        host, port = smatch(dst, "^(%[[^%]]+%]):?(%d*)$")
    else
        host, port = smatch(dst, "^([^:]*):(%d*)$")
        if not host then
            if parse_ipv6(dst) then
                host, port = "[" .. dst .. "]", ""
            elseif not sfind(dst, "[:%s]") then
                host, port = dst, ""
            end
        end
    end
    if not host or (host == "" and port == "") or sfind(host, "[%s/@]") then
        error(sformat("%s: invalid address %q", what, dst), 3)
    end
    if host ~= "" and port ~= "" then
        return function()
            return dst
        end
    end
    if host ~= "" then
        local prefix = host .. ":"
        return function(addr)
            local _, p = rawsplit(addr)
            if not p then
                error(sformat("%s: invalid request address %q", what, addr), 0)
            end
            return prefix .. p
        end
    end
    local suffix = ":" .. port
    return function(addr)
        local h = rawsplit(addr)
        if not h then
            error(sformat("%s: invalid request address %q", what, addr), 0)
        end
        return h .. suffix
    end
end

function rule.direct()
    return function(addr)
        return addr
    end
end

function rule.reject()
    return function()
        return nil
    end
end

local run_default, dispatch -- defined with the callbacks

-- rule.default(): whatever _G.route_default does.
function rule.default()
    return function(addr)
        return run_default(addr)
    end
end

-- rule.redirect(dst, proxy1, ..., proxyN): connect to dst through the chain.
function rule.redirect(dst, ...)
    local chain, n = reversed(...)
    local map = destination(dst, "rule.redirect")
    if n == 0 then
        return function(addr)
            return map(addr)
        end
    end
    return function(addr)
        return map(addr), tunpack(chain, 1, n)
    end
end

-- rule.proxy(proxy1, ..., proxyN): the same destination through the chain.
function rule.proxy(...)
    local chain, n = reversed(...)
    return function(addr)
        return addr, tunpack(chain, 1, n)
    end
end

-- rule.rewrite(pattern, replace, proxy1, ...): string.gsub on the address.
function rule.rewrite(pattern, replace, ...)
    if type(pattern) ~= "string" then
        error("rule.rewrite: pattern string expected", 2)
    end
    local chain, n = reversed(...)
    return function(addr)
        local s = sgsub(addr, pattern, replace)
        return s, tunpack(chain, 1, n)
    end
end

-- rule.resolve(): the host name resolved here (await.resolve), same port.
function rule.resolve()
    return function(addr)
        local host, port = rawsplit(addr)
        if not host then
            error(sformat("rule.resolve: invalid address %q", addr), 0)
        end
        if sbyte(host, 1) == 91 then
            return addr
        end
        local ip = await.resolve(host)
        if not ip then
            error(sformat("rule.resolve: cannot resolve %q", host), 0)
        end
        if sfind(ip, ":", 1, true) then
            return sformat("[%s]:%s", ip, port)
        end
        return sformat("%s:%s", ip, port)
    end
end

-- rule.maybe(t, k): the action t[k] if set at the time of the request, else
-- reject.
function rule.maybe(t, k)
    return function(...)
        local action = t[k]
        if action then
            return action(...)
        end
        return nil
    end
end

local loop_depth = setmetatable({}, { __mode = "k" })
local LOOPBACK_LIMIT = 8

-- rule.loopback(dst): runs the rule tables again for a new address (resolve,
-- route or route6 according to its host). dst as in rule.redirect; without it
-- the address is kept (useful after a rule.rewrite-like change elsewhere).
function rule.loopback(dst)
    local map = dst ~= nil and destination(dst, "rule.loopback") or function(addr)
        return addr
    end
    return function(addr)
        local co = co_running()
        local depth = loop_depth[co] or 0
        if depth >= LOOPBACK_LIMIT then
            error(sformat("rule.loopback: more than %d loops for %q", LOOPBACK_LIMIT, addr), 0)
        end
        loop_depth[co] = depth + 1
        local r = pack(pcall(dispatch, map(addr)))
        loop_depth[co] = depth > 0 and depth or nil
        if not r[1] then
            error(r[2], 0)
        end
        return tunpack(r, 2, r.n)
    end
end

_G.rule = rule

-- [[ load balancing ]] --
local lb = {}

-- lb.roundrobin({ action1, action2, ... })
function lb.roundrobin(t)
    local actions = {}
    for i, v in ipairs(t) do
        actions[i] = v
    end
    local n = #actions
    if n == 0 then
        error("lb.roundrobin: empty list", 2)
    end
    local i = 0
    return function(...)
        i = i % n + 1
        return actions[i](...)
    end
end

-- lb.iwrr({ { weight, action }, ... }): interleaved weighted round robin. Each
-- cycle has max(weight) rounds; round r visits, in order, every action whose
-- weight is at least r. Weights that are not integers are scaled to integers
-- (to `cyclesize` rounds, default 100). A weight of 0 drains that action (an
-- operator's rpc.set_weight(i, 0) rebuilds the balancer so); with no positive
-- weight at all, or an empty list, every request is rejected.
function lb.iwrr(t, cyclesize)
    local weights, actions, n, maxw, integral = {}, {}, 0, 0, true
    for _, v in ipairs(t) do
        local w, action = tonumber(v[1]), v[2]
        if not w or w < 0 or w ~= w then
            error("lb.iwrr: weights must be non-negative numbers", 2)
        end
        if action == nil then
            error("lb.iwrr: { weight, action } expected", 2)
        end
        if w > 0 then
            n = n + 1
            weights[n], actions[n] = w, action
            if w > maxw then
                maxw = w
            end
            if mtointeger(w) == nil then
                integral = false
            end
        end
    end
    if n == 0 then
        return function()
            return nil
        end
    end
    if not integral or cyclesize then
        local size = mtointeger(cyclesize) or 100
        if size < 1 then
            error("lb.iwrr: the cycle size must be a positive integer", 2)
        end
        if not integral or maxw > size then
            for i = 1, n do
                weights[i] = math.max(1, mfloor(weights[i] / maxw * size + 0.5))
            end
            maxw = size
        end
    end
    local i, round = 0, 1
    return function(...)
        repeat
            i = i + 1
            if i > n then
                i = 1
                round = round % maxw + 1
            end
        until weights[i] >= round
        return actions[i](...)
    end
end

_G.lb = lb

-- [[ RPC ]] --
local rpc = rawget(_G, "rpc")
if type(rpc) ~= "table" then
    rpc = {}
    _G.rpc = rpc
end

function rpc.echo(...)
    return ...
end

local msgh = rawget(_G, "msgh")
if type(msgh) ~= "table" then
    msgh = {}
    _G.msgh = msgh
end

-- neosocksd.sendmsg(target, "log", ...) logs the arguments on the target.
function msgh.log(...)
    evlog(...)
end

-- target: "addr" or { addr, proxyN, ..., proxy1 } (the order of await.invoke)
local function target_args(target, what)
    if type(target) == "string" then
        return target
    end
    if type(target) == "table" and type(target[1]) == "string" then
        return tunpack(target, 1, #target)
    end
    error(sformat("%s: target address or { addr, proxyN, ..., proxy1 } expected", what), 3)
end

local function call_code(tab, func, what, ...)
    if type(func) ~= "string" then
        error(sformat("%s: function name string expected", what), 3)
    end
    local args = select("#", ...) > 0 and _G.marshal(...) or ""
    return sformat("return _G.%s[%q](%s)", tab, func, args)
end
M.rpc_code = function(func, ...)
    return call_code("rpc", func, "rpc_code", ...)
end

-- await.rpcall(target, func, ...): runs _G.rpc[func](...) on another node and
-- returns true, its results... or false, error.
function await.rpcall(target, func, ...)
    local code = call_code("rpc", func, "await.rpcall", ...)
    local ok, result = await.invoke(code, target_args(target, "await.rpcall"))
    if not ok then
        return false, result
    end
    if type(result) == "function" then
        return result()
    end
    return true, result
end

-- neosocksd.sendmsg(target, func, ...): runs _G.msgh[func](...) on another node,
-- fire and forget.
function neosocksd.sendmsg(target, func, ...)
    local code = call_code("msgh", func, "neosocksd.sendmsg", ...)
    return neosocksd.invoke(code, target_args(target, "neosocksd.sendmsg"))
end

-- [[ deciding ]] --
-- [[ failover and health-checked groups ]] --
-- Routing that sees the outcome: the attempts go through await.forward, so a
-- dead upstream costs a retry on the next one, not a client error. A chain is
-- a list of proxy URIs in await.forward's (and a route callback's) order:
-- proxyN, ..., proxy1, the last being the first hop; a single URI string is a
-- one-hop chain and {} (or "") a direct connection.

local function chain_args(chain, what)
    if chain == nil or chain == "" then
        return {}, 0
    end
    if type(chain) == "string" then
        return { chain }, 1
    end
    if type(chain) ~= "table" then
        error(sformat("%s: a chain is a list of proxy URIs, got %s", what, type(chain)), 3)
    end
    for i = 1, #chain do
        if type(chain[i]) ~= "string" then
            error(sformat("%s: proxy URI string expected at #%d, got %s", what, i, type(chain[i])), 3)
        end
    end
    return chain, #chain
end

-- libruleset.failover(addr, chains[, forward]): await.forward(addr, chain...)
-- through each chain in turn until one connects. Returns true and the chain's
-- index, or nil and the last error, so that a callback ending in
-- `return libruleset.failover(addr, chains)` rejects when every chain failed.
-- Only inside ruleset.resolve/route/route6 (await.forward's rule).
function M.failover(addr, chains, forward)
    if type(chains) ~= "table" then
        error(sformat("libruleset.failover: chain list expected, got %s", type(chains)), 2)
    end
    forward = forward or await.forward
    local lasterr = "no chain to try"
    for i = 1, #chains do
        local t, n = chain_args(chains[i], "libruleset.failover")
        local ok, err = forward(addr, tunpack(t, 1, n))
        if ok then
            return true, i
        end
        lasterr = err or lasterr
    end
    return nil, lasterr
end

-- rule.failover(chains): an action doing libruleset.failover on the request.
function rule.failover(chains)
    if type(chains) ~= "table" then
        error(sformat("rule.failover: chain list expected, got %s", type(chains)), 2)
    end
    return function(addr)
        return M.failover(addr, chains)
    end
end

local groups = rawget(_G, "failover_groups")
if type(groups) ~= "table" then
    groups = {}
    _G.failover_groups = groups -- kept across ruleset reloads, like rule_hits
end
M.groups = groups

local group = {}
group.__index = group

local GROUP_DEFAULTS = {
    mode = "failover", -- "failover": the first healthy member in list order; "latency": the fastest
    max_fails = 3,     -- failures within fail_window that take a member out
    fail_window = 30,  -- seconds
    cooldown = 60,     -- seconds out before it is tried again
    hysteresis = 10,   -- seconds a member must stay better before traffic moves to it
    ewma = 0.3,        -- weight of a new connect time in the latency average
}

local function now_of(g)
    return g.clock()
end

-- lb.group(name, members[, opts]): a health-checked group of upstream chains.
-- members: { { name = "a", chain = { ... }, weight = 1 }, ... } (or
-- { "a", chain }). opts: the GROUP_DEFAULTS above, plus
--   probe = { target = "host:port", interval = 30, backoff = 2, max_interval = 600 }
--           active TCP-connect probes through each member (await.connect); off
--           unless given, so that nothing probes every node unasked
--   clock = function() return seconds end (neosocksd.now), forward = await.forward,
--   connect = await.connect: replaceable for tests and special transports.
-- A group with the same name replaces the old one but keeps its members'
-- state (by member name), so a ruleset reload does not forget who is down.
function lb.group(name, members, opts)
    if type(name) ~= "string" or name == "" then
        error("lb.group: a name string expected", 2)
    end
    if type(members) ~= "table" or #members == 0 then
        error("lb.group: a non-empty member list expected", 2)
    end
    opts = opts or {}
    local g = setmetatable({ name = name, members = {}, byname = {}, switches = 0 }, group)
    for k, v in pairs(GROUP_DEFAULTS) do
        g[k] = opts[k] == nil and v or opts[k]
    end
    if g.mode ~= "failover" and g.mode ~= "latency" then
        error(sformat("lb.group: unknown mode %q", tostring(g.mode)), 2)
    end
    for _, k in ipairs({ "max_fails", "fail_window", "cooldown", "hysteresis" }) do
        if type(g[k]) ~= "number" or g[k] < 0 then
            error(sformat("lb.group: %s must be a non-negative number", k), 2)
        end
    end
    g.clock = opts.clock or neosocksd.now
    g.forward_fn = opts.forward
    g.connect_fn = opts.connect
    local old = groups[name]
    for i, m in ipairs(members) do
        local mname = m.name or m[1]
        local chain = m.chain or m[2] or {}
        if type(mname) ~= "string" or g.byname[mname] then
            error(sformat("lb.group: member #%d needs a unique name", i), 2)
        end
        local args, nargs = chain_args(chain, "lb.group")
        local prev = old and old.byname[mname]
        local st = {
            name = mname, chain = chain, args = args, nargs = nargs, index = i,
            weight = tonumber(m.weight) or 1,
            drained = false, fails = {}, down_until = 0,
            successes = 0, failures = 0, latency = nil,
            probe_due = 0, probe_interval = nil,
        }
        if prev then
            for _, k in ipairs({ "drained", "fails", "down_until", "successes", "failures", "latency" }) do
                st[k] = prev[k]
            end
            if m.weight == nil then
                st.weight = prev.weight
            end
        end
        g.members[i], g.byname[mname] = st, st
    end
    if old then
        g.current = old.current and g.byname[old.current.name]
        g.forced = old.forced and g.byname[old.forced.name]
        g.switches = old.switches
    end
    if opts.probe then
        local p = opts.probe
        if type(p) ~= "table" or type(p.target) ~= "string" then
            error("lb.group: probe = { target = \"host:port\", ... } expected", 2)
        end
        g.probe = {
            target = p.target,
            interval = tonumber(p.interval) or 30,
            backoff = tonumber(p.backoff) or 2,
            max_interval = tonumber(p.max_interval) or 600,
        }
    end
    groups[name] = g
    if old and old.stop_probes then
        old:stop_probes()
    end
    return g
end

-- A member that may take traffic now.
function group:usable(m, now)
    return not m.drained and m.weight > 0 and now >= m.down_until
end

function group:state_of(m, now)
    now = now or now_of(self)
    if m.drained or m.weight <= 0 then
        return "drained"
    elseif now < m.down_until then
        return "down"
    end
    return "up"
end

-- a ranks before b
function group:better(a, b)
    if self.mode == "latency" then
        local la, lb_ = a.latency or math.huge, b.latency or math.huge
        if la ~= lb_ then
            return la < lb_
        end
    end
    return a.index < b.index
end

-- The member traffic goes to now, after hysteresis: a better member takes
-- over only once it has stayed better for `hysteresis` seconds; a current
-- member that is out is left at once.
function group:select(now)
    self.steady = nil
    if self.forced then
        return self.forced
    end
    local members, best = self.members, nil
    local failover, until_ = self.mode == "failover", math.huge
    if failover then
        -- List order: the first usable member is the best. The members ahead
        -- of it are out: drained or weighted 0 (until an operator acts) or
        -- down until their cool-down ends; the earliest end bounds how long
        -- this choice holds without a look at the others.
        for i = 1, #members do
            local m = members[i]
            if not m.drained and m.weight > 0 then
                local down = m.down_until
                if now >= down then
                    best = m
                    break
                elseif down < until_ then
                    until_ = down
                end
            end
        end
    else
        for i = 1, #members do
            local m = members[i]
            if self:usable(m, now) and (best == nil or self:better(m, best)) then
                best = m
            end
        end
    end
    local cur = self.current
    if best == cur then
        self.challenger = nil
        if failover and cur then
            -- Settled: until `until_`, or until a failure, a probe or an
            -- operator changes a member (each clears self.steady), select
            -- would return cur again and change nothing; group:forward goes
            -- straight to it.
            self.steady, self.steady_until = cur, until_
        end
        return cur
    end
    if best == nil then
        return cur
    end
    if cur == nil or not self:usable(cur, now) then
        if cur ~= best then
            self.switches = self.switches + 1
            evlogf("group %s: %s -> %s", self.name, cur and cur.name or "none", best.name)
        end
        self.current, self.challenger = best, nil
        if failover then
            self.steady, self.steady_until = best, until_ -- as above, now that best == cur
        end
        return best
    end
    if best ~= cur and self:better(best, cur) then
        if self.challenger ~= best then
            self.challenger, self.challenger_since = best, now
        end
        if now - self.challenger_since >= self.hysteresis then
            self.switches = self.switches + 1
            evlogf("group %s: %s -> %s (preferred)", self.name, cur.name, best.name)
            self.current, self.challenger = best, nil
            if failover then
                self.steady, self.steady_until = best, until_
            end
            return best
        end
    else
        self.challenger = nil
    end
    return cur
end

-- The members in the order a request tries them: the selected one, the other
-- usable ones by rank, then (only when none is usable) the rest by rank.
function group:order(now)
    local first = self:select(now)
    if self.forced then
        return { self.forced }
    end
    local usable, rest = {}, {}
    for _, m in ipairs(self.members) do
        if m ~= first then
            if self:usable(m, now) then
                usable[#usable + 1] = m
            elseif not m.drained and m.weight > 0 then
                rest[#rest + 1] = m
            end
        end
    end
    local by = function(a, b)
        return self:better(a, b)
    end
    local out = {}
    if first and self:usable(first, now) then
        out[1] = first
    elseif first and not first.drained and first.weight > 0 then
        rest[#rest + 1] = first
    end
    tsort(usable, by)
    for _, m in ipairs(usable) do
        out[#out + 1] = m
    end
    if #out == 0 then
        tsort(rest, by)
        return rest
    end
    return out
end

function group:record_success(m, seconds)
    m.successes = m.successes + 1
    if m.fails[1] then
        m.fails = {}
    end
    if seconds then
        m.latency = m.latency and (m.latency + self.ewma * (seconds - m.latency)) or seconds
    end
end

function group:record_failure(m, now, err)
    self.steady = nil
    m.failures = m.failures + 1
    local kept = {}
    for _, t in ipairs(m.fails) do
        if now - t < self.fail_window then
            kept[#kept + 1] = t
        end
    end
    kept[#kept + 1] = now
    m.fails = kept
    if #kept >= self.max_fails and now >= m.down_until then
        m.down_until = now + self.cooldown
        m.fails = {}
        evlogf("group %s: %s is out for %gs after %d failures (%s)", self.name, m.name,
            self.cooldown, #kept, tostring(err))
    end
end

-- forward(addr, m's chain), without tunpack for the usual short chains
local function forward_via(forward, m, addr)
    local n, args = m.nargs, m.args
    if n == 0 then
        return forward(addr)
    elseif n == 1 then
        return forward(addr, args[1])
    elseif n == 2 then
        return forward(addr, args[1], args[2])
    end
    return forward(addr, tunpack(args, 1, n))
end

-- A member other than the selected one connected: the selected member failed
-- this request (or, while it waited, another one). Traffic moves now, and back
-- only after the hysteresis.
local function failed_over(self, m)
    self.steady = nil
    self.switches = self.switches + 1
    evlogf("group %s: %s -> %s (failover)", self.name,
        self.current and self.current.name or "none", m.name)
    self.current, self.challenger = m, nil
end

-- group:forward(addr): await.forward through the members in order. Returns
-- true and the member's name, or nil and the last error.
local function try_member(self, forward, m, addr)
    local clock = self.clock
    local t0 = clock()
    local ok, err = forward_via(forward, m, addr)
    local t1 = clock()
    if ok then
        self:record_success(m, t1 - t0)
        if m ~= self.current and not self.forced then
            failed_over(self, m)
        end
        return true
    end
    self:record_failure(m, t1, err)
    return false, err
end

local function group_forward(self, addr)
    local forward = self.forward_fn or await.forward
    local clock = self.clock
    local now = clock()
    local first = self.steady
    if first and now < self.steady_until then
        -- The healthy group (see group:select): the settled member, at the
        -- cost of a plain forward and its bookkeeping (record_success).
        local ok, err
        local n = first.nargs
        if n == 1 then
            ok, err = forward(addr, first.args[1])
        elseif n == 0 then
            ok, err = forward(addr)
        else
            ok, err = forward_via(forward, first, addr)
        end
        local t1 = clock()
        if ok then
            first.successes = first.successes + 1
            if first.fails[1] then
                first.fails = {}
            end
            local seconds, latency = t1 - now, first.latency
            first.latency = latency and (latency + self.ewma * (seconds - latency)) or seconds
            if first ~= self.current and not self.forced then
                failed_over(self, first) -- the group moved while this dial waited
            end
            return true, first.name
        end
        self:record_failure(first, t1, err)
        return self:forward_rest(addr, forward, first, t1)
    end
    -- The usual case first, without building the whole order: the selected
    -- member, usable, connects.
    local forced = self.forced
    if forced then
        -- The operator's choice, alone, whatever its state.
        local ok, err = try_member(self, forward, forced, addr)
        if ok then
            return true, forced.name
        end
        return nil, err
    end
    first = self:select(now)
    if first and self:usable(first, now) then
        local ok, err = try_member(self, forward, first, addr)
        if ok then
            return true, first.name
        end
        now = clock()
    end
    return self:forward_rest(addr, forward, first, now)
end
group.forward = group_forward

-- After `first` failed (or was not usable): the other members in order.
function group:forward_rest(addr, forward, first, now)
    local lasterr = "no usable member"
    for _, m in ipairs(self:order(now)) do
        if m ~= first then
            local ok, err = try_member(self, forward, m, addr)
            if ok then
                return true, m.name
            end
            lasterr = err or lasterr
        end
    end
    return nil, lasterr
end

-- group:action(): a rule action routing through the group.
function group:action()
    return function(addr)
        return group_forward(self, addr)
    end
end

-- Operator controls (also as rpc.group_*).
function group:member(name)
    local m = self.byname[name]
    if not m then
        error(sformat("group %s has no member %q", self.name, tostring(name)), 3)
    end
    return m
end

function group:drain(name, on)
    self:member(name).drained = on ~= false
    self.steady = nil
end

function group:set_weight(name, w)
    w = tonumber(w)
    if not w or w < 0 then
        error("group weight must be a non-negative number", 2)
    end
    self:member(name).weight = w
    self.steady = nil
end

function group:force(name)
    self.forced = name ~= nil and self:member(name) or nil
    self.steady = nil
end

-- One active probe of `m`: a TCP connection through its chain to the probe
-- target. The interval backs off while it fails.
function group:probe_once(m, now)
    local p = self.probe
    local connect = self.connect_fn or await.connect
    local t0 = now_of(self)
    local ok, err = connect(p.target, tunpack(m.args, 1, m.nargs))
    local t1 = now_of(self)
    self.steady = nil -- a probe may bring a member back before its cool-down ends
    if ok then
        m.down_until = 0
        self:record_success(m, t1 - t0)
        m.probe_interval = p.interval
    else
        self:record_failure(m, t1, err)
        m.probe_interval = math.min((m.probe_interval or p.interval) * p.backoff, p.max_interval)
    end
    m.probe_due = t1 + m.probe_interval
    return ok, err
end

-- Probes every member that is due; returns the seconds until the next is.
function group:probe_due_members(now)
    local next_in = self.probe.max_interval
    for _, m in ipairs(self.members) do
        if not m.drained and now >= m.probe_due then
            self:probe_once(m, now)
            now = now_of(self)
        end
        next_in = math.min(next_in, math.max(m.probe_due - now, 0.01))
    end
    return next_in
end

-- Starts the probe routine (lb.group does not): call it from the ruleset's
-- main chunk when the group has a probe.
function group:start_probes()
    if not self.probe or self.probing then
        return
    end
    self.probing = true
    local me = self
    async(function()
        while me.probing and groups[me.name] == me do
            await.sleep(me:probe_due_members(now_of(me)))
        end
    end)
end

function group:stop_probes()
    self.probing = false
end

local function find_group(name)
    local g = groups[name]
    if not g then
        error(sformat("no failover group %q", tostring(name)), 3)
    end
    return g
end

function rpc.group_drain(gname, member, on)
    find_group(gname):drain(member, on)
    return true
end

function rpc.group_weight(gname, member, w)
    find_group(gname):set_weight(member, w)
    return true
end

function rpc.group_force(gname, member)
    find_group(gname):force(member)
    return true
end

-- { member = { state = "up"|"down"|"drained", current = bool, ... }, ... }
function rpc.group_state(gname)
    local g = find_group(gname)
    local now = now_of(g)
    local out = {}
    for _, m in ipairs(g.members) do
        out[m.name] = {
            state = g:state_of(m, now), current = g.current == m, forced = g.forced == m,
            weight = m.weight, successes = m.successes, failures = m.failures,
            latency = m.latency,
        }
    end
    return out
end

local function sorted_groups()
    local names = {}
    for name in pairs(groups) do
        names[#names + 1] = name
    end
    tsort(names)
    return names
end

_G.num_requests = mtointeger(rawget(_G, "num_requests")) or 0
_G.stat_requests = rlist:check(rawget(_G, "stat_requests")) or rlist:new(60, { _G.num_requests })
local hits = rawget(_G, "rule_hits")
if type(hits) ~= "table" then
    hits = {}
    _G.rule_hits = hits
end

-- A hit counted under `tag`; a rule's own tag (not the implicit "default") is
-- also a recent event, as in neosocksd.
local function note(tag, addr, event)
    hits[tag] = (hits[tag] or 0) + 1
    local msg = sformat("[%s] %s", tostring(tag), tostring(addr))
    if event then
        addevent(msg)
    end
    if not rawget(_G, "NDEBUG") then
        _G.print(msg)
    end
end

-- the action and tag of the first matching rule of a table
function matchtab(tab, ...)
    for i = 1, #tab do
        local r = tab[i]
        local hit, subtag = r[1](...)
        if hit then
            if type(hit) == "function" then -- composite.subchain
                return hit, subtag
            end
            local action = r[2]
            if action == nil then
                error(sformat("rule #%d matched but has no action", i), 0)
            end
            return action, r[3]
        end
    end
    return nil
end

-- _G.route_default: { action, tag } (or a bare action); none means direct.
function run_default(addr)
    local d = _G.route_default
    local action, tag = d, nil
    if type(d) == "table" then
        action, tag = d[1], d[2]
    end
    if action == nil then
        return addr
    end
    note(tag or "default", addr, tag ~= nil)
    return action(addr)
end

-- the action of the first matching rule of `tab` (nil: none, or no table),
-- counted under the rule's tag
local function pick(tab, addr, ...)
    if not tab then
        return nil
    end
    local action, tag = matchtab(tab, ...)
    if action and tag then
        note(tag, addr, true)
    end
    return action
end

local function route4(addr)
    local action = pick(_G.redirect, addr, addr)
    if not action and _G.route then
        local host = hostport(addr)
        action = pick(_G.route, addr, host and parse_ipv4(host), addr)
    end
    if action then
        return action(addr)
    end
    return run_default(addr)
end

local function route6(addr)
    local action = pick(_G.redirect6, addr, addr)
    if not action and _G.route6 then
        local host = hostport(addr)
        local hi, lo
        if host then
            hi, lo = parse_ipv6(host)
        end
        action = pick(_G.route6, addr, hi, lo, addr)
    end
    if action then
        return action(addr)
    end
    return run_default(addr)
end

local function resolve(addr)
    local action = pick(_G.redirect_name, addr, addr)
    if action then
        return action(addr)
    end
    local host, port = hostport(addr)
    if not host then
        return run_default(addr)
    end
    local hosts = _G.hosts
    if hosts then
        local mapped = hosts[host]
        if mapped == nil then
            mapped = hosts[(rawsplit(addr))]
        end
        if mapped ~= nil then
            if type(mapped) ~= "string" then
                error(sformat("_G.hosts[%q] is not a string", host), 0)
            end
            mapped = smatch(mapped, "^%[(.*)%]$") or mapped
            if parse_ipv4(mapped) then
                return route4(sformat("%s:%d", mapped, port))
            elseif parse_ipv6(mapped) then
                return route6(sformat("[%s]:%d", mapped, port))
            end
            return run_default(sformat("%s:%d", mapped, port))
        end
    end
    if parse_ipv4(host) then
        return route4(addr)
    elseif sfind(host, ":", 1, true) and parse_ipv6(host) then
        return route6(addr)
    end
    return run_default(addr)
end

-- by the kind of the address's host (rule.loopback)
function dispatch(addr)
    local host = hostport(addr)
    if not host then
        error(sformat("invalid address %q", tostring(addr)), 0)
    end
    if parse_ipv4(host) then
        return route4(addr)
    elseif sfind(host, ":", 1, true) then
        return route6(addr)
    end
    return resolve(addr)
end

-- The decisions without counting or authentication (for tests and rulesets
-- that wrap the callbacks).
M.decide = { resolve = resolve, route = route4, route6 = route6, dispatch = dispatch }
M.matchtab = function(tab, ...)
    return matchtab(tab, ...)
end

-- [[ authentication ]] --
-- libruleset.authenticate(addr, username, password) (or _G.authenticate) if
-- set decides; else, when _G.secrets is a table, the password must equal
-- secrets[username]; else everyone is let in.
local function authorized(addr, username, password)
    local auth = rawget(M, "authenticate") or rawget(_G, "authenticate")
    if auth then
        return auth(addr, username, password)
    end
    local secrets = _G.secrets
    if type(secrets) == "table" then
        if username == nil then
            return false
        end
        local want = secrets[username]
        return want ~= nil and want == password
    end
    return true
end

local function admit(what, addr, username, password)
    _G.num_requests = _G.num_requests + 1
    if authorized(addr, username, password) then
        return true
    end
    if username == nil then
        evlogf("%s: rejected a client without credentials", what)
    else
        evlogf("%s: authentication failed for user %q", what, tostring(username))
    end
    return false
end

-- [[ ruleset callbacks ]] --

-- ruleset.resolve / route / route6: authentication, then the rule tables
local function callback(what, decide)
    return function(addr, username, password)
        if not admit(what, addr, username, password) then
            return nil
        end
        return decide(addr)
    end
end
M.resolve = callback("resolve", resolve)
M.route = callback("route", route4)
M.route6 = callback("route6", route6)

function M.tick(now)
    _G.stat_requests:push(_G.num_requests)
    _G.last_tick = now
end

local SPARK = " .:-=+*#%@"

-- requests per tick interval, oldest first, then the interval in progress
local function request_deltas()
    local snaps = _G.stat_requests:totable()
    local deltas = {}
    for i = 2, #snaps do
        deltas[#deltas + 1] = snaps[i] - snaps[i - 1]
    end
    deltas[#deltas + 1] = _G.num_requests - (snaps[#snaps] or 0)
    return deltas
end

-- An ASCII sparkline of the values, one character each.
function M.sparkline(values)
    local peak = 0
    for _, v in ipairs(values) do
        if v > peak then
            peak = v
        end
    end
    local levels = #SPARK - 1
    local out = {}
    for i, v in ipairs(values) do
        local k = 0
        if v > 0 then
            k = math.max(1, mceil(v / peak * levels))
        end
        out[i] = ssub(SPARK, k + 1, k + 1)
    end
    return tconcat(out), peak
end

-- ruleset.stats(dt, q): requests, rule hits by tag, recent events and the
-- request rate per tick (see neosocksd.setinterval).
function M.stats(dt)
    local w = list:new()
    w:insertf("%-20s: %d", "Requests", _G.num_requests)
    w:insertf("%-20s: %.0f KiB", "Lua memory", collectgarbage("count"))
    w:insert("> Rule Hits")
    local tags = {}
    for tag in pairs(hits) do
        tags[#tags + 1] = tag
    end
    tsort(tags, function(a, b)
        local ha, hb = hits[a], hits[b]
        if ha ~= hb then
            return ha > hb
        end
        return tostring(a) < tostring(b)
    end)
    for _, tag in ipairs(tags) do
        w:insertf("%-20s: %d", tostring(tag), hits[tag])
    end
    local gnames = sorted_groups()
    if #gnames > 0 then
        w:insert("> Failover Groups")
        for _, gname in ipairs(gnames) do
            local g = groups[gname]
            local now = now_of(g)
            for _, m in ipairs(g.members) do
                w:insertf("%-20s: %-7s%s%s weight %g, ok %d, failed %d, latency %s",
                    gname .. "/" .. m.name, g:state_of(m, now),
                    g.current == m and " current" or "", g.forced == m and " forced" or "",
                    m.weight, m.successes, m.failures,
                    m.latency and sformat("%.1fms", m.latency * 1e3) or "-")
            end
        end
    end
    w:insert("> Recent Events")
    for _, e in recent_events:iter() do
        if e.count == 1 then
            w:insertf("%s %s", format_timestamp(e.tstamp), e.msg)
        else
            w:insertf("%s %s (x%d)", format_timestamp(e.tstamp), e.msg, e.count)
        end
    end
    w:insert("> Request Rate")
    local deltas = request_deltas()
    local line, peak = M.sparkline(deltas)
    w:insertf("[%s] per tick, oldest first; now: %d, peak: %d", line, deltas[#deltas], peak)
    w:insert("")
    return w:concat("\n")
end

-- A Prometheus label value.
local function label(v)
    return (sgsub(tostring(v), '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- ruleset.metrics(): Prometheus text appended to /metrics: rule hits by tag
-- and every failover group member's state.
function M.metrics()
    local w = list:new()
    local tags = {}
    for tag in pairs(hits) do
        tags[#tags + 1] = tostring(tag)
    end
    tsort(tags)
    w:insert("# HELP rulesocks_rule_hits_total Requests decided by a tagged libruleset rule, by tag.")
    w:insert("# TYPE rulesocks_rule_hits_total counter")
    for _, tag in ipairs(tags) do
        w:insertf('rulesocks_rule_hits_total{tag="%s"} %d', label(tag), hits[tag])
    end
    local gnames = sorted_groups()
    if #gnames > 0 then
        local families = {
            { "rulesocks_group_member_up", "gauge",
                "1 when a failover group member may take traffic (not out, not drained).",
                function(g, m, now) return g:state_of(m, now) == "up" and 1 or 0 end },
            { "rulesocks_group_member_drained", "gauge", "1 when an operator drained the member.",
                function(g, m) return (m.drained or m.weight <= 0) and 1 or 0 end },
            { "rulesocks_group_member_current", "gauge", "1 for the member traffic goes to now.",
                function(g, m) return g.current == m and 1 or 0 end },
            { "rulesocks_group_member_weight", "gauge", "The member's weight.",
                function(g, m) return m.weight end },
            { "rulesocks_group_member_successes_total", "counter",
                "Forwards and probes through the member that connected.",
                function(g, m) return m.successes end },
            { "rulesocks_group_member_failures_total", "counter",
                "Forwards and probes through the member that failed.",
                function(g, m) return m.failures end },
            { "rulesocks_group_member_latency_seconds", "gauge",
                "Moving average of the member's connect time (NaN before the first).",
                function(g, m) return m.latency or (0 / 0) end },
        }
        for _, f in ipairs(families) do
            w:insertf("# HELP %s %s", f[1], f[3])
            w:insertf("# TYPE %s %s", f[1], f[2])
            for _, gname in ipairs(gnames) do
                local g = groups[gname]
                local now = now_of(g)
                for _, m in ipairs(g.members) do
                    local v = f[4](g, m, now)
                    w:insertf('%s{group="%s",member="%s"} %s', f[1], label(gname), label(m.name),
                        v ~= v and "NaN" or sformat("%.17g", v))
                end
            end
        end
    end
    w:insert("")
    return w:concat("\n")
end

-- `_G.ruleset` style: a script that does not return a table still gets these
-- callbacks.
if rawget(_G, "ruleset") == nil then
    _G.ruleset = M
end

return M
