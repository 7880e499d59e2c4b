"""The RESTful API (--api) and inter-node RPC (await.invoke, neosocksd.invoke).

Real rulesocks processes on loopback, driven with curl and raw sockets:
  * every endpoint and every error status, request and response compression,
    keep-alive, pipelining and timeouts of slow clients;
  * ruleset hot reload while 100 clients go through the proxy;
  * RPC between two and three nodes, directly and through proxy chains to
    api.neosocksd.internal:80, with every value marshal() can carry;
  * a ruleset ticking an RPC every 100 ms while the proxy keeps serving.

Every wait is bounded, only loopback is used, and only processes started here
are stopped (by PID).
"""

import gzip
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
import zlib

from harness import (
    MiB, IO_TIMEOUT, RPC_TYPE, IntegrationCase, LuaTable, Origin, api_call, api_post, blob,
    connect, curl, free_port, http_request_bytes, is_open, lua_quote, lua_values,
    read_http_response, read_reply, recv_all, recv_exact, rpcall, sha256, socks4_request,
    socks5_handshake, wait_closed, wait_until,
)

API_NAME = "api.neosocksd.internal:80"

# Every node's ruleset: requests pass through unchanged, except that
# api.neosocksd.internal:80 is this node's own API and that _G.DENY_PORT (when
# set) is refused. ruleset.stats echoes its arguments.
BASE_RULESET = r"""
_G.NODE = %(node)s
_G.VERSION = %(version)s
local API = neosocksd.config().restapi
local ruleset = {}
local function pass(addr)
    local port = addr:match(":(%%d+)$")
    if _G.DENY_PORT and port == tostring(_G.DENY_PORT) then return nil end
    return addr
end
function ruleset.resolve(addr)
    if addr == "api.neosocksd.internal:80" then return API end
    return pass(addr)
end
ruleset.route = pass
ruleset.route6 = pass
function ruleset.stats(dt, q)
    if q == "big" then return string.rep("ruleset stats are compressible. ", 400) end
    return string.format("ruleset.stats q=[%%s] dt_ok=%%s node=%%s", q,
                         tostring(type(dt) == "number" and dt >= 0), _G.NODE)
end
return ruleset
"""


def ruleset_text(node="node", version="base", extra=""):
    """BASE_RULESET with `extra` Lua inserted before its final `return ruleset`."""
    text = BASE_RULESET % {"node": lua_quote(node), "version": lua_quote(version)}
    head, tail = text.rsplit("return ruleset", 1)
    return head + extra + "\nreturn ruleset" + tail


def start_node(case, name, text, *args, cls=False, **kw):
    """A rulesocks with -r (a file holding `text`, in a temporary directory removed
    at cleanup) and --api on free ports; with cls=True it lives for the class."""
    d = tempfile.mkdtemp(prefix="rulesocks-api-")
    if cls:
        case.addClassCleanup(shutil.rmtree, d, True)
    else:
        case.addCleanup(shutil.rmtree, d, True)
    path = os.path.join(d, f"{name}.lua")
    with open(path, "w") as f:
        f.write(text)
    kw.setdefault("api", True)
    starter = case.start_class_proxy if cls else case.start_proxy
    return starter("-r", path, *args, name=name, **kw)


def socks5_get(proxy_port, origin_port, path="/hello", host="127.0.0.1", timeout=IO_TIMEOUT):
    """GET `path` from an origin through a SOCKS5 proxy.

    Returns (REP, HttpReply or None)."""
    with connect(proxy_port, timeout=timeout) as s:
        _, rep = socks5_handshake(s, host, origin_port)
        if rep != 0:
            return rep, None
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n".encode())
        return rep, read_reply(s)


def parse_curl_i(out):
    """curl -i output -> (status, headers, body), skipping interim 1xx heads."""
    while True:
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if 100 <= status < 200:
            out = rest
            continue
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers, rest


def curl_api(port, path, *args, timeout=30):
    """curl -i against the API; returns (status, headers, body) or fails the test."""
    rc, out, err = curl("-i", *args, f"http://127.0.0.1:{port}{path}", timeout=timeout)
    if rc != 0:
        raise AssertionError(f"curl {path} {args}: rc={rc} {err}")
    return parse_curl_i(out)


def stats_requests(text):
    """The numbers of the /stats line
    "Requests : N (S success, R rejected, D dial failed, B bad)"."""
    for line in text.splitlines():
        if line.startswith("Requests"):
            nums = [int(w) for w in line.replace("(", " ").replace(",", " ").split() if w.isdigit()]
            return dict(zip(("requests", "success", "rejected", "dial_failed", "bad"), nums))
    raise AssertionError(f"no Requests line in /stats:\n{text}")


# --------------------------------------------------------------------------
# One node: every endpoint and every status
# --------------------------------------------------------------------------

class EndpointTest(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.text = ruleset_text("A")
        # One VM: these tests check the one-process API's exact replies and build Lua state
        # with successive rpcalls (test_workers covers --workers).
        cls.node = start_node(cls, "api-node", cls.text, cls=True, workers=1)
        cls.api = cls.node.api_port
        cls.tmp = tempfile.mkdtemp(prefix="rulesocks-api-bodies-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)

    def file_of(self, name, data):
        p = os.path.join(self.tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def assert_routes(self):
        """A proxied request still reaches the origin through the current ruleset."""
        rep, reply = socks5_get(self.node.port, self.origin.port)
        self.assertEqual(rep, 0, "SOCKS5 request refused")
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.body, b"hello from origin\n")

    def restore_ruleset(self):
        r = api_post(self.api, "/ruleset/update", self.text)
        self.assertEqual(r.status, 200, r.text)
        r = api_post(self.api, "/ruleset/invoke", "_G.DENY_PORT = nil")
        self.assertEqual(r.status, 200, r.text)

    # -- /healthy, 404, 405, 400, 411, 413

    def test_healthy_any_method(self):
        status, headers, body = curl_api(self.api, "/healthy")
        self.assertEqual((status, body), (200, b""))
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
            status, _, _ = curl_api(self.api, "/healthy", "-X", method)
            self.assertEqual(status, 200, method)
        # HEAD: a head with no body.
        with connect(self.api) as s:
            s.sendall(b"HEAD /healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /healthy HTTP/1.1\r\n"
                      b"Host: x\r\n\r\n")
            first = read_reply(s)
            second = read_reply(s)
        self.assertEqual(first.status, 200)
        self.assertEqual(second.status, 200)

    def test_unknown_paths_404(self):
        for path in ("/", "/nope", "/ruleset", "/ruleset/", "/ruleset/nope", "/stats/x",
                     "/healthy/x", "/RULESET/INVOKE"):
            status, _, body = curl_api(self.api, path)
            self.assertEqual(status, 404, path)
            self.assertIn(b"no such endpoint", body)
        status, _, _ = curl_api(self.api, "/ruleset/nope", "-X", "POST", "--data-binary", "x")
        self.assertEqual(status, 404)

    def test_wrong_methods_405(self):
        for path in ("/ruleset/invoke", "/ruleset/update", "/ruleset/gc", "/ruleset/rpcall"):
            for method in ("GET", "PUT", "DELETE"):
                status, headers, _ = curl_api(self.api, path, "-X", method)
                self.assertEqual(status, 405, f"{method} {path}")
                self.assertEqual(headers.get("allow"), "POST")
        for method in ("PUT", "DELETE", "PATCH"):
            status, headers, _ = curl_api(self.api, "/stats", "-X", method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers.get("allow"), "GET, POST")

    def test_malformed_requests_400(self):
        cases = [
            b"this is not http\r\n\r\n",
            b"GET /healthy HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /stats?nobanner=%zz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 4\r\n\r\nabcd",
            b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
        ]
        for raw in cases:
            with connect(self.api) as s:
                s.sendall(raw)
                reply = read_reply(s)
                self.assertIsNotNone(reply, raw)
                self.assertEqual(reply.status, 400, (raw, reply))
        # Heads too large, and versions other than 1.0 and 1.1, have their own statuses.
        for raw, status in ((b"GET /healthy HTTP/1.1\r\nX-Big: " + b"x" * (1 << 20), 431),
                            (b"GET /healthy HTTP/2.0\r\nHost: x\r\n\r\n", 505)):
            with connect(self.api) as s:
                try:
                    s.sendall(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # refused before the whole head was sent
                reply = read_reply(s)
                self.assertIsNotNone(reply, status)
                self.assertEqual(reply.status, status)
        # A corrupt compressed body is a bad request too.
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", "not gzip",
                                   "-H", "Content-Encoding: gzip")
        self.assertEqual(status, 400, body)
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", "x",
                                   "-H", "Content-Encoding: br")
        self.assertEqual(status, 415, body)
        # The server is fine afterwards.
        self.assertEqual(curl_api(self.api, "/healthy")[0], 200)

    def test_length_required_411(self):
        # curl -X POST without data sends neither Content-Length nor a body.
        for path in ("/ruleset/invoke", "/ruleset/update", "/ruleset/rpcall"):
            status, _, _ = curl_api(self.api, path, "-X", "POST")
            self.assertEqual(status, 411, path)
        # /ruleset/gc needs no body; /healthy and /stats neither.
        for path in ("/ruleset/gc", "/stats", "/healthy"):
            status, _, _ = curl_api(self.api, path, "-X", "POST")
            self.assertEqual(status, 200, path)

    def test_body_limit_413(self):
        big = self.file_of("big.lua", b"-" * (5 * MiB))
        status, headers, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{big}")
        self.assertEqual(status, 413, body)
        self.assertEqual(headers.get("connection"), "close")
        # Chunked: refused once the limit is crossed.
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{big}",
                                   "-H", "Transfer-Encoding: chunked")
        self.assertEqual(status, 413, body)
        # A small gzip body that inflates beyond the limit.
        bomb = self.file_of("bomb.gz", gzip.compress(b"-" * (5 * MiB)))
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{bomb}",
                                   "-H", "Content-Encoding: gzip")
        self.assertEqual(status, 413, body)
        # Exactly 4 MiB is accepted (a Lua comment), one byte more is not.
        edge = self.file_of("edge.lua", b"--" + b"x" * (4 * MiB - 2))
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{edge}")
        self.assertEqual(status, 200, body)
        over = self.file_of("over.lua", b"--" + b"x" * (4 * MiB - 1))
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{over}")
        self.assertEqual(status, 413, body)
        self.assert_routes()

    # -- /ruleset/invoke

    def test_invoke(self):
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary",
                                   "_G.invoked = (_G.invoked or 0) + 41 + 1")
        self.assertEqual(status, 200, body)
        self.assertEqual(rpcall(self.api, "return _G.invoked")[1] % 42, 0)
        # A routine: it may await, and its later effects happen.
        status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary",
                                   "await.sleep(0.05); _G.slept = 'yes'")
        self.assertEqual(status, 200, body)
        self.assertTrue(wait_until(lambda: rpcall(self.api, "return _G.slept") == [True, b"yes"],
                                   5, 0.05))

    def test_invoke_errors_500(self):
        for code, text in (("error('boom from invoke')", b"boom from invoke"),
                           ("this is not lua", b"syntax error"),
                           ("local t = nil; return t.x", b"attempt to index"),
                           ("error({})", b"table")):
            status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", code)
            self.assertEqual(status, 500, code)
            self.assertIn(text, body, code)
        self.assert_routes()

    # -- /ruleset/update

    def test_update_replaces_ruleset(self):
        self.addCleanup(self.restore_ruleset)
        # The same ruleset, refusing the origin's port.
        text = ruleset_text("A", "strict", f"\n_G.DENY_PORT = {self.origin.port}\n")
        status, _, body = curl_api(self.api, "/ruleset/update", "--data-binary", text)
        self.assertEqual(status, 200, body)
        self.assertEqual(rpcall(self.api, "return _G.VERSION"), [True, b"strict"])
        rep, _ = socks5_get(self.node.port, self.origin.port)
        self.assertEqual(rep, 2, "the new ruleset refuses the port: connection not allowed")
        # Setting _G.ruleset instead of returning it works as well.
        text = ruleset_text("A", "global").replace("\nreturn ruleset\n",
                                                   "\n_G.ruleset = ruleset\n")
        status, _, body = curl_api(self.api, "/ruleset/update", "--data-binary", text)
        self.assertEqual(status, 200, body)
        rpcall(self.api, "_G.DENY_PORT = nil")
        self.assert_routes()

    def test_update_errors_500_keep_old_ruleset(self):
        self.addCleanup(self.restore_ruleset)
        for code, text in (("error('bad ruleset')", b"bad ruleset"),
                           ("this is not lua", b"syntax error"),
                           ("return 42", b"must return a table"),
                           ("_G.DENY_PORT = 1; error('half done')", b"half done")):
            status, _, body = curl_api(self.api, "/ruleset/update", "--data-binary", code)
            self.assertEqual(status, 500, code)
            self.assertIn(text, body, code)
            rpcall(self.api, "_G.DENY_PORT = nil")
            self.assert_routes()
        self.assertEqual(rpcall(self.api, "return _G.VERSION"), [True, b"base"])

    def test_update_chunkname(self):
        self.addCleanup(self.restore_ruleset)
        status, _, body = curl_api(self.api, "/ruleset/update?chunkname=%40myrules.lua",
                                   "--data-binary", "\nerror('failing on line 2')")
        self.assertEqual(status, 500)
        self.assertIn(b"myrules.lua:2: failing on line 2", body)
        # A chunkname also names the ruleset's functions in later errors.
        text = ruleset_text("A", "named", "\nfunction ruleset.stats() error('stats broke') end\n")
        status, _, body = curl_api(self.api, "/ruleset/update?chunkname=%40named.lua",
                                   "--data-binary", text)
        self.assertEqual(status, 200, body)
        status, _, body = curl_api(self.api, "/stats?q=1", "-X", "POST")
        self.assertEqual(status, 200)
        self.assertNotIn(b"ruleset.stats q=", body)
        self.assertIn(b"named.lua", self.node.log_text().encode())

    def test_update_module(self):
        self.addCleanup(rpcall, self.api, "package.loaded.mymod = nil; _G.mymod = nil; "
                                          "package.loaded.othermod = nil; _G.othermod = nil")
        setup = ("package.loaded.mymod = {v = 1}; _G.mymod = package.loaded.mymod; "
                 "package.loaded.othermod = {v = 1}; _G.othermod = 'not the module'")
        self.assertEqual(api_post(self.api, "/ruleset/invoke", setup).status, 200)
        status, _, body = curl_api(self.api, "/ruleset/update?module=mymod", "--data-binary",
                                   "return {v = 2}")
        self.assertEqual(status, 200, body)
        self.assertEqual(rpcall(self.api, "return mymod.v, package.loaded.mymod.v, "
                                          "require('mymod').v"), [True, 2, 2, 2])
        # _G.othermod did not refer to the module: it stays.
        status, _, body = curl_api(self.api, "/ruleset/update?module=othermod", "--data-binary",
                                   "return {v = 3}")
        self.assertEqual(status, 200, body)
        self.assertEqual(rpcall(self.api, "return _G.othermod, package.loaded.othermod.v"),
                         [True, b"not the module", 3])
        # A module that returns nothing is loaded as true.
        status, _, _ = curl_api(self.api, "/ruleset/update?module=othermod", "--data-binary",
                                "local x = 1")
        self.assertEqual(status, 200)
        self.assertEqual(rpcall(self.api, "return package.loaded.othermod"), [True, True])
        # A failing module update names its chunk and changes nothing.
        status, _, body = curl_api(self.api, "/ruleset/update?module=mymod&chunkname=%40mymod.lua",
                                   "--data-binary", "error('module broke')")
        self.assertEqual(status, 500)
        self.assertIn(b"mymod.lua:1: module broke", body)
        self.assertEqual(rpcall(self.api, "return mymod.v"), [True, 2])
        # The ruleset itself is untouched by module updates.
        self.assertEqual(rpcall(self.api, "return _G.VERSION"), [True, b"base"])
        self.assert_routes()

    # -- /ruleset/gc

    def test_gc(self):
        # Garbage first: a table nobody keeps.
        api_post(self.api, "/ruleset/invoke",
                 "local t = {} for i = 1, 20000 do t[i] = {i} end")
        status, _, body = curl_api(self.api, "/ruleset/gc", "-X", "POST")
        self.assertEqual(status, 200, body)
        self.assertRegex(body.decode(), r"^Lua memory: [\d.]+ \S+ in use, [\d.]+ \S+ freed\n$")
        freed = body.decode().split(", ")[1]
        self.assertNotEqual(freed, "0 B freed\n")
        status, _, _ = curl_api(self.api, "/ruleset/gc", "-X", "POST", "--data-binary", "ignored")
        self.assertEqual(status, 200)

    # -- /ruleset/rpcall

    def test_rpcall(self):
        self.assertEqual(rpcall(self.api, "return 1, 'two', nil, {3}"),
                         [True, 1, b"two", None, {1: 3}])
        self.assertEqual(rpcall(self.api, "await.sleep(0.01); return 'awaited'"),
                         [True, b"awaited"])
        # Its globals are its own; _G is the node's.
        rpcall(self.api, "scratch = 'local'; _G.shared = 'global'")
        self.assertEqual(rpcall(self.api, "return scratch, shared"), [True, None, b"global"])
        ok, msg = rpcall(self.api, "error('rpc boom')")
        self.assertIs(ok, False)
        self.assertIn(b"rpc boom", msg)
        ok, msg = rpcall(self.api, "return print")
        self.assertIs(ok, False)
        self.assertIn(b"function", msg)
        # Large replies travel deflated; the reader gets them whole.
        values = rpcall(self.api, "return string.rep('x', 3000000)")
        self.assertEqual(values, [True, b"x" * 3000000])

    def test_rpcall_content_type_400(self):
        for ctype in (None, "text/plain", "application/x-neosocksd-rpc",
                      "application/x-neosocksd-rpc; version=2",
                      "application/x-neosocksd-rpcx; version=1"):
            headers = [("Content-Type", ctype)] if ctype else []
            r = api_post(self.api, "/ruleset/rpcall", "return 1", headers)
            self.assertEqual(r.status, 400, ctype)
        r = api_post(self.api, "/ruleset/rpcall", "return 1",
                     [("Content-Type", 'Application/X-Neosocksd-RPC ; Version="1"')])
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(r.headers.get("content-type"), RPC_TYPE)

    # -- /stats

    def test_stats_get_is_stateless(self):
        status, _, body = curl_api(self.api, "/stats")
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertRegex(text, r"^rulesocks \S+\nUptime\s+: \d\d:\d\d:\d\d\n")
        for label in ("Sessions", "half-open", "Requests", "success", "rejected", "dial failed",
                      "Traffic", "up ", "down ", "API requests", "DNS queries", "Lua Memory",
                      "Routines"):
            self.assertIn(label, text)
        self.assertNotIn("ruleset.stats", text, "GET does not call ruleset.stats")
        self.assertNotIn("rate", text)
        # nobanner, server=0 and a q that GET ignores.
        _, _, body = curl_api(self.api, "/stats?nobanner=1")
        self.assertNotIn(b"rulesocks", body)
        self.assertNotIn(b"Uptime", body)
        self.assertIn(b"Sessions", body)
        _, _, body = curl_api(self.api, "/stats?server=0&q=ignored")
        self.assertIn(b"Uptime", body)
        self.assertNotIn(b"Sessions", body)
        self.assertNotIn(b"ruleset.stats", body)
        _, _, body = curl_api(self.api, "/stats?nobanner=yes&server=off")
        self.assertEqual(body, b"")
        # The API request counter moves.
        counts = []
        for _ in range(2):
            _, _, body = curl_api(self.api, "/stats")
            line = [l for l in body.decode().splitlines() if l.startswith("API requests")][0]
            counts.append(int(line.split(":")[1]))
        self.assertGreater(counts[1], counts[0])

    def test_stats_post_is_incremental(self):
        status, _, body = curl_api(self.api, "/stats?q=first", "-X", "POST")
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertIn("Request rate", text)
        self.assertIn("Traffic rate", text)
        self.assertIn("ruleset.stats q=[first] dt_ok=true node=A", text)
        self.assertLess(text.index("Lua Memory"), text.index("ruleset.stats"))
        # Traffic between two POSTs shows in the rates.
        for _ in range(3):
            self.assert_routes()
        _, _, body = curl_api(self.api, "/stats?q=second", "-X", "POST")
        rate = [l for l in body.decode().splitlines() if l.startswith("Request rate")][0]
        self.assertGreater(float(rate.split(":")[1].strip().rstrip("/s")), 0)
        # Only the ruleset's part.
        _, _, body = curl_api(self.api, "/stats?nobanner=1&server=0&q=only", "-X", "POST")
        self.assertEqual(body, b"ruleset.stats q=[only] dt_ok=true node=A\n")

    # -- compression

    def test_compressed_request_bodies(self):
        self.addCleanup(rpcall, self.api, "_G.zval = nil")
        def raw_deflate(data):
            z = zlib.compressobj(wbits=-15)
            return z.compress(data) + z.flush()

        for i, (coding, encode, value) in enumerate((
                ("gzip", gzip.compress, b"gzip"),
                ("x-gzip", gzip.compress, b"x-gzip"),
                ("deflate", zlib.compress, b"zlib deflate"),
                ("deflate", raw_deflate, b"raw deflate"))):
            path = self.file_of(f"body{i}.z", encode(b"_G.zval = '" + value + b"'"))
            status, _, body = curl_api(self.api, "/ruleset/invoke", "--data-binary", f"@{path}",
                                       "-H", f"Content-Encoding: {coding}")
            self.assertEqual(status, 200, body)
            self.assertEqual(rpcall(self.api, "return _G.zval"), [True, value])
        # A compressed ruleset update and rpcall.
        path = self.file_of("update.gz", gzip.compress(ruleset_text("A", "gzipped").encode()))
        self.addCleanup(self.restore_ruleset)
        status, _, body = curl_api(self.api, "/ruleset/update", "--data-binary", f"@{path}",
                                   "-H", "Content-Encoding: gzip")
        self.assertEqual(status, 200, body)
        r = api_post(self.api, "/ruleset/rpcall", zlib.compress(b"return _G.VERSION"),
                     [("Content-Type", RPC_TYPE), ("Content-Encoding", "deflate")])
        self.assertEqual(lua_values(r.body), [True, b"gzipped"])

    def test_deflate_responses(self):
        # Large enough to be worth it, and the client asks.
        status, headers, body = curl_api(self.api, "/stats?q=big", "-X", "POST",
                                         "-H", "Accept-Encoding: deflate")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("content-encoding"), "deflate")
        plain = zlib.decompress(body)
        self.assertIn(b"ruleset stats are compressible. " * 400, plain)
        self.assertEqual(int(headers["content-length"]), len(body))
        # curl --compressed decodes it itself.
        status, headers, body = curl_api(self.api, "/stats?q=big", "-X", "POST", "--compressed")
        self.assertEqual(headers.get("content-encoding"), "deflate")
        self.assertIn(b"ruleset stats are compressible. " * 400, body)
        # Not asked, or refused with q=0: plain.
        for extra in ([], ["-H", "Accept-Encoding: gzip"], ["-H", "Accept-Encoding: deflate;q=0"]):
            status, headers, body = curl_api(self.api, "/stats?q=big", "-X", "POST", *extra)
            self.assertNotIn("content-encoding", headers, extra)
            self.assertIn(b"ruleset stats are compressible. " * 400, body)
        # Small bodies stay plain even when deflate is welcome.
        _, headers, _ = curl_api(self.api, "/healthy", "-H", "Accept-Encoding: deflate")
        self.assertNotIn("content-encoding", headers)
        # An rpcall reply too.
        r = api_post(self.api, "/ruleset/rpcall", "return string.rep('ab', 5000)",
                     [("Content-Type", RPC_TYPE), ("Accept-Encoding", "deflate")])
        self.assertEqual(r.headers.get("content-encoding"), "deflate")
        self.assertEqual(lua_values(zlib.decompress(r.body)), [True, b"ab" * 5000])

    # -- connections

    def test_keep_alive(self):
        # curl reuses one connection for both URLs.
        rc, out, err = curl("-v", "-o", "/dev/null", "-o", "/dev/null",
                            f"http://127.0.0.1:{self.api}/healthy",
                            f"http://127.0.0.1:{self.api}/stats")
        self.assertEqual(rc, 0, err)
        self.assertIn("Re-using existing connection", err)
        # Raw: two requests, one after the other, then Connection: close.
        with connect(self.api) as s:
            s.sendall(http_request_bytes("GET", "/healthy"))
            self.assertEqual(read_reply(s).status, 200)
            s.sendall(http_request_bytes("POST", "/ruleset/rpcall", b"return 'second'",
                                         [("Content-Type", RPC_TYPE)]))
            r = read_reply(s)
            self.assertEqual(lua_values(r.body), [True, b"second"])
            self.assertNotEqual(r.headers.get("connection"), "close")
            s.sendall(http_request_bytes("GET", "/healthy", headers=[("Connection", "close")]))
            r = read_reply(s)
            self.assertEqual((r.status, r.headers.get("connection")), (200, "close"))
            self.assertIsNotNone(wait_closed(s, 5), "closed after Connection: close")
        # HTTP/1.0 closes unless asked to keep alive.
        with connect(self.api) as s:
            s.sendall(b"GET /healthy HTTP/1.0\r\n\r\n")
            self.assertEqual(read_reply(s).status, 200)
            self.assertIsNotNone(wait_closed(s, 5))
        with connect(self.api) as s:
            s.sendall(b"GET /healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = read_reply(s)
            self.assertEqual(r.headers.get("connection"), "keep-alive")
            s.sendall(b"GET /healthy HTTP/1.0\r\n\r\n")
            self.assertEqual(read_reply(s).status, 200)

    def test_pipelining(self):
        requests = [
            (http_request_bytes("GET", "/healthy"), 200, None),
            (http_request_bytes("POST", "/ruleset/rpcall",
                                b"await.sleep(0.2); return 'slow'", [("Content-Type", RPC_TYPE)]),
             200, [True, b"slow"]),
            (http_request_bytes("POST", "/ruleset/rpcall", b"return 'fast'",
                                [("Content-Type", RPC_TYPE)]), 200, [True, b"fast"]),
            (http_request_bytes("GET", "/stats?nobanner=1&server=0"), 200, None),
            (http_request_bytes("POST", "/ruleset/invoke", b"_G.piped = true"), 200, None),
            (http_request_bytes("GET", "/nope"), 404, None),
            (b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\n_G.ch\r\n9\r\nunked = 1\r\n0\r\n\r\n", 200, None),
            (http_request_bytes("GET", "/ruleset/gc"), 405, None),
            (http_request_bytes("POST", "/ruleset/rpcall",
                                b"return _G.piped, _G.chunked", [("Content-Type", RPC_TYPE)]),
             200, [True, True, 1]),
        ]
        stream = b"".join(r[0] for r in requests)
        for how in ("at once", "in pieces"):
            with connect(self.api) as s:
                if how == "at once":
                    s.sendall(stream)
                else:
                    for i in range(0, len(stream), 7):
                        s.sendall(stream[i:i + 7])
                for raw, status, values in requests:
                    r = read_reply(s)
                    self.assertIsNotNone(r, (how, raw))
                    self.assertEqual(r.status, status, (how, raw, r))
                    if values is not None:
                        self.assertEqual(lua_values(r.body), values, how)
                self.assertTrue(is_open(s, 0.2), "keep-alive after the pipeline")
        rpcall(self.api, "_G.piped = nil; _G.chunked = nil")

    def test_expect_100_continue(self):
        with connect(self.api) as s:
            s.sendall(b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n"
                      b"Expect: 100-continue\r\n\r\n")
            s.settimeout(5)
            self.assertEqual(recv_exact(s, 25), b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"_G.cont = 1")
            s.sendall(b" ")
            self.assertEqual(read_reply(s).status, 200)

    # -- the API and the proxy port

    def test_api_not_reachable_through_proxy(self):
        api = self.api
        with connect(self.node.port) as s:
            _, rep = socks5_handshake(s, "127.0.0.1", api)
            self.assertEqual(rep, 2, "SOCKS5 to the API's address is not allowed")
        with connect(self.node.port) as s:
            _, rep = socks5_handshake(s, "localhost", api)
            self.assertNotEqual(rep, 0, "SOCKS5 to localhost:API is refused")
        with connect(self.node.port) as s:
            s.sendall(socks4_request(api))
            self.assertEqual(recv_exact(s, 8)[1], 0x5b, "SOCKS4 to the API is rejected")
        # The ruleset's mapping is the way in.
        with connect(self.node.port) as s:
            _, rep = socks5_handshake(s, "api.neosocksd.internal", 80)
            self.assertEqual(rep, 0)
            s.sendall(http_request_bytes("POST", "/ruleset/rpcall", b"return _G.NODE",
                                         [("Content-Type", RPC_TYPE)]))
            self.assertEqual(lua_values(read_reply(s).body), [True, b"A"])
        # curl, as a user would try it.
        rc, out, err = curl("--socks5", f"127.0.0.1:{self.node.port}",
                            f"http://127.0.0.1:{api}/healthy", timeout=10)
        self.assertNotEqual(rc, 0, "curl reached the API through the proxy")
        rc, out, err = curl("-X", "POST", "--socks5-hostname", f"127.0.0.1:{self.node.port}",
                            "-H", f"Content-Type: {RPC_TYPE}", "--data-binary", "return 1+1",
                            f"http://{API_NAME}/ruleset/rpcall", timeout=10)
        self.assertEqual((rc, out), (0, b"return true,2"), err)

    def test_api_not_reachable_without_ruleset(self):
        node = self.start_proxy(api=True, name="api-no-ruleset")
        with connect(node.port) as s:
            _, rep = socks5_handshake(s, "127.0.0.1", node.api_port)
            self.assertEqual(rep, 2)
        with connect(node.port) as s:
            _, rep = socks5_handshake(s, "127.0.0.1", self.api)
            self.assertEqual(rep, 0, "another node's API is just a host")
        # Without -r the ruleset endpoints say so.
        r = api_post(node.api_port, "/ruleset/invoke", "return 1")
        self.assertEqual((r.status, r.text), (500, "ruleset is not enabled\n"))
        self.assertEqual(api_call(node.api_port, "GET", "/stats").status, 200)

    def routines_alive(self):
        line = [l for l in api_call(self.api, "GET", "/stats").text.splitlines()
                if l.startswith("Routines")][0]
        return int(line.split(":")[1].split()[0])

    def test_runaway_lua_does_not_block_the_proxy(self):
        # The instruction limit ends it: 500, and the proxy serves on.
        t0 = time.monotonic()
        r = api_post(self.api, "/ruleset/invoke", "while true do end", timeout=30)
        self.assertEqual(r.status, 500)
        self.assertIn("instruction limit", r.text)
        self.assertLess(time.monotonic() - t0, 20)
        self.assert_routes()
        # A routine that waits long holds only its own connection.
        with connect(self.api) as slow:
            slow.sendall(http_request_bytes("POST", "/ruleset/rpcall", b"await.sleep(30)",
                                            [("Content-Type", RPC_TYPE)]))
            t0 = time.monotonic()
            self.assert_routes()
            self.assertEqual(api_call(self.api, "GET", "/healthy").status, 200)
            self.assertLess(time.monotonic() - t0, 2)
            self.assertTrue(wait_until(lambda: self.routines_alive() >= 1, 2),
                            "the sleeping routine shows in /stats")
        # Hanging up cancels it.
        self.assertTrue(wait_until(lambda: self.routines_alive() == 0, 5),
                        "the routine ended with its connection")

    def test_stats_count_dns_queries(self):
        def dns():
            line = [l for l in api_call(self.api, "GET", "/stats").text.splitlines()
                    if l.startswith("DNS queries")][0]
            return int(line.split(":")[1])
        before = dns()
        with connect(self.node.port) as s:
            _, rep = socks5_handshake(s, "localhost", self.origin.port)
            self.assertEqual(rep, 0)
        self.assertGreater(dns(), before)

    def test_config_names(self):
        # neosocksd's name for --api is "restapi"; rulesocks' own scripts read "api".
        addr = f"127.0.0.1:{self.api}".encode()
        self.assertEqual(rpcall(self.api, "local c = neosocksd.config() return c.restapi, c.api"),
                         [True, addr, addr])


class DefaultRulesetTest(IntegrationCase):
    """lua/ruleset.lua, the shipped default, maps api.neosocksd.internal:80 to the API
    and refuses the API's own address."""

    def test_default_ruleset_maps_the_api_name(self):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lua",
                            "ruleset.lua")
        node = self.start_proxy("-r", path, api=True, name="api-default-ruleset")
        with connect(node.port) as s:
            _, rep = socks5_handshake(s, "api.neosocksd.internal", 80)
            self.assertEqual(rep, 0, "api.neosocksd.internal:80 is mapped")
            s.sendall(http_request_bytes("POST", "/ruleset/rpcall", b"return 'mapped'",
                                         [("Content-Type", RPC_TYPE)]))
            self.assertEqual(lua_values(read_reply(s).body), [True, b"mapped"])
        for host in ("127.0.0.1", "localhost"):
            with connect(node.port) as s:
                _, rep = socks5_handshake(s, host, node.api_port)
                self.assertEqual(rep, 2, host)


# --------------------------------------------------------------------------
# Slow and stalled API clients
# --------------------------------------------------------------------------

class TimeoutTest(IntegrationCase):
    """-t (the half-open timeout) bounds API requests too, as in neosocksd."""
    TIMEOUT = 2.0

    def setUp(self):
        self.node = start_node(self, "api-timeout", ruleset_text("T"), "-t", self.TIMEOUT)
        self.api = self.node.api_port

    def test_stalled_clients_are_closed_others_served(self):
        t0 = time.monotonic()
        idle = connect(self.api)
        partial = connect(self.api)
        partial.sendall(b"GET /healthy HTTP/1.1\r\nHost: x\r\n")
        body = connect(self.api)
        body.sendall(b"POST /ruleset/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                     b"-- only part")
        kept = connect(self.api)
        kept.sendall(http_request_bytes("GET", "/healthy"))
        self.assertEqual(read_reply(kept).status, 200)
        slowloris = connect(self.api)
        slowloris.sendall(b"GET /healthy HTTP/1.1\r\n")
        socks = [idle, partial, body, kept, slowloris]
        try:
            # While they stall, others are served at once.
            stop = time.monotonic() + self.TIMEOUT + 0.5
            dripped = 0
            while time.monotonic() < stop:
                t = time.monotonic()
                self.assertEqual(api_call(self.api, "GET", "/healthy", timeout=2).status, 200)
                self.assertLess(time.monotonic() - t, 0.5)
                # A head that trickles in, a byte at a time, never ends in time.
                slowloris.sendall(b"X-Slow: a"[dripped % 9:dripped % 9 + 1])
                dripped += 1
                time.sleep(0.1)
            # A partial request gets 408; an idle connection is simply closed.
            for s in (partial, body, slowloris):
                s.settimeout(self.TIMEOUT * 2)
                try:
                    r = read_reply(s)
                except socket.timeout:
                    self.fail(f"no 408 within {self.TIMEOUT * 3} s of the request's start")
                self.assertIsNotNone(r)
                self.assertEqual(r.status, 408)
            for name, s in zip(("idle", "partial", "body", "kept", "slowloris"), socks):
                took = wait_closed(s, self.TIMEOUT * 3)
                self.assertIsNotNone(took, f"{name} connection still open")
            self.assertLess(time.monotonic() - t0, self.TIMEOUT * 4)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(api_call(self.api, "GET", "/healthy").status, 200)

    def test_connection_limit(self):
        # 256 API connections at most; more are answered 503 at once.
        held = []
        try:
            for _ in range(256):
                held.append(connect(self.api))
            wait_until(lambda: False, 0.2)
            extra = api_call(self.api, "GET", "/healthy")
            self.assertEqual(extra.status, 503)
            self.assertIn("retry", extra.text)
            # The proxy is not affected.
            with connect(self.node.port) as s:
                s.sendall(b"\x05\x01\x00")
                self.assertEqual(recv_exact(s, 2), b"\x05\x00")
        finally:
            for h in held:
                h.close()
        self.assertTrue(wait_until(
            lambda: api_call(self.api, "GET", "/healthy").status == 200, 5), "served again")

    def test_reader_that_stops_reading_is_closed(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(IO_TIMEOUT)
        s.connect(("127.0.0.1", self.api))
        size = 32 * MiB
        with s:
            # Random bytes: the reply neither compresses nor fits in socket buffers. A 64 KiB
            # random block repeated is as incompressible (deflate looks back 32 KiB at most) and
            # quick to build even under ASan on a busy machine, where building 32 MiB a double
            # at a time kept the loop from answering /healthy in time.
            block = 64 * 1024
            s.sendall(http_request_bytes(
                "POST", "/ruleset/rpcall",
                f"local t = {{}} for i = 1, {block // 8} do t[i] = string.pack('<d', math.random()) "
                f"end return table.concat(t):rep({size // block})".encode(),
                [("Content-Type", RPC_TYPE)]))
            time.sleep(self.TIMEOUT * 2.5)
            # Meanwhile the server answers others.
            self.assertEqual(api_call(self.api, "GET", "/healthy").status, 200)
            got = len(recv_all(s))
            self.assertLess(got, size, "the stalled response was abandoned")
        self.assertEqual(rpcall(self.api, "return 'still fine'"), [True, b"still fine"])


# --------------------------------------------------------------------------
# Hot reload under load
# --------------------------------------------------------------------------

STATS_EXTRA = r"""
local pass_resolve = ruleset.resolve
function ruleset.resolve(addr)
    if addr:find("^hang%.test:") then await.sleep(60) end
    if addr:find("^dns%.test:") then
        local ip = await.resolve(addr:match("^dns%.test:(%d+)$") == "1" and "localhost"
                                 or "nonexistent.invalid")
        return ip and ip .. ":1" or nil
    end
    return pass_resolve(addr)
end
"""

# neosocksd.stats() as integers, read over RPC.
STATS_FIELDS = ("num_request", "num_success", "num_reject_ruleset", "num_reject_timeout",
                "num_reject_upstream", "num_api_request", "num_api_success", "num_object",
                "num_dns_query", "num_dns_success")


class StatsFieldsTest(IntegrationCase):
    """neosocksd.stats() has the fields of neosocksd 2026-07, counted as neosocksd does."""

    def setUp(self):
        # One VM: neosocksd.stats() is the counters of the worker that runs it.
        self.node = start_node(self, "stats", ruleset_text("S", extra=STATS_EXTRA), "-t", "1",
                               workers=1)

    def stats(self):
        fields = ", ".join(f"math.tointeger(s.{f}) or -1" for f in STATS_FIELDS)
        values = rpcall(self.node.api_port, f"local s = neosocksd.stats() return {fields}")
        self.assertIs(values[0], True, values)
        return dict(zip(STATS_FIELDS, values[1:]))

    def socks5(self, host, port):
        with connect(self.node.port, timeout=IO_TIMEOUT) as s:
            return socks5_handshake(s, host, port)[1]

    def test_new_fields(self):
        before = self.stats()
        for f in STATS_FIELDS:
            self.assertGreaterEqual(before[f], 0, f"{f} is missing or not an integer: {before}")
        self.assertGreater(before["num_object"], 100, "Lua objects alive")
        # A request that times out while routing: a timeout, not an upstream failure.
        self.assertEqual(self.socks5("hang.test", 80), 0x06)  # TTL expired
        s = self.stats()
        self.assertEqual(s["num_reject_timeout"] - before["num_reject_timeout"], 1, s)
        self.assertEqual(s["num_reject_upstream"], before["num_reject_upstream"], s)
        self.assertEqual(s["num_request"] - before["num_request"], 1, s)
        # DNS: a name that resolves, one that does not.
        self.socks5("dns.test", 1)
        self.socks5("dns.test", 2)
        s2 = self.stats()
        self.assertEqual(s2["num_dns_query"] - s["num_dns_query"], 2, s2)
        self.assertEqual(s2["num_dns_success"] - s["num_dns_success"], 1, s2)
        # API successes: each rpcall above and a /healthy; a 404 is not one.
        api = self.node.api_port
        self.assertEqual(api_call(api, "GET", "/healthy").status, 200)
        self.assertEqual(api_call(api, "GET", "/no/such/endpoint").status, 404)
        s3 = self.stats()
        self.assertEqual(s3["num_api_request"] - s2["num_api_request"], 3, s3)  # and this rpcall
        self.assertEqual(s3["num_api_success"] - s2["num_api_success"], 2, s3)

    def test_api_requests_are_not_proxy_requests(self):
        before = self.stats()
        api = self.node.api_port
        for _ in range(5):
            self.assertEqual(api_call(api, "GET", "/healthy").status, 200)
        # Through the proxy to the API by its mapped name: one proxy request
        # (the tunnel), however many API requests go through it.
        with connect(self.node.port, timeout=IO_TIMEOUT) as s:
            _, rep = socks5_handshake(s, "api.neosocksd.internal", 80)
            self.assertEqual(rep, 0)
            for _ in range(3):
                s.sendall(http_request_bytes("GET", "/healthy"))  # keep-alive: HTTP/1.1
                self.assertEqual(read_reply(s).status, 200)
        s = self.stats()
        self.assertEqual(s["num_request"] - before["num_request"], 1, s)
        self.assertEqual(s["num_api_request"] - before["num_api_request"], 1 + 5 + 3, s)


class HotReloadTest(IntegrationCase):
    CLIENTS = 100
    DURATION = 3.0
    UPDATES = 10

    def test_reload_under_load(self):
        origin = Origin().start()  # served to every client
        self.addCleanup(origin.stop)
        denied = Origin().start()  # refused by the strict rulesets
        self.addCleanup(denied.stop)
        node = start_node(self, "api-reload", ruleset_text("R"), loglevel=3)
        versions = []
        for i in range(self.UPDATES):
            strict = i % 3 == 1
            extra = f"\n_G.DENY_PORT = {denied.port}\n" if strict else "\n_G.DENY_PORT = nil\n"
            if i % 2 == 0:
                # Routing that waits: updates land while routines are suspended in it.
                extra += ("local direct = ruleset.route\n"
                          "function ruleset.route(addr) await.sleep(0.002) "
                          "return direct(addr) end\n")
            versions.append(ruleset_text("R", f"v{i}", extra))

        lock = threading.Lock()
        tally = {"attempts": 0, "ok": 0, "rejected": 0}
        errors = []
        stop_at = time.monotonic() + self.DURATION

        def client(n):
            target = denied.port if n % 10 == 0 else origin.port
            while time.monotonic() < stop_at:
                try:
                    with lock:
                        tally["attempts"] += 1
                    rep, reply = socks5_get(node.port, target)
                    if rep == 0 and reply is not None and reply.status == 200 \
                            and reply.body == b"hello from origin\n":
                        with lock:
                            tally["ok"] += 1
                    elif rep == 2 and target == denied.port:
                        with lock:
                            tally["rejected"] += 1
                    else:
                        errors.append(f"client {n} -> {target}: REP {rep}, {reply!r}")
                        return
                except Exception as e:  # reported below
                    errors.append(f"client {n} -> {target}: {e!r}")
                    return

        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(self.CLIENTS)]
        for t in threads:
            t.start()
        update_results = []
        for text in versions:
            time.sleep(self.DURATION / (self.UPDATES + 1))
            rc, out, err = curl("-sS", "-w", "%{http_code}", "-o", "/dev/null",
                                "--data-binary", text,
                                f"http://127.0.0.1:{node.api_port}/ruleset/update", timeout=10)
            update_results.append((rc, out, err))
        for t in threads:
            t.join(self.DURATION + 30)
        self.assertFalse(any(t.is_alive() for t in threads), "clients did not finish")
        if os.environ.get("RULESOCKS_TEST_VERBOSE"):
            print(f"\nhot reload: {tally}", file=sys.stderr)
        self.assertEqual(errors, [])
        self.assertEqual(update_results, [(0, b"200", "")] * self.UPDATES)
        self.assertEqual(rpcall(node.api_port, "return _G.VERSION"),
                         [True, f"v{self.UPDATES - 1}".encode()])
        self.assertGreater(tally["ok"], self.CLIENTS, "each client got through at least once")
        self.assertGreater(tally["rejected"], 0, "some requests met a strict ruleset")

        stats = stats_requests(api_call(node.api_port, "GET", "/stats").text)
        self.assertEqual(stats["requests"], tally["attempts"], stats)
        self.assertEqual(stats["success"], tally["ok"], stats)
        self.assertEqual(stats["rejected"], tally["rejected"], stats)
        self.assertEqual(stats["dial_failed"] + stats["bad"], 0, stats)
        self.assertEqual(stats["requests"],
                         stats["success"] + stats["rejected"] + stats["dial_failed"]
                         + stats["bad"])


# --------------------------------------------------------------------------
# RPC between nodes
# --------------------------------------------------------------------------

# Every marshal-able kind of value, built the same way on both ends.
VALUES_LUA = r"""
local bytes = {}
for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
local all = table.concat(bytes)
return all, "", math.mininteger, math.maxinteger, 0, -1, 2^53, 1.5, -0.0, 0.1, 1e300,
    1/0, -1/0, 0/0, true, false, nil,
    {1, 2, {3, {4, {5}}}, x = {y = all}, [true] = "t", [1.5] = "f", [-7] = "neg", ["1"] = "s"},
    {}, math.pi, nil
"""

VALUES_COUNT = 21

# Lua on the caller: deep equality with NaN equal to itself and -0.0 apart from 0.0.
SAME_LUA = r"""
local function same(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) == "number" then
        if math.type(a) ~= math.type(b) then return false end
        if a ~= a then return b ~= b end
        if a == 0 and math.type(a) == "float" then return 1/a == 1/b end
        return a == b
    end
    if type(a) ~= "table" then return a == b end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
end
"""


class FakeApiPeer:
    """A one-shot API on loopback that records the request and sends a canned reply.

    framing: None (the given headers say it all), "chunked" (the body is sent in
    chunks) or "eof" (no length; the connection closes after the body)."""

    def __init__(self, status, headers, body, framing=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(IO_TIMEOUT)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = f"HTTP/1.1 {status} X\r\nContent-Type: {RPC_TYPE}\r\n".encode()
        for k, v in headers:
            self.reply += f"{k}: {v}\r\n".encode()
        self.reply += b"\r\n"
        if framing == "chunked":
            for i in range(0, len(body), 5):
                part = body[i:i + 5]
                self.reply += f"{len(part):x}\r\n".encode() + part + b"\r\n"
            self.reply += b"0\r\n\r\n"
        else:
            self.reply += body
        self.request_line, self.headers, self.body, self.error = None, {}, b"", None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT)
                status, self.headers, self.body, raw = read_http_response(conn, 1 << 20)
                self.request_line = raw.split(b"\r\n", 1)[0].decode()
                conn.sendall(self.reply)
        except Exception as e:  # reported through self.error
            self.error = e
        finally:
            self.sock.close()

    def join(self):
        self.thread.join(IO_TIMEOUT)
        if self.error:
            raise self.error

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(IO_TIMEOUT)
        return False


class RpcTest(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        # One VM: /ruleset/invoke on --workers 2 would run a fire-and-forget
        # neosocksd.invoke in each worker (test_neosocksd_invoke_fire_and_forget counts them).
        cls.a = start_node(cls, "node-a", ruleset_text("A"), cls=True, workers=1)
        cls.b = start_node(cls, "node-b", ruleset_text("B"), cls=True, http=True)
        cls.c = start_node(cls, "node-c", ruleset_text("C"), cls=True)

    def api_addr(self, node):
        return f"127.0.0.1:{node.api_port}"

    def invoke_from_a(self, code, addr, *proxies, timeout=IO_TIMEOUT):
        """Runs await.invoke(code, addr, proxies...) on node A; returns
        (ok, elapsed seconds, values...) as A saw them: values are result()'s on
        success, else the error string."""
        args = ", ".join(lua_quote(x) for x in (code, addr, *proxies))
        script = f"""
            local t0 = neosocksd.now()
            local ok, result = await.invoke({args})
            local dt = neosocksd.now() - t0
            if not ok then return false, dt, result end
            return true, dt, result()
        """
        values = rpcall(self.a.api_port, script, timeout)
        self.assertIs(values[0], True, values)
        return values[1:]

    def test_round_trip_every_type(self):
        values = self.invoke_from_a(VALUES_LUA, self.api_addr(self.b))
        ok, dt, remote_ok, *got = values
        self.assertIs(ok, True, values)
        self.assertIs(remote_ok, True, values)
        self.assertEqual(len(got), VALUES_COUNT)
        allb = bytes(range(256))
        nested = got[17]
        self.assertEqual(got[:11], [allb, b"", -2 ** 63, 2 ** 63 - 1, 0, -1, 2.0 ** 53, 1.5, -0.0,
                                    0.1, 1e300])
        self.assertIsInstance(got[6], float)
        self.assertEqual(math.copysign(1, got[8]), -1.0, "-0.0 keeps its sign")
        self.assertEqual(got[11:14][:2], [math.inf, -math.inf])
        self.assertTrue(math.isnan(got[13]))
        self.assertEqual(got[14:17], [True, False, None])
        self.assertEqual(nested.seq()[:2], [1, 2])
        self.assertEqual(nested[3], {1: 3, 2: {1: 4, 2: {1: 5}}})
        self.assertEqual(nested[b"x"], {b"y": allb})
        self.assertEqual((nested[LuaTable.TRUE], nested[1.5], nested[-7], nested[b"1"]),
                         (b"t", b"f", b"neg", b"s"))
        self.assertEqual((got[18], got[19], got[20]), (LuaTable(), math.pi, None))
        # And on the Lua side, against the same values computed locally.
        script = SAME_LUA + f"""
            local code = {lua_quote(VALUES_LUA)}
            local want = table.pack(true, assert(load(code))())
            local ok, result = await.invoke(code, {lua_quote(self.api_addr(self.b))})
            assert(ok, result)
            local got = table.pack(result())
            if got.n ~= want.n then return "count " .. got.n .. " ~= " .. want.n end
            for i = 1, want.n do
                if not same(got[i], want[i]) then return "value #" .. i .. " differs" end
            end
            -- The other way: the values as arguments in the request's code.
            local ok2, r2 = await.invoke("return " .. marshal(table.unpack(want, 2, want.n)),
                                         {lua_quote(self.api_addr(self.c))})
            assert(ok2, r2)
            local got2 = table.pack(r2())
            for i = 1, want.n do
                if not same(got2[i], want[i]) then return "request value #" .. i .. " differs" end
            end
            return "same"
        """
        self.assertEqual(rpcall(self.a.api_port, script), [True, b"same"])

    def test_large_payloads_both_ways(self):
        # 1 MiB of incompressible-ish bytes out, 2 MiB back: compressed on the wire.
        script = f"""
            local parts = {{}}
            for i = 1, 65536 do parts[i] = string.pack("<I4", (i * 2654435761) & 0xffffffff) end
            local s = table.concat(parts) .. string.rep("z", 786432)
            local ok, r = await.invoke("local s = " .. marshal(s) .. " return #s, s .. s",
                                       {lua_quote(self.api_addr(self.b))})
            assert(ok, r)
            local ok2, n, back = r()
            assert(ok2, n)
            return n, back == s .. s
        """
        self.assertEqual(rpcall(self.a.api_port, script), [True, 1048576, True])

    def test_remote_errors(self):
        for code, text in (("error('remote boom')", b"remote boom"),
                           ("this is not lua", b"syntax error"),
                           ("return print", b"function"),
                           ("await.sleep(0.01); error('after a yield')", b"after a yield")):
            ok, dt, remote_ok, msg = self.invoke_from_a(code, self.api_addr(self.b))
            self.assertIs(ok, True, code)
            self.assertIs(remote_ok, False, code)
            self.assertIn(text, msg, code)

    def test_remote_runs_in_its_own_environment(self):
        ok, dt, remote_ok, node, scratch = self.invoke_from_a(
            "scratch = 'set'; return NODE, _G.scratch", self.api_addr(self.c))
        self.assertEqual((ok, remote_ok, node, scratch), (True, True, b"C", None))

    def test_dead_peer_fails_promptly(self):
        dead = f"127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        ok, dt, msg = self.invoke_from_a("return 1", dead)
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertIs(ok, False)
        self.assertIsInstance(msg, bytes)
        self.assertIn(b"refused", msg.lower())
        self.assertLess(dt, 2.0)
        # A dead hop in the chain likewise.
        ok, dt, msg = self.invoke_from_a("return 1", API_NAME, f"socks5://{dead}")
        self.assertIs(ok, False)
        self.assertLess(dt, 2.0)
        # Not an API at all: the peer's proxy port.
        ok, dt, msg = self.invoke_from_a("return 1", f"127.0.0.1:{self.b.port}")
        self.assertIs(ok, False)
        self.assertLess(dt, 2.0)
        # A bad address or proxy URI is an error as well.
        ok, dt, msg = self.invoke_from_a("return 1", "not an address")
        self.assertIs(ok, False)
        ok, dt, msg = self.invoke_from_a("return 1", API_NAME, "gopher://127.0.0.1:1")
        self.assertIs(ok, False)

    def test_invoke_through_peer_proxy(self):
        # A -> B's proxy -> api.neosocksd.internal:80, which B maps to its API.
        for scheme, port in (("socks5", self.b.port), ("socks4a", self.b.port),
                             ("http", self.b.http_port)):
            ok, dt, remote_ok, node = self.invoke_from_a("return NODE", API_NAME,
                                                         f"{scheme}://127.0.0.1:{port}")
            self.assertEqual((ok, remote_ok, node), (True, True, b"B"), scheme)

    def test_invoke_through_three_node_chain(self):
        # A -> B's proxy -> C's proxy -> C's API: proxies are given last hop first.
        ok, dt, remote_ok, node = self.invoke_from_a(
            "return NODE", API_NAME, f"socks5://127.0.0.1:{self.c.port}",
            f"socks5://127.0.0.1:{self.b.port}")
        self.assertEqual((ok, remote_ok, node), (True, True, b"C"))
        ok, dt, remote_ok, node, allb = self.invoke_from_a(
            "local b = {} for i = 0, 255 do b[#b + 1] = string.char(i) end "
            "return NODE, table.concat(b)", API_NAME,
            f"socks4a://127.0.0.1:{self.c.port}", f"http://127.0.0.1:{self.b.http_port}")
        self.assertEqual((ok, remote_ok, node, allb), (True, True, b"C", bytes(range(256))))
        # Through B's proxy to C's API by address: B passes it through, C's
        # API accepts it (only the proxy's own API is protected).
        ok, dt, remote_ok, node = self.invoke_from_a(
            "return NODE", self.api_addr(self.c), f"socks5://127.0.0.1:{self.b.port}")
        self.assertEqual((ok, remote_ok, node), (True, True, b"C"))
        # But B's own API is not reachable by address through B's proxy.
        ok, dt, msg = self.invoke_from_a("return NODE", self.api_addr(self.b),
                                         f"socks5://127.0.0.1:{self.b.port}")
        self.assertIs(ok, False)

    def test_invoke_goes_through_the_proxy_option(self):
        # -x is the way out of a node: RPC takes it, then the hops await.invoke names.
        text = ruleset_text("D")
        d = start_node(self, "node-d", text, "-x", f"socks5://127.0.0.1:{self.b.port}")
        script = """
            local ok, r = await.invoke("return NODE", %s)
            if not ok then return "failed", r end
            return r()
        """
        self.assertEqual(rpcall(d.api_port, script % lua_quote(API_NAME)), [True, True, b"B"])
        script_via = """
            local ok, r = await.invoke("return NODE", %s, %s)
            if not ok then return "failed", r end
            return r()
        """
        self.assertEqual(rpcall(d.api_port, script_via % (
            lua_quote(API_NAME), lua_quote(f"socks5://127.0.0.1:{self.c.port}"))),
            [True, True, b"C"])

    def test_spaced_proxy_list_serves_proxy_and_rpc(self):
        # -x "hop1, hop2" (a space after the comma) is one chain for proxying and
        # for RPC alike: D -> B's proxy -> C's proxy -> C's API.
        origin = self.start_class_origin()
        spaced = f"socks5://127.0.0.1:{self.b.port}, socks5://127.0.0.1:{self.c.port}"
        d = start_node(self, "node-d", ruleset_text("D"), "-x", spaced)
        marks = [len(n.log_text()) for n in (self.b, self.c)]
        rep, reply = socks5_get(d.port, origin.port)
        self.assertEqual(rep, 0)
        self.assertEqual(reply.status, 200)
        self.assertTrue(wait_until(lambda: f"-> 127.0.0.1:{self.c.port}" in
                                   self.b.log_text()[marks[0]:], 2), "B carried it to C")
        self.assertTrue(wait_until(lambda: f"-> 127.0.0.1:{origin.port}" in
                                   self.c.log_text()[marks[1]:], 2), "C carried it to the origin")
        script = """
            local ok, r = await.invoke("return NODE", %s)
            if not ok then return "failed", r end
            return r()
        """
        self.assertEqual(rpcall(d.api_port, script % lua_quote(API_NAME)), [True, True, b"C"])
        self.addCleanup(rpcall, self.c.api_port, "_G.spaced = nil")
        r = api_post(d.api_port, "/ruleset/invoke",
                     f"neosocksd.invoke('_G.spaced = true', {lua_quote(API_NAME)})")
        self.assertEqual(r.status, 200, r.text)
        self.assertTrue(wait_until(
            lambda: rpcall(self.c.api_port, "return _G.spaced") == [True, True], 5, 0.05),
            "neosocksd.invoke went through both hops to C")

    def test_nested_invocations(self):
        # A asks B to ask C: await.invoke inside a remote routine.
        inner = "return NODE"
        middle = (f"local ok, r = await.invoke({lua_quote(inner)}, "
                  f"{lua_quote(self.api_addr(self.c))}) assert(ok, r) return NODE, r()")
        ok, dt, remote_ok, node_b, inner_ok, node_c = self.invoke_from_a(middle,
                                                                          self.api_addr(self.b))
        self.assertEqual((ok, remote_ok, node_b, inner_ok, node_c), (True, True, b"B", True, b"C"))

    def test_concurrent_invocations(self):
        script = f"""
            local n, done, results = 20, 0, {{}}
            for i = 1, n do
                neosocksd.async(function(ok, v) done = done + 1; results[i] = ok and v end,
                    function()
                        local ok, r = await.invoke("await.sleep(0.05) return " .. i,
                                                   {lua_quote(self.api_addr(self.b))})
                        assert(ok, r)
                        local ok2, v = r()
                        return v
                    end)
            end
            while done < n do await.sleep(0.01) end
            local sum = 0
            for i = 1, n do sum = sum + results[i] end
            return sum
        """
        t0 = time.monotonic()
        self.assertEqual(rpcall(self.a.api_port, script), [True, 210])
        self.assertLess(time.monotonic() - t0, 3.0, "invocations run concurrently")

    def test_wire_format_with_a_neosocksd_style_peer(self):
        code = "return " + "1 + " * 200 + "1"  # large enough to be sent deflated
        # neosocksd's marshal: \\ddd escapes, 0/0, hex floats, trailing commas.
        neo_reply = (b'return true,"a\\000b\\n",0/0,1/0,-1/0,-0x1.8p+1,0x7fffffffffffffff,'
                     b'{1,2,["k"]="v",},nil')
        cases = [
            ([("Content-Length", str(len(neo_reply)))], neo_reply, None),
            ([("Content-Encoding", "deflate"), ("Transfer-Encoding", "chunked")],
             zlib.compress(neo_reply), "chunked"),
            ([("Content-Encoding", "gzip")], gzip.compress(neo_reply), "eof"),
        ]
        script = """
            local ok, r = await.invoke(%s, %s)
            if not ok then return "failed", r end
            return r()
        """
        for headers, body, framing in cases:
            with FakeApiPeer(200, headers, body, framing) as peer:
                values = rpcall(self.a.api_port, script % (lua_quote(code),
                                                           lua_quote(peer.addr)))
                peer.join()
            self.assertEqual(peer.request_line, "POST /ruleset/rpcall HTTP/1.1")
            self.assertEqual(peer.headers.get("content-type"), RPC_TYPE)
            self.assertEqual(peer.headers.get("content-encoding"), "deflate")
            self.assertEqual(zlib.decompress(peer.body), code.encode())
            ok, remote_ok, s_, nan, inf, ninf, f, big, t, last = values
            self.assertEqual((ok, remote_ok, s_), (True, True, b"a\x00b\n"), framing)
            self.assertTrue(math.isnan(nan))
            self.assertEqual((inf, ninf, f, big), (math.inf, -math.inf, -3.0, 2 ** 63 - 1))
            self.assertEqual((t, last), ({1: 1, 2: 2, b"k": b"v"}, None))
        # A small request goes plain; error statuses and broken replies are failures,
        # and a reply is data: it cannot run code or reach globals.
        for status, body, expect in ((500, b"remote says no\n",
                                      [True, b"failed", b"HTTP 500: remote says no"]),
                                     (200, b"return (", [True, b"failed", b"unexpected symbol"]),
                                     (200, b"return os.exit()", [True, False, b"global 'os'"])):
            with FakeApiPeer(status, [("Content-Length", str(len(body)))], body) as peer:
                values = rpcall(self.a.api_port, script % (lua_quote("return 1"),
                                                           lua_quote(peer.addr)))
                peer.join()
            self.assertNotIn("content-encoding", peer.headers)
            self.assertEqual(peer.body, b"return 1")
            self.assertEqual(values[:2], expect[:2], body)
            self.assertIn(expect[2], values[2], body)

    def test_http_connect_to_api_refused(self):
        with connect(self.b.http_port) as s:
            s.sendall(f"CONNECT 127.0.0.1:{self.b.api_port} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{self.b.api_port}\r\n\r\n".encode())
            status = read_reply(s).status
            self.assertNotEqual(status, 200)
            self.assertGreaterEqual(status, 400)
        with connect(self.b.http_port) as s:
            s.sendall(b"CONNECT api.neosocksd.internal:80 HTTP/1.1\r\n"
                      b"Host: api.neosocksd.internal:80\r\n\r\n")
            status, _, _, _ = read_http_response(s)
            self.assertIn(" 200", status)
            s.sendall(http_request_bytes("POST", "/ruleset/rpcall", b"return NODE",
                                         [("Content-Type", RPC_TYPE)]))
            self.assertEqual(lua_values(read_reply(s).body), [True, b"B"])

    def test_neosocksd_invoke_fire_and_forget(self):
        self.addCleanup(rpcall, self.b.api_port, "_G.fired = nil")
        self.addCleanup(rpcall, self.c.api_port, "_G.fired = nil")
        script = f"""
            neosocksd.invoke("_G.fired = (_G.fired or 0) + 1", {lua_quote(self.api_addr(self.b))})
            neosocksd.invoke("_G.fired = 'via chain'", {lua_quote(API_NAME)},
                             "socks5://127.0.0.1:{self.c.port}", "socks5://127.0.0.1:{self.b.port}")
            neosocksd.invoke("_G.fired = 'lost'", "127.0.0.1:{free_port()}")
            return "sent"
        """
        # From /ruleset/invoke (not a routine that waits): returns at once.
        r = api_post(self.a.api_port, "/ruleset/invoke", script)
        self.assertEqual(r.status, 200, r.text)
        self.assertTrue(wait_until(lambda: rpcall(self.b.api_port, "return _G.fired") == [True, 1],
                                   5, 0.05), "B ran the code")
        self.assertTrue(wait_until(
            lambda: rpcall(self.c.api_port, "return _G.fired") == [True, b"via chain"], 5, 0.05),
            "C ran the code sent through B and C")
        # A lost invocation is only logged; A is fine.
        self.assertEqual(rpcall(self.a.api_port, "return 'ok'"), [True, b"ok"])
        # From an rpcall routine, and the arguments are checked.
        ok, msg = rpcall(self.a.api_port, "neosocksd.invoke('x')")
        self.assertIs(ok, False)
        ok, msg = rpcall(self.a.api_port, "neosocksd.invoke('x', 'nope')")
        self.assertIs(ok, False, "an invalid address is refused at once")


# --------------------------------------------------------------------------
# A ticking ruleset doing RPC while the proxy serves
# --------------------------------------------------------------------------

TICK_RULESET = r"""
_G.ticks, _G.rpc_ok, _G.rpc_fail = 0, 0, 0
neosocksd.setinterval(0.1)
function ruleset.tick(now)
    _G.ticks = _G.ticks + 1
    if not _G.PEER then return end
    neosocksd.async(function(ok, err)
        if not ok then _G.rpc_fail = _G.rpc_fail + 1; _G.last_error = tostring(err) end
    end, function()
        local ok, r = await.invoke("_G.ticks = (_G.ticks or 0) + 1 return _G.ticks", _G.PEER)
        assert(ok, r)
        local ok2, n = r()
        assert(ok2, n)
        _G.rpc_ok = _G.rpc_ok + 1
    end)
end
"""


class TickTest(IntegrationCase):
    def test_tick_rpc_keeps_proxy_serving(self):
        origin = Origin().start()
        self.addCleanup(origin.stop)
        peer = start_node(self, "tick-peer", ruleset_text("P"), loglevel=4)
        text = ruleset_text("T", extra=TICK_RULESET)
        node = start_node(self, "tick-node", text, loglevel=4)
        self.assertEqual(api_post(node.api_port, "/ruleset/invoke",
                                  f"_G.PEER = '127.0.0.1:{peer.api_port}'").status, 200)
        t0 = time.monotonic()
        size = 4 * MiB
        results, lock = [], threading.Lock()

        def download(n):
            while time.monotonic() - t0 < 3.0:
                rc, out, err = curl("--socks5", f"127.0.0.1:{node.port}",
                                    origin.url(f"/blob/{size}/{n}"), timeout=20)
                with lock:
                    results.append((rc, sha256(out) == sha256(blob(size, n)), err))

        threads = [threading.Thread(target=download, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        elapsed = time.monotonic() - t0
        api_post(node.api_port, "/ruleset/invoke", "_G.PEER = nil")
        self.assertTrue(results)
        self.assertEqual([r for r in results if r[0] != 0 or not r[1]], [])
        ok, ticks, rpc_ok, rpc_fail, last = rpcall(
            node.api_port, "return _G.ticks, _G.rpc_ok, _G.rpc_fail, _G.last_error")
        self.assertEqual(rpc_fail, 0, last)
        _, peer_ticks = rpcall(peer.api_port, "return _G.ticks")
        self.assertGreaterEqual(peer_ticks, int(elapsed * 10 * 0.66), (elapsed, ticks, rpc_ok))
        self.assertGreaterEqual(peer_ticks, 20)
        self.assertGreaterEqual(ticks, peer_ticks)
        if os.environ.get("RULESOCKS_TEST_VERBOSE"):
            print(f"\ntick: {elapsed:.1f} s, {len(results)} downloads, ticks {ticks}, "
                  f"rpc ok {rpc_ok}, peer ticks {peer_ticks}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
