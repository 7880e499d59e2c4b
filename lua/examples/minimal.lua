-- [[ minimal.lua: a few rule tables ]] --
-- Run with: rulesocks -l 127.0.0.1:1080 -r lua/examples/minimal.lua
_G.libruleset = require("libruleset")

-- Requests with a host name: { matcher, action, optional tag for the stats }.
-- The first matching rule decides; unmatched names go to _G.route_default.
_G.redirect_name = {
    -- "localhost:PORT" -> "127.0.0.1:PORT"
    { match.host("localhost"),   rule.redirect("127.0.0.1"), "localhost" },
    { match.domain(".internal"), rule.reject(),              "internal" },
}

-- Requests with an IPv4 address (and host names mapped by _G.hosts).
_G.route = {
    { inet.subnet("127.0.0.0/8"),                                     rule.reject(), "loopback" },
    { inet.subnet({ "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16" }), rule.direct(), "lan" },
}

-- Requests with an IPv6 address.
_G.route6 = {
    { inet6.subnet({ "::1/128", "fe80::/10" }), rule.reject(), "local6" },
}

-- Everything else: { action, optional tag }.
_G.route_default = { rule.direct(), "wan" }

return _G.libruleset
