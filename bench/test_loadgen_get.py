#!/usr/bin/env python3
"""The plain-HTTP workload of bench/compare: rs-loadgen's http:N origin and its
keep-alive `get` client, against the direct path, rulesocks --http, and a
proxy that closes after every response without saying so (as tinyproxy does).

  RS_LOADGEN=build/bench/rs-loadgen RULESOCKS_BIN=build/src/rulesocks \\
      python3 -m unittest -v test_loadgen_get
"""

import json
import os
import socket
import subprocess
import threading
import time
import unittest

LOADGEN = os.environ.get("RS_LOADGEN", "")
RULESOCKS = os.environ.get("RULESOCKS_BIN", "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on {port}")


def recv_until_close(s, timeout=5.0):
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def recv_exactly(s, n, timeout=5.0):
    s.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 64\r\n\r\n" + b"x" * 64)


class ClosingProxy:
    """Answers one request per connection with a 64-byte response, then closes
    without `Connection: close` (tinyproxy's behaviour). Bounded by `limit`
    connections and stopped by close()."""

    def __init__(self, limit=100000):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.limit = limit
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping and self.accepted < self.limit:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            with c:
                c.settimeout(2)
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    if head.startswith(b"GET http://"):
                        c.sendall(RESPONSE)
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


@unittest.skipUnless(LOADGEN, "RS_LOADGEN is not set")
class LoadgenGet(unittest.TestCase):
    def setUp(self):
        self.procs = []
        self.origin_port = free_port()
        self.origin = self.spawn([LOADGEN, "origin", "--listen", f"127.0.0.1:{self.origin_port}",
                                  "--mode", "http:64", "--lifetime", "120"], self.origin_port)

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)

    def spawn(self, argv, port):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_listening(port, p)
        return p

    def get(self, *args):
        r = subprocess.run([LOADGEN, "get", "-c", "4", "-d", "0.5", "--timeout", "3"] + list(args),
                           capture_output=True, text=True, timeout=30)
        lines = [l for l in r.stdout.splitlines() if l.startswith("JSON ")]
        self.assertEqual(len(lines), 1, r.stdout + r.stderr)
        return json.loads(lines[0][5:])

    # --- the origin
    def test_origin_keeps_the_connection_and_answers_pipelined_requests(self):
        with socket.create_connection(("127.0.0.1", self.origin_port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(recv_exactly(s, 2 * len(RESPONSE)), 2 * RESPONSE)
            s.sendall(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(recv_exactly(s, len(RESPONSE)), RESPONSE)

    def test_origin_closes_when_asked(self):
        closing = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        for req in (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    b"GET / HTTP/1.0\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", self.origin_port), timeout=5) as s:
                s.sendall(req)
                self.assertEqual(recv_until_close(s), closing, req)

    # --- the client
    def test_direct_path_keeps_every_connection(self):
        res = self.get("--proto", "direct", "--target", f"127.0.0.1:{self.origin_port}")
        self.assertEqual(res["errors"], 0, res)
        self.assertEqual(res["connects"], 4, res)
        self.assertGreater(res["requests"], 100, res)
        self.assertGreater(res["req_per_s"], 0, res)

    @unittest.skipUnless(RULESOCKS, "RULESOCKS_BIN is not set")
    def test_through_rulesocks_http_keeps_the_client_connections(self):
        port = free_port()
        rs = self.spawn([RULESOCKS, "--http", f"127.0.0.1:{port}"], port)
        res = self.get("--proto", "http", "--proxy", f"127.0.0.1:{port}", "--target",
                       f"127.0.0.1:{self.origin_port}", "--pid", str(rs.pid))
        self.assertEqual(res["errors"], 0, res)
        self.assertEqual(res["connects"], 4, res)
        self.assertGreater(res["requests"], 100, res)
        self.assertIn("cpu_us_per_req", res)
        self.assertGreater(res["proxy_cpu_s"], 0, res)

    def test_a_proxy_that_closes_after_each_response_is_retried_not_an_error(self):
        proxy = ClosingProxy()
        try:
            res = self.get("--proto", "http", "--proxy", f"127.0.0.1:{proxy.port}", "--target",
                           f"127.0.0.1:{self.origin_port}")
        finally:
            proxy.close()
        self.assertEqual(res["errors"], 0, res)
        self.assertGreater(res["requests"], 10, res)
        # One connection per request: every reuse found the connection closed.
        self.assertGreaterEqual(res["connects"], res["requests"], res)
        self.assertGreater(res["retries"], 0, res)

    def test_a_refused_proxy_is_an_error(self):
        res = self.get("--proto", "http", "--proxy", f"127.0.0.1:{free_port()}", "--target",
                       f"127.0.0.1:{self.origin_port}")
        self.assertEqual(res["requests"], 0, res)
        self.assertGreater(res["errors"], 0, res)
        self.assertIn("connect", res["first_error"])


if __name__ == "__main__":
    unittest.main()
