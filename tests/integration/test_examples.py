"""The example rulesets in lua/ loaded by the real binary and driven by clients.

  FullExample    every rule table and action of lua/examples/full.lua, real
                 refusals per protocol, the API mapping, an RPC from a second
                 node changing the default route, and its /stats block
  Minimal        lua/examples/minimal.lua
  LoadBalance    lua/examples/loadbalance.lua: round robin and weighted
  Auth           lua/examples/auth.lua with --auth-required
  DefaultRuleset lua/ruleset.lua (what the README's run command loads)
"""

import os
import re
import unittest

from harness import (
    HERE, LOOP4, IntegrationCase, connect, curl, free_port, read_http_response, recv_exact,
    socks4_request, socks5_handshake,
)

LUA = os.path.normpath(os.path.join(HERE, "..", "..", "lua"))
RPC_TYPE = "application/x-neosocksd-rpc; version=1"

# A chunk for /ruleset/rpcall that reports the library's decisions.
SHOW = """
local function show(...)
    local t = table.pack(...)
    for i = 1, t.n do t[i] = tostring(t[i]) end
    return table.concat(t, " ")
end
local out = {}
for _, q in ipairs(QUERIES) do
    out[#out + 1] = q[2] .. " = " .. show(libruleset[q[1]](q[2], q[3], q[4]))
end
return table.concat(out, "\\n")
"""


def rpcall(api_port, code):
    rc, out, err = curl("-X", "POST", "-H", f"Content-Type: {RPC_TYPE}", "--data-binary", code,
                        f"http://{LOOP4}:{api_port}/ruleset/rpcall", timeout=10)
    if rc != 0:
        raise AssertionError(f"rpcall: {err}")
    return out.decode()


def rpc_text(api_port, code):
    """The single string `code` returns, unescaped enough for these tests."""
    out = rpcall(api_port, code)
    m = re.fullmatch(r'return true,"(.*)"\s*', out, re.S)
    if not m:
        raise AssertionError(f"rpcall reply: {out!r}")
    return m.group(1).replace("\\n", "\n").replace('\\"', '"')


def decisions(api_port, queries):
    """{request: decision} for [(callback, request[, user, pass])...]."""
    rows = ",".join("{" + ",".join(f'"{x}"' for x in q) + "}" for q in queries)
    text = rpc_text(api_port, f"local QUERIES = {{{rows}}}\n{SHOW}")
    return dict(line.split(" = ", 1) for line in text.split("\n"))


class ExampleCase(IntegrationCase):
    example = None
    flags = ()

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.api_port = free_port()
        cls.proxy = cls.start_class_proxy(
            "-r", os.path.join(LUA, cls.example), "--api", f"{LOOP4}:{cls.api_port}", "-t", "5",
            *cls.flags, http=True, name=os.path.basename(cls.example),
            extra_ports=(cls.api_port,))

    def socks5h(self, host, port, auth=None):
        with connect(self.proxy.port) as s:
            return socks5_handshake(s, host, port, auth=auth)[1]

    def hello_via(self, host):
        return curl("--socks5-hostname", f"{LOOP4}:{self.proxy.port}",
                    f"http://{host}:{self.origin.port}/hello", timeout=10)


class FullExample(ExampleCase):
    example = "examples/full.lua"

    def test_every_table_and_action(self):
        api = f"{LOOP4}:{self.api_port}"
        want = {
            # _G.redirect_name: redirect, direct, reject by domain, pattern, regex
            "api.neosocksd.internal:80": api,
            "nas.lan:445": "nas.lan:445",
            "x.internal:80": "nil",
            "ads1.example.com:80": "nil",
            "telemetry.foo.com:443": "nil",
            # _G.hosts, then _G.route: proxy (office) and _G.route6: direct (ula)
            "printer.office:631": "192.168.2.20:631 socks5://192.168.1.1:1080",
            "nas6.office:80": "[fd00::20]:80",
            # _G.route_default: the upstream
            "example.com:443": "example.com:443 socks5://gateway.lan:1080",
            # _G.redirect, _G.route
            "1.1.1.1:53": "127.0.0.53:53",
            "127.0.0.1:80": "nil",
            "169.254.1.1:80": "nil",
            "192.168.2.5:22": "192.168.2.5:22 socks5://192.168.1.1:1080",
            "10.1.2.3:80": "10.1.2.3:80",
            "203.0.113.9:80": "203.0.113.9:80 socks5://gateway.lan:1080",
            # _G.redirect6, _G.route6
            "[2001:db8::1]:25": "nil",
            "[::1]:80": "nil",
            "[fd00::5]:80": "[fd00::5]:80",
            "[2001:db8::1]:80": "[2001:db8::1]:80 socks5://gateway.lan:1080",
        }
        queries = [("route6" if a.startswith("[") else
                    "route" if re.match(r"\d+\.\d+\.\d+\.\d+:", a) else "resolve", a)
                   for a in want]
        self.assertEqual(decisions(self.api_port, queries), want)

    def test_refusals_per_protocol(self):
        self.assertEqual(self.socks5h("x.internal", 80), 0x02)
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(self.origin.port))  # 127.0.0.1: "loopback"
            self.assertEqual(recv_exact(s, 8)[1], 0x5B)
        with connect(self.proxy.http_port) as s:
            s.sendall(b"CONNECT ads1.example.com:80 HTTP/1.1\r\n\r\n")
            status, _, _, raw = read_http_response(s)
            self.assertEqual(status, "HTTP/1.1 403 Forbidden", raw)

    def test_api_mapping(self):
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{self.proxy.port}", "-o", "/dev/null",
                            "-w", "%{http_code}", "http://api.neosocksd.internal/healthy",
                            timeout=10)
        self.assertEqual((rc, out), (0, b"200"), err)

    def test_rpc_from_a_peer_changes_the_default_route(self):
        # The default route goes through gateway.lan, which does not resolve here.
        self.assertEqual(self.socks5h("localhost", self.origin.port), 0x04)
        peer_api = free_port()
        self.start_proxy("-r", os.path.join(LUA, "examples", "minimal.lua"), "--api",
                         f"{LOOP4}:{peer_api}", name="peer", extra_ports=(peer_api,))
        target = f'{{"api.neosocksd.internal:80", "socks5://{LOOP4}:{self.proxy.port}"}}'
        try:
            reply = rpcall(peer_api, f'return await.rpcall({target}, "set_default", "direct")')
            self.assertEqual(reply.replace(" ", ""), 'returntrue,true,"direct"')
            rc, out, err = self.hello_via("localhost")
            self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
            # An error in the handler comes back to the caller.
            reply = rpcall(peer_api, f'return await.rpcall({target}, "set_default", "bogus")')
            self.assertIn("unknown mode: bogus", reply)
        finally:
            rpcall(self.api_port, 'rpc.set_default("upstream") return "ok"')

    def test_biglist_loaded_over_rpc(self):
        rpcall(self.api_port, 'return rpc.load_biglist({"big.example"}, {"198.51.100.0/24"})')
        got = decisions(self.api_port, [("resolve", "www.big.example:80"),
                                        ("route", "198.51.100.7:80")])
        self.assertEqual(got, {"www.big.example:80": "www.big.example:80 socks5://gateway.lan:1080",
                               "198.51.100.7:80": "198.51.100.7:80 socks5://gateway.lan:1080"})

    def test_stats_block(self):
        self.socks5h("x.internal", 80)
        rc, out, err = curl("-X", "POST", f"http://{LOOP4}:{self.api_port}/stats", timeout=10)
        self.assertEqual(rc, 0, err)
        text = out.decode()
        self.assertIn("examples/full.lua", text)
        self.assertIn("Default route", text)


class Minimal(ExampleCase):
    example = "examples/minimal.lua"

    def test_localhost_redirected_loopback_refused(self):
        rc, out, err = self.hello_via("localhost")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertEqual(self.socks5h(LOOP4, self.origin.port), 0x02)
        self.assertEqual(self.socks5h("db.internal", 80), 0x02)


class LoadBalance(ExampleCase):
    example = "examples/loadbalance.lua"

    def picks(self, n, addr):
        text = rpc_text(self.api_port, f"""
            local out = {{}}
            for i = 1, {n} do
                local _, proxy = libruleset.resolve("{addr}")
                out[#out + 1] = tostring(proxy)
            end
            return table.concat(out, " ")""")
        return text.split(" ")

    def test_roundrobin(self):
        picks = self.picks(6, "www.example.org:443")
        self.assertEqual(len(set(picks[:3])), 3, picks)
        self.assertEqual(picks[:3], picks[3:], picks)

    def test_weighted_and_changed_over_the_api(self):
        picks = self.picks(60, "elsewhere.example:443")
        counts = {p: picks.count(p) for p in set(picks)}
        self.assertEqual(counts, {"socks5://10.0.1.1:1080": 30, "socks5://10.0.1.2:1080": 20,
                                  "http://10.0.1.3:8080": 10})
        # As the example's comment says: curl -d 'rpc.set_weight(...)' .../ruleset/invoke
        rc, _, err = curl("-d", 'rpc.set_weight("http://10.0.1.3:8080", 0)',
                          f"http://{LOOP4}:{self.api_port}/ruleset/invoke", timeout=10)
        self.assertEqual(rc, 0, err)
        picks = self.picks(50, "elsewhere.example:443")
        self.assertNotIn("http://10.0.1.3:8080", picks)
        self.assertEqual(picks.count("socks5://10.0.1.1:1080"), 30)

    def test_everything_drained_rejects_and_hits_are_events(self):
        """rpc.set_weight(uri, 0) for every upstream: requests are rejected, nothing raises;
        the tagged hits show in the Recent Events of POST /stats."""
        weights = {"http://10.0.1.3:8080": 1, "socks5://10.0.1.1:1080": 3,
                   "socks5://10.0.1.2:1080": 2}
        try:
            for uri in weights:
                reply = rpcall(self.api_port, f'return rpc.set_weight("{uri}", 0)')
                self.assertTrue(reply.startswith("return true"), reply)
            self.assertEqual(self.picks(3, "drained.example:443"), ["nil"] * 3)
        finally:
            for uri, w in weights.items():
                rpcall(self.api_port, f'return rpc.set_weight("{uri}", {w})')
        self.assertIn(self.picks(1, "events.example:443")[0], weights)
        rc, out, err = curl("-X", "POST", f"http://{LOOP4}:{self.api_port}/stats", timeout=10)
        self.assertEqual(rc, 0, err)
        events = out.decode().split("> Recent Events", 1)[-1].split("\n> ", 1)[0]
        self.assertIn("[upstream] events.example:443", events)
        self.assertIn("[upstream] drained.example:443 (x3)", events)


class Auth(ExampleCase):
    example = "examples/auth.lua"
    flags = ("--auth-required",)

    def test_passwords_checked_by_the_ruleset(self):
        # Allowed, then refused by the network (the name does not resolve): 0x04.
        self.assertEqual(self.socks5h("nowhere.invalid", 80, auth=("bob", "hunter2")), 0x04)
        self.assertEqual(self.socks5h("nowhere.invalid", 80, auth=("bob", "wrong")), 0x02)
        self.assertEqual(self.socks5h("nowhere.invalid", 80, auth=("mallory", "x")), 0x02)
        with connect(self.proxy.port) as s:  # no credentials at all
            s.sendall(b"\x05\x01\x00")
            self.assertEqual(recv_exact(s, 2), b"\x05\xff")

    def test_http_basic(self):
        rc, _, err = curl("-p", "-x", f"http://alice:wrong@{LOOP4}:{self.proxy.http_port}",
                          "http://nowhere.invalid/", timeout=10)
        self.assertNotEqual(rc, 0)
        self.assertIn("403", err)


class DefaultRuleset(ExampleCase):
    example = "ruleset.lua"

    def test_direct_and_api_guarded(self):
        rc, out, err = self.hello_via("localhost")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertEqual(self.socks5h(LOOP4, self.api_port), 0x02)
        self.assertEqual(self.socks5h("localhost", self.api_port), 0x02)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{self.proxy.port}", "-o", "/dev/null",
                            "-w", "%{http_code}", "http://api.neosocksd.internal/healthy",
                            timeout=10)
        self.assertEqual((rc, out), (0, b"200"), err)


if __name__ == "__main__":
    unittest.main()
