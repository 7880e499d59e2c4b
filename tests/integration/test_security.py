"""The API's security model (issue 12 items 1-3).

  ApiKeys     --api-key / --api-key-file: 401 with WWW-Authenticate: Bearer without a key
              or with a wrong one, 200 with Authorization: Bearer or X-API-Key, /healthy
              open, a key file others can read refused, failed attempts counted
              (/stats, neosocksd.stats().num_api_unauthorized) and logged rate-limited
              with the client address, the key never logged nor in neosocksd.config()
  ThroughProxy  the API reached through the proxy (the default ruleset's
              api.neosocksd.internal): 403 without a key while a proxy listener is not
              on loopback (with a start-up warning), served with loopback-only listeners,
              served with the right key, direct API clients unaffected
  RpcKeys     nodes with keys calling each other (neosocksd.setapikey per peer), a node
              with a key calling a keyless one, a wrong key an error naming 401
"""

import os
import subprocess
import tempfile
import time
import unittest

from harness import (
    BIN, HERE, RPC_TYPE, IntegrationCase, api_call, api_post, curl, free_port, lua_values,
    wait_until,
)

KEY = "k3y-0f-the-node-A"
RULESET = os.path.join(os.path.dirname(os.path.dirname(HERE)), "lua", "ruleset.lua")
HARMLESS = "return 1"


def lua_quote(s):
    return '"' + "".join(f"\\{b}" for b in s.encode()) + '"'


def rpcall_with(port, code, headers=()):
    reply = api_post(port, "/ruleset/rpcall", code, [("Content-Type", RPC_TYPE), *headers])
    if reply.status != 200:
        raise AssertionError(f"rpcall answered {reply.status}: {reply.text}")
    return lua_values(reply.body)


def via_proxy(socks_port, *headers):
    """The issue's request through the SOCKS listener; returns (http status, body)."""
    args = ["--socks5-hostname", f"127.0.0.1:{socks_port}", "-o", "-", "-w", "\n%{http_code}",
            "-H", f"Content-Type: {RPC_TYPE}", "-d", HARMLESS]
    for h in headers:
        args += ["-H", h]
    rc, out, err = curl(*args, "http://api.neosocksd.internal/ruleset/rpcall", timeout=20)
    if rc != 0:
        raise AssertionError(f"curl failed: rc={rc} {err}")
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


class ApiKeys(IntegrationCase):
    def keyed(self, *args):
        return self.start_proxy("--api-key", KEY, *args, socks=False, api=True)

    def test_401_without_key(self):
        p = self.keyed()
        for method, target in (("GET", "/stats"), ("POST", "/ruleset/gc"), ("GET", "/nosuch")):
            r = api_call(p.api_port, method, target)
            self.assertEqual(r.status, 401, r)
            self.assertEqual(r.headers.get("www-authenticate"), "Bearer", r)
            self.assertIn("API key", r.text)

    def test_200_with_either_header(self):
        p = self.keyed()
        for h in (("Authorization", f"Bearer {KEY}"), ("authorization", f"bearer  {KEY}"),
                  ("X-API-Key", KEY)):
            r = api_call(p.api_port, "GET", "/stats", headers=[h])
            self.assertEqual(r.status, 200, (h, r))

    def test_wrong_key_401(self):
        p = self.keyed()
        for h in (("Authorization", f"Bearer {KEY}x"), ("Authorization", f"Basic {KEY}"),
                  ("X-API-Key", KEY[:-1]), ("X-API-Key", "")):
            r = api_call(p.api_port, "GET", "/stats", headers=[h])
            self.assertEqual(r.status, 401, (h, r))

    def test_healthy_open(self):
        p = self.keyed()
        self.assertEqual(api_call(p.api_port, "GET", "/healthy").status, 200)
        self.assertEqual(api_call(p.api_port, "POST", "/healthy").status, 200)

    def test_key_file(self):
        d = tempfile.mkdtemp(prefix="rulesocks-key-")
        self.addCleanup(lambda: (os.path.exists(path) and os.unlink(path), os.rmdir(d)))
        path = os.path.join(d, "key")
        with open(path, "w") as f:
            f.write(KEY + "\nsecond line ignored\n")
        os.chmod(path, 0o640)
        r = subprocess.run([BIN, "--api", f"127.0.0.1:{free_port()}", "--api-key-file", path],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(path, r.stderr)
        self.assertIn("0640", r.stderr)
        self.assertNotIn(KEY, r.stderr)
        os.chmod(path, 0o600)
        p = self.start_proxy("--api-key-file", path, socks=False, api=True)
        self.assertEqual(api_call(p.api_port, "GET", "/stats").status, 401)
        r = api_call(p.api_port, "GET", "/stats", headers=[("X-API-Key", KEY)])
        self.assertEqual(r.status, 200, r)

    def test_failed_attempts_counted_and_logged_rate_limited(self):
        p = self.start_proxy("--api-key", KEY, "-r", RULESET, socks=False, api=True)
        for _ in range(5):
            self.assertEqual(api_call(p.api_port, "GET", "/stats").status, 401)
        r = api_call(p.api_port, "GET", "/stats", headers=[("X-API-Key", KEY)])
        self.assertRegex(r.text, r"API unauthorized\s*: 5\b")
        auth = [("X-API-Key", KEY)]
        self.assertEqual(rpcall_with(p.api_port, "return neosocksd.stats().num_api_unauthorized",
                                     auth), [True, 5])
        # The key is nowhere in neosocksd.config().
        code = f"""for k, v in pairs(neosocksd.config()) do
                     if tostring(v):find({lua_quote(KEY)}, 1, true) then return k end
                   end
                   return "none" """
        self.assertEqual(rpcall_with(p.api_port, code, auth), [True, b"none"])
        # One line for the first failure (within a second, the rest are counted only),
        # then a line with the count of those suppressed.
        lines = [l for l in p.log_text().splitlines() if "unauthorized" in l]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("127.0.0.1", lines[0])
        time.sleep(1.1)
        self.assertEqual(api_call(p.api_port, "GET", "/stats").status, 401)
        self.assertTrue(wait_until(lambda: "4 more suppressed" in p.log_text(), 5),
                        p.log_tail())
        self.assertNotIn(KEY, p.log_text())


class ThroughProxy(IntegrationCase):
    def node(self, listen, *args):
        port = free_port()
        p = self.start_proxy("-l", f"{listen}:{port}", "-r", RULESET, *args, socks=False,
                             api=True, extra_ports=(port,))
        return p, port

    def test_hole_closed_with_wildcard_listener(self):
        p, port = self.node("0.0.0.0")
        status, body = via_proxy(port)
        self.assertEqual(status, 403, body)
        self.assertIn("--api-key", body)
        self.assertIn("loopback", body)
        # Warned at start-up.
        self.assertIn("not on loopback", p.log_text())
        self.assertIn("--api-key", p.log_text())
        # Direct API clients are unaffected.
        self.assertEqual(rpcall_with(p.api_port, HARMLESS), [True, 1])

    def test_served_with_loopback_listeners(self):
        p, port = self.node("127.0.0.1", "--http", f"127.0.0.1:{free_port()}")
        self.assertNotIn("not on loopback", p.log_text())
        status, body = via_proxy(port)
        self.assertEqual(status, 200, body)

    def test_exposed_http_listener_counts(self):
        http = free_port()
        p, port = self.node("127.0.0.1", "--http", f"0.0.0.0:{http}")
        status, body = via_proxy(port)
        self.assertEqual(status, 403, body)

    def test_served_with_the_key_through_proxy(self):
        p, port = self.node("0.0.0.0", "--api-key", KEY)
        self.assertNotIn("not on loopback", p.log_text())
        status, body = via_proxy(port)
        self.assertEqual(status, 401, body)
        status, body = via_proxy(port, f"Authorization: Bearer {KEY}")
        self.assertEqual(status, 200, body)
        status, body = via_proxy(port, f"X-API-Key: {KEY}")
        self.assertEqual(status, 200, body)

    def test_key_needed_through_proxy_even_on_loopback(self):
        p, port = self.node("127.0.0.1", "--api-key", KEY)
        status, body = via_proxy(port)
        self.assertEqual(status, 401, body)


RPC_RULESET = "local ruleset = {}\nreturn ruleset\n"


class RpcKeys(IntegrationCase):
    def node(self, *args):
        d = tempfile.mkdtemp(prefix="rulesocks-rpc-")
        path = os.path.join(d, "r.lua")
        with open(path, "w") as f:
            f.write(RPC_RULESET)
        self.addCleanup(lambda: (os.unlink(path), os.rmdir(d)))
        return self.start_proxy("-r", path, *args, socks=False, api=True)

    def invoke(self, src, src_key, dst, setkey=None):
        """await.invoke("return 42") from src to dst; returns what src saw."""
        addr = lua_quote(f"127.0.0.1:{dst.api_port}")
        pre = ""
        if setkey is not None:
            pre = f"neosocksd.setapikey({addr}, {setkey})\n"
        code = pre + f"""local ok, r = await.invoke("return 42", {addr})
            if not ok then return false, r end
            return true, r()"""
        headers = [("X-API-Key", src_key)] if src_key else []
        return rpcall_with(src.api_port, code, headers)

    def test_keyed_nodes_call_each_other(self):
        a = self.node("--api-key", "key-a")
        b = self.node("--api-key", "key-b")
        self.assertEqual(self.invoke(a, "key-a", b, lua_quote("key-b")), [True, True, True, 42])
        self.assertEqual(self.invoke(b, "key-b", a, lua_quote("key-a")), [True, True, True, 42])
        # nil forgets the peer's key: back to the node's own, which b does not take.
        got = self.invoke(a, "key-a", b, "nil")
        self.assertEqual(got[:2], [True, False], got)
        self.assertIn(b"401", got[2])

    def test_same_key_needs_no_setapikey(self):
        a = self.node("--api-key", "shared")
        b = self.node("--api-key", "shared")
        self.assertEqual(self.invoke(a, "shared", b), [True, True, True, 42])

    def test_keyed_node_calls_keyless_node(self):
        a = self.node("--api-key", "key-a")
        c = self.node()
        self.assertEqual(self.invoke(a, "key-a", c), [True, True, True, 42])
        # And the other way round, with the key set for that peer.
        self.assertEqual(self.invoke(c, None, a, lua_quote("key-a")), [True, True, True, 42])

    def test_wrong_key_names_401(self):
        a = self.node("--api-key", "key-a")
        b = self.node("--api-key", "key-b")
        got = self.invoke(a, "key-a", b)
        self.assertEqual(got[:2], [True, False], got)
        self.assertIn(b"401", got[2])
        got = self.invoke(a, "key-a", b, lua_quote("wrong"))
        self.assertIn(b"401", got[2])

    def test_sendmsg_carries_the_key(self):
        a = self.node("--api-key", "key-a")
        b = self.node("--api-key", "key-b")
        addr = lua_quote(f"127.0.0.1:{b.api_port}")
        rpcall_with(a.api_port, f"""neosocksd.setapikey({addr}, "key-b")
            neosocksd.invoke("_G.got_msg = 7", {addr}) return true""", [("X-API-Key", "key-a")])
        self.assertTrue(wait_until(
            lambda: rpcall_with(b.api_port, "return _G.got_msg", [("X-API-Key", "key-b")])
            == [True, 7], 5))


if __name__ == "__main__":
    unittest.main()
