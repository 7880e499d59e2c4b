"""SIGHUP reloads the -r ruleset; --block-outbound refuses dials by address class.

  SighupReload    edit the ruleset file + SIGHUP: new routing, sessions kept;
                  a broken file keeps the old ruleset; without -r SIGHUP is ignored
  BlockOutbound   --block-outbound loopback/local/multicast: SOCKS5 0x02, SOCKS4
                  0x5B, HTTP 403; IPv4-mapped IPv6 by its IPv4 part; the first hop
"""

import os
import signal
import subprocess
import tempfile
import unittest

from harness import (
    BIN, LOOP4, IntegrationCase, connect, curl, free_port, hup_and_wait, listening_inodes,
    pids_holding, proc_gone, read_http_response, socks4_request, socks5_handshake, wait_until,
)
from test_ruleset import rpc_string

# a.test goes to the origin and b.test is refused; SWAP turns that round.
RULESET = r"""
local ruleset = {}
function ruleset.resolve(addr)
    local host, port = neosocksd.splithostport(addr)
    if host == "@OPEN@" then return "127.0.0.1:" .. port end
    return nil
end
return ruleset
"""


def ruleset_text(open_host):
    return RULESET.replace("@OPEN@", open_host)


class SighupReload(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.path = os.path.join(self.dir.name, "ruleset.lua")
        self.write(ruleset_text("a.test"))

    def write(self, text):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)

    def get(self, proxy, host):
        return curl("--socks5-hostname", f"{LOOP4}:{proxy.port}",
                    f"http://{host}:{self.origin.port}/hello", timeout=10)

    def test_edited_ruleset_applies_after_sighup(self):
        proxy = self.start_proxy("-r", self.path)
        self.assertEqual(self.get(proxy, "a.test")[0], 0)
        self.assertNotEqual(self.get(proxy, "b.test")[0], 0)
        self.write(ruleset_text("b.test"))
        hup_and_wait(self, proxy, "ruleset reloaded")
        self.assertTrue(proxy.alive)
        rc, out, err = self.get(proxy, "b.test")
        self.assertEqual(rc, 0, err)
        self.assertNotEqual(self.get(proxy, "a.test")[0], 0)

    def test_broken_file_keeps_the_running_ruleset(self):
        proxy = self.start_proxy("-r", self.path)
        self.write("this is not lua (")
        hup_and_wait(self, proxy, "not reloaded")
        self.assertIn(self.path, proxy.log_text())
        self.assertTrue(proxy.alive)
        self.assertEqual(self.get(proxy, "a.test")[0], 0)
        os.unlink(self.path)
        hup_and_wait(self, proxy, "not reloaded")
        self.assertEqual(self.get(proxy, "a.test")[0], 0)

    def test_open_relay_survives_the_reload(self):
        proxy = self.start_proxy("-r", self.path)
        with connect(proxy.port) as s:
            _, rep = socks5_handshake(s, "a.test", self.origin.port)
            self.assertEqual(rep, 0)
            req = f"GET /hello HTTP/1.1\r\nHost: a.test:{self.origin.port}\r\n\r\n".encode()
            s.sendall(req)
            self.assertIn(" 200 ", read_http_response(s)[0])
            self.write(ruleset_text("b.test"))
            hup_and_wait(self, proxy, "ruleset reloaded")
            s.sendall(req)
            self.assertIn(" 200 ", read_http_response(s)[0])

    def test_relative_path_reloads_after_daemonize(self):
        # -d moves the working directory to /: the reload must still find
        # "ruleset.lua" where start-up did. The PID is the daemon's own, found
        # by its listening socket, and only that PID is signalled.
        # Without a syslog daemon (/dev/log), -d keeps logging to the stderr
        # it was given: a file here, never a pipe that the daemon would hold.
        port = free_port()
        log_path = os.path.join(self.dir.name, "daemon.log")
        with open(log_path, "wb") as log:
            r = subprocess.run([BIN, "-d", "-l", f"{LOOP4}:{port}", "-r", "ruleset.lua"],
                               cwd=self.dir.name, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=log, timeout=10)
        with open(log_path, "rb") as f:
            self.assertEqual(r.returncode, 0, f.read())
        if not os.path.exists("/dev/log"):
            with open(log_path, "rb") as f:
                self.assertIn(b"syslog is absent", f.read())
        pids = []

        def found():
            pids[:] = [p for i in listening_inodes(port) for p in pids_holding(i)]
            return len(pids) == 1
        self.assertTrue(wait_until(found, 5))
        pid = pids[0]
        try:
            get = lambda host: curl("--socks5-hostname", f"{LOOP4}:{port}",
                                    f"http://{host}:{self.origin.port}/hello", timeout=10)[0]
            self.assertEqual(get("a.test"), 0)
            self.write(ruleset_text("b.test"))
            os.kill(pid, signal.SIGHUP)
            self.assertTrue(wait_until(lambda: get("b.test") == 0, 5))
            self.assertNotEqual(get("a.test"), 0)
        finally:
            os.kill(pid, signal.SIGTERM)
            self.assertTrue(wait_until(lambda: proc_gone(pid), 5))

    def test_sighup_without_ruleset_is_ignored(self):
        proxy = self.start_proxy()
        hup_and_wait(self, proxy, "SIGHUP ignored")
        self.assertTrue(proxy.alive)
        rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", self.origin.url("/hello"),
                            timeout=10)
        self.assertEqual(rc, 0, err)


class BlockOutbound(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()

    def socks5_rep(self, proxy, host, port):
        with connect(proxy.port) as s:
            return socks5_handshake(s, host, port)[1]

    def socks4_rep(self, proxy, ip, port):
        with connect(proxy.port) as s:
            s.sendall(socks4_request(port, ip=ip))
            reply = s.recv(8)
            return reply[1] if len(reply) >= 2 else None

    def test_loopback_allowed_by_default(self):
        proxy = self.start_proxy(http=True)
        rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", self.origin.url("/hello"),
                            timeout=10)
        self.assertEqual(rc, 0, err)
        rc, out, err = curl("-p", "-x", f"http://{LOOP4}:{proxy.http_port}",
                            self.origin.url("/hello"), timeout=10)
        self.assertEqual(rc, 0, err)

    def test_blocked_loopback_is_not_allowed(self):
        proxy = self.start_proxy("--block-outbound", "loopback", http=True)
        rc, out, err = curl("-p", "-x", f"http://{LOOP4}:{proxy.http_port}",
                            self.origin.url("/hello"), timeout=10)
        self.assertNotEqual(rc, 0)
        self.assertIn("403", err)
        rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", self.origin.url("/hello"),
                            timeout=10)
        self.assertNotEqual(rc, 0)
        self.assertEqual(self.socks5_rep(proxy, LOOP4, self.origin.port), 0x02)
        self.assertEqual(self.socks5_rep(proxy, "::ffff:127.0.0.1", self.origin.port), 0x02)
        self.assertEqual(self.socks4_rep(proxy, LOOP4, self.origin.port), 0x5B)
        self.assertIn("loopback", proxy.log_text())

    def test_blocked_first_hop_is_not_allowed(self):
        hop = self.start_proxy()
        proxy = self.start_proxy("--block-outbound", "loopback", "-x",
                                 f"socks5://{LOOP4}:{hop.port}")
        self.assertEqual(self.socks5_rep(proxy, "origin.test", 80), 0x02)

    def test_other_classes_leave_loopback_alone(self):
        proxy = self.start_proxy("--block-outbound", "local,global,multicast")
        rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", self.origin.url("/hello"),
                            timeout=10)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.socks5_rep(proxy, "10.1.2.3", 80), 0x02)
        self.assertEqual(self.socks5_rep(proxy, "::ffff:192.168.1.1", 80), 0x02)
        self.assertEqual(self.socks5_rep(proxy, "fe80::1", 80), 0x02)
        self.assertEqual(self.socks5_rep(proxy, "192.0.2.1", 80), 0x02)
        self.assertIn("local", proxy.log_text())

    def test_multicast_blocked_by_default(self):
        proxy = self.start_proxy()
        self.assertEqual(self.socks5_rep(proxy, "224.0.0.1", 80), 0x02)
        self.assertEqual(self.socks5_rep(proxy, "ff02::1", 80), 0x02)
        self.assertIn("multicast", proxy.log_text())

    def test_empty_list_blocks_nothing(self):
        proxy = self.start_proxy("--block-outbound", "")
        self.assertNotEqual(self.socks5_rep(proxy, "224.0.0.1", 80), 0x02)

    def test_rpc_dial_is_blocked_too(self):
        ruleset = os.path.join(self.tmp(), "ruleset.lua")
        with open(ruleset, "w") as f:
            f.write("return {}\n")
        code = """
            local ok, r = await.invoke("return 1", "127.0.0.1:@API@")
            return tostring(ok) .. " " .. tostring(r)
        """
        allowed = self.start_proxy("-r", ruleset, api=True)
        out = rpc_string(allowed.api_port, code.replace("@API@", str(allowed.api_port)))
        self.assertTrue(out.startswith("true"), out)
        blocked = self.start_proxy("-r", ruleset, "--block-outbound", "loopback", api=True)
        out = rpc_string(blocked.api_port, code.replace("@API@", str(blocked.api_port)))
        self.assertTrue(out.startswith("false"), out)
        self.assertIn("loopback", out)

    def tmp(self):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        return d.name

    def test_unknown_class_is_a_start_up_error(self):
        r = subprocess.run([BIN, "-l", f"{LOOP4}:{free_port()}", "--block-outbound", "lan"],
                           capture_output=True, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"lan", r.stderr)


if __name__ == "__main__":
    unittest.main()
