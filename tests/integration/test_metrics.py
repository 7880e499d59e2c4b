#!/usr/bin/env python3
"""/healthy that asks the ruleset, and /metrics (issue 13).

  HealthyTest   GET /healthy runs ruleset.healthy(): 200 for nil or "", 503 with the
                string, 503 naming the error when it raises or tries to yield; 200
                without the function or without a ruleset
  MetricsTest   /metrics is Prometheus text 0.0.4 that `promtool check metrics`
                accepts, its counters move with traffic and match neosocksd.stats(),
                and it stays open when an API key is set
"""

import re
import shutil
import subprocess
import unittest

from harness import IO_TIMEOUT, IntegrationCase, Origin, api_call, api_post, rpcall
from test_api import ruleset_text, socks5_get, start_node

HEALTHY = r"""
function ruleset.healthy()
    if _G.HEALTH == "raise" then error("health probe exploded") end
    if _G.HEALTH == "await" then await.sleep(0.01) end
    if _G.HEALTH == "yield" then coroutine.yield() end
    return _G.HEALTH
end
"""

KEY = "metrics-test-key"


def invoke(case, port, code):
    r = api_post(port, "/ruleset/invoke", code)
    case.assertEqual(r.status, 200, r.text)


class HealthyTest(IntegrationCase):

    @classmethod
    def setUpClass(cls):
        # One VM: compares /metrics with neosocksd.stats() and sets health with invokes.
        cls.node = start_node(cls, "healthy", ruleset_text("H", extra=HEALTHY), cls=True,
                              workers=1)
        cls.api = cls.node.api_port

    def set_health(self, lua_value):
        invoke(self, self.api, f"_G.HEALTH = {lua_value}")

    def healthy(self):
        return api_call(self.api, "GET", "/healthy")

    def test_nil_and_empty_are_healthy(self):
        for value in ("nil", '""', "true", "42 == 42"):
            self.set_health(value)
            r = self.healthy()
            self.assertEqual((r.status, r.body), (200, b""), value)

    def test_string_is_unhealthy(self):
        self.set_health('"upstream pool is empty"')
        r = self.healthy()
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body, b"upstream pool is empty\n")
        self.assertEqual(r.headers.get("cache-control"), "no-store")
        # Both ways: healthy again as soon as the ruleset says so.
        self.set_health("nil")
        self.assertEqual(self.healthy().status, 200)
        # Other methods answer 200 as before: only a read asks the ruleset.
        self.set_health('"down"')
        self.assertEqual(api_post(self.api, "/healthy").status, 200)
        self.set_health("nil")

    def test_error_is_unhealthy(self):
        self.set_health('"raise"')
        r = self.healthy()
        self.assertEqual(r.status, 503)
        self.assertIn("ruleset.healthy", r.text)
        self.assertIn("health probe exploded", r.text)
        self.set_health("nil")
        self.assertEqual(self.healthy().status, 200)

    def test_yield_is_an_error_not_a_wait(self):
        for mode, error in (("await", "await.sleep: not in an asynchronous routine"),
                            ("yield", "attempt to yield from a synchronous callback")):
            self.set_health(f'"{mode}"')
            r = api_call(self.api, "GET", "/healthy", timeout=2)
            self.assertEqual(r.status, 503, mode)
            self.assertIn(error, r.text)
        self.set_health("nil")
        self.assertEqual(self.healthy().status, 200)
        # The routine was closed, not left waiting.
        values = rpcall(self.api, "return neosocksd.stats()")
        self.assertIs(values[0], True, values)

    def test_without_the_function(self):
        node = start_node(self, "plain", ruleset_text("P"))
        self.assertEqual(api_call(node.api_port, "GET", "/healthy").status, 200)

    def test_without_a_ruleset(self):
        p = self.start_proxy(api=True)
        self.assertEqual(api_call(p.api_port, "GET", "/healthy").status, 200)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def parse_metrics(case, text):
    """Prometheus text 0.0.4 -> {"name" or "name{labels}": float}; asserts that every
    family has HELP and TYPE before its samples (a summary's or histogram's _sum,
    _count and _bucket samples belong to it) and that counters end in _total."""
    types, helps, samples = {}, set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            case.assertIsNotNone(m, f"not a sample line: {line!r}")
            name = m.group(1)
            case.assertTrue(name.startswith(("rulesocks_", "neosocksd_")), name)
            family = name
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[:-len(suffix)]
                if name.endswith(suffix) and types.get(base) in ("summary", "histogram"):
                    family = base
            case.assertIn(family, types, f"{name} has no TYPE line before it")
            case.assertIn(family, helps, f"{name} has no HELP line before it")
            if family == name:
                case.assertEqual(name.endswith("_total"), types[name] == "counter", name)
            samples[name + (m.group(2) or "")] = float(m.group(3))
    return samples


class MetricsTest(IntegrationCase):

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.node = start_node(cls, "metrics", ruleset_text("M"), cls=True)
        cls.api = cls.node.api_port

    def scrape(self, port=None):
        r = api_call(port or self.api, "GET", "/metrics")
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(r.headers.get("content-type"), "text/plain; version=0.0.4")
        return r.text, parse_metrics(self, r.text)

    def test_format_and_promtool(self):
        text, m = self.scrape()
        for name in ("rulesocks_sessions", "rulesocks_sessions_peak",
                     "rulesocks_halfopen_sessions", "rulesocks_connections_accepted_total",
                     "rulesocks_connections_refused_total", "rulesocks_requests_total",
                     "rulesocks_uplink_bytes_total", "rulesocks_downlink_bytes_total",
                     "rulesocks_api_requests_total", "rulesocks_api_successes_total",
                     "rulesocks_api_unauthorized_total", "rulesocks_dns_queries_total",
                     "rulesocks_dns_successes_total", "rulesocks_lua_memory_bytes",
                     "rulesocks_lua_objects", "rulesocks_uptime_seconds"):
            self.assertIn(name, m)
        for outcome in ("success", "rejected", "dial_failed", "timed_out", "bad"):
            self.assertIn(f'rulesocks_request_outcomes_total{{outcome="{outcome}"}}', m)
        self.assertGreater(m["rulesocks_lua_memory_bytes"], 0)
        self.assertGreater(m["rulesocks_lua_objects"], 100)
        self.assertGreaterEqual(m["rulesocks_uptime_seconds"], 0)
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian prometheus) is a test dependency")
        res = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                             capture_output=True, timeout=30)
        self.assertEqual((res.returncode, res.stdout + res.stderr), (0, b""))
        self.assertEqual(api_post(self.api, "/metrics").status, 405)

    def test_counters_move_with_traffic(self):
        _, before = self.scrape()
        size = 200_000
        rep, reply = socks5_get(self.node.port, self.origin.port, f"/blob/{size}")
        self.assertEqual((rep, reply.status, len(reply.body)), (0, 200, size))
        invoke(self, self.api, "_G.DENY_PORT = 9")
        self.assertNotEqual(socks5_get(self.node.port, 9)[0], 0)
        invoke(self, self.api, "_G.DENY_PORT = nil")
        _, after = self.scrape()

        def grew(name):
            return after[name] - before[name]
        self.assertEqual(grew("rulesocks_requests_total"), 2)
        self.assertEqual(grew("rulesocks_connections_accepted_total"), 2)
        self.assertEqual(grew('rulesocks_request_outcomes_total{outcome="success"}'), 1)
        self.assertEqual(grew('rulesocks_request_outcomes_total{outcome="rejected"}'), 1)
        self.assertGreaterEqual(grew("rulesocks_downlink_bytes_total"), size)
        self.assertGreater(grew("rulesocks_uplink_bytes_total"), 0)
        # This scrape, the two invokes and the previous scrape's head.
        self.assertEqual(grew("rulesocks_api_requests_total"), 3)
        self.assertGreaterEqual(grew("rulesocks_uptime_seconds"), 0)

        # The same numbers as neosocksd.stats() (nothing moves in between but the API).
        fields = ("num_request", "num_success", "num_reject_ruleset", "byt_up", "byt_down",
                  "num_accept")
        values = rpcall(self.api, "local s = neosocksd.stats() return " +
                        ", ".join(f"math.tointeger(s.{f})" for f in fields))
        self.assertIs(values[0], True, values)
        _, now = self.scrape()
        stats = dict(zip(fields, values[1:]))
        self.assertEqual(now["rulesocks_requests_total"], stats["num_request"])
        self.assertEqual(now['rulesocks_request_outcomes_total{outcome="success"}'],
                         stats["num_success"])
        self.assertEqual(now['rulesocks_request_outcomes_total{outcome="rejected"}'],
                         stats["num_reject_ruleset"])
        self.assertEqual(now["rulesocks_uplink_bytes_total"], stats["byt_up"])
        self.assertEqual(now["rulesocks_downlink_bytes_total"], stats["byt_down"])
        self.assertEqual(now["rulesocks_connections_accepted_total"], stats["num_accept"])

    def test_open_with_an_api_key(self):
        p = self.start_proxy("--api-key", KEY, socks=False, api=True)
        self.assertEqual(api_call(p.api_port, "GET", "/stats").status, 401)
        _, m = self.scrape(p.api_port)
        self.assertNotIn("rulesocks_lua_memory_bytes", m)  # no ruleset
        # The refused /stats is counted; the scrape itself is not refused.
        self.assertEqual(m["rulesocks_api_unauthorized_total"], 1)


if __name__ == "__main__":
    unittest.main()
