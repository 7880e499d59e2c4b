"""Routing that sees the outcome (issue 13): await.forward, libruleset.failover
and health-checked groups (lb.group) through real rulesocks upstreams, and
/metrics against /stats, neosocksd.stats() and a real Prometheus server.

  Failover        the first chain is dead: 50 concurrent SOCKS5 clients all get
                  through the second; SOCKS4, HTTP CONNECT, plain HTTP and -f :
                  forwarding too; giving up counts as a ruleset reject
  Group           a member killed mid-run is skipped and taken back after it
                  returns (small windows, no timed assertions)
  MidForward      a client that leaves while await.forward dials leaks no fd and
                  the half-dialled upstream connection is closed
  Metrics         /metrics after a known amount of traffic equals /stats and
                  neosocksd.stats(); promtool is clean; labelled series
  Prometheus      a real prometheus scrapes /metrics: target up, a counter grew
"""
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from harness import (IO_TIMEOUT, LOOP4, HoldServer, IntegrationCase, Proxy, api_call, connect,
                     curl, free_port, free_ports, read_reply, rpcall, socks4_request,
                     socks5_handshake, wait_until)
from test_api import socks5_get, start_node
from test_metrics import parse_metrics

FAILOVER = """
_G.libruleset = require("libruleset")
_G.NDEBUG = true
local chains = { { "socks5://127.0.0.1:%(dead)d" }, { "socks5://127.0.0.1:%(live)d" } }
_G.CHAINS = chains
local function pick(addr)
    if _G.ALL_DEAD then
        return libruleset.failover(addr, { chains[1] })
    end
    return libruleset.failover(addr, chains)
end
local target = "127.0.0.1:%(origin)d"
return {
    resolve = pick, route = pick, route6 = pick,
}
"""


def socks4_get(port, origin_port, path="/hello"):
    with connect(port) as s:
        s.sendall(socks4_request(origin_port))
        rep = s.recv(8)
        if len(rep) != 8 or rep[1] != 0x5A:
            return rep, None
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n".encode())
        return rep, read_reply(s)


def connect_get(http_port, origin_port, path="/hello"):
    with connect(http_port) as s:
        s.sendall(f"CONNECT {LOOP4}:{origin_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        status = head.split(b" ", 2)[1] if head else b""
        if status != b"200":
            return status, None
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n".encode())
        return status, read_reply(s)


class Failover(IntegrationCase):

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.upstream = cls.start_class_proxy(name="upstream", api=True)
        cls.dead = free_port()  # nothing listens: connection refused
        text = FAILOVER % {"dead": cls.dead, "live": cls.upstream.port, "origin": cls.origin.port}
        # One VM: the failover group learns its members' health in the worker that dials.
        cls.node = start_node(cls, "failover", text, cls=True, http=True, workers=1)

    def node_stats(self, *fields):
        values = rpcall(self.node.api_port, "local s = neosocksd.stats() return " +
                        ", ".join(f"math.tointeger(s.{f})" for f in fields))
        self.assertIs(values[0], True, values)
        return dict(zip(fields, values[1:]))

    def test_50_concurrent_clients_all_get_through_the_second_chain(self):
        before = self.node_stats("num_request", "num_success", "num_reject_ruleset",
                                 "num_reject_upstream")
        n = 50

        def one(i):
            rep, reply = socks5_get(self.node.port, self.origin.port, f"/blob/{1000 + i}")
            return rep, reply and reply.status, reply and len(reply.body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(one, range(n)))
        self.assertEqual(results, [(0, 200, 1000 + i) for i in range(n)])
        after = self.node_stats("num_request", "num_success", "num_reject_ruleset",
                                "num_reject_upstream")
        self.assertEqual(after["num_request"] - before["num_request"], n)
        self.assertEqual(after["num_success"] - before["num_success"], n)
        # The dead chain's failures were the ruleset's to handle: no client saw one.
        self.assertEqual(after["num_reject_ruleset"], before["num_reject_ruleset"])
        self.assertEqual(after["num_reject_upstream"], before["num_reject_upstream"])

    def test_socks4_connect_and_plain_http(self):
        rep, reply = socks4_get(self.node.port, self.origin.port)
        self.assertEqual((rep[1], reply.status), (0x5A, 200))
        status, reply = connect_get(self.node.http_port, self.origin.port)
        self.assertEqual((status, reply.status), (b"200", 200))
        # Plain HTTP proxying: each request of a keep-alive connection is routed,
        # and forwarded, on its own.
        rc, out, err = curl("-sS", "-x", f"http://{LOOP4}:{self.node.http_port}",
                            f"http://{LOOP4}:{self.origin.port}/hello",
                            f"http://{LOOP4}:{self.origin.port}/blob/5000")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out) - out.find(b"hello") if b"hello" in out else -1,
                         len(out) - out.find(b"hello"))
        self.assertGreaterEqual(len(out), 5000)

    def test_giving_up_is_a_ruleset_reject(self):
        rpcall(self.node.api_port, "_G.ALL_DEAD = true return true")
        try:
            before = self.node_stats("num_reject_ruleset")
            rep, _ = socks5_get(self.node.port, self.origin.port)
            self.assertEqual(rep, 0x02)  # "connection not allowed by ruleset"
            status, _ = connect_get(self.node.http_port, self.origin.port)
            self.assertEqual(status, b"403")
            after = self.node_stats("num_reject_ruleset")
            self.assertEqual(after["num_reject_ruleset"] - before["num_reject_ruleset"], 2)
        finally:
            rpcall(self.node.api_port, "_G.ALL_DEAD = nil return true")

    def test_forward_listener(self):
        d = tempfile.mkdtemp(prefix="rulesocks-fwd-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "f.lua")
        with open(path, "w") as f:
            f.write(f"""
                _G.libruleset = require("libruleset")
                local chains = {{ {{ "socks5://127.0.0.1:{self.dead}" }},
                                  {{ "socks5://127.0.0.1:{self.upstream.port}" }} }}
                local function pick() return libruleset.failover("127.0.0.1:{self.origin.port}", chains) end
                return {{ resolve = pick, route = pick, route6 = pick }}
            """)
        port = free_port()
        self.start_proxy("-f", ":", "-r", path, "-l", f"{LOOP4}:{port}", socks=False,
                         extra_ports=(port,), name="forwarder")
        with connect(port) as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
            self.assertEqual(read_reply(s).status, 200)

    def test_await_forward_errors_and_a_second_call(self):
        # Named errors, a second call after success raising, and the callback's
        # later return value ignored; the results are recorded for the test.
        text = f"""
            _G.FWD_LOG = {{}}
            local target = "127.0.0.1:{self.origin.port}"
            local function route(addr)
                local ok, err = await.forward(target, "socks5://127.0.0.1:{self.dead}")
                _G.FWD_LOG[#_G.FWD_LOG + 1] = tostring(ok) .. "/" .. tostring(err)
                ok, err = await.forward(target, "socks5://127.0.0.1:{self.upstream.port}")
                _G.FWD_LOG[#_G.FWD_LOG + 1] = tostring(ok) .. "/" .. tostring(err)
                local ok2, e2 = pcall(await.forward, target)
                _G.FWD_LOG[#_G.FWD_LOG + 1] = tostring(ok2) .. "/" .. tostring(e2)
                return "192.0.2.1:9"  -- ignored: the request was answered
            end
            return {{ resolve = route, route = route, route6 = route }}
        """
        node = start_node(self, "forward-errors", text)
        rep, reply = socks5_get(node.port, self.origin.port, host="origin.invalid")
        self.assertEqual((rep, reply.status), (0, 200))
        ok = wait_until(lambda: rpcall(node.api_port, "return #_G.FWD_LOG")[1:] == [3],
                        IO_TIMEOUT)
        self.assertTrue(ok)
        log = rpcall(node.api_port, "return table.concat(_G.FWD_LOG, ';')")[1].decode()
        first, second, third = log.split(";")
        self.assertEqual(first, "false/connection failed")
        self.assertEqual(second, "true/nil")
        self.assertTrue(third.startswith("false/") and "not forwardable" in third, third)


GROUP = """
_G.libruleset = require("libruleset")
_G.NDEBUG = true
_G.G = lb.group("g", {
    { name = "a", chain = { "socks5://127.0.0.1:%(a)d" } },
    { name = "b", chain = { "socks5://127.0.0.1:%(b)d" } },
}, { max_fails = 2, fail_window = 60, cooldown = 0.3, hysteresis = 0.3 })
_G.route_default = { G:action(), "grouped" }
return libruleset
"""


class Group(IntegrationCase):

    def test_member_killed_mid_run_is_skipped_and_taken_back(self):
        origin = self.start_class_origin()
        a_port = free_port()
        a = self.start_proxy("-l", f"{LOOP4}:{a_port}", socks=False, extra_ports=(a_port,),
                             name="member-a")
        b = self.start_proxy(name="member-b")
        node = start_node(self, "group", GROUP % {"a": a_port, "b": b.port})

        def get():
            rep, reply = socks5_get(node.port, origin.port)
            self.assertEqual((rep, reply and reply.status), (0, 200))

        def state():
            v = rpcall(node.api_port, 'local s = rpc.group_state("g") '
                       'return s.a.state, s.a.current, s.b.current')
            return [x.decode() if isinstance(x, bytes) else x for x in v[1:]]

        for _ in range(5):
            get()
        self.assertEqual(state(), ["up", True, False])
        code, _ = a.stop()
        self.assertEqual(code, 0)
        # No request fails; a is tried again each time it stayed the better member
        # for the hysteresis, until its second failure takes it out.
        went_out = False
        for _ in range(400):
            get()
            if state()[0] == "down":
                went_out = True
                break
            time.sleep(0.02)
        self.assertTrue(went_out, state())
        self.assertEqual(state()[2], True)
        a2 = self.start_proxy("-l", f"{LOOP4}:{a_port}", socks=False, extra_ports=(a_port,),
                              name="member-a-again")
        back = False
        for _ in range(400):
            get()
            if state()[1] is True:
                back = True
                break
            time.sleep(0.02)
        self.assertTrue(back, state())
        self.assertEqual(a2.alive, True)
        # Member state in /stats and /metrics.
        r = api_call(node.api_port, "POST", "/stats")  # POST: with ruleset.stats
        self.assertRegex(r.text, r"g/a +: up +current")
        self.assertRegex(r.text, r"g/b +: up ")
        m = parse_metrics(self, api_call(node.api_port, "GET", "/metrics").text)
        self.assertEqual(m['rulesocks_group_member_current{group="g",member="a"}'], 1)
        self.assertGreaterEqual(m['rulesocks_group_member_failures_total{group="g",member="a"}'], 2)
        self.assertGreater(m['rulesocks_rule_hits_total{tag="grouped"}'], 0)


PROBED = """
_G.libruleset = require("libruleset")
_G.NDEBUG = true
_G.G = lb.group("p", {
    { name = "a", chain = { "socks5://127.0.0.1:%(a)d" } },
    { name = "b", chain = { "socks5://127.0.0.1:%(b)d" } },
}, { max_fails = 1, cooldown = 3600, hysteresis = 0,
     probe = { target = "127.0.0.1:%(origin)d", interval = 0.1, backoff = 2, max_interval = 0.4 } })
G:start_probes()
_G.route_default = { G:action(), "probed" }
return libruleset
"""


class Probes(IntegrationCase):

    def test_probes_take_a_dead_member_out_and_bring_it_back(self):
        origin = self.start_class_origin()
        a_port = free_port()  # nothing there yet
        b = self.start_proxy(name="member-b")
        node = start_node(self, "probed", PROBED % {"a": a_port, "b": b.port,
                                                    "origin": origin.port})

        def member(name):
            v = rpcall(node.api_port, f'local m = rpc.group_state("p").{name} '
                       'return m.state, m.successes, m.failures')
            return [x.decode() if isinstance(x, bytes) else x for x in v[1:]]

        # No client request at all: the probes find a dead and b alive.
        self.assertTrue(wait_until(lambda: member("a")[0] == "down", IO_TIMEOUT), member("a"))
        self.assertTrue(wait_until(lambda: member("b")[1] >= 1, IO_TIMEOUT), member("b"))
        rep, reply = socks5_get(node.port, origin.port)
        self.assertEqual((rep, reply.status), (0, 200))
        # a comes up: a probe through it ends its (hour-long) cooldown.
        self.start_proxy("-l", f"{LOOP4}:{a_port}", socks=False, extra_ports=(a_port,),
                         name="member-a")
        self.assertTrue(wait_until(lambda: member("a")[0] == "up", IO_TIMEOUT), member("a"))
        self.assertGreaterEqual(member("a")[1], 1)
        # The origin saw probe connections only as TCP connects: every request
        # still succeeds, now through a again (the preferred member).
        self.assertTrue(wait_until(
            lambda: socks5_get(node.port, origin.port)[0] == 0 and
            rpcall(node.api_port, 'return rpc.group_state("p").a.current')[1] is True,
            IO_TIMEOUT))


class MidForward(IntegrationCase):

    def test_client_leaving_while_forward_dials_leaks_nothing(self):
        hold = HoldServer().start()  # accepts, never answers the SOCKS5 greeting
        self.addCleanup(hold.close)
        text = f"""
            return {{ resolve = function(addr)
                return (await.forward(addr, "socks5://127.0.0.1:{hold.port}")) and nil
            end, route = function(addr)
                return (await.forward(addr, "socks5://127.0.0.1:{hold.port}")) and nil
            end }}
        """
        # One process: counts that process's fds.
        node = start_node(self, "midforward", text, "-t", "30", workers=1)
        baseline = node.fd_count()
        clients = []
        for _ in range(10):
            s = connect(node.port)
            s.sendall(b"\x05\x01\x00")
            s.recv(2)
            s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
            clients.append(s)
        self.assertTrue(wait_until(lambda: len(hold.conns) == 10, IO_TIMEOUT), len(hold.conns))
        self.assertGreater(node.fd_count(), baseline)
        for s in clients:
            s.close()
        # Every dialled upstream connection is closed by the node, and its fds go.
        self.assertTrue(wait_until(lambda: node.fd_count() == baseline, IO_TIMEOUT),
                        (node.fd_count(), baseline))

        def upstream_closed(c):
            c.settimeout(0)
            try:
                return c.recv(64) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True
        self.assertTrue(wait_until(lambda: all(upstream_closed(c) for c in hold.conns),
                                   IO_TIMEOUT))


class Metrics(IntegrationCase):

    def test_metrics_equal_stats_and_neosocksd_stats(self):
        origin = self.start_class_origin()
        upstream = self.start_proxy(name="upstream")
        dead = free_port()
        text = FAILOVER % {"dead": dead, "live": upstream.port, "origin": origin.port}
        # One VM: compares /metrics with the neosocksd.stats() of the VM that answers.
        node = start_node(self, "metrics-fwd", text, workers=1)
        size = 100_000
        for i in range(4):
            rep, reply = socks5_get(node.port, origin.port, f"/blob/{size}")
            self.assertEqual((rep, len(reply.body)), (0, size))
        m = parse_metrics(self, api_call(node.api_port, "GET", "/metrics").text)
        fields = ("num_sessions", "num_request", "num_success", "num_reject_ruleset",
                  "num_reject_timeout", "num_reject_upstream", "byt_up", "byt_down",
                  "num_accept", "num_serve", "num_api_request", "num_dns_query")
        values = rpcall(node.api_port, "local s = neosocksd.stats() return " +
                        ", ".join(f"math.tointeger(s.{f})" for f in fields))
        st = dict(zip(fields, values[1:]))
        m2_text = api_call(node.api_port, "GET", "/metrics").text
        m2 = parse_metrics(self, m2_text)
        self.assertEqual(m["neosocksd_requests_total"], 4)
        self.assertEqual(m["neosocksd_requests_success_total"], 4)
        self.assertEqual(m["neosocksd_requests_total"], st["num_request"])
        self.assertEqual(m["neosocksd_requests_success_total"], st["num_success"])
        self.assertEqual(m["neosocksd_rejects_ruleset_total"], st["num_reject_ruleset"])
        self.assertEqual(m["neosocksd_rejects_timeout_total"], st["num_reject_timeout"])
        self.assertEqual(m["neosocksd_rejects_upstream_total"], st["num_reject_upstream"])
        self.assertEqual(m["neosocksd_uplink_bytes_total"], st["byt_up"])
        self.assertEqual(m["neosocksd_downlink_bytes_total"], st["byt_down"])
        self.assertGreaterEqual(m["neosocksd_downlink_bytes_total"], 4 * size)
        self.assertEqual(m["neosocksd_connections_accepted_total"], st["num_accept"])
        self.assertEqual(m["neosocksd_connections_served_total"], st["num_serve"])
        self.assertEqual(m["neosocksd_dns_queries_total"], st["num_dns_query"])
        self.assertEqual(m["neosocksd_uplink_bytes_total"], m["rulesocks_uplink_bytes_total"])
        # One scrape and the rpcall between the two scrapes.
        self.assertEqual(m2["neosocksd_api_requests_total"] - m["neosocksd_api_requests_total"], 2)
        for name in ("neosocksd_sessions_active", "neosocksd_sessions_peak",
                     "neosocksd_halfopen_connections", "neosocksd_uptime_seconds",
                     "neosocksd_lua_memory_bytes", "neosocksd_process_cpu_seconds_total",
                     "neosocksd_api_requests_success_total", "neosocksd_dns_success_total"):
            self.assertIn(name, m)
        # The summary: every successful connect (4 through the live chain).
        self.assertEqual(m["neosocksd_connect_latency_seconds_count"], 4)
        for q in ("0.5", "0.9", "0.99"):
            self.assertGreater(m[f'neosocksd_connect_latency_seconds{{quantile="{q}"}}'], 0)
        # By upstream chain: the dead one failed 4 times, the live one connected 4 times.
        dead_l = f'chain="socks5://127.0.0.1:{dead}"'
        live_l = f'chain="socks5://127.0.0.1:{upstream.port}"'
        self.assertEqual(m[f"rulesocks_upstream_dials_total{{{dead_l}}}"], 4)
        self.assertEqual(m[f"rulesocks_upstream_dial_failures_total{{{dead_l}}}"], 4)
        self.assertEqual(m[f"rulesocks_upstream_dials_total{{{live_l}}}"], 4)
        self.assertEqual(m[f"rulesocks_upstream_dial_failures_total{{{live_l}}}"], 0)
        self.assertEqual(m[f'rulesocks_upstream_connect_seconds_bucket{{{live_l},le="+Inf"}}'], 4)
        self.assertEqual(m[f"rulesocks_upstream_connect_seconds_count{{{live_l}}}"], 4)
        self.assertEqual(m['rulesocks_listener_bytes_total{listener="socks",direction="down"}'],
                         st["byt_down"])
        res = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=m2_text.encode(),
                             capture_output=True, timeout=30)
        self.assertEqual((res.returncode, res.stdout + res.stderr), (0, b""))


class Prometheus(IntegrationCase):

    def test_a_real_prometheus_scrapes_the_node(self):
        prom = shutil.which("prometheus")
        self.assertIsNotNone(prom, "prometheus (Debian) is a test dependency")
        origin = self.start_class_origin()
        node = self.start_proxy(api=True, name="scraped")
        d = tempfile.mkdtemp(prefix="rulesocks-prom-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "prometheus.yml"), "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rulesocks
    static_configs:
      - targets: ["{LOOP4}:{node.api_port}"]
""")
        web = free_port()
        log = open(os.path.join(d, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        p = subprocess.Popen([prom, f"--config.file={d}/prometheus.yml",
                              f"--storage.tsdb.path={d}/data", f"--web.listen-address={LOOP4}:{web}"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def stop():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.addCleanup(stop)

        def api(path):
            try:
                with urllib.request.urlopen(f"http://{LOOP4}:{web}{path}", timeout=5) as r:
                    return json.load(r)
            except OSError:
                return None

        def target_up():
            j = api("/api/v1/targets")
            if not j:
                return False
            t = j["data"]["activeTargets"]
            return len(t) == 1 and t[0]["health"] == "up"

        def value(q):
            j = api(f"/api/v1/query?query={q}")
            if not j or not j["data"]["result"]:
                return None
            return float(j["data"]["result"][0]["value"][1])

        self.assertTrue(wait_until(target_up, 60), api("/api/v1/targets"))
        self.assertTrue(wait_until(lambda: value("neosocksd_requests_total") is not None, 60))
        first = value("neosocksd_requests_total")
        for _ in range(3):
            rep, reply = socks5_get(node.port, origin.port)
            self.assertEqual((rep, reply.status), (0, 200))
        self.assertTrue(wait_until(lambda: (value("neosocksd_requests_total") or 0) >= first + 3,
                                   60), (first, value("neosocksd_requests_total")))
        self.assertEqual(value('up{job="rulesocks"}'), 1)


if __name__ == "__main__":
    unittest.main()
