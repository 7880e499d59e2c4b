-- bench/ruleset.lua: a small but typical routing ruleset, the default of
-- `bench/compare --ruleset`. Every request is looked at the way a real ruleset
-- would (a host table, a few patterns, address-prefix checks) and, for the
-- benchmark's loopback origin, ends up dialled directly.
local ruleset = {}

-- Exact "host:port" rewrites.
local hosts = {
  ["db.lan:5432"] = "10.0.0.5:5432",
  ["cache.lan:6379"] = "10.0.0.6:6379",
  ["printer.lan:631"] = "10.0.0.7:631",
}

-- Host names matching a pattern go through a proxy.
local via_proxy = {
  { "%.onion:%d+$", "socks4a://127.0.0.1:9050" },
  { "^[%w%-%.]*%.internal%.example:%d+$", "socks5://10.0.0.1:1080" },
  { "^[%w%-%.]*%.corp%.example:%d+$", "http://10.0.0.2:8080" },
}

-- IPv4 destinations refused outright (address prefixes).
local refused_v4 = { "0.", "169.254.", "224.", "240.", "255." }

-- Ports nobody should reach through us.
local refused_ports = { [25] = true, [137] = true, [139] = true, [445] = true }

local function split(addr)
  local host, port = addr:match("^%[?(.-)%]?:(%d+)$")
  return host, tonumber(port)
end

-- Host names (SOCKS4A, SOCKS5 with a domain name, HTTP CONNECT).
function ruleset.resolve(addr)
  local dst = hosts[addr]
  if dst then return dst end
  local _, port = split(addr)
  if not port or refused_ports[port] then return nil end
  for _, rule in ipairs(via_proxy) do
    if addr:find(rule[1]) then return addr, rule[2] end
  end
  return addr
end

-- IPv4 literals.
function ruleset.route(addr)
  local host, port = split(addr)
  if not host or refused_ports[port] then return nil end
  for _, prefix in ipairs(refused_v4) do
    if host:sub(1, #prefix) == prefix then return nil end
  end
  return addr
end

-- IPv6 literals.
function ruleset.route6(addr)
  local host, port = split(addr)
  if not host or refused_ports[port] then return nil end
  if host:sub(1, 4):lower() == "fe80" then return nil end
  return addr
end

return ruleset
