-- bench/rules100k.lua: the ruleset of bench/compare's "ruleset" row, built on
-- lua/libruleset.lua: 100,000 domain rules and 10,000 CIDR rules, generated
-- the same way on every run. Benchmark traffic (SOCKS5 with the name
-- "localhost") misses the domain tree, is mapped by _G.hosts, misses the CIDR
-- list and goes direct, so each request pays for both lookups.
_G.libruleset = require("libruleset")
_G.NDEBUG = true -- no log line per matched rule

local N_DOMAINS, N_CIDRS = 100000, 10000

local seed = 12345
local function rand(n) -- a fixed LCG: the same tables every run
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
end

local domains = {}
for i = 1, N_DOMAINS do
    domains[i] = string.format("h%d.s%d.example%d.com", rand(1000000), i, rand(100))
end
local cidrs = {}
for i = 1, N_CIDRS do
    -- in 11.0.0.0 - 110.255.255.255: never loopback; one in eight a /16
    local a, b, c = 11 + rand(100), rand(256), rand(256)
    if rand(8) == 0 then
        cidrs[i] = string.format("%d.%d.0.0/16", a, b)
    else
        cidrs[i] = string.format("%d.%d.%d.0/24", a, b, c)
    end
end

_G.bench_rules = { domains = domains, cidrs = cidrs }
_G.redirect_name = {
    { match.domaintree(domains), rule.proxy("socks5://10.0.0.1:1080"), "listed" },
}
_G.hosts = { ["localhost"] = "127.0.0.1" }
_G.route = {
    { inet.subnet(cidrs), rule.proxy("socks5://10.0.0.2:1080"), "listed-net" },
}
_G.route_default = { rule.direct(), "direct" }

return _G.libruleset
