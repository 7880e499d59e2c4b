-- A configuration file in neosocksd's format, for `rulesocks -c` (and
-- `neosocksd -c`):
--
--   rulesocks -c contrib/config.lua -- 127.0.0.1:1080 127.0.1.1:9080
--
-- The chunk gets the arguments after "--" as `...` and returns the options,
-- one field per command-line flag (API.md, "Configuration file"); flags given
-- on the command line override them. The `ruleset` field installs the
-- ruleset, as -r would; SIGHUP reads the file again.
local listen, restapi = ...
listen = listen or "127.0.0.1:1080"
restapi = restapi or "127.0.1.1:9080"

_G.libruleset = require("libruleset")

-- The API answers at api.neosocksd.internal:80 through the proxy (for RPC
-- from peers); everything else goes out directly.
_G.redirect_name = {
    { match.exact("api.neosocksd.internal:80"), rule.redirect(restapi), "api" },
}
_G.route_default = { rule.direct(), "direct" }

return {
    listen = listen,
    restapi = restapi,
    loglevel = 4,
    timeout = 60.0,
    max_sessions = 4096,
    -- random early drop of half-open connections from 10 on, all at 100
    startup_limit_start = 10,
    startup_limit_rate = 30,
    startup_limit_full = 100,
    block_multicast = true,
    tcp_nodelay = true,
    tcp_keepalive = true,
    socks5_bind = false,
    socks5_udp = false,
    ruleset = _G.libruleset,
}
