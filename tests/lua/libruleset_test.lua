-- libruleset_test.lua: tests of lua/libruleset.lua.
--
-- Runs inside the real ruleset engine (tests/unit/ruleset/host_lua_scripts_test.cpp,
-- or rulesocks -r tests/lua/libruleset_test.lua). When done it calls
-- test_done(ok, message) if the host defines it, else exits with
-- os.exit(ok and 0 or 1). Set TEST_FILTER (environment) to a Lua pattern
-- to run only the tests whose names match.

local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
package.path = dir .. "../../lua/?.lua;" .. dir .. "?.lua;" .. package.path

local libruleset = require("libruleset")
_G.libruleset = libruleset

local sformat = string.format
local clock = (rawget(_G, "time") and time.process) or os.clock

-- [[ a small test framework ]] --

local tests = {}
local function test(name, fn)
    tests[#tests + 1] = { name = name, fn = fn }
end

local function fmtv(v)
    if type(v) == "string" then
        return sformat("%q", v)
    end
    return tostring(v)
end

local function eq(got, want, what)
    if got ~= want then
        error(sformat("%s: got %s, want %s", what or "value", fmtv(got), fmtv(want)), 2)
    end
end

local function check(cond, what)
    if not cond then
        error(what or "check failed", 2)
    end
end

-- f(...) must raise an error whose message contains `plain`
local function raises(plain, f, ...)
    local ok, err = pcall(f, ...)
    if ok then
        error(sformat("expected an error containing %q", plain), 2)
    end
    if plain and not string.find(tostring(err), plain, 1, true) then
        error(sformat("error %q does not contain %q", tostring(err), plain), 2)
    end
end

-- the results of f(...) equal to { ... } (trailing nils need not be there)
local function same(want, what, ...)
    local n = math.max(select("#", ...), #want)
    for i = 1, n do
        local v = select(i, ...)
        if v ~= want[i] then
            error(sformat("%s: value #%d is %s, want %s", what, i, fmtv(v), fmtv(want[i])), 2)
        end
    end
end

-- A fresh instruction budget in the real host (each resume gets one).
local function breathe()
    await.sleep(0)
end

-- Replaces globals for the duration of f.
local RULE_GLOBALS = { "redirect_name", "hosts", "redirect", "route", "redirect6", "route6",
    "route_default", "secrets", "authenticate", "NDEBUG" }
local function with_globals(t, f)
    local saved = {}
    for _, k in ipairs(RULE_GLOBALS) do
        saved[k] = rawget(_G, k)
        _G[k] = nil
    end
    for k, v in pairs(t) do
        _G[k] = v
    end
    _G.NDEBUG = true
    local ok, err = pcall(f)
    for _, k in ipairs(RULE_GLOBALS) do
        _G[k] = saved[k]
    end
    if not ok then
        error(err, 0)
    end
end

-- Captures print() output during f.
local function capture(f)
    local lines = {}
    local saved = _G.print
    _G.print = function(...)
        local t = {}
        for i = 1, select("#", ...) do
            t[i] = tostring((select(i, ...)))
        end
        lines[#lines + 1] = table.concat(t, "\t")
    end
    local ok, err = pcall(f)
    _G.print = saved
    if not ok then
        error(err, 0)
    end
    return lines
end

local ip4 = neosocksd.parse_ipv4
local ip6 = neosocksd.parse_ipv6

-- [[ utilities ]] --

test("string.startswith / endswith", function()
    check(string.startswith("hello world", "hello"))
    check(string.startswith("hello", "hello"))
    check(string.startswith("hello", ""))
    check(not string.startswith("hello", "hello world"))
    check(not string.startswith("hello", "world"))
    check(("abc"):startswith("ab"))
    check(string.endswith("hello world", "world"))
    check(string.endswith("hello", ""))
    check(string.endswith("", ""))
    check(not string.endswith("hello", "hello world"))
    check(not string.endswith("hello", "hell"))
    check(("abc"):endswith("bc"))
end)

test("table.get", function()
    local t = { a = { b = { c = 42, f = false } }, s = "str" }
    eq(table.get(t), t, "no keys")
    eq(table.get(t, "a", "b", "c"), 42, "nested")
    eq(table.get(t, "a", "b", "f"), false, "false value")
    eq(table.get(t, "a", "x", "c"), nil, "missing middle")
    eq(table.get(t, "s", "len"), nil, "non-table middle")
    eq(table.get(nil, "a"), nil, "nil root")
    eq(table.get({ [1] = { [2] = "x" } }, 1, 2), "x", "integer keys")
end)

test("package.replace", function()
    local old = { v = 1 }
    package.loaded["lrs_test_mod"] = old
    _G.lrs_test_mod = old
    local new = package.replace("lrs_test_mod", { v = 2 })
    eq(new.v, 2, "returned")
    eq(package.loaded["lrs_test_mod"].v, 2, "package.loaded")
    eq(_G.lrs_test_mod.v, 2, "_G follows")
    -- a chunk returning the module
    package.replace("lrs_test_mod", function(name)
        return { v = 3, name = name }
    end)
    eq(_G.lrs_test_mod.v, 3, "from chunk")
    eq(_G.lrs_test_mod.name, "lrs_test_mod", "chunk argument")
    -- _G not touched when it refers to something else
    _G.lrs_test_mod = "other"
    package.replace("lrs_test_mod", { v = 4 })
    eq(_G.lrs_test_mod, "other", "_G unrelated")
    eq(package.replace("lrs_test_mod", nil), true, "nil becomes true")
    package.loaded["lrs_test_mod"] = nil
    _G.lrs_test_mod = nil
end)

test("printf / errorf", function()
    local lines = capture(function()
        printf("%d-%s", 7, "x")
    end)
    eq(lines[1], "7-x", "printf")
    local ok, err = pcall(function()
        errorf("bad %d", 5)
    end)
    check(not ok and err:find("bad 5", 1, true), "errorf message")
    check(err:find("libruleset_test.lua", 1, true), "errorf blames the caller: " .. err)
end)

test("unmarshal", function()
    local v = { 1, "two", { x = 3.5, [true] = false }, n = -7, s = "a\0b\n\"" }
    local s = marshal(v, "tail", 42)
    local a, b, c = unmarshal(s)
    eq(a[1], 1, "[1]")
    eq(a[2], "two", "[2]")
    eq(a[3].x, 3.5, "float")
    eq(a[3][true], false, "boolean key")
    eq(a.n, -7, "negative")
    eq(a.s, "a\0b\n\"", "bytes")
    eq(b, "tail", "second value")
    eq(c, 42, "third value")
    eq(math.type(c), "integer", "integer stays integer")
    same({}, "empty", unmarshal(""))
    -- empty environment: no globals reachable
    eq(unmarshal("os"), nil, "no globals")
    eq(unmarshal("_G"), nil, "no _G")
    raises("unmarshal", unmarshal, "print('x')")
    raises("unmarshal", unmarshal, "{")
    raises("string expected", unmarshal, 42)
end)

-- [[ list / rlist ]] --

test("list", function()
    local l = list:new()
    check(list:check(l) == l, "check")
    check(list:check({}) == nil and list:check(nil) == nil, "check rejects")
    eq(#l, 0, "empty")
    l:insert(3):insert(1):insert(2)
    eq(l:concat(","), "3,1,2", "insert appends")
    l:insert(1, 9)
    eq(l:concat(","), "9,3,1,2", "insert at position")
    l:sort()
    eq(l:concat(","), "1,2,3,9", "sort")
    l:sort(function(a, b) return a > b end)
    eq(l:concat(","), "9,3,2,1", "sort with comparator")
    l:append({ 7, 8 })
    eq(l:concat(","), "9,3,2,1,7,8", "append")
    l:reverse()
    eq(l:concat(","), "8,7,1,2,3,9", "reverse (even)")
    local odd = list:new({ 1, 2, 3 }):reverse()
    eq(odd:concat(","), "3,2,1", "reverse (odd)")
    l:map(function(x) return x * 10 end)
    eq(l[1], 80, "map in place")
    local f = l:filter(function(x) return x > 25 end)
    eq(f:concat(","), "80,70,30,90", "filter")
    check(list:check(f), "filter returns a list")
    local c = l:clone()
    c[1] = 0
    eq(l[1], 80, "clone is a copy")
    local sum = 0
    for i, v in l:iter() do
        sum = sum + i * 0 + v
    end
    eq(sum, 80 + 70 + 10 + 20 + 30 + 90, "iter")
    eq(l:remove(1), 80, "remove")
    same({ 70, 10 }, "unpack", l:unpack(1, 2))
    l:insertf("%s=%d", "k", 5)
    eq(l[#l], "k=5", "insertf")
    eq(l:len(), #l, "len")
    local p = list:pack(1, 2, 3)
    eq(p:concat(), "123", "pack")
    local t = p:totable()
    check(getmetatable(t) == nil and list:check(t) == nil, "totable")
end)

test("rlist", function()
    local r = rlist:new(3)
    check(rlist:check(r) == r, "check")
    check(rlist:check({}) == nil, "check rejects")
    eq(r.len, 0, "empty")
    eq(r:get(1), nil, "empty get")
    r:push("a"):push("b")
    eq(r:get(1), "b", "newest")
    eq(r:get(2), "a", "oldest")
    eq(r:get(-1), "a", "negative: oldest")
    eq(r:get(3), nil, "beyond len")
    r:push("c"):push("d")
    eq(r.len, 3, "capped")
    same({ "d", "c", "b" }, "after wrap", r:get(1), r:get(2), r:get(3))
    same({ "b", "c", "d" }, "negative", r:get(-1), r:get(-2), r:get(-3))
    eq(r:get(0), nil, "index 0")
    eq(r:get(4), nil, "index > len")
    eq(r:get(-4), nil, "index < -len")
    local seen = {}
    for i, v in r:iter() do
        seen[#seen + 1] = i .. v
    end
    eq(table.concat(seen, ","), "1d,2c,3b", "iter newest first")
    seen = {}
    for _, v in r:reviter() do
        seen[#seen + 1] = v
    end
    eq(table.concat(seen, ","), "b,c,d", "reviter oldest first")
    eq(table.concat(r:totable(), ","), "b,c,d", "totable oldest first")
    for i = 1, 100 do
        r:push(i)
    end
    same({ 100, 99, 98 }, "many pushes", r:get(1), r:get(2), r:get(3))
    local r2 = rlist:new(5, { 10, 20, 30 })
    same({ 30, 20, 10 }, "initial data", r2:get(1), r2:get(2), r2:get(3))
    r2:push(40)
    eq(r2:get(1), 40, "push after initial")
    eq(r2.len, 4, "len after initial")
    local r3 = rlist:new(2, { 1, 2, 3, 4 })
    same({ 4, 3 }, "initial data over capacity", r3:get(1), r3:get(2))
    r3:clear()
    eq(r3.len, 0, "clear")
    eq(r3:get(1), nil, "cleared")
    raises("capacity", rlist.new, rlist, 0)
    local one = rlist:new(1)
    one:push(1):push(2)
    eq(one:get(1), 2, "capacity 1")
    eq(one.len, 1, "capacity 1 len")
end)

-- [[ logging ]] --

test("log / logf / evlog / evlogf", function()
    local saved = rawget(_G, "NDEBUG")
    _G.NDEBUG = nil
    local line = debug.getinfo(1, "l").currentline
    local lines = capture(function()
        log("a", 1, nil, true)
        logf("x=%d", 5)
    end)
    _G.NDEBUG = saved
    eq(#lines, 2, "two lines")
    check(lines[1]:find("libruleset_test.lua:" .. (line + 2) .. " ", 1, true), "source position: " .. lines[1])
    check(lines[1]:find("a\t1\tnil\ttrue", 1, true), "log joins with tabs: " .. lines[1])
    check(lines[2]:find("x=5$"), "logf formats: " .. lines[2])
    -- events
    local before = recent_events.len
    _G.NDEBUG = nil
    lines = capture(function()
        evlogf("event %d", 1)
        evlogf("event %d", 1)
        evlog("event", 2)
    end)
    _G.NDEBUG = saved
    eq(#lines, 3, "evlog prints")
    local newest, older = recent_events:get(1), recent_events:get(2)
    eq(newest.msg, "event\t2", "newest event")
    eq(newest.count, 1, "newest count")
    eq(older.msg, "event 1", "repeated event")
    eq(older.count, 2, "repeats are counted")
    check(recent_events.len >= math.min(before + 2, recent_events.cap), "ring grows")
    -- NDEBUG silences the log, not the events
    _G.NDEBUG = true
    lines = capture(function()
        log("quiet")
        evlog("quiet event")
    end)
    _G.NDEBUG = saved
    eq(#lines, 0, "NDEBUG")
    eq(recent_events:get(1).msg, "quiet event", "event still recorded")
    -- the ring is bounded
    for i = 1, recent_events.cap + 5 do
        _G.NDEBUG = true
        evlogf("flood %d", i)
    end
    _G.NDEBUG = saved
    eq(recent_events.len, recent_events.cap, "bounded")
end)

test("format_timestamp", function()
    local pat = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[+-]%d%d:%d%d$"
    local s = format_timestamp(0)
    check(s:match(pat), "ISO 8601: " .. s)
    eq(#s, 25, "length")
    s = format_timestamp(os.time() + 0.75)
    check(s:match(pat), "float input: " .. s)
    check(format_timestamp():match(pat), "default now")
    local t = os.time({ year = 2024, month = 2, day = 29, hour = 13, min = 14, sec = 15 })
    eq(format_timestamp(t):sub(1, 19), "2024-02-29T13:14:15", "local time")
end)

-- [[ routines ]] --

test("async: synchronous completion", function()
    local fut = async(function(a, b)
        return a + b, "x"
    end, 2, 3)
    check(fut.done, "done at once")
    same({ true, 5, "x" }, "get", fut:get())
    same({ true, 5, "x" }, "wait", fut:wait())
    check(fut:isdone(), "isdone")
    local bad = async(function()
        error("boom", 0)
    end)
    same({ false, "boom" }, "error", bad:get())
    local nils = async(function()
        return nil, nil
    end)
    same({ true, nil, nil }, "trailing nils", nils:get())
end)

test("async: waiting for routines", function()
    local order = {}
    local t1 = async(function(x)
        await.sleep(0.02)
        order[#order + 1] = "t1"
        return x * 2
    end, 21)
    local t2 = async(function()
        await.sleep(0.01)
        order[#order + 1] = "t2"
        return "two"
    end)
    check(not t1.done and not t2.done, "pending")
    same({ true, 42 }, "t1", t1:get())
    same({ true, "two" }, "t2", t2:wait())
    eq(table.concat(order, ","), "t2,t1", "ran concurrently")
    -- two routines waiting on one future
    local shared = async(function()
        await.sleep(0.01)
        return "shared"
    end)
    local w1 = async(function()
        return shared:get()
    end)
    local w2 = async(function()
        local _, v = shared:get()
        return v .. "!"
    end)
    same({ true, true, "shared" }, "waiter 1", w1:get())
    same({ true, "shared!" }, "waiter 2", w2:get())
    -- an error after a wait
    local late = async(function()
        await.sleep(0)
        error({ code = 7 })
    end)
    local ok, e = late:get()
    check(ok == false and type(e) == "table" and e.code == 7, "error value")
    -- nested async
    local outer = async(function()
        local inner = async(function()
            await.sleep(0)
            return 1
        end)
        local _, v = inner:get()
        return v + 1
    end)
    same({ true, 2 }, "nested", outer:get())
end)

test("await.callback", function()
    same({ "now", 1 }, "immediate", await.callback(function(cb)
        cb("now", 1)
        cb("ignored")
    end))
    local saved
    local waiter = async(function()
        return await.callback(function(cb, x)
            saved = function()
                cb("later", x)
            end
        end, 9)
    end)
    check(not waiter.done, "waiting")
    async(function()
        await.sleep(0)
        saved()
        saved() -- second call ignored
    end)
    same({ true, "later", 9 }, "deferred", waiter:get())
end)

-- [[ addresses ]] --

test("parse_cidr", function()
    same({ ip4("10.0.0.0"), 8 }, "10/8", parse_cidr("10.0.0.0/8"))
    same({ 0, 0 }, "/0", parse_cidr("0.0.0.0/0"))
    same({ ip4("1.2.3.4"), 32 }, "/32", parse_cidr("1.2.3.4/32"))
    same({ ip4("1.2.3.4"), 32 }, "bare", parse_cidr("1.2.3.4"))
    same({ ip4("255.255.255.255"), 32 }, "all ones", parse_cidr("255.255.255.255/32"))
    same({ ip4("192.168.1.0"), 24 }, "/24", parse_cidr("192.168.1.0/24"))
    same({ ip4("128.0.0.0"), 1 }, "/1", parse_cidr("128.0.0.0/1"))
    raises("host bits", parse_cidr, "192.168.1.1/24")
    raises("host bits", parse_cidr, "1.0.0.0/0")
    raises("invalid", parse_cidr, "1.2.3.4/33")
    raises("invalid", parse_cidr, "1.2.3/8")
    raises("invalid", parse_cidr, "fe80::/10")
    raises("invalid", parse_cidr, "")
    raises("CIDR string expected", parse_cidr, nil)
end)

test("parse_cidr6", function()
    local h, l = ip6("fe80::")
    same({ h, l, 10 }, "fe80::/10", parse_cidr6("fe80::/10"))
    same({ 0, 0, 0 }, "::/0", parse_cidr6("::/0"))
    same({ 0, 1, 128 }, "::1/128", parse_cidr6("::1/128"))
    same({ 0, 1, 128 }, "bare", parse_cidr6("::1"))
    same({ 0, 1, 128 }, "bracketed", parse_cidr6("[::1]/128"))
    h, l = ip6("2001:db8::")
    same({ h, l, 32 }, "zero compression", parse_cidr6("2001:0db8:0000::/32"))
    same({ h, l, 64 }, "/64", parse_cidr6("2001:db8::/64"))
    h, l = ip6("2001:db8:0:0:8000::")
    same({ h, l, 65 }, "/65", parse_cidr6("2001:db8::8000:0:0:0/65"))
    h, l = ip6("::ffff:127.0.0.0")
    same({ h, l, 104 }, "mapped", parse_cidr6("::ffff:127.0.0.0/104"))
    h, l = ip6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    same({ h, l, 128 }, "all ones", parse_cidr6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"))
    raises("host bits", parse_cidr6, "2001:db8::1/32")
    raises("host bits", parse_cidr6, "2001:db8::1/64")
    raises("host bits", parse_cidr6, "2001:db8::1/127")
    raises("invalid", parse_cidr6, "::/129")
    raises("invalid", parse_cidr6, "10.0.0.0/8")
    raises("invalid", parse_cidr6, "fe80:::/10")
end)

test("format_ipv6", function()
    local f = libruleset.format_ipv6
    eq(f(ip6("::")), "::", "unspecified")
    eq(f(ip6("::1")), "::1", "loopback")
    eq(f(ip6("2001:0DB8:0000:0000:0000:0000:0000:0001")), "2001:db8::1", "compressed, lower case")
    eq(f(ip6("2001:db8:0:1:0:0:0:1")), "2001:db8:0:1::1", "longest run")
    eq(f(ip6("2001:db8:0:0:1:0:0:1")), "2001:db8::1:0:0:1", "first of equal runs")
    eq(f(ip6("2001:db8:0:1:1:1:1:1")), "2001:db8:0:1:1:1:1:1", "single zero kept")
    eq(f(ip6("::ffff:1.2.3.4")), "::ffff:1.2.3.4", "IPv4-mapped")
    eq(f(ip6("fe80::")), "fe80::", "trailing run")
end)

-- [[ inet / inet6 ]] --

test("inet.subnet single", function()
    local m = inet.subnet("192.168.0.0/16")
    check(m("192.168.1.100:80"), "string in")
    check(not m("192.169.0.1:80"), "string out")
    check(m(ip4("192.168.255.255")), "integer in")
    check(not m(ip4("10.0.0.1")), "integer out")
    check(m(ip4("192.168.0.1"), "192.168.0.1:80"), "route arguments")
    check(m(nil, "192.168.0.1:80"), "route arguments without integer")
    check(not m("example.com:80"), "host name")
    check(not m("[::1]:80"), "IPv6")
    local h, l = ip6("::ffff:192.168.0.1")
    check(not m(h, l, "[::ffff:192.168.0.1]:80"), "route6 arguments")
    check(not m("garbage"), "garbage")
    local all = inet.subnet("0.0.0.0/0")
    check(all("1.2.3.4:1") and all("255.255.255.255:1") and all(0), "/0")
    check(not all("example.com:80"), "/0 still needs IPv4")
    local one = inet.subnet("10.1.2.3/32")
    check(one("10.1.2.3:443") and not one("10.1.2.4:443") and not one("10.1.2.2:443"), "/32")
    local pair = inet.subnet("10.1.2.2/31")
    check(pair("10.1.2.2:1") and pair("10.1.2.3:1") and not pair("10.1.2.4:1"), "/31")
    local top = inet.subnet("128.0.0.0/1")
    check(top("255.0.0.1:1") and not top("127.255.255.255:1"), "/1")
    raises("host bits", inet.subnet, "10.0.0.1/8")
end)

test("inet.subnet list", function()
    local m = inet.subnet({ "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "8.8.8.8/32" })
    check(m("10.255.255.255:80") and m("172.31.0.1:80") and m("192.168.3.4:80") and m("8.8.8.8:53"), "in")
    check(not m("172.32.0.1:80") and not m("8.8.4.4:53") and not m("11.0.0.1:80"), "out")
    check(m(ip4("10.0.0.1")), "integer")
    local all = inet.subnet({ "10.0.0.0/8", "0.0.0.0/0" })
    check(all("1.1.1.1:1"), "/0 in a list")
    check(not inet.subnet({})("1.1.1.1:1"), "empty list")
    raises("invalid", inet.subnet, { "10.0.0.0/8", "bad" })
end)

test("inet.subnet: 10,000 CIDRs against a reference", function()
    math.randomseed(20240229)
    local cidrs, ref = {}, {}
    for i = 1, 10000 do
        local len = math.random(8, 32)
        local mask = (~((1 << (32 - len)) - 1)) & 0xFFFFFFFF
        local ip = math.random(0, 0xFFFFFFFF) & mask
        cidrs[i] = sformat("%d.%d.%d.%d/%d", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255, len)
        ref[i] = { ip, mask }
    end
    local t0 = clock()
    local m = inet.subnet(cidrs)
    local build = clock() - t0
    breathe()
    -- hits: addresses inside random entries; misses: random addresses
    local probes = {}
    for i = 1, 300 do
        local r = ref[math.random(1, #ref)]
        probes[#probes + 1] = r[1] | (math.random(0, 0xFFFFFFFF) & ~r[2] & 0xFFFFFFFF)
        probes[#probes + 1] = math.random(0, 0xFFFFFFFF)
    end
    local hits = 0
    for i, ip in ipairs(probes) do
        local want = false
        for _, r in ipairs(ref) do
            if ip & r[2] == r[1] then
                want = true
                break
            end
        end
        local addr = sformat("%d.%d.%d.%d:443", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255)
        eq(m(addr), want, "probe " .. addr)
        eq(m(ip), want, "integer probe " .. addr)
        if want then
            hits = hits + 1
        end
        if i % 100 == 0 then
            breathe()
        end
    end
    check(hits >= 300, "probes inside entries match")
    t0 = clock()
    local n = 0
    for i = 1, 100000 do
        if m(probes[i % #probes + 1]) then
            n = n + 1
        end
    end
    local lookups = clock() - t0
    check(n > 0, "lookups")
    check(build < 2.0, sformat("building took %.3fs", build))
    check(lookups < 2.0, sformat("100,000 lookups took %.3fs", lookups))
end)

test("inet6.subnet single", function()
    local m = inet6.subnet("fe80::/10")
    check(m("[fe80::1]:80"), "string in")
    check(m("[FEBF:FFFF::1]:80"), "upper case, end of range")
    check(not m("[fec0::1]:80"), "string out")
    check(m(ip6("fe80::1")), "integers in")
    local h, l = ip6("fe80::2")
    check(m(h, l, "[fe80::2]:80"), "route6 arguments")
    check(not m(ip4("10.0.0.1"), "10.0.0.1:80"), "route arguments")
    check(not m("example.com:80") and not m("10.0.0.1:80"), "not IPv6")
    local lo = inet6.subnet("::1/128")
    check(lo("[::1]:80") and lo("[0:0:0:0:0:0:0:1]:80") and lo("[0::0:1]:8080"), "zero compression")
    check(not lo("[::2]:80") and not lo("[1::1]:80"), "/128 out")
    local all = inet6.subnet("::/0")
    check(all("[2001:db8::1]:1") and all("[::]:1"), "/0")
    local s64 = inet6.subnet("2001:db8:1:2::/64")
    check(s64("[2001:db8:1:2:ffff::1]:1") and not s64("[2001:db8:1:3::1]:1"), "/64")
    local s65 = inet6.subnet("2001:db8::8000:0:0:0/65")
    check(s65("[2001:db8::8000:0:0:1]:1") and s65("[2001:db8::ffff:0:0:1]:1"), "/65 in")
    check(not s65("[2001:db8::7fff:0:0:1]:1") and not s65("[2001:db9::8000:0:0:1]:1"), "/65 out")
    local s96 = inet6.subnet("2001:db8::/96")
    check(s96("[2001:db8::1]:1") and not s96("[2001:db8::1:0:1]:1"), "/96")
    local mapped = inet6.subnet("::ffff:127.0.0.0/104")
    check(mapped("[::ffff:127.0.0.1]:80") and mapped("[::ffff:7f01:1]:80"), "IPv4-mapped in")
    check(not mapped("[::ffff:128.0.0.1]:80"), "IPv4-mapped out")
end)

test("inet6.subnet list and reference", function()
    local m = inet6.subnet({ "fe80::/10", "fc00::/7", "::1/128", "2001:db8:0:0:8000::/65", "::ffff:0:0/96" })
    check(m("[fe80::1]:1") and m("[fd12::1]:1") and m("[::1]:1") and m("[2001:db8::8000:0:0:5]:1"), "in")
    check(m("[::ffff:1.2.3.4]:1"), "mapped in")
    check(not m("[2001:db8::5]:1") and not m("[::2]:1") and not m("[fe00::1]:1"), "out")
    check(m(ip6("fc00::")), "integers")
    check(inet6.subnet({ "::/0" })("[1::]:1"), "/0 in a list")
    math.randomseed(7)
    local cidrs, ref = {}, {}
    local function rnd64()
        return (math.random(0, 0xFFFFFFFF) << 32) | math.random(0, 0xFFFFFFFF)
    end
    local function mask(len)
        if len <= 0 then
            return 0
        end
        return ~((1 << (64 - len)) - 1)
    end
    local function text(hi, lo)
        local g = {}
        for i = 0, 3 do
            g[i + 1] = sformat("%x", (hi >> (48 - 16 * i)) & 0xFFFF)
            g[i + 5] = sformat("%x", (lo >> (48 - 16 * i)) & 0xFFFF)
        end
        return table.concat(g, ":")
    end
    for i = 1, 2000 do
        local len = math.random(16, 128)
        local m1, m2 = mask(math.min(len, 64)), mask(len - 64)
        local hi, lo = rnd64() & m1, rnd64() & m2
        cidrs[i] = text(hi, lo) .. "/" .. len
        ref[i] = { hi, lo, m1, m2 }
    end
    local big = inet6.subnet(cidrs)
    breathe()
    for i = 1, 200 do
        local r = ref[math.random(1, #ref)]
        local hi = r[1] | (rnd64() & ~r[3])
        local lo = r[2] | (rnd64() & ~r[4])
        for _, p in ipairs({ { hi, lo }, { rnd64(), rnd64() } }) do
            local want = false
            for _, e in ipairs(ref) do
                if p[1] & e[3] == e[1] and p[2] & e[4] == e[2] then
                    want = true
                    break
                end
            end
            local addr = "[" .. text(p[1], p[2]) .. "]:443"
            eq(big(addr), want, "probe " .. addr)
            eq(big(p[1], p[2]), want, "integer probe " .. addr)
        end
        if i % 50 == 0 then
            breathe()
        end
    end
end)

-- [[ match ]] --

test("match.any / match.exact", function()
    check(match.any()("anything:1") and match.any()(), "any")
    local m = match.exact("Example.COM:80")
    check(m("example.com:80"), "case")
    check(m("EXAMPLE.com.:80"), "trailing dot")
    check(not m("example.com:443") and not m("www.example.com:80"), "out")
    check(m(ip4("1.2.3.4"), "example.com:80"), "route arguments")
    local v6 = match.exact("[2001:DB8:0::1]:443")
    check(v6("[2001:db8::1]:443") and v6("[2001:0db8:0:0:0:0:0:1]:443"), "IPv6 by value")
    check(not v6("[2001:db8::1]:80"), "IPv6 port")
    local list_m = match.exact({ "a.example:1", "1.2.3.4:80" })
    check(list_m("a.example:1") and list_m("1.2.3.4:80") and not list_m("1.2.3.4:81"), "list")
    raises("host:port", match.exact, "example.com")
    raises("host:port", match.exact, "example.com:http")
    raises("string", match.exact, 5)
end)

test("match.host", function()
    local m = match.host("Example.com")
    check(m("example.com:80") and m("EXAMPLE.COM:443") and m("example.com.:1"), "case, dot, any port")
    check(not m("www.example.com:80") and not m("example.co:80"), "out")
    local trail = match.host("example.com.")
    check(trail("example.com:80"), "trailing dot in the rule")
    local v6 = match.host("::1")
    check(v6("[::1]:80") and v6("[0:0::1]:22"), "IPv6")
    check(match.host("[fe80::1]")("[FE80:0::1]:1"), "bracketed rule")
    local l = match.host({ "a.test", "B.test" })
    check(l("a.test:1") and l("b.test:2") and not l("c.test:3"), "list")
    check(not m("garbage"), "malformed")
end)

test("match.port", function()
    local m = match.port(80)
    check(m("example.com:80") and m("[::1]:80") and m("1.2.3.4:80"), "single")
    check(not m("example.com:8080") and not m("example.com:443"), "single out")
    local r = match.port(1024, 65535)
    check(r("h:1024") and r("h:65535") and r("h:8080"), "range in")
    check(not r("h:1023") and not r("h:80"), "range out")
    local l = match.port({ 80, 443, { 8000, 8999 } })
    check(l("h:80") and l("h:443") and l("h:8000") and l("h:8500") and l("h:8999"), "list in")
    check(not l("h:81") and not l("h:9000") and not l("h:7999"), "list out")
    local pair = match.port({ 80, 443 })
    check(pair("h:80") and pair("h:443") and not pair("h:100"), "flat list is a set (neosocksd)")
    check(m(ip4("1.1.1.1"), "1.1.1.1:80"), "route arguments")
    check(not m("h:080x") and not m("h:99999"), "malformed")
    check(match.port("22")("h:22"), "string port")
    raises("integer", match.port, "x")
end)

test("match.domain", function()
    local m = match.domain(".example.com")
    check(m("example.com:80"), "apex")
    check(m("www.example.com:80") and m("a.b.example.com:443"), "subdomains")
    check(m("WWW.Example.COM.:80"), "case and trailing dot")
    check(not m("notexample.com:80") and not m("example.com.evil:80") and not m("com:80"), "out")
    local nodot = match.domain("example.com")
    check(nodot("example.com:1") and nodot("x.example.com:1") and not nodot("xexample.com:1"), "no dot")
    local caps = match.domain("EXAMPLE.org.")
    check(caps("www.example.org:1"), "rule case and dot")
    local l = match.domain({ ".lan", "local", "Example.NET" })
    check(l("nas.lan:1") and l("lan:1") and l("printer.local:1") and l("www.example.net:1"), "list in")
    check(not l("lan.com:1") and not l("example.org:1"), "list out")
    check(match.domain(".")("anything.test:1"), "root matches all names")
    check(not m("[::1]:80") and not m("10.0.0.1:80"), "addresses")
end)

test("match.domaintree", function()
    local m = match.domaintree({ "example.com", ".Foo.ORG.", "deep.a.b.c.test", "*.wild.test" })
    check(m("example.com:1") and m("x.example.com:1") and m("y.x.example.com:1"), "suffix")
    check(m("foo.org:1") and m("bar.foo.org:1") and m("BAR.FOO.ORG.:1"), "normalized")
    check(m("deep.a.b.c.test:1") and m("x.deep.a.b.c.test:1"), "deep")
    check(not m("a.b.c.test:1") and not m("c.test:1") and not m("test:1"), "no partial")
    check(m("wild.test:1") and m("x.wild.test:1"), "wildcard as suffix")
    check(not m("example.org:1") and not m("com:1") and not m("xexample.com:1"), "out")
    -- a shorter entry covers longer ones in either order
    local cover = match.domaintree({ "a.example.com", "example.com", "b.example.com" })
    check(cover("z.example.com:1") and cover("example.com:1"), "covering entry")
    -- neosocksd's prebuilt tree form
    local tree = match.domaintree({ com = { example = true }, org = { other = { sub = true } } })
    check(tree("example.com:80") and tree("www.example.com:80") and tree("sub.other.org:443"), "tree in")
    check(not tree("other.com:80") and not tree("other.org:80"), "tree out")
    check(match.domaintree({ "." })("x.y:1"), "root")
    raises("list of domains", match.domaintree, "example.com")
end)

test("match.domaintree: 100,000 domains", function()
    math.randomseed(100000)
    local tlds = { "com", "net", "org", "io", "dev", "cn", "de", "co.uk" }
    local words = {}
    for i = 1, 5000 do
        local w = {}
        for j = 1, math.random(3, 10) do
            w[j] = string.char(96 + math.random(1, 26))
        end
        words[i] = table.concat(w) .. i
    end
    local domains, set = {}, {}
    for i = 1, 100000 do
        local d = words[math.random(#words)] .. "-" .. i .. "." .. tlds[math.random(#tlds)]
        if i % 3 == 0 then
            d = words[math.random(#words)] .. "." .. d
        end
        domains[i] = d
        set[d] = true
    end
    breathe()
    local t0 = clock()
    local m = match.domaintree(domains)
    local build = clock() - t0
    breathe()
    local probes = {}
    for i = 1, 1000 do
        local d = domains[math.random(#domains)]
        probes[#probes + 1] = { d .. ":443", true }
        probes[#probes + 1] = { "www." .. d:upper() .. ".:80", true }
        probes[#probes + 1] = { "x" .. d .. ":443", set["x" .. d] or false }
        probes[#probes + 1] = { "nope" .. i .. ".example:80", false }
    end
    for _, p in ipairs(probes) do
        eq(m(p[1]), p[2], p[1])
    end
    breathe()
    t0 = clock()
    local n = 0
    for i = 1, 100000 do
        if m(probes[i % #probes + 1][1]) then
            n = n + 1
        end
    end
    local lookups = clock() - t0
    check(n > 0, "lookups")
    check(build < 3.0, sformat("building took %.3fs", build))
    check(lookups < 2.0, sformat("100,000 lookups took %.3fs", lookups))
    -- match.domain with a list builds the same tree
    local d = match.domain(domains)
    breathe()
    check(d(domains[1] .. ":1") and d("a." .. domains[99999] .. ":1") and not d("nope.example:1"), "match.domain list")
end)

test("match.pattern / match.regex", function()
    local p = match.pattern("^192%.168%.")
    check(p("192.168.1.1:80") and not p("10.0.0.1:80"), "pattern")
    local pl = match.pattern({ "^10%.", ":22$" })
    check(pl("10.1.1.1:80") and pl("host:22") and not pl("host:2222"), "pattern list")
    check(p(ip4("192.168.0.1"), "192.168.0.1:80"), "route arguments")
    local r = match.regex("^192\\.168\\.")
    check(r("192.168.1.1:80") and not r("10.0.0.1:80") and not r("192x168.1.1:80"), "regex")
    local rl = match.regex({ "\\.example\\.com:[0-9]+$", "^10\\." })
    check(rl("www.example.com:443") and rl("10.0.0.1:1") and not rl("example.com:443"), "regex list")
    local alt = match.regex([[\.example\.(com|org):443$]])
    check(alt("a.example.org:443") and alt("a.example.com:443") and not alt("a.example.net:443"), "alternation")
end)

-- [[ composite ]] --

test("regex.compat", function()
    local compat = regex.compat
    eq(compat("\\d+"), "[[:digit:]]+", "\\d")
    eq(compat("\\D\\W\\S"), "[^[:digit:]][^[:alnum:]_][^[:space:]]", "negated classes")
    eq(compat("[\\w.-]+"), "[[:alnum:]_.-]+", "inside a bracket expression")
    eq(compat("[^\\s]"), "[^[:space:]]", "negated bracket")
    eq(compat("[]\\d]"), "[][:digit:]]", "] first in a bracket")
    eq(compat("[[:alpha:]\\d]"), "[[:alpha:][:digit:]]", "POSIX class kept")
    eq(compat("a\\tb"), "a\tb", "control escapes become the characters")
    eq(compat("\\.\\(\\q\\b\\"), "\\.\\(\\q\\b\\", "unknown escapes, \\b and a trailing \\ stay")
    eq(compat("\\\\d"), "\\\\d", "an escaped backslash is not an escape")
    eq(compat(""), "", "empty")
    local reg = regex.compile(compat("(\\w+)=(\\w+)"))
    local found = {}
    for _, k, v in reg:gmatch("from=world, to=Lua") do
        found[#found + 1] = k .. ":" .. v
    end
    eq(table.concat(found, ","), "from:world,to:Lua", "gmatch with \\w")
    same({ "123" }, "\\d", regex.compile(compat("\\d+")):match("abc123def"))
    same({ "a b" }, "\\s", regex.compile(compat("\\S\\s\\S")):match("a b"))
    same({ "1.2.3" }, "[\\d.]", regex.compile(compat("[\\d.]+")):match("v1.2.3-rc"))
    same({ "-" }, "\\W", regex.compile(compat("\\W")):match("ab-c"))
    check(regex.compile(compat("\\bfoo\\b")):find("a foo b"), "\\b matches at a boundary")
    check(not regex.compile(compat("\\bfoo\\b")):find("afoob"), "\\b inside a word")
    check(regex.compile(compat("^\\d+\\.\\d+$")):find("10.25"), "anchored")
    check(not regex.compile(compat("^\\d+\\.\\d+$")):find("10x25"), "\\. stays literal")
    raises("string expected", compat, nil)
end)

test("composite", function()
    local yes, no = match.any(), composite.inverse(match.any())
    check(not no("x:1"), "inverse")
    check(composite.inverse(function(x) return x > 0 end)(-1), "inverse passes arguments")
    check(composite.anyof({ no, yes })("x:1") and not composite.anyof({ no, no })("x:1"), "anyof")
    check(not composite.anyof({})("x:1"), "empty anyof")
    check(composite.allof({ yes, yes })("x:1") and not composite.allof({ yes, no })("x:1"), "allof")
    check(composite.allof({})("x:1"), "empty allof")
    local both = composite.allof({ match.domain("example.com"), match.port(443) })
    check(both("www.example.com:443") and not both("www.example.com:80"), "allof matchers")
    local holder = {}
    local maybe = composite.maybe(holder, "m")
    check(not maybe("x:1"), "maybe absent")
    holder.m = match.port(1)
    check(maybe("x:1") and not maybe("x:2"), "maybe present")
    local action = rule.direct()
    local chains = { sub = { { match.port(2), rule.reject(), "two" }, { match.port(1), action, "ONE" } } }
    local sc = composite.subchain(chains, "sub")
    local a, tag = sc("x:1")
    check(a == action and tag == "ONE", "subchain")
    check(sc("x:3") == nil, "subchain no match")
    check(composite.subchain({}, "none")("x:1") == nil, "subchain absent")
end)

-- [[ rule actions ]] --

test("rule.direct / reject / proxy", function()
    same({ "example.com:80" }, "direct", rule.direct()("example.com:80"))
    same({ nil }, "reject", rule.reject()("example.com:80"))
    same({ "example.com:80", "socks5://p2:1080", "socks5://p1:1080" }, "proxy chain reversed",
        rule.proxy("socks5://p1:1080", "socks5://p2:1080")("example.com:80"))
    same({ "h:1", "http://p:8080" }, "single proxy", rule.proxy("http://p:8080")("h:1"))
    same({ "h:1" }, "no proxy", rule.proxy()("h:1"))
    raises("proxy URI", rule.proxy, 5)
end)

test("rule.redirect", function()
    same({ "10.0.0.1:8080" }, "full", rule.redirect("10.0.0.1:8080")("example.com:80"))
    same({ "10.0.0.1:80" }, "host keeps port", rule.redirect("10.0.0.1")("example.com:80"))
    same({ "10.0.0.1:443" }, "host: keeps port", rule.redirect("10.0.0.1:")("example.com:443"))
    same({ "example.com:8080" }, ":port keeps host", rule.redirect(":8080")("example.com:80"))
    same({ "[::1]:8080" }, ":port keeps IPv6 host", rule.redirect(":8080")("[::1]:80"))
    same({ "[::1]:22" }, "bare IPv6 keeps port", rule.redirect("::1")("example.com:22"))
    same({ "[fe80::1]:22" }, "bracketed IPv6 keeps port", rule.redirect("[fe80::1]")("example.com:22"))
    same({ "[fe80::1]:22" }, "bracketed IPv6 with colon", rule.redirect("[fe80::1]:")("example.com:22"))
    same({ "[::1]:9" }, "bracketed IPv6 with port", rule.redirect("[::1]:9")("example.com:22"))
    same({ "nginx:80" }, "name keeps port", rule.redirect("nginx")("peer0.lan:80"))
    same({ "10.0.0.1:8080", "socks5://p2:1", "socks5://p1:1" }, "with chain",
        rule.redirect("10.0.0.1:8080", "socks5://p1:1", "socks5://p2:1")("x:1"))
    same({ "y:1", "http://p:1" }, "host with chain", rule.redirect("y", "http://p:1")("x:1"))
    raises("invalid address", rule.redirect, ":")
    raises("invalid address", rule.redirect, "a b:1")
    raises("address string", rule.redirect, nil)
end)

test("rule.rewrite / rule.maybe / rule.default", function()
    same({ "example.com:443" }, "rewrite", rule.rewrite("^(.+):%d+$", "%1:443")("example.com:80"))
    same({ "www.example.org:80", "socks5://p:1" }, "rewrite with proxy",
        rule.rewrite("%.com:", ".org:", "socks5://p:1")("www.example.com:80"))
    local actions = {}
    local m = rule.maybe(actions, "a")
    same({ nil }, "maybe absent rejects", m("x:1"))
    actions.a = rule.redirect("y:2")
    same({ "y:2" }, "maybe present", m("x:1"))
    local d = rule.default()
    with_globals({}, function()
        same({ "x:1" }, "default without route_default is direct", d("x:1"))
        _G.route_default = rule.proxy("socks5://up:1")
        same({ "x:1", "socks5://up:1" }, "default: bare action", d("x:1"))
        _G.route_default = { rule.redirect("z:3"), "wan" }
        same({ "z:3" }, "default: { action, tag }", d("x:1"))
        _G.route_default = { rule.reject() }
        same({ nil }, "default: reject", d("x:1"))
    end)
end)

test("rule.resolve", function()
    local r = rule.resolve()
    same({ "127.0.0.1:80" }, "resolved", r("localhost:80"))
    same({ "[::1]:80" }, "IPv6 literal kept", r("[::1]:80"))
    raises("cannot resolve", r, "nonexistent.invalid:80")
end)

test("rule.loopback", function()
    with_globals({
        redirect_name = {
            { match.host("alias.test"), rule.loopback("target.test"), "alias" },
            { match.host("target.test"), rule.redirect("10.9.9.9"), "target" },
            { match.host("loop.test"), rule.loopback(), "loop" },
            { match.host("to-ip.test"), rule.loopback("192.168.7.7") },
            { match.host("to-v6.test"), rule.loopback("::1") },
        },
        route = { { inet.subnet("192.168.0.0/16"), rule.proxy("socks5://lan:1"), "lan" } },
        route6 = { { inet6.subnet("::1/128"), rule.reject(), "lo6" } },
    }, function()
        same({ "10.9.9.9:80" }, "alias to name", libruleset.decide.resolve("alias.test:80"))
        same({ "192.168.7.7:22", "socks5://lan:1" }, "to route", libruleset.decide.resolve("to-ip.test:22"))
        same({ nil }, "to route6", libruleset.decide.resolve("to-v6.test:22"))
        raises("loops", libruleset.decide.resolve, "loop.test:1")
        -- the depth is released after an error
        same({ "10.9.9.9:81" }, "after an error", libruleset.decide.resolve("alias.test:81"))
    end)
end)

-- [[ load balancing ]] --

test("lb.roundrobin", function()
    local calls = {}
    local f = lb.roundrobin({
        function(a) calls[#calls + 1] = "A" return a, "p1" end,
        function(a) calls[#calls + 1] = "B" return a, "p2" end,
        function(a) calls[#calls + 1] = "C" return a, "p3" end,
    })
    same({ "x:1", "p1" }, "first", f("x:1"))
    for _ = 1, 5 do
        f("x:1")
    end
    eq(table.concat(calls), "ABCABC", "cycles in order")
    raises("empty", lb.roundrobin, {})
end)

test("lb.iwrr", function()
    local count, seq = {}, {}
    local function act(name)
        return function(addr)
            count[name] = (count[name] or 0) + 1
            seq[#seq + 1] = name
            return addr, name
        end
    end
    local f = lb.iwrr({ { 3, act("A") }, { 1, act("B") }, { 2, act("C") } })
    for _ = 1, 12 do
        f("x:1")
    end
    eq(table.concat(seq), "ABCACAABCACA", "interleaved order")
    same({ 6, 2, 4 }, "proportional", count.A, count.B, count.C)
    -- neosocksd's test: 2:1 over 3 calls
    count, seq = {}, {}
    local g = lb.iwrr({ { 2, act("A") }, { 1, act("B") } }, 3)
    for _ = 1, 3 do
        g()
    end
    same({ 2, 1 }, "2:1", count.A, count.B)
    -- fractional weights and zero weights
    count, seq = {}, {}
    local h = lb.iwrr({ { 0.5, act("A") }, { 1.5, act("B") }, { 0, act("Z") } })
    for _ = 1, 400 do
        h()
    end
    eq(count.Z, nil, "zero weight never chosen")
    check(count.A >= 95 and count.A <= 105 and count.B >= 295 and count.B <= 305,
        sformat("1:3 fractional, got %d:%d", count.A or 0, count.B or 0))
    same({ "x:1", "A" }, "returns the action's results", lb.iwrr({ { 1, act("A") } })("x:1"))
    raises("non-negative", lb.iwrr, { { -1, act("A") } })
end)

test("lb.iwrr: drained members and empty lists reject", function()
    local count = {}
    local function act(name)
        return function(addr)
            count[name] = (count[name] or 0) + 1
            return addr, name
        end
    end
    same({ nil }, "empty list rejects", lb.iwrr({})("x:1"))
    same({ nil }, "all drained rejects", lb.iwrr({ { 0, act("A") }, { 0, act("B") } })("x:1"))
    eq(next(count), nil, "no drained action runs")
    -- an operator drains a backend over RPC: rebuild with its weight at 0
    local backends = { { 1, act("A") }, { 1, act("B") } }
    local pick = lb.iwrr(backends)
    local saved = rawget(rpc, "set_weight")
    function rpc.set_weight(i, w)
        backends[i][1] = w
        pick = lb.iwrr(backends)
    end
    rpc.set_weight(2, 0)
    for _ = 1, 10 do
        same({ "x:1", "A" }, "drained B", pick("x:1"))
    end
    eq(count.B, nil, "B drained")
    rpc.set_weight(1, 0)
    same({ nil }, "everything drained", pick("x:1"))
    rpc.set_weight(2, 3)
    same({ "x:1", "B" }, "B back", pick("x:1"))
    rpc.set_weight = saved
end)

-- [[ the rule tables ]] --

test("resolve: redirect_name, hosts, default", function()
    with_globals({
        redirect_name = {
            { match.exact("peer0.lan:22"), rule.redirect("host-gateway:22"), "ssh" },
            { match.domain(".blocked.test"), rule.reject(), "blocked" },
            { match.host("Passthrough.TEST"), rule.direct() },
        },
        hosts = {
            ["gateway.lan"] = "192.168.32.1",
            ["v6.lan"] = "fd00::1",
            ["bracket.lan"] = "[fd00::2]",
            ["alias.lan"] = "other.lan",
        },
        route = {
            { inet.subnet("192.168.32.0/24"), rule.proxy("socks4a://192.168.32.1:1080"), "region1" },
            { inet.subnet("127.0.0.0/8"), rule.reject(), "loopback" },
        },
        route6 = { { inet6.subnet("fd00::/8"), rule.proxy("socks5://v6:1"), "ula" } },
        route_default = { rule.proxy("socks5://wan:1080"), "wan" },
    }, function()
        local d = libruleset.decide.resolve
        same({ "host-gateway:22" }, "redirect_name", d("peer0.lan:22"))
        same({ nil }, "reject", d("www.blocked.test:443"))
        same({ "passthrough.test.:80" }, "direct keeps the request", d("passthrough.test.:80"))
        same({ "192.168.32.1:80", "socks4a://192.168.32.1:1080" }, "hosts to route", d("gateway.lan:80"))
        same({ "192.168.32.1:80", "socks4a://192.168.32.1:1080" }, "hosts ignore case and dot", d("GATEWAY.lan.:80"))
        same({ "[fd00::1]:443", "socks5://v6:1" }, "hosts to route6", d("v6.lan:443"))
        same({ "[fd00::2]:443", "socks5://v6:1" }, "bracketed hosts entry", d("bracket.lan:443"))
        same({ "other.lan:80", "socks5://wan:1080" }, "hosts name alias to default", d("alias.lan:80"))
        same({ "www.example.com:443", "socks5://wan:1080" }, "default", d("www.example.com:443"))
        same({ nil }, "IP literal goes to route", d("127.0.0.1:80"))
        same({ "[fd00::9]:80", "socks5://v6:1" }, "IPv6 literal goes to route6", d("[fd00::9]:80"))
        _G.route_default = nil
        same({ "www.example.com:443" }, "no default: direct", d("www.example.com:443"))
    end)
end)

test("route / route6 tables", function()
    local seen
    with_globals({
        redirect = {
            { match.exact("1.1.1.1:53"), rule.redirect("127.0.0.53:53"), "dns" },
            { match.port(25), rule.reject(), "smtp" },
        },
        route = {
            -- a neosocksd-style matcher on the integer address
            { function(ip, addr)
                seen = { ip, addr }
                return ip == neosocksd.parse_ipv4("203.0.113.7")
            end, rule.proxy("socks5://special:1"), "special" },
            { inet.subnet("10.0.0.0/8"), rule.direct(), "lan" },
            { match.port(8080), rule.redirect(":80"), "port in route" },
        },
        redirect6 = { { match.exact("[::1]:80"), rule.redirect("10.0.0.1:8080"), "r6" } },
        route6 = {
            { function(hi, lo, addr)
                seen = { hi, lo, addr }
                return false
            end, rule.reject() },
            { inet6.subnet("2001:db8::/32"), rule.proxy("socks5://doc:1"), "doc" },
        },
        route_default = rule.proxy("socks5://wan:1"),
    }, function()
        local r, r6 = libruleset.decide.route, libruleset.decide.route6
        same({ "127.0.0.53:53" }, "redirect", r("1.1.1.1:53"))
        same({ nil }, "redirect reject", r("8.8.8.8:25"))
        same({ "203.0.113.7:80", "socks5://special:1" }, "custom matcher", r("203.0.113.7:80"))
        eq(seen[1], neosocksd.parse_ipv4("203.0.113.7"), "matcher gets the integer")
        eq(seen[2], "203.0.113.7:80", "and the address")
        same({ "10.1.2.3:80" }, "route", r("10.1.2.3:80"))
        same({ "8.8.8.8:80" }, "string matcher in route", r("8.8.8.8:8080"))
        same({ "8.8.8.8:443", "socks5://wan:1" }, "default", r("8.8.8.8:443"))
        same({ "10.0.0.1:8080" }, "redirect6", r6("[::1]:80"))
        same({ "[2001:db8::1]:443", "socks5://doc:1" }, "route6", r6("[2001:db8::1]:443"))
        local hi, lo = neosocksd.parse_ipv6("2001:db8::1")
        eq(seen[1], hi, "route6 matcher gets the high half")
        eq(seen[2], lo, "and the low half")
        eq(seen[3], "[2001:db8::1]:443", "and the address")
        same({ "[2001:db9::1]:443", "socks5://wan:1" }, "route6 default", r6("[2001:db9::1]:443"))
    end)
end)

test("rule tables: errors and tags", function()
    with_globals({
        redirect_name = {
            { match.host("noaction.test") },
            { match.host("tagged.test"), rule.direct(), "my-tag" },
            { composite.subchain(_G, "lrs_sub"), rule.reject(), "outer" },
        },
    }, function()
        raises("no action", libruleset.decide.resolve, "noaction.test:1")
        local before = rule_hits["my-tag"] or 0
        libruleset.resolve("tagged.test:1")
        libruleset.resolve("tagged.test:2")
        eq(rule_hits["my-tag"], before + 2, "hits counted by tag")
        _G.lrs_sub = { { match.host("sub.test"), rule.redirect("s:1"), "inner" } }
        same({ "s:1" }, "subchain in a table", libruleset.decide.resolve("sub.test:9"))
        check((rule_hits["inner"] or 0) >= 1, "subchain tag")
        _G.lrs_sub = nil
    end)
end)

test("rule hits with a tag are recent events", function()
    with_globals({
        redirect_name = {
            { match.host("ev-tagged.test"), rule.direct(), "ev-tag" },
            { match.host("ev-untagged.test"), rule.direct() },
        },
        route_default = { rule.direct(), "ev-default" },
    }, function()
        libruleset.resolve("ev-tagged.test:1")
        libruleset.resolve("ev-tagged.test:1")
        local e = recent_events:get(1)
        eq(e.msg, "[ev-tag] ev-tagged.test:1", "event of a tagged hit")
        eq(e.count, 2, "repeats counted")
        check(math.abs(e.tstamp - os.time()) <= 2, "event time")
        libruleset.resolve("ev-untagged.test:1")
        eq(recent_events:get(1).msg, "[ev-tag] ev-tagged.test:1", "untagged hit: no event")
        libruleset.route("10.9.8.7:1")
        eq(recent_events:get(1).msg, "[ev-default] 10.9.8.7:1", "tagged default")
        local s = libruleset.stats(1.0, "")
        local block = s:match("> Recent Events\n(.-)\n>")
        check(block, "events block: " .. s)
        local first, second = block:match("^([^\n]*)\n([^\n]*)")
        check(first and first:find("[ev-default] 10.9.8.7:1", 1, true), "newest first: " .. block)
        check(second and second:find("[ev-tag] ev-tagged.test:1 (x2)", 1, true), "count: " .. block)
        check(first:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d"), "timestamp: " .. first)
        for i = 1, recent_events.cap + 3 do
            libruleset.route("10.9.8." .. i .. ":1")
        end
        eq(recent_events.len, recent_events.cap, "bounded")
        eq(recent_events:get(1).msg, sformat("[ev-default] 10.9.8.%d:1", recent_events.cap + 3), "newest kept")
    end)
end)

test("callbacks and authentication", function()
    with_globals({ route_default = { rule.direct(), "out" } }, function()
        local n = num_requests
        same({ "a.test:1" }, "resolve", libruleset.resolve("a.test:1"))
        same({ "1.2.3.4:1" }, "route", libruleset.route("1.2.3.4:1"))
        same({ "[::1]:1" }, "route6", libruleset.route6("[::1]:1"))
        eq(num_requests, n + 3, "requests counted")
        same({ "a.test:1" }, "credentials ignored without secrets", libruleset.resolve("a.test:1", "u", "p"))
        _G.secrets = { alice = "s3cret", bob = "" }
        same({ "a.test:1" }, "good password", libruleset.resolve("a.test:1", "alice", "s3cret"))
        same({ "1.2.3.4:1" }, "good password (route)", libruleset.route("1.2.3.4:1", "alice", "s3cret"))
        same({ "[::1]:1" }, "good password (route6)", libruleset.route6("[::1]:1", "alice", "s3cret"))
        same({ "a.test:1" }, "empty password", libruleset.resolve("a.test:1", "bob", ""))
        same({ nil }, "bad password", libruleset.resolve("a.test:1", "alice", "wrong"))
        same({ nil }, "bad password (route)", libruleset.route("1.2.3.4:1", "alice", "wrong"))
        same({ nil }, "bad password (route6)", libruleset.route6("[::1]:1", "alice", ""))
        same({ nil }, "unknown user", libruleset.resolve("a.test:1", "mallory", "s3cret"))
        same({ nil }, "no credentials", libruleset.resolve("a.test:1"))
        check(recent_events:get(1).msg:find("authentication failed", 1, true)
            or recent_events:get(1).msg:find("without credentials", 1, true), "event")
        _G.secrets = nil
        local calls = {}
        libruleset.authenticate = function(addr, user, pass)
            calls[#calls + 1] = addr .. "|" .. tostring(user) .. "|" .. tostring(pass)
            return user == "ok"
        end
        same({ "a.test:1" }, "authenticate yes", libruleset.resolve("a.test:1", "ok", "x"))
        same({ nil }, "authenticate no", libruleset.route("1.1.1.1:1", "no", "y"))
        eq(calls[1], "a.test:1|ok|x", "authenticate arguments")
        eq(calls[2], "1.1.1.1:1|no|y", "authenticate arguments (route)")
        libruleset.authenticate = nil
        _G.authenticate = function() return false end
        same({ nil }, "_G.authenticate", libruleset.resolve("a.test:1", "ok", "x"))
    end)
end)

test("tick and stats", function()
    stat_requests:clear():push(num_requests)
    local base = num_requests
    libruleset.tick(1)
    local len = stat_requests.len
    with_globals({}, function()
        for i = 1, 10 do
            libruleset.route("10.0.0.1:" .. i)
        end
        libruleset.tick(2)
        for i = 1, 5 do
            libruleset.route("10.0.0.1:" .. i)
        end
        libruleset.tick(3)
        libruleset.route("10.0.0.1:1")
    end)
    eq(stat_requests.len, math.min(len + 2, stat_requests.cap), "snapshots")
    eq(stat_requests:get(1), base + 15, "newest snapshot")
    local s = libruleset.stats(1.0, "")
    check(type(s) == "string", "string")
    check(s:find("> Recent Events", 1, true), "events section")
    check(s:find("> Rule Hits", 1, true), "hits section")
    check(s:find("> Request Rate", 1, true), "rate section")
    check(s:find("Requests%s*: " .. num_requests), "request count")
    local line = s:match("%[([^%]]*)%] per tick")
    check(line, "sparkline: " .. s)
    eq(line, " @+.", "sparkline: 0, 10, 5, then 1 in progress")
    check(s:find("now: 1, peak: 10", 1, true), "now and peak")
    local spark = libruleset.sparkline({ 0, 1, 5, 9, 10 })
    eq(spark, " .+@@", "sparkline levels")
    eq(libruleset.sparkline({ 0, 0 }), "  ", "all zero")
    eq(libruleset.sparkline({}), "", "empty")
end)

-- [[ RPC ]] --

-- A stand-in for the transport, run here as the target node would (used in the
-- real host too, where the test has no peer to talk to).
local function fake_invoke(calls)
    return function(code, addr, ...)
        calls[#calls + 1] = { code = code, addr = addr, chain = table.pack(...) }
        if addr == "unreachable:1" then
            return false, "connection refused"
        end
        local f, err = load(code, "=(rpcall)", "t", setmetatable({}, { __index = _G }))
        local r = f and table.pack(pcall(f)) or table.pack(false, err)
        local reply = assert(load("return " .. marshal(table.unpack(r, 1, r.n)), "=(rpc reply)", "t", {}))
        return true, function()
            local res = table.pack(pcall(reply))
            if not res[1] then
                return false, res[2]
            end
            return table.unpack(res, 2, res.n)
        end
    end
end

test("rpc.echo / await.rpcall", function()
    same({ 1, "two", nil }, "echo", rpc.echo(1, "two", nil))
    local calls = {}
    local saved = await.invoke
    await.invoke = fake_invoke(calls)
    local ok, err = pcall(function()
        same({ true, 1, "a", true }, "echo over rpc", await.rpcall("peer:9080", "echo", 1, "a", true))
        eq(calls[1].addr, "peer:9080", "string target")
        eq(calls[1].chain.n, 0, "no chain")
        check(calls[1].code:find('rpc["echo"]', 1, true), "code names the function: " .. calls[1].code)
        local t = { x = { 1, 2 } }
        local r = table.pack(await.rpcall({ "api.neosocksd.internal:80", "socks5://p2:1", "socks5://p1:1" }, "echo", t))
        check(r[1] == true and r[2].x[2] == 2, "table argument")
        eq(calls[2].addr, "api.neosocksd.internal:80", "table target")
        same({ "socks5://p2:1", "socks5://p1:1" }, "chain order (proxyN..proxy1)", table.unpack(calls[2].chain, 1, 2))
        same({ true }, "no arguments, no results", await.rpcall("peer:1", "echo"))
        function rpc.lrs_test_add(a, b)
            await.sleep(0)
            return a + b
        end
        same({ true, 5 }, "custom handler", await.rpcall("peer:1", "lrs_test_add", 2, 3))
        local ok2, e2 = await.rpcall("peer:1", "lrs_test_add", 2, nil)
        check(ok2 == false and tostring(e2):find("arithmetic", 1, true), "remote error: " .. tostring(e2))
        local ok3, e3 = await.rpcall("peer:1", "no_such_handler")
        check(ok3 == false and type(e3) == "string", "missing handler")
        same({ false, "connection refused" }, "transport error", await.rpcall("unreachable:1", "echo", 1))
        same({ true, "we\"ird\n" }, "quoted name", (function()
            rpc["we\"ird\n"] = function() return "we\"ird\n" end
            return await.rpcall("peer:1", "we\"ird\n")
        end)())
        raises("target", await.rpcall, 42, "echo")
        raises("function name", await.rpcall, "peer:1", 42)
        rpc.lrs_test_add, rpc["we\"ird\n"] = nil, nil
    end)
    await.invoke = saved
    if not ok then
        error(err, 0)
    end
end)

test("neosocksd.sendmsg / msgh", function()
    local calls, got = {}, nil
    local saved = neosocksd.invoke
    neosocksd.invoke = function(code, addr, ...)
        calls[#calls + 1] = { code = code, addr = addr, chain = table.pack(...) }
        assert(load(code, "=(invoke)", "t"))()
    end
    local ok, err = pcall(function()
        function msgh.lrs_test(a, b)
            got = { a, b }
        end
        neosocksd.sendmsg("peer:1", "lrs_test", "x", { 2 })
        eq(got[1], "x", "handler ran")
        eq(got[2][1], 2, "table argument")
        eq(calls[1].addr, "peer:1", "target")
        check(calls[1].code:find('msgh["lrs_test"]', 1, true), "code: " .. calls[1].code)
        neosocksd.sendmsg({ "peer:2", "socks5://p:1" }, "lrs_test")
        eq(calls[2].addr, "peer:2", "table target")
        eq(calls[2].chain[1], "socks5://p:1", "chain")
        _G.NDEBUG = true
        neosocksd.sendmsg("peer:3", "log", "hello", "msgh")
        _G.NDEBUG = nil
        eq(recent_events:get(1).msg, "hello\tmsgh", "msgh.log")
        msgh.lrs_test = nil
    end)
    neosocksd.invoke = saved
    _G.NDEBUG = nil
    if not ok then
        error(err, 0)
    end
end)

-- [[ the example rulesets ]] --

-- Loads a ruleset file like the host would and checks a few decisions. The rule
-- globals are restored afterwards.
local function load_example(path)
    local chunk = assert(loadfile(dir .. "../../lua/" .. path))
    local rs = chunk()
    check(type(rs) == "table", path .. " returns a table")
    for _, k in ipairs({ "resolve", "route", "route6", "stats", "tick" }) do
        check(type(rs[k]) == "function", path .. ": ruleset." .. k)
    end
    return rs
end

local function example(path, f)
    test("example " .. path, function()
        local saved_rpc = {}
        for k, v in pairs(rpc) do
            saved_rpc[k] = v
        end
        with_globals({}, function()
            f(load_example(path))
        end)
        for k in pairs(rpc) do
            rpc[k] = saved_rpc[k]
        end
        _G.libruleset = libruleset
    end)
end

example("ruleset.lua", function(rs)
    _G.NDEBUG = true
    same({ "www.example.com:443" }, "direct", rs.resolve("www.example.com:443"))
    same({ "10.0.0.1:22" }, "direct IPv4", rs.route("10.0.0.1:22"))
    same({ "[2001:db8::1]:80" }, "direct IPv6", rs.route6("[2001:db8::1]:80"))
    local api = neosocksd.config().api
    if type(api) == "string" and api ~= "" then
        same({ nil }, "API address rejected", rs.resolve(api))
        same({ api }, "mapped API name", rs.resolve("api.neosocksd.internal:80"))
    end
    check(type(rs.stats(1, "")) == "string", "stats")
end)

example("examples/minimal.lua", function(rs)
    _G.NDEBUG = true
    same({ nil }, "internal rejected", rs.resolve("x.internal:80"))
    same({ nil }, "loopback rejected", rs.route("127.0.0.1:80"))
    same({ "192.168.1.1:80" }, "lan direct", rs.route("192.168.1.1:80"))
    same({ nil }, "IPv6 link-local rejected", rs.route6("[fe80::1]:80"))
    same({ "www.example.com:443" }, "default", rs.resolve("www.example.com:443"))
end)

example("examples/full.lua", function(rs)
    _G.NDEBUG = true
    local dst = rs.resolve("api.neosocksd.internal:80")
    check(type(dst) == "string" and dst ~= "api.neosocksd.internal:80", "API mapped: " .. tostring(dst))
    same({ "nas.lan:445" }, "lan direct", rs.resolve("nas.lan:445"))
    local a, p = rs.resolve("www.example.com:443")
    eq(a, "www.example.com:443", "default keeps the address")
    check(type(p) == "string", "default goes through the upstream")
    same({ nil }, "loopback rejected", rs.route("127.0.0.1:80"))
    local s = rs.stats(1, "")
    check(s:find("> Rule Hits", 1, true), "stats: " .. s)
    rs.tick(neosocksd.now())
    check(type(rpc.set_default) == "function", "RPC handler")
end)

example("examples/loadbalance.lua", function(rs)
    _G.NDEBUG = true
    local seen = {}
    for i = 1, 30 do
        local _, proxy = rs.resolve("www.example.org:443")
        seen[proxy] = (seen[proxy] or 0) + 1
    end
    local n = 0
    for _ in pairs(seen) do
        n = n + 1
    end
    check(n >= 2, "spread over upstreams")
end)

example("examples/auth.lua", function(rs)
    _G.NDEBUG = true
    same({ nil }, "anonymous rejected", rs.resolve("www.example.com:443"))
    local user, pass = next(_G.secrets)
    check(rs.resolve("www.example.com:443", user, pass) ~= nil, "user admitted")
    same({ nil }, "wrong password", rs.resolve("www.example.com:443", user, pass .. "x"))
end)

-- [[ running ]] --

local finished = false
local function finish(ok, msg)
    if finished then
        return
    end
    finished = true
    print(msg)
    local done = rawget(_G, "test_done")
    if type(done) == "function" then
        done(ok, msg)
    else
        os.exit(ok and 0 or 1)
    end
end

-- [[ failover and health-checked groups ]] --

-- A fake upstream world: forward(addr, proxyN, ..., proxy1) succeeds unless the
-- first hop (the last argument; "direct" without one) is in `dead`; the clock is
-- driven by the test, never the wall clock.
local function fake_world()
    local w = { now = 100, dead = {}, tried = {}, latency = {} }
    w.clock = function()
        return w.now
    end
    w.forward = function(addr, ...)
        local n = select("#", ...)
        local hop = n > 0 and select(n, ...) or "direct"
        w.tried[#w.tried + 1] = hop
        w.now = w.now + (w.latency[hop] or 0)
        if w.dead[hop] then
            return false, "connection failed", "connect: Connection refused"
        end
        return true
    end
    return w
end

local function new_group(name, w, opts, members)
    opts = opts or {}
    opts.clock, opts.forward, opts.connect = w.clock, w.forward, opts.connect or w.forward
    libruleset.groups[name] = nil
    return lb.group(name, members or {
        { name = "a", chain = { "socks5://a:1" } },
        { name = "b", chain = { "socks5://b:1" } },
        { name = "c", chain = { "socks5://c:1" } },
    }, opts)
end

test("libruleset.failover tries the chains in order", function()
    local w = fake_world()
    w.dead["socks5://a:1"] = true
    local got = {}
    local fwd = function(addr, ...)
        got[#got + 1] = table.concat({ addr, ... }, " ")
        return w.forward(addr, ...)
    end
    same({ true, 2 }, "second chain", libruleset.failover("x:1", {
        { "socks5://a:1" }, { "http://p:2", "socks5://b:1" }, { "socks5://c:1" } }, fwd))
    eq(#got, 2, "stopped at the first success")
    -- await.forward's argument order: the last is the first hop.
    eq(got[2], "x:1 http://p:2 socks5://b:1", "chain order")
    w.dead["direct"] = true
    same({ nil, "connection failed" }, "all failed", libruleset.failover("x:1", { "socks5://a:1", {} }, fwd))
    raises("chain list expected", libruleset.failover, "x:1", "socks5://a:1")
    raises("proxy URI string expected", libruleset.failover, "x:1", { { 1 } }, fwd)
end)

test("group: a dead member is skipped after max_fails and taken back after it returns", function()
    local w = fake_world()
    local g = new_group("passive", w, { max_fails = 3, fail_window = 10, cooldown = 5, hysteresis = 2 })
    for _ = 1, 3 do
        same({ true, "a" }, "a serves", g:forward("x:1"))
    end
    w.dead["socks5://a:1"] = true
    -- Every request still succeeds: a failure costs a retry on b, not an
    -- error. Traffic leaves a at its first failure; a gets another chance
    -- each time it has stayed the better member for the hysteresis, until
    -- its third failure within the window takes it out.
    local requests = 0
    while g:state_of(g.byname.a) ~= "down" do
        requests = requests + 1
        check(requests < 20, "a never went out")
        same({ true, "b" }, "request " .. requests, g:forward("x:1"))
        w.now = w.now + 1
    end
    eq(g.byname.a.failures, 3, "failures")
    check(requests > 3, "a was retried only after the hysteresis: " .. requests)
    local before = #w.tried
    for _ = 1, 4 do
        same({ true, "b" }, "b serves", g:forward("x:1"))
        w.now = w.now + 0.5
    end
    eq(#w.tried - before, 4, "a is not tried while out")
    -- a comes back; after the cooldown it must stay usable for the hysteresis
    -- before traffic moves back to it (preemption to the preferred member).
    w.dead["socks5://a:1"] = nil
    w.now = w.now + 5
    eq(g:state_of(g.byname.a), "up", "after the cooldown")
    same({ true, "b" }, "hysteresis holds traffic on b", g:forward("x:1"))
    w.now = w.now + 2
    same({ true, "a" }, "back on a", g:forward("x:1"))
    eq(g.current.name, "a", "current")
end)

test("group: failures outside the window do not add up", function()
    local w = fake_world()
    local g = new_group("window", w, { max_fails = 2, fail_window = 10, cooldown = 30, hysteresis = 0 })
    w.dead["socks5://a:1"] = true
    g:forward("x:1")
    w.now = w.now + 11
    g:forward("x:1")
    eq(g:state_of(g.byname.a), "up", "two failures 11s apart")
    g:forward("x:1")
    eq(g:state_of(g.byname.a), "down", "two within 10s")
end)

test("group: a flapping member cannot move traffic faster than the hysteresis", function()
    local w = fake_world()
    local H = 10
    local g = new_group("flap", w, { max_fails = 1, fail_window = 5, cooldown = 1, hysteresis = H })
    local moves, last_move, on = 0, nil, "a"
    -- a is up for 3s, then down for 3s, over and over; one request a second,
    -- then the same with a slower flap (20s up, 20s down).
    for t = 0, 599 do
        w.now = 1000 + t
        local period = t < 200 and 3 or 20
        w.dead["socks5://a:1"] = (t // period) % 2 == 1 or nil
        local ok, who = g:forward("x:1")
        eq(ok, true, "request at t=" .. t)
        if who == "a" and on ~= "a" then
            moves = moves + 1
            check(last_move == nil or t - last_move >= H,
                sformat("traffic moved back at t=%d, %ds after the previous move", t, t - (last_move or 0)))
            last_move = t
        end
        on = who
    end
    check(moves >= 5, "traffic went back to a once it stayed up: " .. moves)
    check(moves <= 600 // H + 1, "moves back: " .. moves)
end)

test("group: latency mode prefers the fastest member, after the hysteresis", function()
    local w = fake_world()
    local g = new_group("fast", w, { mode = "latency", hysteresis = 5, ewma = 1 })
    w.latency["socks5://a:1"], w.latency["socks5://b:1"] = 0.2, 0.05
    same({ true, "a" }, "unknown latencies: list order", g:forward("x:1"))
    -- b gets measured only when traffic reaches it: force it once.
    g:force("b")
    same({ true, "b" }, "forced", g:forward("x:1"))
    g:force(nil)
    same({ true, "a" }, "hysteresis", g:forward("x:1"))
    w.now = w.now + 5
    same({ true, "b" }, "faster b after 5s", g:forward("x:1"))
end)

test("group: drain, weight and force (also by RPC)", function()
    local w = fake_world()
    local g = new_group("ops", w, { hysteresis = 0 })
    same({ true, "a" }, "a", g:forward("x:1"))
    eq(rpc.group_drain("ops", "a", true), true, "rpc")
    same({ true, "b" }, "a drained", g:forward("x:1"))
    rpc.group_weight("ops", "b", 0)
    same({ true, "c" }, "b weighted 0", g:forward("x:1"))
    rpc.group_force("ops", "b")
    same({ true, "b" }, "forced wins over weight", g:forward("x:1"))
    w.dead["socks5://b:1"] = true
    same({ nil, "connection failed" }, "a forced member is the only one tried", g:forward("x:1"))
    rpc.group_force("ops", nil)
    rpc.group_drain("ops", "a", false)
    rpc.group_weight("ops", "b", 1)
    same({ true, "a" }, "back to normal", g:forward("x:1"))
    local st = rpc.group_state("ops")
    eq(st.a.state, "up", "state")
    eq(st.a.current, true, "current")
    eq(st.b.failures, 1, "failures")
    raises("no failover group", rpc.group_drain, "nope", "a")
    raises("has no member", rpc.group_drain, "ops", "zz")
    raises("non-negative", rpc.group_weight, "ops", "a", -1)
end)

test("group: every member down still tries them all", function()
    local w = fake_world()
    local g = new_group("alldown", w, { max_fails = 1, cooldown = 100 })
    for _, m in ipairs({ "a", "b", "c" }) do
        w.dead["socks5://" .. m .. ":1"] = true
    end
    same({ nil, "connection failed" }, "all fail", g:forward("x:1"))
    w.dead["socks5://c:1"] = nil
    same({ true, "c" }, "the last resort works", g:forward("x:1"))
end)

test("group: active probes back off and bring a member back", function()
    local w = fake_world()
    local probes = {}
    local connect = function(addr, ...)
        probes[#probes + 1] = addr
        return w.forward(addr, ...)
    end
    local g = new_group("probed", w, { max_fails = 1, cooldown = 1000, hysteresis = 0,
        connect = connect, probe = { target = "probe.example:80", interval = 10, backoff = 2, max_interval = 35 } })
    w.dead["socks5://a:1"] = true
    g:forward("x:1")
    eq(g:state_of(g.byname.a), "down", "out")
    g:probe_due_members(w.now)
    eq(probes[1], "probe.example:80", "probe target")
    local a = g.byname.a
    eq(a.probe_interval, 20, "backoff")
    w.now = a.probe_due
    g:probe_due_members(w.now)
    eq(a.probe_interval, 35, "capped")
    w.dead["socks5://a:1"] = nil
    w.now = a.probe_due
    g:probe_due_members(w.now)
    eq(a.probe_interval, 10, "reset on success")
    eq(g:state_of(a), "up", "a probe that connects ends the cooldown")
    same({ true, "a" }, "a serves again", g:forward("x:1"))
end)

test("group: state in stats and metrics; a redefined group keeps it", function()
    local w = fake_world()
    local g = new_group("shown", w, { max_fails = 1, cooldown = 50 })
    w.dead["socks5://a:1"] = true
    g:forward("x:1")
    local s = libruleset.stats(0)
    s = s:sub(s:find("> Failover Groups", 1, true) or 1)
    check(s:find("shown/a%s*: down"), s)
    check(s:find("shown/b%s*: up%s+current"), s)
    local m = libruleset.metrics()
    check(m:find('rulesocks_group_member_up{group="shown",member="a"} 0', 1, true), m)
    check(m:find('rulesocks_group_member_current{group="shown",member="b"} 1', 1, true), m)
    check(m:find('rulesocks_group_member_failures_total{group="shown",member="a"} 1', 1, true), m)
    check(m:find("# TYPE rulesocks_rule_hits_total counter", 1, true), m)
    local g2 = lb.group("shown", { { "a", { "socks5://a:1" } }, { "b", { "socks5://b:1" } } },
        { clock = w.clock, forward = w.forward })
    eq(g2:state_of(g2.byname.a), "down", "kept across a reload")
    eq(g2.current.name, "b", "current kept")
    raises("non-empty member list", lb.group, "x", {})
    raises("unique name", lb.group, "x", { { "a" }, { "a" } })
    raises("unknown mode", lb.group, "x", { { "a" } }, { mode = "random" })
end)

-- A settled group forwards straight to its member (group.steady); each of
-- these must end that at once, exactly as a full selection would.
test("group: a settled member is left at once after a failure, drain, weight or force", function()
    local w = fake_world()
    local g = new_group("settled", w, { max_fails = 1, cooldown = 5, hysteresis = 3 })
    same({ true, "a" }, "a serves", g:forward("x:1"))
    check(g.steady == g.byname.a, "settled on a")
    same({ true, "a" }, "the settled path", g:forward("x:1"))
    eq(g.byname.a.successes, 2, "successes counted on the settled path")
    -- A failure on the settled path: the next member takes this very request.
    w.dead["socks5://a:1"] = true
    same({ true, "b" }, "a failed, b took the request", g:forward("x:1"))
    eq(g:state_of(g.byname.a), "down", "a out")
    eq(g.current.name, "b", "current")
    check(g.steady == g.byname.b, "settled on b while a is out")
    -- a's cool-down ends with nothing else happening: the settled choice
    -- must not outlive it (a becomes the challenger, then takes over after
    -- the hysteresis).
    w.dead["socks5://a:1"] = nil
    w.now = w.now + 5
    same({ true, "b" }, "hysteresis", g:forward("x:1"))
    check(g.steady == nil and g.challenger == g.byname.a, "a challenges b")
    w.now = w.now + 3
    same({ true, "a" }, "preempted back to a", g:forward("x:1"))
    same({ true, "a" }, "settled on a again", g:forward("x:1"))
    g:drain("a")
    same({ true, "b" }, "drained: at once", g:forward("x:1"))
    g:drain("a", false)
    w.now = w.now + 3
    same({ true, "b" }, "undrained: hysteresis first", g:forward("x:1"))
    w.now = w.now + 3
    same({ true, "a" }, "then back", g:forward("x:1"))
    g:set_weight("a", 0)
    same({ true, "b" }, "weighted 0: at once", g:forward("x:1"))
    g:set_weight("a", 1)
    g:force("c")
    same({ true, "c" }, "forced: at once", g:forward("x:1"))
    g:force(nil)
    same({ true, "b" }, "unforced: back to the selected member", g:forward("x:1"))
end)

test("group: a probe that brings a member back ends the settled choice", function()
    local w = fake_world()
    local g = new_group("settled-probe", w, { max_fails = 1, cooldown = 1000, hysteresis = 0,
        probe = { target = "probe.example:80", interval = 10 } })
    w.dead["socks5://a:1"] = true
    same({ true, "b" }, "a failed", g:forward("x:1"))
    same({ true, "b" }, "settled on b", g:forward("x:1"))
    check(g.steady == g.byname.b, "settled")
    w.dead["socks5://a:1"] = nil
    g:probe_once(g.byname.a, w.now)
    same({ true, "a" }, "a is back long before its cool-down ends", g:forward("x:1"))
end)

test("group: a member that connects after the group moved away takes the traffic back", function()
    local w = fake_world()
    local g = new_group("settled-race", w, { max_fails = 5, hysteresis = 100 })
    same({ true, "a" }, "settled on a", g:forward("x:1"))
    -- While one request's dial through a waits, another's fails on a and
    -- moves the group to b; then the first connects.
    local outer = w.forward
    local nested = false
    g.forward_fn = function(addr, ...)
        local hop = select(select("#", ...), ...)
        if hop == "socks5://a:1" and not nested then
            nested = true
            w.dead[hop] = true
            same({ true, "b" }, "the other request", g:forward("y:1"))
            w.dead[hop] = nil
        end
        return outer(addr, ...)
    end
    local switches = g.switches
    same({ true, "a" }, "the waiting request", g:forward("x:1"))
    eq(g.current.name, "a", "a connected: traffic is on a again")
    eq(g.switches, switches + 2, "a -> b -> a")
end)

local filter = os.getenv("TEST_FILTER")

async(function()
    local failed, passed = {}, 0
    for _, t in ipairs(tests) do
        if not filter or t.name:find(filter) then
            breathe()
            local t0 = clock()
            local ok, err = xpcall(t.fn, debug.traceback)
            local dt = clock() - t0
            if ok then
                passed = passed + 1
                print(sformat("PASS %s (%.3fs)", t.name, dt))
            else
                failed[#failed + 1] = t.name
                print(sformat("FAIL %s: %s", t.name, tostring(err)))
            end
        end
    end
    if #failed == 0 then
        finish(true, sformat("libruleset_test: %d tests passed", passed))
    else
        finish(false, sformat("libruleset_test: %d passed, %d failed: %s", passed, #failed,
            table.concat(failed, ", ")))
    end
end)

return libruleset
