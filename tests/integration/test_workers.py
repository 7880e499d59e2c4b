"""--workers N: N worker processes behind one API (issue 16).

  WorkersTest   two workers share the SOCKS port and both serve; update, invoke and gc
                reach every worker and the answer names each; /stats and /metrics sum
                the workers (promtool-clean); rpcall goes round-robin; a worker killed
                with SIGKILL comes back running the current ruleset; SIGTERM ends every
                process.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest

from harness import (IO_TIMEOUT, IntegrationCase, Origin, api_call, api_post, rpcall,
                     wait_until)
from test_api import socks5_get

RULESET = """
local ruleset = {}
served = 0
version = "%s"
local function count(addr) served = served + 1; return addr end
ruleset.resolve, ruleset.route, ruleset.route6 = count, count, count
return ruleset
"""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes, and not ours to reap
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class WorkersTest(IntegrationCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="rulesocks-workers-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        path = os.path.join(self.dir, "r.lua")
        with open(path, "w") as f:
            f.write(RULESET % "v1")
        self.origin = Origin().start()
        self.addCleanup(self.origin.stop)
        self.proxy = self.start_proxy("-r", path, api=True, workers=2)
        self.api = self.proxy.api_port

    def per_worker(self, code):
        """`code`'s result in each worker: rpcall goes round-robin, so two calls reach both."""
        return [rpcall(self.api, code)[1] for _ in range(2)]

    def test_both_serve_and_stats_sum(self):
        pids = self.proxy.worker_pids()
        self.assertEqual(len(pids), 2)
        n = 40
        for _ in range(n):
            rep, reply = socks5_get(self.proxy.port, self.origin.port, "/blob/1000")
            self.assertEqual(rep, 0)
            self.assertEqual(len(reply.body), 1000)
        served = self.per_worker("return served")
        # SO_REUSEPORT spreads connections by their addresses: each worker had some
        # (all 40 on one has odds of 2^-39).
        self.assertEqual(sum(served), n)
        self.assertTrue(all(s > 0 for s in served), served)
        stats = api_call(self.api, "GET", "/stats").text
        self.assertIn(f"Workers             : 2 of 2 running (pids {pids[0]} {pids[1]})", stats)
        self.assertRegex(stats, rf"Requests            : {n} \(")
        metrics = api_call(self.api, "GET", "/metrics").text
        self.assertEqual(metric(metrics, "rulesocks_requests_total"), n)
        self.assertEqual(metric(metrics, "rulesocks_connections_accepted_total"), n)
        self.assertGreaterEqual(metric(metrics, "rulesocks_downlink_bytes_total"), n * 1000)
        self.assertEqual(metric(metrics, "rulesocks_workers"), 2)
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool (Debian prometheus) is a test dependency")
        res = subprocess.run([promtool, "check", "metrics"], input=metrics.encode(),
                             capture_output=True, timeout=30)
        self.assertEqual((res.returncode, res.stdout + res.stderr), (0, b""))

    def test_update_invoke_gc_reach_every_worker(self):
        pids = self.proxy.worker_pids()
        reply = api_post(self.api, "/ruleset/update", RULESET % "v2")
        self.assertEqual(reply.status, 200, reply.text)
        self.assertEqual(reply.text, "".join(f"worker {i} (pid {p}): ruleset updated\n"
                                             for i, p in enumerate(pids)))
        self.assertEqual(self.per_worker("return version"), [b"v2", b"v2"])
        self.assertEqual(api_post(self.api, "/ruleset/invoke", "version = 'v3'").status, 200)
        self.assertEqual(self.per_worker("return version"), [b"v3", b"v3"])
        bad = api_post(self.api, "/ruleset/invoke", "error('boom')")
        self.assertEqual(bad.status, 500)
        for i, p in enumerate(pids):
            self.assertRegex(bad.text, rf"(?m)^worker {i} \(pid {p}\): .*boom")
        gc = api_post(self.api, "/ruleset/gc")
        self.assertEqual(gc.status, 200)
        self.assertEqual(len(re.findall(r"(?m)^worker \d \(pid \d+\): Lua memory: ", gc.text)), 2)
        self.assertEqual(api_call(self.api, "GET", "/healthy").status, 200)

    def test_killed_worker_comes_back_with_current_ruleset(self):
        self.assertEqual(api_post(self.api, "/ruleset/update", RULESET % "v2").status, 200)
        before = self.proxy.worker_pids()
        os.kill(before[0], signal.SIGKILL)

        def back():
            now = self.proxy.worker_pids()
            stats = api_call(self.api, "GET", "/stats").text
            return len(now) == 2 and before[0] not in now and "2 of 2 running" in stats
        self.assertTrue(wait_until(back, 20, 0.1), self.proxy.log_tail())
        self.assertEqual(self.per_worker("return version"), [b"v2", b"v2"])
        self.assertEqual(metric(api_call(self.api, "GET", "/metrics").text,
                                "rulesocks_worker_restarts_total"), 1)
        rep, reply = socks5_get(self.proxy.port, self.origin.port)
        self.assertEqual(rep, 0)

    def test_sigterm_leaves_no_process(self):
        pids = self.proxy.worker_pids()
        code, _ = self.proxy.stop()
        self.assertEqual(code, 0)
        self.assertTrue(wait_until(lambda: not any(alive(p) for p in pids), IO_TIMEOUT),
                        [p for p in pids if alive(p)])


if __name__ == "__main__":
    unittest.main()
