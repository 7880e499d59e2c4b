-- bench/redirect.lua: the baseline of the failover group row of bench/compare:
-- every request decided by a plain rule.redirect (to the same address).
_G.libruleset = require("libruleset")
_G.NDEBUG = true
_G.route_default = { rule.redirect("127.0.0.1"), "redirect" }
return libruleset
