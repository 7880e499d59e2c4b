-- Exercises every neosocksd.* function, including its error cases.
--
-- The unit tests load it as a ruleset (with lib/cases.lua) and provide
-- test_done(ok, msg); `rulesocks -r tests/lua/neosocksd_api.lua` runs it too,
-- and then it exits with the result.

local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
local T = dofile(dir .. "lib/cases.lua")("neosocksd_api")
local case, raises = T.case, T.raises

local function eventually(cond, what)
    for _ = 1, 500 do
        if cond() then return end
        await.sleep(0.01)
    end
    error("timed out waiting for " .. what)
end

local ticks = 0

case("config", function()
    local c = neosocksd.config()
    assert(type(c) == "table")
    if c.loglevel ~= nil then assert(math.type(c.loglevel) == "integer") end
end)

case("splithostport", function()
    local h, p = neosocksd.splithostport("example.com:80")
    assert(h == "example.com" and p == "80", h)
    h, p = neosocksd.splithostport("[2001:db8::1]:443")
    assert(h == "2001:db8::1" and p == "443", h)
    h, p = neosocksd.splithostport("203.0.113.1:1080")
    assert(h == "203.0.113.1" and p == "1080")
    raises("invalid address", neosocksd.splithostport, "example.com")
    raises("invalid address", neosocksd.splithostport, "[::1")
    raises("invalid address", neosocksd.splithostport, ":80")
    raises("bad argument", neosocksd.splithostport, {})
end)

case("parse_ipv4", function()
    assert(neosocksd.parse_ipv4("203.0.113.1") == 0xCB007101)
    local subnet = neosocksd.parse_ipv4("169.254.0.0")
    local ip = neosocksd.parse_ipv4("169.254.10.20")
    assert(ip & 0xFFFF0000 == subnet)
    assert(neosocksd.parse_ipv4("0.0.0.0") == 0)
    assert(neosocksd.parse_ipv4("255.255.255.255") == 0xFFFFFFFF)
    assert(neosocksd.parse_ipv4("example.com") == nil)
    assert(neosocksd.parse_ipv4("::1") == nil)
    assert(neosocksd.parse_ipv4("1.2.3") == nil)
    assert(neosocksd.parse_ipv4(nil) == nil)
    assert(neosocksd.parse_ipv4({}) == nil)
end)

case("parse_ipv6", function()
    local hi, lo = neosocksd.parse_ipv6("2001:DB8::1")
    assert(hi == 0x20010DB800000000 and lo == 1)
    local s1 = neosocksd.parse_ipv6("FE80::")
    local ip1 = neosocksd.parse_ipv6("fe80::1234")
    assert(ip1 & 0xFFC0000000000000 == s1)
    hi, lo = neosocksd.parse_ipv6("::ffff:1.2.3.4")
    assert(hi == 0 and lo == 0x0000FFFF01020304)
    hi, lo = neosocksd.parse_ipv6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    assert(hi == -1 and lo == -1) -- 64-bit integers wrap
    assert(neosocksd.parse_ipv6("1.2.3.4") == nil)
    assert(neosocksd.parse_ipv6("2001:db8::g") == nil)
    assert(neosocksd.parse_ipv6(nil) == nil)
end)

case("setinterval drives ruleset.tick", function()
    raises("bad argument", neosocksd.setinterval, -1)
    raises("bad argument", neosocksd.setinterval, 1e-4)
    raises("bad argument", neosocksd.setinterval, 2e9)
    raises("bad argument", neosocksd.setinterval, 0 / 0)
    raises("bad argument", neosocksd.setinterval, "soon")
    neosocksd.setinterval(0.01)
    eventually(function() return ticks >= 3 end, "three ticks")
    neosocksd.setinterval(0)
    await.sleep(0.02)
    local stopped = ticks
    await.sleep(0.05)
    assert(ticks == stopped, "ticks after setinterval(0)")
end)

case("now", function()
    local t0 = neosocksd.now()
    assert(math.type(t0) == "float" and t0 > 0)
    await.sleep(0.02)
    assert(neosocksd.now() - t0 >= 0.015)
end)

case("traceback", function()
    local ok, msg = xpcall(error, neosocksd.traceback, "oops")
    assert(not ok and msg:find("oops", 1, true) and msg:find("stack traceback", 1, true), msg)
    assert(neosocksd.traceback(nil):find("(nil)", 1, true))
    assert(neosocksd.traceback({}):find("(table: ", 1, true))
    assert(neosocksd.traceback(42):find("42", 1, true))
end)

case("stats", function()
    local s = neosocksd.stats()
    assert(type(s) == "table")
    assert(math.type(s.bytes_allocated) == "integer" and s.bytes_allocated > 0)
end)

case("resolve (blocking)", function()
    local addr = neosocksd.resolve("localhost")
    assert(addr == "127.0.0.1" or addr == "::1", tostring(addr))
    assert(neosocksd.resolve("192.0.2.7") == "192.0.2.7")
    local none, err = neosocksd.resolve("nonexistent.invalid")
    assert(none == nil and type(err) == "string")
    raises("bad argument", neosocksd.resolve)
end)

case("async", function()
    raises("bad argument", neosocksd.async)
    raises("bad argument", neosocksd.async, print)
    local result
    local co = neosocksd.async(function(...) result = table.pack(...) end,
        function(a, b)
            await.sleep(0)
            return a + b, "z"
        end, 1, 2)
    assert(type(co) == "thread")
    eventually(function() return result end, "async result")
    assert(result[1] == true and result[2] == 3 and result[3] == "z")

    -- f raises: finish(false, err); f not callable: the same.
    result = nil
    neosocksd.async(function(...) result = table.pack(...) end, error, "inner")
    assert(result and result[1] == false and result[2] == "inner")
    result = nil
    neosocksd.async(function(...) result = table.pack(...) end, 42)
    assert(result and result[1] == false and result[2]:find("attempt to call"))

    -- A routine waiting in a plain yield, woken by another routine's finish
    -- (the pattern of _G.async in libruleset.lua).
    local waiter, value
    neosocksd.async(function() end, function()
        waiter = coroutine.running()
        value = coroutine.yield()
    end)
    neosocksd.async(function() assert(coroutine.resume(waiter, "woken")) end,
        function() await.sleep(0.01) end)
    eventually(function() return value end, "the waiter")
    assert(value == "woken")

    -- A stray resume does not cut an await short.
    local slept = false
    local sleeper = neosocksd.async(function() slept = true end,
        function() await.sleep(0.05) end)
    assert(coroutine.resume(sleeper))
    await.sleep(0)
    assert(not slept, "stray resume woke the sleeper")
    eventually(function() return slept end, "the sleeper")
end)

case("invoke (fire and forget)", function()
    raises("bad argument", neosocksd.invoke)
    raises("bad argument", neosocksd.invoke, "return 1")
    raises("bad argument", neosocksd.invoke, "return 1", "x:1", {})
    raises("invalid address", neosocksd.invoke, "return 1", "no port here")
    raises("invalid proxy", neosocksd.invoke, "return 1", "x:1", "gopher://127.0.0.1:1")
    -- named by position, never by its text: it may hold credentials
    local ok, err = pcall(neosocksd.invoke, "return 1", "x:1", "socks5://u:s3cret@h:0")
    assert(not ok and err:find("argument #3", 1, true) and not err:find("s3cret", 1, true), err)
    local api = neosocksd.config().api
    if not api then return end -- no API server: nothing to call
    _G.invoked = nil
    neosocksd.invoke("_G.invoked = 'yes'", api)
    eventually(function() return _G.invoked end, "the invocation")
    assert(_G.invoked == "yes")
end)

case("globals", function()
    print("neosocksd_api:", "print works", 1, nil, true)
    assert(type(marshal) == "function")
    assert(type(regex.compile) == "function")
    assert(type(time.monotonic) == "function")
    assert(type(zlib.compress) == "function")
end)

T.run()

return {
    resolve = function(addr) return addr end,
    tick = function() ticks = ticks + 1 end,
}
