-- [[ loadbalance.lua: spreading requests over upstream proxies ]] --
-- Run with: rulesocks -l 127.0.0.1:1080 --api 127.0.0.1:9080 -r lua/examples/loadbalance.lua
_G.libruleset = require("libruleset")

-- 1. Round robin: each request to *.example.org takes the next upstream in turn.
local mirrors = {
    rule.proxy("socks5://10.0.0.1:1080"),
    rule.proxy("socks5://10.0.0.2:1080"),
    rule.proxy("socks5://10.0.0.3:1080"),
}

_G.redirect_name = {
    { match.domain(".example.org"), lb.roundrobin(mirrors), "mirrors" },
}

-- 2. Interleaved weighted round robin for everything else: with weights 3:2:1
-- the upstreams take 3/6, 2/6 and 1/6 of the requests, interleaved (A B C A B A)
-- rather than in bursts.
local weights = {
    ["socks5://10.0.1.1:1080"] = 3,
    ["socks5://10.0.1.2:1080"] = 2,
    ["http://10.0.1.3:8080"] = 1,
}

local function rebuild()
    local upstreams = {}
    for uri in pairs(weights) do
        upstreams[#upstreams + 1] = uri
    end
    table.sort(upstreams) -- a stable order
    local t = {}
    for _, uri in ipairs(upstreams) do
        t[#t + 1] = { weights[uri], rule.proxy(uri) }
    end
    _G.route_default = { lb.iwrr(t), "upstream" }
end
rebuild()

-- Weights can be changed at run time from another node:
--   await.rpcall("127.0.0.1:9080", "set_weight", "http://10.0.1.3:8080", 0)
-- or with curl (see /ruleset/invoke):
--   curl -d 'rpc.set_weight("http://10.0.1.3:8080", 5)' http://127.0.0.1:9080/ruleset/invoke
function rpc.set_weight(uri, weight)
    local old = weights[uri]
    weights[uri] = weight
    local ok, err = pcall(rebuild)
    if not ok then
        weights[uri] = old
        error(err, 0)
    end
    evlogf("weight of %s: %s -> %s", uri, tostring(old), tostring(weight))
    return old
end

neosocksd.setinterval(60.0)
return _G.libruleset
