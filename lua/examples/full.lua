-- [[ full.lua: every rule table, hosts, tick, stats and RPC ]] --
-- Run with: rulesocks -l 0.0.0.0:1080 --api 127.0.0.1:9080 -r lua/examples/full.lua
_G.libruleset = require("libruleset")

-- This node's RESTful API. Peers reach it through the proxy as
-- "api.neosocksd.internal:80" (await.rpcall, neosocksd.sendmsg).
local API_ENDPOINT = "api.neosocksd.internal:80"
local API = neosocksd.config().api
if type(API) ~= "string" or API == "" then
    API = "127.0.0.1:9080"
end

local UPSTREAM = "socks5://gateway.lan:1080"

-- 1. _G.redirect*: match the request address "host:port".
-- _G.redirect_name: requests with a host name.
_G.redirect_name = {
    { match.exact(API_ENDPOINT),               rule.redirect(API),                  "api" },
    -- local sites directly
    { match.domain({ ".lan", ".local" }),      rule.direct(),                       "lan" },
    { match.domain(".internal"),               rule.reject(),                       "internal" },
    -- a big list loaded at run time (rpc.load_biglist below)
    { composite.maybe(_G, "biglist_name"),     rule.proxy(UPSTREAM),                "biglist" },
    -- a pattern and a regex
    { match.pattern("^ads?%d*%."),             rule.reject(),                       "ads" },
    { match.regex([[^telemetry\.[a-z]+\.]]),   rule.reject(),                       "telemetry" },
    -- otherwise: names in _G.hosts go to _G.route/_G.route6, others to _G.route_default
}

-- _G.redirect: requests with an IPv4 address.
_G.redirect = {
    -- DNS over TCP to the local cache
    { match.exact({ "1.1.1.1:53", "8.8.8.8:53" }), rule.redirect("127.0.0.53:53"), "dns" },
}

-- _G.redirect6: requests with an IPv6 address.
_G.redirect6 = {
    { match.port(25), rule.reject(), "smtp" },
}

-- 2. _G.hosts: names mapped to addresses, then routed as those addresses.
_G.hosts = {
    ["gateway.lan"] = "192.168.1.1",
    ["printer.office"] = "192.168.2.20",
    ["nas6.office"] = "fd00::20",
}

-- 3. _G.route*: match the IP address.
_G.route = {
    { inet.subnet("127.0.0.0/8"),                    rule.reject(),                                 "loopback" },
    { inet.subnet("169.254.0.0/16"),                 rule.reject(),                                 "link-local" },
    -- the office network through its gateway
    { inet.subnet("192.168.2.0/24"),                 rule.proxy("socks5://192.168.1.1:1080"),       "office" },
    { inet.subnet({ "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16" }), rule.direct(),              "lan" },
    { composite.maybe(_G, "biglist"),                rule.proxy(UPSTREAM),                          "biglist" },
}

_G.route6 = {
    { inet6.subnet({ "::1/128", "fe80::/10", "::ffff:127.0.0.0/104" }), rule.reject(), "local6" },
    { inet6.subnet("fd00::/8"),                      rule.direct(),                                 "ula" },
}

-- 4. Everything else: { action, tag }.
_G.route_default = { rule.proxy(UPSTREAM), "wan" }

-- [[ RPC handlers, called by peers with await.rpcall(target, name, ...) ]] --

-- rpc.set_default("direct" | "upstream")
function rpc.set_default(mode)
    if mode == "direct" then
        _G.route_default = { rule.direct(), "wan-direct" }
    elseif mode == "upstream" then
        _G.route_default = { rule.proxy(UPSTREAM), "wan" }
    else
        error("unknown mode: " .. tostring(mode), 0)
    end
    evlogf("route_default: %s", mode)
    return mode
end

-- rpc.load_biglist({ "example.com", ... }, { "203.0.113.0/24", ... })
function rpc.load_biglist(domains, cidrs)
    _G.biglist_name = match.domaintree(domains or {})
    _G.biglist = inet.subnet(cidrs or {})
    evlogf("biglist: %d domains, %d networks", #(domains or {}), #(cidrs or {}))
    return true
end

-- messages from neosocksd.sendmsg(target, "notice", ...)
function msgh.notice(...)
    evlog("notice:", ...)
end

-- [[ callbacks: the library's, plus our own tick and stats ]] --
local ruleset = setmetatable({}, {
    __index = function(_, k)
        return _G.libruleset[k]
    end,
})

-- every minute: the library's request-rate sampling, then our own work
function ruleset.tick(now)
    libruleset.tick(now)
    if _G.peer then
        -- tell a peer we are alive (fire and forget)
        neosocksd.sendmsg(_G.peer, "notice", "tick from", API, format_timestamp(now))
    end
end

function ruleset.stats(dt, q)
    local w = list:new()
    w:insertf("%-20s: %s", "Ruleset", "examples/full.lua")
    w:insertf("%-20s: %s", "Default route", tostring(table.get(_G, "route_default", 2)))
    w:insert(libruleset.stats(dt, q))
    return w:concat("\n")
end

neosocksd.setinterval(60.0)
evlogf("ruleset loaded, interpreter: %s", _VERSION)
return ruleset
