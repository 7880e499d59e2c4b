-- [[ auth.lua: client authentication ]] --
-- Run with: rulesocks -l 127.0.0.1:1080 --auth-required -r lua/examples/auth.lua
-- Clients log in with SOCKS5 username/password (or HTTP Proxy-Authorization);
-- the ruleset callbacks receive (addr, username, password).
_G.libruleset = require("libruleset")

-- username -> password. A request whose password does not match is rejected
-- (and shows up in the "Recent Events" of /stats); so are anonymous ones.
_G.secrets = {
    ["alice"] = "correct horse battery staple",
    ["bob"] = "hunter2",
}

-- Instead of _G.secrets, a function may decide (it wins when both are set):
--
-- function libruleset.authenticate(addr, username, password)
--     if username == "guest" then
--         return not addr:find(":25$") -- guests may not send mail
--     end
--     return _G.secrets[username] == password
-- end

_G.redirect_name = {
    { match.host("localhost"), rule.reject(), "localhost" },
}

_G.route = {
    { inet.subnet("127.0.0.0/8"),    rule.reject(), "loopback" },
    { inet.subnet("169.254.0.0/16"), rule.reject(), "link-local" },
}

_G.route6 = {
    { inet6.subnet({ "::1/128", "fe80::/10", "::ffff:127.0.0.0/104" }), rule.reject(), "local6" },
}

_G.route_default = { rule.direct(), "out" }

neosocksd.setinterval(60.0)
return _G.libruleset
