-- [[ ruleset.lua: the default ruleset (contrib/dev.sh run -r lua/ruleset.lua) ]] --
-- Everything goes direct, except that clients may not reach this node's own
-- RESTful API through the proxy, other than by its mapped name. See
-- lua/examples/ for more.
_G.libruleset = require("libruleset")

local API_ENDPOINT = "api.neosocksd.internal:80"
local api = neosocksd.config().api

-- Requests to the API's port on this host (or any host, when the API listens on
-- all addresses) are refused; "api.neosocksd.internal:80" is mapped to it.
local guard, mapped = nil, nil
if type(api) == "string" and api ~= "" then
    local ok, host, port = pcall(neosocksd.splithostport, api)
    if ok then
        local local_hosts = composite.anyof({
            match.host({ "localhost", host }),
            inet.subnet("127.0.0.0/8"),
            inet6.subnet({ "::1/128", "::ffff:127.0.0.0/104" }),
        })
        if host == "0.0.0.0" or host == "::" then
            guard = match.port(tonumber(port))
        else
            guard = composite.allof({ match.port(tonumber(port)), local_hosts })
        end
        mapped = rule.redirect(api)
    end
end

_G.redirect_name = {}
_G.redirect = {}
_G.redirect6 = {}
if guard then
    table.insert(_G.redirect_name, { match.exact(API_ENDPOINT), mapped, "api" })
    table.insert(_G.redirect_name, { guard, rule.reject(), "api-guard" })
    table.insert(_G.redirect, { guard, rule.reject(), "api-guard" })
    table.insert(_G.redirect6, { guard, rule.reject(), "api-guard" })
end

-- Examples (uncomment to use):
--
-- -- private networks (RFC 1918) directly, everything else through an upstream
-- _G.route = {
--     { inet.subnet({ "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16" }), rule.direct(), "rfc1918" },
-- }
-- _G.route_default = { rule.proxy("socks5://upstream.example:1080"), "upstream" }
--
-- -- or refuse private networks altogether
-- _G.route = {
--     { inet.subnet({ "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16" }), rule.reject(), "rfc1918" },
--     { inet.subnet({ "127.0.0.0/8", "169.254.0.0/16" }), rule.reject(), "local" },
-- }
-- _G.route6 = {
--     { inet6.subnet({ "::1/128", "fe80::/10", "fc00::/7" }), rule.reject(), "local6" },
-- }

_G.route_default = { rule.direct(), "direct" }

neosocksd.setinterval(60.0)
return _G.libruleset
