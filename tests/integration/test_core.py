"""Core behaviour of rulesocks, driven with curl and raw sockets on loopback.

  Transfers            10 MiB through every inbound protocol, plus half-close
  PipeTransfers        the same with --pipe (splice relay)
  Ipv6Target           an IPv6 origin reached through SOCKS5
  ErrorReplies         refused / unresolvable / unsupported requests: exact replies
  Garbage              bad first bytes, random bytes, HTTP GET, malformed greetings
  HandshakeTimeout     -t: a stalled handshake is closed on time
  GracefulShutdown     SIGTERM with live sessions exits 0 promptly
  MemoryStable         RSS does not grow over repeated transfers
  FdLeak, PipeFdLeak   after a mix of all of the above, the fd count returns to baseline
"""

import os
import random
import signal
import socket
import struct
import tempfile
import threading
import time
import unittest

from harness import (
    LOOP4, LOOP6, MiB, S5_BIND, S5_UDP, HoldServer, IntegrationCase, Origin,
    SinkThenSendServer, blob, connect, curl, free_port, has_ipv6_loopback, is_open,
    read_http_response, read_socks5_reply, recv_all, recv_exact, sha256, socks4_request,
    socks5_handshake, socks5_request, wait_closed, wait_until,
)

BIG = 10 * MiB
UNRESOLVABLE = "nonexistent.invalid"


def still_serving(test, proxy, origin):
    """Asserts that a fresh SOCKS5 client is still served end to end."""
    rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", origin.url("/hello"), timeout=10)
    test.assertEqual((rc, out), (0, b"hello from origin\n"),
                     f"proxy stopped serving new clients: curl rc={rc} {err}")


def closed_port():
    """A loopback port with nothing listening (connections are refused)."""
    return free_port()


# ---------------------------------------------------------------------------
# Successful transfers
# ---------------------------------------------------------------------------

class Transfers(IntegrationCase):
    """10 MiB bodies through each inbound protocol; checksums must match."""

    EXTRA_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.proxy = cls.start_class_proxy(*cls.EXTRA_ARGS, http=True)
        cls.want = sha256(blob(BIG))

    def download(self, *proxy_args, host=LOOP4):
        rc, out, err = curl(*proxy_args, self.origin.url(f"/blob/{BIG}", host))
        self.assertEqual(rc, 0, f"curl failed: {err}")
        self.assertEqual(len(out), BIG)
        self.assertEqual(sha256(out), self.want, "body corrupted in transit")

    def test_socks4_download(self):
        """curl --socks4 downloads 10 MiB intact (IPv4 address resolved by curl)."""
        self.download("--socks4", f"{LOOP4}:{self.proxy.port}")

    def test_socks4a_download(self):
        """curl --socks4a sends the name "localhost"; the proxy resolves it."""
        self.download("--socks4a", f"{LOOP4}:{self.proxy.port}", host="localhost")

    def test_socks5_download(self):
        """curl --socks5 (ATYP IPv4) downloads 10 MiB intact."""
        self.download("--socks5", f"{LOOP4}:{self.proxy.port}")

    def test_socks5_hostname_download(self):
        """curl --socks5-hostname sends "localhost" (ATYP domain); the proxy resolves it."""
        self.download("--socks5-hostname", f"{LOOP4}:{self.proxy.port}", host="localhost")

    def test_http_connect_download_sniffed(self):
        """curl -p -x http:// against the SOCKS listener (HTTP CONNECT is sniffed)."""
        self.download("-p", "-x", f"http://{LOOP4}:{self.proxy.port}")

    def test_http_connect_download_http_listener(self):
        """curl -p -x http:// against the --http listener."""
        self.download("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}")

    def test_socks5_upload(self):
        """A 10 MiB request body reaches the origin intact (client -> upstream direction)."""
        data = blob(BIG, seed=7)
        path = os.path.join(self.tmpdir(), "upload.bin")
        with open(path, "wb") as f:
            f.write(data)
        rc, out, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}",
                            "--data-binary", f"@{path}", "-H", "Expect:",
                            self.origin.url("/sink"))
        self.assertEqual(rc, 0, f"curl failed: {err}")
        self.assertEqual(out.decode().split(), [str(BIG), sha256(data)])

    def test_concurrent_downloads(self):
        """Four simultaneous 10 MiB downloads (mixed protocols) all arrive intact."""
        port = self.proxy.port
        variants = [("--socks5", f"{LOOP4}:{port}"), ("--socks4", f"{LOOP4}:{port}"),
                    ("-p", "-x", f"http://{LOOP4}:{port}"),
                    ("--socks5-hostname", f"{LOOP4}:{port}")]
        results = [None] * len(variants)

        def run(i, args):
            results[i] = curl(*args, self.origin.url(f"/blob/{BIG}"))

        threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(variants)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        for args, (rc, out, err) in zip(variants, results):
            self.assertEqual(rc, 0, f"{args[0]}: {err}")
            self.assertEqual(sha256(out), self.want, f"{args[0]}: body corrupted")

    def test_half_close(self):
        """Client sends 5 MiB then SHUT_WR; the origin, after reading EOF, sends 8 MiB back.

        The upload must reach the origin whole (it sees EOF only after the last
        byte), the 8 MiB must reach the client whole, and then the client gets EOF.
        """
        up, down = blob(5 * MiB, seed=11), blob(8 * MiB, seed=12)
        server = SinkThenSendServer(down).start()
        with connect(self.proxy.port, timeout=30) as s:
            raw, rep = socks5_handshake(s, LOOP4, server.port)
            self.assertEqual(rep, 0, f"CONNECT failed: {raw.hex()}")
            s.sendall(up)
            s.shutdown(socket.SHUT_WR)
            got = recv_all(s)  # returns at EOF
        self.assertTrue(server.join(30), "origin never saw EOF from the client")
        self.assertIsNone(server.error)
        self.assertEqual(server.received_len, len(up), "origin got a short upload")
        self.assertEqual(server.received_sha256, sha256(up))
        self.assertEqual(len(got), len(down), "client got a short download before EOF")
        self.assertEqual(sha256(got), sha256(down))

    def test_socks5_pipelined_data(self):
        """Greeting, request and the first data in one write: the data reaches the origin."""
        with connect(self.proxy.port) as s:
            s.sendall(b"\x05\x01\x00" + socks5_request(LOOP4, self.origin.port)
                      + b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")
            raw, rep = read_socks5_reply(s)
            self.assertEqual(rep, 0, raw.hex())
            s.sendall(b"Connection: close\r\n\r\n")
            status, _, body, _ = read_http_response(s)
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(body, b"hello from origin\n")

    def test_http_connect_pipelined_data(self):
        """A CONNECT head and the first tunnelled bytes in one write: nothing is lost."""
        with connect(self.proxy.http_port) as s:
            target = f"{LOOP4}:{self.origin.port}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
                      "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            _, _, _, head = read_http_response(s)
            self.assertEqual(head, b"HTTP/1.1 200 Connection established\r\n\r\n")
            status, _, body, _ = read_http_response(s)
        self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello from origin\n"))

    def test_many_concurrent_sessions(self):
        """64 simultaneous raw SOCKS5 sessions, each fetching its own 64 KiB body."""
        n, size = 64, 64 * 1024
        errors = []

        def fetch(i):
            try:
                with connect(self.proxy.port, timeout=30) as s:
                    raw, rep = socks5_handshake(s, LOOP4, self.origin.port)
                    if rep != 0:
                        raise AssertionError(f"REP {raw.hex()}")
                    s.sendall(f"GET /blob/{size}/{i} HTTP/1.1\r\nHost: x\r\n"
                              "Connection: close\r\n\r\n".encode())
                    status, _, body, _ = read_http_response(s)
                    if status != "HTTP/1.1 200 OK" or body != blob(size, seed=i):
                        raise AssertionError(f"session {i}: {status}, {len(body)} bytes")
            except Exception as e:  # collected and reported below
                errors.append(f"session {i}: {e!r}")

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertEqual(errors, [])

    # -- helpers --

    def tmpdir(self):
        d = tempfile.TemporaryDirectory(prefix="rulesocks-itest-")
        self.addCleanup(d.cleanup)
        return d.name


class PipeTransfers(Transfers):
    """The same transfers with --pipe: the relay moves bytes with splice(2)."""

    EXTRA_ARGS = ("--pipe",)


# ---------------------------------------------------------------------------
# IPv6
# ---------------------------------------------------------------------------

class Ipv6Target(IntegrationCase):
    """An origin on [::1] reached through SOCKS5 (ATYP 4)."""

    @classmethod
    def setUpClass(cls):
        if not has_ipv6_loopback():
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1): cannot bind [::1]")
        cls.origin = cls.start_class_origin(LOOP6)
        cls.proxy = cls.start_class_proxy()

    def test_socks5_ipv6_download(self):
        """curl --socks5 http://[::1]:port/ downloads 10 MiB intact."""
        rc, out, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}",
                            self.origin.url(f"/blob/{BIG}"))
        self.assertEqual(rc, 0, f"curl failed: {err}")
        self.assertEqual(sha256(out), sha256(blob(BIG)))

    def test_ipv6_listener(self):
        """-l [::1]:PORT accepts clients over IPv6 and serves them."""
        port6 = free_port(socket.AF_INET6)
        proxy = self.start_proxy("-l", f"[{LOOP6}]:{port6}", extra_ports=(port6,))
        rc, out, err = curl("--socks5", f"[{LOOP6}]:{port6}", self.origin.url("/hello"),
                            timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assertTrue(proxy.alive)

    def test_socks5_ipv6_raw_reply(self):
        """A raw ATYP 4 (::1) CONNECT gets REP 0x00 and a well-formed reply."""
        with connect(self.proxy.port) as s:
            raw, rep = socks5_handshake(s, LOOP6, self.origin.port)
        self.assertEqual(rep, 0, raw.hex())
        self.assertEqual(raw[:3], b"\x05\x00\x00")


# ---------------------------------------------------------------------------
# Failure replies
# ---------------------------------------------------------------------------

class ErrorReplies(IntegrationCase):
    """Exact reply codes for requests the proxy cannot or will not serve."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.proxy = cls.start_class_proxy(http=True)

    def assert_socks5_failure(self, request, rep, methods=b"\x05\x01\x00"):
        """Sends greeting + request; asserts REP `rep` in a well-formed reply, then EOF."""
        with connect(self.proxy.port) as s:
            s.sendall(methods)
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")
            s.sendall(request)
            raw, got = read_socks5_reply(s)
            self.assertEqual(got, rep, f"reply {raw.hex()}, expected REP 0x{rep:02x}")
            self.assertEqual(raw[0], 5, "VER")
            self.assertEqual(raw[2], 0, "RSV")
            self.assertIn(raw[3], (1, 3, 4), "ATYP of BND.ADDR")
            self.assertIsNotNone(wait_closed(s, 5), "connection not closed after a failure reply")
            return raw

    def test_socks5_refused_rep_05(self):
        """CONNECT to a closed port: REP 0x05 (connection refused), then close."""
        raw = self.assert_socks5_failure(socks5_request(LOOP4, closed_port()), 0x05)
        self.assertEqual(len(raw), 10)

    def test_curl_socks5_refused(self):
        """curl --socks5 to a closed port reports the proxy's REP 5."""
        rc, _, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}",
                          f"http://{LOOP4}:{closed_port()}/", timeout=10)
        self.assertEqual(rc, 97, err)  # CURLE_PROXY
        self.assertIn("(5)", err)

    def test_socks4_refused_5b(self):
        """SOCKS4 CONNECT to a closed port: 8-byte reply 00 5B, then close."""
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(closed_port()))
            reply = recv_exact(s, 8)
            self.assertEqual(len(reply), 8, reply.hex())
            self.assertEqual(reply[:2], b"\x00\x5b", reply.hex())
            self.assertIsNotNone(wait_closed(s, 5))

    def test_curl_socks4_refused(self):
        """curl --socks4 to a closed port reports "request rejected" (91)."""
        rc, _, err = curl("--socks4", f"{LOOP4}:{self.proxy.port}",
                          f"http://{LOOP4}:{closed_port()}/", timeout=10)
        self.assertEqual(rc, 97, err)
        self.assertIn("(91)", err)

    def test_http_connect_refused_502(self):
        """CONNECT to a closed port: 502 Bad Gateway."""
        with connect(self.proxy.port) as s:
            target = f"{LOOP4}:{closed_port()}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, _, _, _ = read_http_response(s)
        self.assertEqual(status, "HTTP/1.1 502 Bad Gateway")

    def test_socks5h_unresolvable_rep_04(self):
        """CONNECT to nonexistent.invalid by name: REP 0x04 (host unreachable)."""
        self.assert_socks5_failure(socks5_request(UNRESOLVABLE, 80), 0x04)

    def test_curl_socks5h_unresolvable(self):
        """curl --socks5-hostname to nonexistent.invalid reports REP 4."""
        rc, _, err = curl("--socks5-hostname", f"{LOOP4}:{self.proxy.port}",
                          f"http://{UNRESOLVABLE}/", timeout=15)
        self.assertEqual(rc, 97, err)
        self.assertIn("(4)", err)

    def test_http_connect_unresolvable_502(self):
        """CONNECT nonexistent.invalid:80 gets 502 (raw check and curl)."""
        with connect(self.proxy.http_port) as s:
            s.sendall(f"CONNECT {UNRESOLVABLE}:80 HTTP/1.1\r\nHost: {UNRESOLVABLE}:80\r\n\r\n"
                      .encode())
            status, _, _, _ = read_http_response(s)
        self.assertEqual(status, "HTTP/1.1 502 Bad Gateway")
        rc, _, err = curl("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}",
                          f"http://{UNRESOLVABLE}/", timeout=15)
        self.assertEqual(rc, 56, err)
        self.assertIn("502", err)

    def test_socks5_bind_rep_07(self):
        """BIND is not supported: REP 0x07."""
        self.assert_socks5_failure(socks5_request(LOOP4, 80, S5_BIND), 0x07)

    def test_socks5_udp_associate_rep_07(self):
        """UDP ASSOCIATE is not supported: REP 0x07."""
        self.assert_socks5_failure(socks5_request(LOOP4, 0, S5_UDP), 0x07)

    def test_socks5_unknown_command_rep_07(self):
        """An undefined command (0x09): REP 0x07."""
        self.assert_socks5_failure(socks5_request(LOOP4, 80, 0x09), 0x07)

    def test_socks5_unknown_atyp_rep_08(self):
        """ATYP 0x02 (undefined): REP 0x08 (address type not supported)."""
        self.assert_socks5_failure(b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", 0x08)

    def test_socks4a_unresolvable_5b(self):
        """SOCKS4A CONNECT to nonexistent.invalid: 00 5B, then close."""
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(80, host=UNRESOLVABLE))
            reply = recv_exact(s, 8)
            self.assertEqual(reply[:2], b"\x00\x5b", reply.hex())
            self.assertIsNotNone(wait_closed(s, 5))

    def test_socks4_bind_5b(self):
        """SOCKS4 BIND (CD 2) is refused with 5B."""
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(self.origin.port, cmd=2))
            self.assertEqual(recv_exact(s, 8)[:2], b"\x00\x5b")

    def test_http_connect_bad_target_400(self):
        """CONNECT targets without a port, with a bad port or bad brackets: 400."""
        for target in ("example", f"{LOOP4}:99999", "[::1", ":80"):
            with self.subTest(target=target), connect(self.proxy.http_port) as s:
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status, _, _, _ = read_http_response(s)
                self.assertEqual(status, "HTTP/1.1 400 Bad Request")
                self.assertIsNotNone(wait_closed(s, 5))

    def test_http_connect_success_line(self):
        """A successful CONNECT answers exactly "HTTP/1.1 200 Connection established"."""
        with connect(self.proxy.http_port) as s:
            target = f"{LOOP4}:{self.origin.port}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            _, _, _, head = read_http_response(s)
            self.assertEqual(head, b"HTTP/1.1 200 Connection established\r\n\r\n")
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body, _ = read_http_response(s)
        self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello from origin\n"))


# ---------------------------------------------------------------------------
# Garbage
# ---------------------------------------------------------------------------

class Garbage(IntegrationCase):
    """Clients that do not speak a supported protocol are closed; others go on.

    The proxy runs with the default 60 s handshake timeout, so "closed within
    2 s" means the proxy closed actively rather than timing the client out.
    """

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.proxy = cls.start_class_proxy()

    def send_and_expect_close(self, data):
        """Sends `data`; returns what came back before the proxy closed (within 2 s)."""
        with connect(self.proxy.port) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            s.settimeout(2)
            got = b""
            try:
                got = recv_all(s)
            except socket.timeout:
                self.fail(f"proxy kept the connection open after {data[:16].hex()}...")
        still_serving(self, self.proxy, self.origin)
        return got

    def test_first_byte_zero(self):
        """First byte 0x00 (no protocol): closed without a reply."""
        self.assertEqual(self.send_and_expect_close(b"\x00" + b"garbage" * 10), b"")

    def test_random_bytes(self):
        """Seeded random bytes, including ones that sniff as SOCKS4/5/HTTP: always closed."""
        for first in (None, 0x04, 0x05, ord("G")):
            for seed in range(3):
                data = random.Random(seed).randbytes(1024)
                if first is not None:
                    data = bytes([first]) + data[1:]
                with self.subTest(first=first, seed=seed):
                    self.send_and_expect_close(data)

    def test_http_origin_form_400(self):
        """A request in origin-form on the proxy port gets 400 with a text body, then close."""
        with connect(self.proxy.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            status, headers, body, _ = read_http_response(s)
            self.assertEqual(status, "HTTP/1.1 400 Bad Request")
            self.assertTrue(body.startswith(b"rulesocks: "), body)
            self.assertEqual(int(headers["content-length"]), len(body))
            self.assertIsNotNone(wait_closed(s, 2))
        still_serving(self, self.proxy, self.origin)

    def test_curl_plain_http_proxy(self):
        """curl using the proxy as a forward HTTP proxy (no -p) gets the page."""
        rc, out, err = curl("-x", f"http://{LOOP4}:{self.proxy.port}", self.origin.url("/hello"),
                            timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_socks5_greeting_without_methods(self):
        """SOCKS5 greeting with NMETHODS = 0 (malformed): closed without a reply."""
        self.assertEqual(self.send_and_expect_close(b"\x05\x00"), b"")

    def test_socks5_greeting_no_acceptable_method(self):
        """Greeting offering only GSSAPI (0x01): 05 FF, then close."""
        self.assertEqual(self.send_and_expect_close(b"\x05\x01\x01"), b"\x05\xff")

    def test_socks5_request_bad_version(self):
        """A request with VER 4 after a good greeting: method reply, failure reply, close."""
        got = self.send_and_expect_close(b"\x05\x01\x00" + b"\x04\x01\x00\x01\x7f\x00\x00\x01"
                                         b"\x00\x50")
        self.assertEqual(got[:2], b"\x05\x00")
        self.assertEqual(got[2:4], b"\x05\x01", got.hex())

    def test_oversized_http_head(self):
        """An endless HTTP header block is cut off (no unbounded buffering)."""
        data = b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (128 * 1024)
        got = self.send_and_expect_close(data)
        self.assertTrue(got == b"" or got.startswith(b"HTTP/1.1 4"), got[:64])


# ---------------------------------------------------------------------------
# Handshake timeout
# ---------------------------------------------------------------------------

class HandshakeTimeout(IntegrationCase):
    """With -t 1, a client stalled in the handshake is closed after about 1 s."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.proxy = cls.start_class_proxy("-t", "1")

    def assert_closed_after_timeout(self, sent):
        with connect(self.proxy.port) as s:
            if sent:
                s.sendall(sent)
            took = wait_closed(s, 5)
        self.assertIsNotNone(took, "stalled client still open 5 s later (-t 1)")
        self.assertGreaterEqual(took, 0.7, f"closed after {took:.2f} s: before the timeout")
        self.assertLessEqual(took, 3.0, f"closed after {took:.2f} s: too late for -t 1")

    def test_stall_after_one_byte(self):
        """One byte of a SOCKS5 greeting, then nothing: closed within ~1-3 s."""
        self.assert_closed_after_timeout(b"\x05")

    def test_stall_silent(self):
        """Connect and send nothing: closed within ~1-3 s."""
        self.assert_closed_after_timeout(b"")

    def test_stall_after_greeting(self):
        """A full greeting but no request: closed within ~1-3 s."""
        self.assert_closed_after_timeout(b"\x05\x01\x00")

    def test_stall_partial_http_head(self):
        """An HTTP CONNECT head without its final empty line: closed within ~1-3 s."""
        self.assert_closed_after_timeout(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n")

    def test_relayed_session_outlives_timeout(self):
        """The timeout covers the handshake only: an idle relayed session stays open."""
        with HoldServer() as hold, connect(self.proxy.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, hold.port)
            self.assertEqual(rep, 0, raw.hex())
            self.assertTrue(is_open(s, 2.0), "relayed session closed by the handshake timeout")

    def test_serves_others_while_one_stalls(self):
        """A stalled client does not block a concurrent download."""
        with connect(self.proxy.port) as stalled:
            stalled.sendall(b"\x05")
            rc, out, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}",
                                self.origin.url(f"/blob/{MiB}"), timeout=10)
            self.assertEqual(rc, 0, err)
            self.assertEqual(sha256(out), sha256(blob(MiB)))


# ---------------------------------------------------------------------------
# Graceful shutdown
# ---------------------------------------------------------------------------

class GracefulShutdown(IntegrationCase):
    """SIGTERM closes every session and exits 0 promptly."""

    def sigterm(self, proxy):
        code, took = proxy.stop(signal.SIGTERM)
        self.assertEqual(code, 0, f"exit code {code} after SIGTERM\n{proxy.log_tail()}")
        self.assertLess(took, 2.0, f"SIGTERM took {took:.2f} s")

    def test_sigterm_with_idle_relayed_session(self):
        """An idle, relayed SOCKS5 session: exit 0 within 2 s; the client sees EOF."""
        proxy = self.start_proxy()
        with HoldServer() as hold, connect(proxy.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, hold.port)
            self.assertEqual(rep, 0, raw.hex())
            self.sigterm(proxy)
            self.assertIsNotNone(wait_closed(s, 2), "client not closed at shutdown")

    def test_sigterm_with_half_open_session(self):
        """A client in mid-handshake: exit 0 within 2 s."""
        proxy = self.start_proxy()
        with connect(proxy.port) as s:
            s.sendall(b"\x05")
            time.sleep(0.1)
            self.sigterm(proxy)
            self.assertIsNotNone(wait_closed(s, 2))

    def test_sigterm_during_transfer(self):
        """A session with data in flight toward a peer that never reads: exit 0 within 2 s."""
        proxy = self.start_proxy()
        with HoldServer() as hold, connect(proxy.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, hold.port)
            self.assertEqual(rep, 0, raw.hex())
            s.sendall(b"x" * MiB)  # fills the socket buffers on both sides of the proxy
            self.sigterm(proxy)
            self.assertIsNotNone(wait_closed(s, 2))

    def test_sigint_exits_zero(self):
        """SIGINT is handled like SIGTERM: exit 0."""
        proxy = self.start_proxy()
        code, took = proxy.stop(signal.SIGINT)
        self.assertEqual(code, 0, proxy.log_tail())
        self.assertLess(took, 2.0)


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------

class MemoryStable(IntegrationCase):
    """Repeated 10 MiB transfers do not make the proxy's RSS grow."""

    def check(self, *args):
        origin = Origin().start()
        self.addCleanup(origin.stop)
        proxy = self.start_proxy(*args)
        url = origin.url(f"/blob/{BIG}")

        def transfer():
            rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}", url)
            self.assertEqual(rc, 0, err)
            self.assertEqual(len(out), BIG)

        for _ in range(2):  # warm up buffer pools and allocator arenas
            transfer()
        before = proxy.rss_kib()
        for _ in range(8):
            transfer()
        after = proxy.rss_kib()
        self.assertLess(after - before, 4096,
                        f"RSS grew from {before} KiB to {after} KiB over 8 transfers")

    def test_rss_stable(self):
        """Copying relay: RSS grows by less than 4 MiB over 8 transfers of 10 MiB."""
        self.check()

    def test_rss_stable_pipe(self):
        """--pipe relay: RSS grows by less than 4 MiB over 8 transfers of 10 MiB."""
        self.check("--pipe")


# ---------------------------------------------------------------------------
# File descriptor leaks
# ---------------------------------------------------------------------------

class FdLeak(IntegrationCase):
    """After a mix of every kind of session, the fd count returns to the baseline."""

    EXTRA_ARGS = ()

    def setUp(self):
        self.origin = Origin().start()
        self.addCleanup(self.origin.stop)
        self.proxy = self.start_proxy("-t", "1", *self.EXTRA_ARGS, http=True)

    def workload(self):
        """One of every kind of session this file tests, one after another."""
        port, origin = self.proxy.port, self.origin
        # successful transfers through every protocol, with and without names
        for args, host in ((("--socks4", f"{LOOP4}:{port}"), LOOP4),
                           (("--socks4a", f"{LOOP4}:{port}"), "localhost"),
                           (("--socks5", f"{LOOP4}:{port}"), LOOP4),
                           (("--socks5-hostname", f"{LOOP4}:{port}"), "localhost"),
                           (("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}"), LOOP4)):
            rc, out, err = curl(*args, origin.url(f"/blob/{MiB}", host))
            self.assertEqual(rc, 0, f"{args}: {err}")
        # dial failures: refused, unresolvable
        for url in (f"http://{LOOP4}:{closed_port()}/", f"http://{UNRESOLVABLE}/"):
            curl("--socks5-hostname", f"{LOOP4}:{port}", url, timeout=10)
            curl("-p", "-x", f"http://{LOOP4}:{port}", url, timeout=10)
        # garbage and unsupported requests
        for data in (b"\x00zzz", b"\x05\x00", b"GET / HTTP/1.1\r\n\r\n",
                     b"\x05\x01\x00" + socks5_request(LOOP4, 1, S5_BIND),
                     socks4_request(closed_port())):
            with connect(port) as s:
                s.sendall(data)
                wait_closed(s, 3)
        # stalled handshakes, closed by -t 1
        stalled = [connect(port) for _ in range(5)]
        for s in stalled:
            s.sendall(b"\x05")
        for s in stalled:
            self.assertIsNotNone(wait_closed(s, 4))
            s.close()
        # clients that vanish mid-handshake and mid-transfer
        for _ in range(5):
            with connect(port) as s:
                s.sendall(b"\x05\x01")
        for _ in range(3):
            with connect(port) as s:
                raw, rep = socks5_handshake(s, LOOP4, origin.port)
                self.assertEqual(rep, 0)
                s.sendall(f"GET /blob/{4 * MiB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                recv_exact(s, 64 * 1024)
                # close with RST while the proxy is still writing to us
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # half-close both ways
        server = SinkThenSendServer(blob(MiB)).start()
        with connect(port) as s:
            socks5_handshake(s, LOOP4, server.port)
            s.sendall(blob(MiB, seed=3))
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(len(recv_all(s)), MiB)
        server.join(10)

    def settle(self, baseline):
        """fd kinds once every non-pipe fd is back to `baseline` (or 5 s have passed)."""
        def non_pipe(kinds):
            return {k: v for k, v in kinds.items() if k != "pipe" and v}
        wait_until(lambda: non_pipe(self.proxy.fd_kinds()) == non_pipe(baseline), 5)
        kinds = self.proxy.fd_kinds()
        self.assertEqual(non_pipe(kinds), non_pipe(baseline),
                         f"fds left behind: {kinds} vs baseline {baseline}")
        return kinds

    def test_fd_count_returns_to_baseline(self):
        """Transfers, failures, garbage, stalls, aborts, half-close: no fd is left behind.

        The workload runs twice. Sockets (and every other non-pipe fd) must be
        back to the baseline after each round. Pipes may stay open only as
        rulesocks' idle splice-pipe pool (src/net/buffer_pool.cpp keeps up to 64
        idle pipes for reuse): the count must not grow from round 1 to round 2
        and stays within that bound. Without --pipe, the total fd count must
        equal the baseline exactly.
        """
        baseline = self.proxy.fd_kinds()
        self.workload()
        first = self.settle(baseline)
        self.workload()
        second = self.settle(baseline)
        self.assertLessEqual(second["pipe"], first["pipe"],
                             f"pipes grew from round 1 to round 2: {first} -> {second}")
        self.assertLessEqual(second["pipe"], 2 * 64)
        if "--pipe" not in self.EXTRA_ARGS:
            self.assertEqual(self.proxy.fd_count(), sum(baseline.values()),
                             f"fd count did not return to the baseline: {self.proxy.fd_kinds()}")


class PipeFdLeak(FdLeak):
    """The same workload with --pipe: sockets return to baseline, pipes only as a bounded pool."""

    EXTRA_ARGS = ("--pipe",)


if __name__ == "__main__":
    unittest.main()
