"""The Lua ruleset (-r) deciding real requests from real clients.

  Callbacks      resolve / route / route6 get the right requests and arguments
  Decisions      rewrite, chain, reject, and every way a ruleset can fail
  Async          await.sleep / await.resolve in a callback; a client that leaves
                 while its routine waits cancels it
  Loading        FILE.gz, require() next to the ruleset, a broken file at start-up
  Tick           neosocksd.setinterval drives ruleset.tick
  ApiExposure    the API is reachable through the proxy only when the ruleset
                 maps a name to it (api.neosocksd.internal)
"""

import gzip
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from harness import (
    BIN, HERE, LOOP4, LOOP6, IntegrationCase, Origin, Proxy, connect, curl, free_port,
    has_ipv6_loopback, read_http_response, recv_exact, socks4_request, socks5_handshake,
    wait_until,
)

RULESET = r"""
local calls = {}
_G.calls = calls
_G.ticks = 0

local function origin(port) return "127.0.0.1:" .. port end

local ruleset = {}

local function decide(kind, addr, user, pass)
    calls[#calls + 1] = string.format("%s %s %s %s", kind, addr, tostring(user), tostring(pass))
    local host, port = neosocksd.splithostport(addr)
    if host == "origin.test" then return origin(port) end
    if host == "deny.test" then return nil end
    if host == "raise.test" then error("deliberate failure") end
    if host == "garbage.test" then return 42 end
    if host == "badaddr.test" then return "not an address" end
    if host == "badproxy.test" then return origin(port), "gopher://127.0.0.1:1" end
    if host == "loop.test" then while true do end end
    if host == "mem.test" then
        local t = {}
        for i = 1, 1e8 do t[i] = string.rep("x", 64) .. i end
    end
    if host == "sleep.test" then
        await.sleep(0.5)
        return origin(port)
    end
    if host == "nap.test" then
        await.sleep(0.5)
        return "127.0.0.1:@UPSTREAM@"
    end
    if host == "hang.test" then
        await.sleep(60)
        return nil
    end
    if host == "resolve.test" then
        local ip = await.resolve("localhost")
        if not ip then return nil end
        return (ip:find(":") and "[" .. ip .. "]" or ip) .. ":" .. port
    end
    if host == "chain.test" then return origin(port), "socks5://127.0.0.1:@UPSTREAM@" end
    if host == "user.test" then
        if user == "alice" and pass == "secret" then return origin(port) end
        return nil
    end
    if host == "api.neosocksd.internal" then return "127.0.0.1:@API@" end
    return addr
end

function ruleset.resolve(addr, user, pass) return decide("resolve", addr, user, pass) end
function ruleset.route(addr, user, pass) return decide("route", addr, user, pass) end
function ruleset.route6(addr, user, pass) return decide("route6", addr, user, pass) end

function ruleset.tick(now)
    _G.ticks = _G.ticks + 1
end

return ruleset
"""

RPC_TYPE = "application/x-neosocksd-rpc; version=1"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def rpc_string(api_port, code):
    """Runs `code` on the node (POST /ruleset/rpcall); it must return one string."""
    rc, out, err = curl("-X", "POST", "-H", f"Content-Type: {RPC_TYPE}", "--data-binary", code,
                        f"http://{LOOP4}:{api_port}/ruleset/rpcall", timeout=10)
    if rc != 0:
        raise AssertionError(f"rpcall failed: {err}")
    m = re.fullmatch(rb'return true,"(.*)"\s*', out, re.S)
    if not m:
        raise AssertionError(f"unexpected rpcall reply {out!r}")
    return m.group(1).decode()


def stats(api_port):
    rc, out, err = curl(f"http://{LOOP4}:{api_port}/stats", timeout=10)
    if rc != 0:
        raise AssertionError(f"/stats failed: {err}")
    return out.decode()


def routines_alive(api_port):
    m = re.search(r"Routines\s*:\s*(\d+) alive", stats(api_port))
    return int(m.group(1)) if m else None


class RulesetCase(IntegrationCase):
    """One proxy with the test ruleset, an API, an upstream for chains and an origin."""

    extra_flags = ()

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.upstream = cls.start_class_proxy(name="upstream")
        cls.dir = tempfile.mkdtemp(prefix="rulesocks-ruleset-")
        cls.api_port = free_port()
        text = RULESET.replace("@UPSTREAM@", str(cls.upstream.port)).replace(
            "@API@", str(cls.api_port))
        cls.ruleset = write(os.path.join(cls.dir, "ruleset.lua"), text)
        cls.proxy = cls.start_class_proxy("-r", cls.ruleset, "--api", f"{LOOP4}:{cls.api_port}",
                                          "-t", "5", *cls.extra_flags, http=True, name="front",
                                          extra_ports=(cls.api_port,))

    def setUp(self):
        rpc_string(self.api_port, "for k in pairs(calls) do calls[k] = nil end return 'ok'")

    def calls(self):
        return rpc_string(self.api_port, "return table.concat(calls, '|')").split("|")

    def hello(self, *proxy_args, host="origin.test"):
        return curl(*proxy_args, f"http://{host}:{self.origin.port}/hello", timeout=10)

    def socks5h(self, host, port=None, auth=None):
        """SOCKS5 with a host name; returns the REP code (None if closed)."""
        with connect(self.proxy.port) as s:
            _, rep = socks5_handshake(s, host, port or self.origin.port, auth=auth)
            return rep

    def assert_still_serving(self):
        rc, out, err = self.hello("--socks5-hostname", f"{LOOP4}:{self.proxy.port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)


class Callbacks(RulesetCase):
    def test_socks5_hostname_calls_resolve(self):
        rc, out, err = self.hello("--socks5-hostname", f"{LOOP4}:{self.proxy.port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertIn(f"resolve origin.test:{self.origin.port} nil nil", self.calls())

    def test_socks4a_calls_resolve(self):
        rc, out, err = self.hello("--socks4a", f"{LOOP4}:{self.proxy.port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertTrue(any(c.startswith(f"resolve origin.test:{self.origin.port}")
                            for c in self.calls()), self.calls())

    def test_http_connect_calls_resolve(self):
        rc, out, err = self.hello("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertIn(f"resolve origin.test:{self.origin.port} nil nil", self.calls())

    def test_http_connect_with_ip_literal_calls_route(self):
        rc, out, err = self.hello("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}",
                                  host=LOOP4)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertIn(f"route {LOOP4}:{self.origin.port} nil nil", self.calls())

    def test_socks4_and_socks5_ipv4_call_route(self):
        for flag in ("--socks4", "--socks5"):
            rc, out, err = self.hello(flag, f"{LOOP4}:{self.proxy.port}", host=LOOP4)
            self.assertEqual((rc, out), (0, b"hello from origin\n"), f"{flag}: {err}")
        self.assertEqual(self.calls().count(f"route {LOOP4}:{self.origin.port} nil nil"), 2)

    @unittest.skipUnless(has_ipv6_loopback(), "no IPv6 loopback")
    def test_socks5_ipv6_calls_route6(self):
        with Origin(LOOP6) as o6:
            rc, out, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}", o6.url("/hello"),
                                timeout=10)
            self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
            self.assertIn(f"route6 [::1]:{o6.port} nil nil", self.calls())

    def test_credentials_reach_the_ruleset(self):
        self.assertEqual(self.socks5h("user.test", auth=("alice", "secret")), 0x00)
        self.assertEqual(self.socks5h("user.test", auth=("alice", "wrong")), 0x02)
        self.assertIn(f"resolve user.test:{self.origin.port} alice secret", self.calls())
        # HTTP Basic credentials too.
        rc, out, err = curl("-p", "-x", f"http://alice:secret@{LOOP4}:{self.proxy.http_port}",
                            f"http://user.test:{self.origin.port}/hello", timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)


class Decisions(RulesetCase):
    def test_rewrite(self):
        self.assertEqual(self.socks5h("origin.test"), 0x00)

    def test_reject_gets_each_protocols_refusal(self):
        self.assertEqual(self.socks5h("deny.test"), 0x02)
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(self.origin.port, host="deny.test"))
            self.assertEqual(recv_exact(s, 8)[1], 0x5B)
        with connect(self.proxy.http_port) as s:
            s.sendall(f"CONNECT deny.test:{self.origin.port} HTTP/1.1\r\n\r\n".encode())
            status, _, _, raw = read_http_response(s)
            self.assertEqual(status, "HTTP/1.1 403 Forbidden", raw)

    def test_failing_rulesets_reject_only_that_request(self):
        for host in ("raise.test", "garbage.test", "badaddr.test", "badproxy.test"):
            self.assertEqual(self.socks5h(host), 0x02, host)
            self.assert_still_serving()
        log = self.proxy.log_text()
        self.assertIn("deliberate failure", log)
        self.assertIn("value #1 is a number", log)

    def test_endless_loop_is_cut_off(self):
        t0 = time.monotonic()
        self.assertEqual(self.socks5h("loop.test"), 0x02)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("instruction limit exceeded", self.proxy.log_text())
        self.assert_still_serving()

    def test_chain_from_the_ruleset(self):
        rc, out, err = self.hello("--socks5-hostname", f"{LOOP4}:{self.proxy.port}",
                                  host="chain.test")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        line = f"socks5 -> 127.0.0.1:{self.origin.port}"
        self.assertTrue(wait_until(lambda: line in self.upstream.log_text(), 2),
                        "the upstream did not carry the request")

    def test_unknown_name_passes_through_to_the_resolver(self):
        self.assertEqual(self.socks5h("no-such-host.invalid"), 0x04)


class MemoryLimit(RulesetCase):
    extra_flags = ("--memlimit", "32")

    def test_memlimit_rejects_and_recovers(self):
        self.assertEqual(self.socks5h("mem.test"), 0x02)
        self.assertIn("memory", self.proxy.log_text().lower())
        rpc_string(self.api_port, "collectgarbage() return 'ok'")
        self.assert_still_serving()


STRESS_RULESET = r"""
-- ruleset.resolve("stress.test:N"): fills the Lua heap up to --memlimit, then
-- frees it a few dozen bytes at a time, calling every host function (under
-- pcall) at each step; rejects the request and reports in _G.stress.
local API = neosocksd.config().api
local function hosts()
    return {
        function() return neosocksd.config() end,
        function() return neosocksd.stats() end,
        function() return neosocksd.async(function() end, function() await.sleep(0) end) end,
        function()
            for _ = 1, 24 do neosocksd.async(function() end, function() await.sleep(0.01) end) end
        end,
        function() neosocksd.invoke("_G.invoked = (_G.invoked or 0) + 1", API) end,
        function() neosocksd.setinterval(0) end,
        function() return neosocksd.splithostport("example.com:80") end,
        function() return neosocksd.parse_ipv4("10.1.2.3"), neosocksd.parse_ipv6("::1") end,
        function() return neosocksd.resolve("localhost") end,
        function() return neosocksd.traceback("here") end,
        function() await.sleep(0) end,
        function() await.idle() end,
        function() return await.resolve("localhost") end,
        function() return await.execute("true") end,
        function()
            local ok, r = await.invoke("return 1, 'two'", API)
            if ok then return r() end
        end,
        function() return regex.compile("^a+(b|c)$"):match("aaab") end,
        function() return zlib.uncompress(zlib.compress(string.rep("abc", 50))) end,
        function() return zlib.gunzip(zlib.gzip("hello")) end,
        function() return marshal({ 1, "two", { x = 3.5, [true] = false } }) end,
        function() return time.monotonic(), time.wall() end,
    }
end
local fns = hosts()
-- Counters in fields that exist already: updating them never allocates.
_G.stress = { steps = 0, passed = 0, failed = 0, escaped = 0, filled = 0 }
local counts = _G.stress
local big, small
local function put_big(i) big[i] = string.rep("x", 1000) end
local function put_small(i) small[i] = {} end
local function stress(steps)
    -- Slots first, so that filling them never grows a table.
    big, small = {}, {}
    for i = 1, 1200 do big[i] = false end
    for i = 1, 400 do small[i] = false end
    collectgarbage()
    local nb, ns = 0, 0
    while nb < #big and pcall(put_big, nb + 1) do nb = nb + 1 end
    -- Trade the last few KiB for small pieces, so that the room grows finely.
    for i = nb - 5, nb do big[i] = false end
    collectgarbage()
    while ns < #small and pcall(put_small, ns + 1) do ns = ns + 1 end
    counts.filled = nb
    for k = 1, math.min(steps, ns) do
        small[k] = false  -- about 56 bytes more room at each step
        counts.steps = counts.steps + 1
        for i = 1, #fns do
            collectgarbage()
            if pcall(fns[i]) then
                counts.passed = counts.passed + 1
            else
                counts.failed = counts.failed + 1
            end
        end
    end
end
local ruleset = {}
function ruleset.resolve(addr)
    local steps = tonumber(addr:match("^stress%.test:(%d+)$"))
    if not steps then return addr end
    -- The limit may hit this routine's own frames too (calling pcall needs a
    -- call frame): that fails this request only.
    if not pcall(stress, steps) then counts.escaped = counts.escaped + 1 end
    big, small = nil, nil
    collectgarbage()
    return nil
end
function ruleset.route(addr) return addr end
return ruleset
"""


class MemoryLimitStress(IntegrationCase):
    """--memlimit 1 with the heap a few bytes to a few KiB below it, every host function."""

    def test_every_host_function_near_the_limit(self):
        origin = self.start_class_origin()
        d = tempfile.mkdtemp(prefix="rulesocks-ruleset-")
        self.addCleanup(shutil.rmtree, d, True)
        path = write(os.path.join(d, "stress.lua"), STRESS_RULESET)
        api_port = free_port()
        proxy = self.start_proxy("-r", path, "--memlimit", "1", "--api", f"{LOOP4}:{api_port}",
                                 "-t", "60", name="stress", extra_ports=(api_port,))
        for _ in range(2):
            with connect(proxy.port, timeout=60) as s:
                _, rep = socks5_handshake(s, "stress.test", 150)
            self.assertEqual(rep, 0x02, "the stressed request is refused, not dropped")
            self.assertTrue(proxy.alive, "the proxy aborted")
            report = rpc_string(api_port, "local s = _G.stress return string.format("
                                "'%d %d %d %d %d', s.steps, s.passed, s.failed, s.escaped, s.filled)")
            steps, passed, failed, escaped, filled = map(int, report.split())
            self.assertGreater(steps, 20, report)
            self.assertGreater(failed, 50, f"the limit was never met: {report}")
            self.assertGreater(passed, 50, report)
            print(f"stress: steps passed failed escaped KiB: {report}", file=sys.stderr)
            # And it serves as before.
            rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{proxy.port}",
                                f"http://127.0.0.1:{origin.port}/hello", timeout=10)
            self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertTrue(wait_until(
            lambda: rpc_string(api_port, "return tostring(_G.invoked or 0)") != "0", 5),
            "some neosocksd.invoke calls were delivered")


class Async(RulesetCase):
    def test_sleeping_routines_run_concurrently(self):
        results = []

        def one():
            results.append(self.socks5h("sleep.test"))

        threads = [threading.Thread(target=one) for _ in range(20)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        took = time.monotonic() - t0
        self.assertEqual(results, [0] * 20)
        self.assertLess(took, 3.0, "20 routines sleeping 0.5 s each should overlap")

    def test_a_thousand_concurrent_sleeping_requests(self):
        # Each routine sleeps 0.5 s, then routes to the upstream instance; the
        # client checks the tunnel by greeting the upstream through it.
        n = 1000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4 * n:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * n), hard))
        host = b"nap.test"
        request = b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(host)]) + host + b"\x00\x01"
        socks = []
        try:
            t0 = time.monotonic()
            for _ in range(n):
                s = connect(self.proxy.port, timeout=15)
                s.sendall(request)  # greeting and request pipelined
                socks.append(s)
            replies = [recv_exact(s, 2 + 10)[:4] for s in socks]
            took = time.monotonic() - t0
            self.assertEqual(replies.count(b"\x05\x00\x05\x00"), n,
                             f"not every request succeeded: {set(replies)}")
            for s in socks:
                s.sendall(b"\x05\x01\x00")
            self.assertEqual([recv_exact(s, 2) for s in socks], [b"\x05\x00"] * n)
            self.assertLess(took, 10, "the sleeps should overlap")
        finally:
            for s in socks:
                s.close()
        self.assertTrue(wait_until(lambda: routines_alive(self.api_port) == 0, 5))
        self.assert_still_serving()

    def test_await_resolve_in_a_callback(self):
        self.assertEqual(self.socks5h("resolve.test"), 0x00)

    def test_client_leaving_cancels_its_routine(self):
        base_fds = self.proxy.fd_count()
        socks = []
        for _ in range(10):
            s = connect(self.proxy.port)
            s.sendall(b"\x05\x01\x00")
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")
            host = b"hang.test"
            s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + b"\x00\x50")
            socks.append(s)
        self.assertTrue(wait_until(lambda: routines_alive(self.api_port) == 10, 5),
                        stats(self.api_port))
        for s in socks:
            s.close()
        self.assertTrue(wait_until(lambda: routines_alive(self.api_port) == 0, 5),
                        stats(self.api_port))
        self.assertIn("Pending Awaits      : 0", stats(self.api_port))
        self.assertTrue(wait_until(lambda: self.proxy.fd_count() <= base_fds, 5),
                        f"fds {self.proxy.fd_count()} > {base_fds}")

    def test_slow_ruleset_times_out_with_ttl_expired(self):
        # -t 5: the routine sleeps 60 s, the client gets REP 0x06 at the timeout.
        t0 = time.monotonic()
        self.assertEqual(self.socks5h("hang.test"), 0x06)
        self.assertLess(time.monotonic() - t0, 8)
        self.assertTrue(wait_until(lambda: routines_alive(self.api_port) == 0, 5))


class Tick(RulesetCase):
    def test_setinterval_drives_tick(self):
        rpc_string(self.api_port, "_G.ticks = 0 neosocksd.setinterval(0.05) return 'ok'")
        time.sleep(0.6)
        rpc_string(self.api_port, "neosocksd.setinterval(0) return 'ok'")
        n = int(rpc_string(self.api_port, "return tostring(_G.ticks)"))
        self.assertGreaterEqual(n, 5)
        time.sleep(0.2)
        self.assertEqual(int(rpc_string(self.api_port, "return tostring(_G.ticks)")), n,
                         "setinterval(0) stops the tick")


class ApiExposure(RulesetCase):
    def test_api_address_passed_through_is_denied(self):
        # The ruleset returns the address unchanged: not a mapping, so refused.
        with connect(self.proxy.port) as s:
            _, rep = socks5_handshake(s, LOOP4, self.api_port)
        self.assertEqual(rep, 0x02)

    def test_api_neosocksd_internal_is_mapped(self):
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{self.proxy.port}",
                            "-w", "%{http_code}", "-o", "/dev/null",
                            "http://api.neosocksd.internal/healthy", timeout=10)
        self.assertEqual((rc, out), (0, b"200"), err)


class WildcardApi(IntegrationCase):
    """--api 0.0.0.0:PORT is reachable at every local address: none of them
    may be dialled through the proxy (the dialer checks once connected)."""

    def test_every_local_address_is_refused(self):
        api = free_port()
        for extra in ((), ("-r", os.path.join(HERE, "..", "..", "lua", "ruleset.lua"))):
            proxy = self.start_proxy("--api", f"0.0.0.0:{api}", *extra, extra_ports=(api,))
            for host in ("127.0.0.1", "127.0.0.2", "127.9.9.9"):
                with connect(proxy.port) as s:
                    _, rep = socks5_handshake(s, host, api)
                self.assertEqual(rep, 0x02, f"{host}:{api} with {extra or 'no ruleset'}")
            proxy.stop()


class Loading(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rulesocks-load-")

    def fetch(self, proxy, host):
        return curl("--socks5-hostname", f"{LOOP4}:{proxy.port}",
                    f"http://{host}:{self.origin.port}/hello", timeout=10)

    def test_gzip_ruleset_and_require_next_to_it(self):
        write(os.path.join(self.dir, "rs_helper.lua"),
              "return { target = function(port) return '127.0.0.1:' .. port end }")
        text = ("local helper = require('rs_helper')\n"
                "local libruleset = require('libruleset')\n"  # the installed lua/ dir
                "_G.ruleset = { resolve = function(addr)\n"
                "  local _, port = neosocksd.splithostport(addr)\n"
                "  return helper.target(port) end }\n")
        path = os.path.join(self.dir, "packed.lua.gz")
        with gzip.open(path, "wb") as f:
            f.write(text.encode())
        proxy = self.start_proxy("-r", path)
        rc, out, err = self.fetch(proxy, "anything.test")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_broken_ruleset_fails_start_up_with_a_message(self):
        path = write(os.path.join(self.dir, "broken.lua"), "return {\n")
        p = subprocess.run([BIN, "-l", f"{LOOP4}:{free_port()}", "-r", path],
                           capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("broken.lua", p.stdout.decode() + p.stderr.decode())

    def test_missing_ruleset_file(self):
        p = subprocess.run([BIN, "-l", f"{LOOP4}:{free_port()}", "-r",
                            os.path.join(self.dir, "nope.lua")], capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.lua", p.stdout.decode() + p.stderr.decode())


if __name__ == "__main__":
    unittest.main()
