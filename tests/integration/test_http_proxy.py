"""Plain HTTP proxying (absolute-form requests) on the --http port and the mixed -l
port, with real clients: curl -x (no -p), wget with http_proxy, Python requests;
keep-alive, pipelining, an Upgrade echo, chains, and every error status.

  RULESOCKS_BIN=build/src/rulesocks /usr/bin/python3 -m unittest -v test_http_proxy
"""

import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (
    LOOP4, MiB, IntegrationCase, TcpServer, api_stats, blob, connect, curl, free_port,
    read_http_head, read_http_response, recv_exact, recv_head, rpcall, sha256, stats_field, tinyproxy,
    wait_closed,
)

RULESET = """\
local ruleset = {}
local function decide(addr, user, pass)
    local host, port = addr:match("^(.-):(%d+)$")
    if host == "reject.test" then return nil end
    if host == "hang.test" then
        await.sleep(30)
        return nil
    end
    if host == "origin.test" then return "127.0.0.1:" .. port end
    if host == "api.neosocksd.internal" then return "127.0.0.1:@API@" end
    if host == "user.test" then
        if user == "alice" and pass == "secret" then return "127.0.0.1:" .. port end
        return nil
    end
    return addr
end
function ruleset.resolve(addr, user, pass) return decide(addr, user, pass) end
function ruleset.route(addr, user, pass) return decide(addr, user, pass) end
function ruleset.route6(addr, user, pass) return decide(addr, user, pass) end
return ruleset
"""


def raw_exchange(port, data, timeout=5):
    """Sends `data`, returns (status line, headers, body) of the first response."""
    with connect(port, timeout=timeout) as s:
        s.sendall(data)
        status, headers, body, _ = read_http_response(s)
        return status, headers, body


class Origin101(TcpServer):
    """Answers any request head with 101 Switching Protocols, then echoes bytes."""

    def on_accept(self, conn):
        self.serve_in_thread(conn)

    def serve(self, conn):
        with conn:
            conn.settimeout(10)
            got = recv_head(conn)
            if got is None:
                return
            self.head, rest = got
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                         b"Connection: Upgrade\r\n\r\nhello")
            if rest:
                conn.sendall(rest)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)


class KeepAliveOrigin(TcpServer):
    """Answers requests with keep-alive, counting connections; with drop_second, closes a
    connection on its second request without answering (an origin that timed it out)."""

    def __init__(self, drop_second=False, reset=False):
        super().__init__()
        self.drop_second = drop_second
        self.reset = reset  # drop with a TCP reset instead of a FIN
        self.accepted = 0
        self.closed = 0

    def on_accept(self, conn):
        self.accepted += 1
        self.serve_in_thread(conn)

    def serve(self, conn):
        with conn:
            conn.settimeout(10)
            buf, served = b"", 0
            try:
                while True:
                    got = recv_head(conn, buf)
                    if got is None:
                        self.closed += 1
                        return
                    buf = got[1]
                    if served == 1 and self.drop_second:
                        if self.reset:
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
                        return
                    served += 1
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            except OSError:
                return


class InterimOrigin(TcpServer):
    """Answers every request head with 103 Early Hints, then 200."""

    def on_accept(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            except OSError:
                pass


class Garbage(TcpServer):
    """Reads a request head and answers with bytes that are not HTTP."""

    def on_accept(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(4096)
                conn.sendall(b"\x00\x01garbage\r\n\r\n")
            except OSError:
                pass


class HttpProxyCase(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.dir = tempfile.mkdtemp(prefix="rulesocks-httpproxy-")
        cls.api_port = free_port()
        cls.ruleset = os.path.join(cls.dir, "ruleset.lua")
        with open(cls.ruleset, "w") as f:
            f.write(RULESET.replace("@API@", str(cls.api_port)))
        cls.proxy = cls.start_class_proxy("-r", cls.ruleset, "--api", f"{LOOP4}:{cls.api_port}",
                                          "-t", "2", http=True, name="front",
                                          # One process: counts Lua requests with rpcalls and
                                          # reuses one upstream pool.
                                          workers=1)
        cls.http = f"http://{LOOP4}:{cls.proxy.http_port}"
        cls.mixed = f"http://{LOOP4}:{cls.proxy.port}"

    def url(self, path):
        return self.origin.url(path)

    def get(self, proxy, path, *args):
        return curl("-x", proxy, *args, self.url(path), timeout=20)

    # -- every method, both ports

    def test_get_and_head_on_both_ports(self):
        for proxy in (self.http, self.mixed):
            with self.subTest(proxy=proxy):
                rc, out, err = self.get(proxy, "/hello")
                self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
                rc, out, err = self.get(proxy, "/blob/1000", "-I")
                self.assertEqual(rc, 0, err)
                self.assertIn(b"HTTP/1.1 200", out)
                self.assertIn(b"Content-Length: 1000", out)
                self.assertIn(b"Via: 1.1 rulesocks", out)

    def test_methods(self):
        for method in ("DELETE", "OPTIONS", "PATCH"):
            with self.subTest(method=method):
                rc, out, err = self.get(self.http, "/m?x=1", "-X", method, "--data-binary", "abc")
                self.assertEqual((rc, out), (0, f"{method} /m?x=1 3\n".encode()), err)
        rc, out, err = self.get(self.http, "/sink", "-X", "PUT", "--data-binary", "abc")
        self.assertEqual((rc, out), (0, f"3 {sha256(b'abc')}\n".encode()), err)

    def test_request_is_rewritten(self):
        """Origin-form to the origin, hop-by-hop fields gone, Via added, Host from the target."""
        rc, out, err = self.get(self.http, "/headers", "-U", "user:pw",
                                "-H", "Proxy-Connection: keep-alive",
                                "-H", "Connection: X-Secret", "-H", "X-Secret: 1",
                                "-H", "Keep-Alive: 5", "-H", "TE: trailers", "-H", "X-Kept: yes")
        self.assertEqual(rc, 0, err)
        text = out.decode().lower()
        self.assertTrue(text.startswith("get /headers http/1.1\n"), text)
        for gone in ("proxy-authorization", "proxy-connection", "x-secret", "keep-alive", "te:"):
            self.assertNotIn(gone, text)
        self.assertIn("x-kept: yes", text)
        self.assertIn("via: 1.1 rulesocks", text)
        self.assertIn(f"host: {LOOP4}:{self.origin.port}", text)

    # -- bodies

    def test_10mib_post_and_download(self):
        data = blob(10 * MiB, 7)
        path = os.path.join(self.dir, "up.bin")
        with open(path, "wb") as f:
            f.write(data)
        rc, out, err = self.get(self.http, "/sink", "--data-binary", f"@{path}")
        self.assertEqual((rc, out.decode()), (0, f"{len(data)} {sha256(data)}\n"), err)
        rc, out, err = self.get(self.mixed, f"/blob/{10 * MiB}")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(10 * MiB)))

    def test_chunked_both_ways(self):
        data = blob(3 * MiB + 17, 3)
        path = os.path.join(self.dir, "chunked.bin")
        with open(path, "wb") as f:
            f.write(data)
        rc, out, err = self.get(self.http, "/sink", "-H", "Transfer-Encoding: chunked",
                                "--data-binary", f"@{path}")
        self.assertEqual((rc, out.decode()), (0, f"{len(data)} {sha256(data)}\n"), err)
        rc, out, err = self.get(self.http, f"/chunked/{2 * MiB + 5}")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(2 * MiB + 5)))

    def test_expect_100_continue(self):
        with connect(self.proxy.http_port) as s:
            s.sendall(f"POST {self.url('/echo')} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      "Expect: 100-continue\r\n\r\n".encode())
            status, _, _ = read_http_head(s)
            self.assertEqual(status, "HTTP/1.1 100 Continue")
            s.sendall(b"hello")
            status, _, body, _ = read_http_response(s)
            self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello"))

    def test_interim_responses_only_to_http11_clients(self):
        """1xx go to HTTP/1.1 clients; an HTTP/1.0 client never sees one (RFC 9110 15.2)."""
        with InterimOrigin() as o:
            for version, first in (("1.1", "HTTP/1.1 103 Early Hints"), ("1.0", "HTTP/1.1 200 OK")):
                with self.subTest(version=version), connect(self.proxy.http_port) as s:
                    s.sendall(f"GET http://{LOOP4}:{o.port}/ HTTP/{version}\r\n\r\n".encode())
                    status, headers, _ = read_http_head(s)
                    self.assertEqual(status, first)
                    if version == "1.1":
                        self.assertEqual(headers.get("link"), "</a>")
                        status, _, body, _ = read_http_response(s)
                        self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"ok\n"))

    # -- real clients

    def test_wget(self):
        env = dict(os.environ, http_proxy=self.http)
        p = subprocess.run(["wget", "-q", "-O", "-", self.url("/hello")], env=env,
                           capture_output=True, timeout=20)
        self.assertEqual((p.returncode, p.stdout), (0, b"hello from origin\n"), p.stderr)

    def test_python_requests(self):
        code = ("import requests, sys\n"
                "r = requests.get(sys.argv[1], proxies={'http': sys.argv[2]}, timeout=10)\n"
                "p = requests.post(sys.argv[3], data=b'x' * 100000, proxies={'http': sys.argv[2]},"
                " timeout=10)\n"
                "print(r.status_code, r.text.strip(), p.status_code, len(p.content))\n")
        p = subprocess.run(["/usr/bin/python3", "-c", code, self.url("/hello"), self.mixed,
                            self.url("/echo")], capture_output=True, timeout=30,
                           env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
        self.assertEqual(p.stdout, b"200 hello from origin 200 100000\n", p.stderr)

    # -- persistent connections

    def lua_requests(self):
        values = rpcall(self.api_port, "return math.tointeger(neosocksd.stats().num_request)")
        self.assertIs(values[0], True, values)
        return values[1]

    def test_keep_alive_one_connection(self):
        before = stats_field(api_stats(self.api_port), "Accepted")
        reqs = stats_field(api_stats(self.api_port), "Requests")
        lua_reqs = self.lua_requests()
        urls = [self.url("/hello"), self.url("/blob/5000"), self.url("/hello")]
        rc, out, err = curl("-x", self.http, *urls, timeout=20)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"hello from origin\n" + blob(5000) + b"hello from origin\n")
        text = api_stats(self.api_port)
        # api_stats itself is one more accepted connection on the API, not the proxy port.
        self.assertEqual(stats_field(text, "Accepted") - before, 1, text)
        self.assertEqual(stats_field(text, "Requests") - reqs, 3, text)
        self.assertEqual(self.lua_requests() - lua_reqs, 3)

    def test_pipelining_in_order(self):
        reqs = b"".join(f"GET {self.url(p)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                        for p in ("/blob/3000/1", "/hello", "/blob/10/2"))
        with connect(self.proxy.http_port) as s:
            s.sendall(reqs)
            bodies = [read_http_response(s)[2] for _ in range(3)]
        self.assertEqual(bodies, [blob(3000, 1), b"hello from origin\n", blob(10, 2)])

    def test_connection_close_honoured(self):
        with connect(self.proxy.http_port) as s:
            s.sendall(f"GET {self.url('/hello')} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
            status, headers, body, _ = read_http_response(s)
            self.assertEqual(headers.get("connection"), "close")
            self.assertEqual(body, b"hello from origin\n")
            self.assertIsNotNone(wait_closed(s, 3))

    def test_idle_keep_alive_bounded_by_t(self):
        with connect(self.proxy.http_port) as s:
            s.sendall(f"GET {self.url('/hello')} HTTP/1.1\r\n\r\n".encode())
            self.assertEqual(read_http_response(s)[2], b"hello from origin\n")
            start = time.monotonic()
            self.assertIsNotNone(wait_closed(s, 6))
            self.assertLess(time.monotonic() - start, 5)

    # -- the upstream pool

    def test_upstream_connections_reused(self):
        with KeepAliveOrigin() as o:
            for _ in range(3):  # three client connections, one after the other
                rc, out, err = curl("-x", self.http, f"http://{LOOP4}:{o.port}/", timeout=10)
                self.assertEqual((rc, out), (0, b"ok\n"), err)
            self.assertEqual(o.accepted, 1)

    def test_pooled_connection_closed_by_origin_is_retried(self):
        for reset in (False, True):
            with self.subTest(reset=reset), KeepAliveOrigin(drop_second=True, reset=reset) as o:
                for _ in range(2):
                    rc, out, err = curl("-x", self.http, f"http://{LOOP4}:{o.port}/", timeout=10)
                    self.assertEqual((rc, out), (0, b"ok\n"), err)
                self.assertEqual(o.accepted, 2)

    def test_idle_pooled_connection_closed_after_t(self):
        with KeepAliveOrigin() as o:
            rc, out, err = curl("-x", self.http, f"http://{LOOP4}:{o.port}/", timeout=10)
            self.assertEqual((rc, out), (0, b"ok\n"), err)
            time.sleep(0.5)
            self.assertEqual(o.closed, 0, "closed before the idle timeout")
            deadline = time.monotonic() + 5
            while o.closed == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(o.closed, 1, "pooled connection not closed after -t")

    # -- upgrade

    def test_upgrade_becomes_relay(self):
        with Origin101() as o:
            with connect(self.proxy.http_port) as s:
                s.sendall(f"GET http://{LOOP4}:{o.port}/ws HTTP/1.1\r\nHost: x\r\n"
                          "Connection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode())
                status, headers, _ = read_http_head(s)
                self.assertEqual(status, "HTTP/1.1 101 Switching Protocols")
                self.assertEqual(headers.get("upgrade"), "echo")
                self.assertEqual(recv_exact(s, 5), b"hello")
                payload = blob(200000, 5)
                threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
                self.assertEqual(recv_exact(s, len(payload)), payload)
            self.assertIn(b"upgrade: echo", o.head.lower())

    # -- chains

    def test_chain_to_rulesocks(self):
        back = self.start_proxy(name="back")
        front = self.start_proxy("-x", f"socks5://{LOOP4}:{back.port}", http=True, name="chain")
        rc, out, err = curl("-x", f"http://{LOOP4}:{front.http_port}", self.url(f"/blob/{MiB}"),
                            timeout=20)
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(MiB)))

    def test_chain_to_tinyproxy(self):
        tp = self.start_peer(tinyproxy([self.origin.port]))
        front = self.start_proxy("-x", tp.url("http"), socks=False, http=True, name="tp-front")
        rc, out, err = curl("-x", f"http://{LOOP4}:{front.http_port}", self.url("/hello"),
                            timeout=20)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    # -- errors, each with a short text body

    def assert_status(self, data, code, port=None):
        status, headers, body = raw_exchange(port or self.proxy.http_port, data)
        self.assertIsNotNone(status, f"no answer to {data[:60]!r}")
        self.assertEqual(int(status.split()[1]), code, (status, body))
        self.assertTrue(body.startswith(b"rulesocks: "), body)
        self.assertEqual(headers.get("content-type"), "text/plain")
        return headers

    def test_error_statuses(self):
        u = self.url("/hello").encode()
        cases = [
            (b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # origin-form
            (b"GET https://x/ HTTP/1.1\r\n\r\n", 400),
            (b"POST " + u + b" HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST " + u + b" HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
            (b"POST " + u + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Length: 3\r\n\r\n", 400),
            (b"POST " + u + b" HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"GET " + u + b" HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"GET " + u + b" HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
            (b"GET " + u + b" HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", 431),
            (b"GET http://reject.test/ HTTP/1.1\r\n\r\n", 403),
            (f"GET http://{LOOP4}:{free_port()}/ HTTP/1.1\r\n\r\n".encode(), 502),
            (b"GET http://hang.test/ HTTP/1.1\r\n\r\n", 504),
        ]
        for data, code in cases:
            with self.subTest(data=data[:70], code=code):
                self.assert_status(data, code)
        with Garbage() as g:
            self.assert_status(f"GET http://{LOOP4}:{g.port}/ HTTP/1.1\r\n\r\n".encode(), 502)

    def test_bad_chunked_body_400(self):
        self.assert_status(b"POST " + self.url("/sink").encode() +
                           b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
                           400)

    def test_credentials_reach_the_ruleset(self):
        rc, out, err = curl("-x", self.http, "-U", "alice:secret",
                            f"http://user.test:{self.origin.port}/hello", timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        rc, out, err = curl("-x", self.http, "-U", "alice:wrong", "-o", "/dev/null", "-w",
                            "%{http_code}", f"http://user.test:{self.origin.port}/hello",
                            timeout=10)
        self.assertEqual((rc, out), (0, b"403"), err)

    def test_auth_required_407(self):
        p = self.start_proxy("--auth-required", http=True, socks=False, name="auth")
        headers = self.assert_status(f"GET {self.url('/hello')} HTTP/1.1\r\n\r\n".encode(), 407,
                                     port=p.http_port)
        self.assertEqual(headers.get("proxy-authenticate"), 'Basic realm="rulesocks"')
        rc, out, err = curl("-x", f"http://{LOOP4}:{p.http_port}", "-U", "u:p", self.url("/hello"),
                            timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_api_only_through_a_rewrite(self):
        """The API is refused as a target unless the ruleset routed the request there."""
        self.assert_status(f"GET http://{LOOP4}:{self.api_port}/stats HTTP/1.1\r\n\r\n".encode(),
                           403)
        rc, out, err = curl("-x", self.http, "http://api.neosocksd.internal/stats", timeout=10)
        self.assertEqual(rc, 0, err)
        self.assertIn(b"Requests", out)

    def test_slow_client_does_not_block_others(self):
        with connect(self.proxy.http_port) as slow:
            slow.sendall(b"GET " + self.url("/hello").encode() + b" HTTP/1.1\r\nX-Slow:")
            start = time.monotonic()
            for _ in range(5):
                rc, out, err = self.get(self.http, "/hello")
                self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
            self.assertLess(time.monotonic() - start, 5)


if __name__ == "__main__":
    unittest.main()
