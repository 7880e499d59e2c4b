-- bench/decisions.lua: decisions per second of bench/rules100k.lua (100,000
-- domain rules, 10,000 CIDR rules) and the Lua heap it takes, measured inside
-- the real binary:
--
--   rulesocks -l 127.0.0.1:0 -r bench/decisions.lua
--
-- prints one line per measurement and a "JSON {...}" line, then exits.
local dir = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"

collectgarbage("collect")
local kib0 = collectgarbage("count")
local t0 = time.monotonic()
local ruleset = dofile(dir .. "rules100k.lua")
local build_s = time.monotonic() - t0
collectgarbage("collect")
local heap_mib = (collectgarbage("count") - kib0) / 1024

local rules = _G.bench_rules
-- In batches, each resumed anew: one resume may only run so many instructions.
local function measure(name, n, f)
    local spent = 0
    for first = 1, n, 10000 do
        local t = time.monotonic()
        for i = first, math.min(n, first + 9999) do
            f(i)
        end
        spent = spent + (time.monotonic() - t)
        await.idle()
    end
    local rate = n / spent
    print(string.format("%-34s %12.0f decisions/s", name, rate))
    return rate
end

neosocksd.async(function(ok, err)
    if not ok then
        print("failed: " .. tostring(err))
    end
    os.exit(ok and 0 or 1)
end, function()
    local N = 200000
    local nd, nc = #rules.domains, #rules.cidrs
    local results = {
        resolve_hit = measure("resolve: listed name (subdomain)", N, function(i)
            return ruleset.resolve("www." .. rules.domains[i % nd + 1] .. ":443")
        end),
        resolve_miss = measure("resolve: unlisted name -> hosts", N, function(i)
            return ruleset.resolve("localhost:" .. (i % 60000 + 1))
        end),
        route_hit = measure("route: address in a listed CIDR", N, function(i)
            local a, b, c = rules.cidrs[i % nc + 1]:match("^(%d+)%.(%d+)%.(%d+)")
            return ruleset.route(a .. "." .. b .. "." .. c .. ".7:80")
        end),
        route_miss = measure("route: unlisted address", N, function(i)
            return ruleset.route("127.0.0." .. (i % 250 + 1) .. ":80")
        end),
    }
    -- A decision through a healthy failover group (lb.group) against a plain
    -- rule.redirect with the same chain. The group's forward stands in for
    -- await.forward (which needs a live request) and answers at once, so this
    -- is the cost of the decision itself: selection, hysteresis, bookkeeping.
    local chain = { "socks5://127.0.0.1:1081" }
    local redirect = rule.redirect("127.0.0.1:8000", chain[1])
    local group = lb.group("bench", {
        { name = "a", chain = chain }, { name = "b", chain = { "socks5://127.0.0.1:1082" } },
    }, { forward = function() return true end })
    local action = group:action()
    results.redirect = measure("rule.redirect through a proxy", N, function(i)
        return redirect("example.org:" .. (i % 60000 + 1))
    end)
    results.group = measure("healthy failover group (lb.group)", N, function(i)
        return action("example.org:" .. (i % 60000 + 1))
    end)
    print(string.format("%-34s %12.2fx", "group / rule.redirect", results.group / results.redirect))
    print(string.format("%-34s %12.2f s", "building the tables", build_s))
    print(string.format("%-34s %12.1f MiB", "Lua heap of the tables", heap_mib))
    print(string.format("JSON {\"build_s\":%.3f,\"heap_mib\":%.1f,\"resolve_hit\":%.0f,"
        .. "\"resolve_miss\":%.0f,\"route_hit\":%.0f,\"route_miss\":%.0f,\"redirect\":%.0f,"
        .. "\"group\":%.0f}", build_s, heap_mib,
        results.resolve_hit, results.resolve_miss, results.route_hit, results.route_miss,
        results.redirect, results.group))
end)
