-- Exercises every await.* function, including its error cases.
--
-- The unit tests load it as a ruleset (with lib/cases.lua) and provide
-- test_done(ok, msg); `rulesocks -r tests/lua/await_api.lua` runs it too, and
-- then it exits with the result.

local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
local T = dofile(dir .. "lib/cases.lua")("await_api")
local case, raises = T.case, T.raises

-- Outside of a routine (the chunk runs synchronously) every await.* refuses.
local outside = {}
for _, name in ipairs({ "sleep", "idle", "resolve", "execute", "invoke" }) do
    local ok, err = pcall(await[name], 0, "x")
    outside[name] = not ok and tostring(err) or "did not raise"
end

case("outside a routine", function()
    for name, err in pairs(outside) do
        assert(err:find("await." .. name .. ": not in an asynchronous routine", 1, true), err)
    end
end)

case("sleep", function()
    local t0 = neosocksd.now()
    assert(select("#", await.sleep(0.02)) == 0)
    assert(neosocksd.now() - t0 >= 0.015)
    await.sleep(0)
    raises("bad argument", await.sleep, -1)
    raises("bad argument", await.sleep, 2e9)
    raises("bad argument", await.sleep, 0 / 0)
    raises("bad argument", await.sleep, math.huge)
    raises("bad argument", await.sleep, "later")
    raises("bad argument", await.sleep)
end)

case("idle", function()
    assert(select("#", await.idle()) == 0)
end)

case("resolve", function()
    local addr = await.resolve("localhost")
    assert(addr == "127.0.0.1" or addr == "::1", tostring(addr))
    assert(await.resolve("127.0.0.1") == "127.0.0.1")
    assert(await.resolve("::1") == "::1")
    local none, err = await.resolve("nonexistent.invalid")
    assert(none == nil and type(err) == "string", tostring(err))
    raises("bad argument", await.resolve)
    raises("bad argument", await.resolve, {})
end)

case("execute", function()
    local ok, what, code = await.execute("exit 3")
    assert(ok == nil and what == "exit" and code == 3)
    ok, what, code = await.execute("true")
    assert(ok == true and what == "exit" and code == 0)
    ok, what, code = await.execute("kill -9 $$")
    assert(ok == nil and what == "signal" and code == 9)
    -- Standard input is /dev/null, not the server's.
    ok = await.execute("read line; test -z \"$line\"")
    assert(ok == true)
    raises("bad argument", await.execute)
end)

case("invoke", function()
    raises("bad argument", await.invoke)
    raises("bad argument", await.invoke, "return 1")
    raises("bad argument", await.invoke, "return 1", "x:1", {})
    -- A target that cannot be parsed fails the call, before any RPC.
    local bad, why = await.invoke("return 1", "no port here")
    assert(bad == false and why:find("invalid address", 1, true), tostring(why))
    bad, why = await.invoke("return 1", "x:1", "gopher://127.0.0.1:1")
    assert(bad == false and why:find("invalid proxy", 1, true), tostring(why))
    local api = neosocksd.config().api
    if not api then return end -- no API server: nothing to call

    local ok, result = await.invoke("await.sleep(0.01) return 1 + 1, 'x', { k = 'v' }", api)
    assert(ok, result)
    assert(type(result) == "function")
    local rok, a, b, t = result()
    assert(rok == true and a == 2 and b == "x" and t.k == "v")

    -- The remote code raises: the transport worked, result() says what failed.
    ok, result = await.invoke("error('remote failure')", api)
    assert(ok, result)
    rok, a = result()
    assert(rok == false and a:find("remote failure", 1, true), tostring(a))

    -- The transport fails.
    ok, result = await.invoke("return 1", "fail:1")
    assert(ok == false and type(result) == "string")
end)

case("a coroutine of the routine's own may await", function()
    local done = false
    local co = coroutine.create(function()
        await.sleep(0.01)
        done = true
    end)
    assert(coroutine.resume(co))
    assert(not done)
    for _ = 1, 100 do
        if done then break end
        await.sleep(0.01)
    end
    assert(done)
end)

case("many routines at once", function()
    local n, finished = 200, 0
    for i = 1, n do
        neosocksd.async(function(ok, err)
            assert(ok, err)
            finished = finished + 1
        end, function()
            await.sleep(math.random() * 0.02)
            await.idle()
            return i
        end)
    end
    for _ = 1, 500 do
        if finished == n then break end
        await.sleep(0.01)
    end
    assert(finished == n, finished)
end)

T.run()

return { resolve = function(addr) return addr end }
