-- bench/group.lua: the failover group row of bench/compare: every request
-- through a healthy lb.group (two direct members), so each decision selects a
-- member and dials it with await.forward from inside the ruleset.
_G.libruleset = require("libruleset")
_G.NDEBUG = true
local group = lb.group("bench", {
    { name = "primary", chain = {} },
    { name = "spare", chain = {} },
})
_G.route_default = { group:action(), "group" }
return libruleset
