"""Operational flags of rulesocks: -f, -m, --max-startups, --auth-required, -x.

  Forwarding        -f: every -l connection goes to a fixed target
  MaxSessions       -m 2: the third concurrent session is refused
  MaxStartups       --max-startups 1:100:2: a second half-open connection is dropped
  AuthRequired      --auth-required: SOCKS5 / HTTP / SOCKS4 without credentials are refused
  ProxyChain        -x through a second rulesocks instance (socks5, socks4a, http)
  ChainHopTimeout   -t with a silent upstream hop: the client gets a timeout reply
  ProxyChainAuth    -x with credentials against an --auth-required upstream
  ForwardByRuleset  -f : -r FILE: the ruleset picks each forwarded connection's target
  FastOpen          TCP_FASTOPEN on listeners by default; --no-fastopen turns it off
  ProtoTimeout      --proto-timeout, neosocksd's old name of --bidir-timeout
  LogOutput         --log stdout|stderr|discard; -d without syslog falls back to stderr
"""

import ctypes
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import (
    BIN, LOOP4, MiB, HoldServer, IntegrationCase, Origin, SinkThenSendServer, blob,
    connect, curl, free_port, listening_inodes, read_http_response, read_socks5_reply, recv_all,
    recv_exact, sha256, socks4_request, socks5_handshake, socks5_request, wait_closed, wait_until,
)

BIG = 10 * MiB


def refused_promptly(port, timeout=2.0):
    """Connects and returns True when the proxy closes the connection (no reply) in time."""
    with connect(port) as s:
        took = wait_closed(s, timeout)
        return took is not None


def admitted(port, wait=0.3):
    """Connects and returns True if the connection is still open after `wait` seconds."""
    with connect(port) as s:
        return wait_closed(s, wait) is None


# ---------------------------------------------------------------------------
# -f port forwarding
# ---------------------------------------------------------------------------

class Forwarding(IntegrationCase):
    """-f ADDR: connections to the -l listener are forwarded to ADDR without a handshake."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.want = sha256(blob(BIG))

    def fetch(self, proxy):
        rc, out, err = curl(f"http://{LOOP4}:{proxy.port}/blob/{BIG}")
        self.assertEqual(rc, 0, f"curl failed: {err}")
        self.assertEqual(len(out), BIG)
        self.assertEqual(sha256(out), self.want)

    def test_forward_download(self):
        """curl http://127.0.0.1:FWDPORT/blob/... gets the origin's 10 MiB intact."""
        self.fetch(self.start_proxy("-f", f"{LOOP4}:{self.origin.port}"))

    def test_forward_download_pipe(self):
        """The same with --pipe (splice relay)."""
        self.fetch(self.start_proxy("--pipe", "-f", f"{LOOP4}:{self.origin.port}"))

    def test_forward_upload(self):
        """A 10 MiB POST through the forwarder reaches the origin intact."""
        proxy = self.start_proxy("-f", f"{LOOP4}:{self.origin.port}")
        data = blob(BIG, seed=5)
        with connect(proxy.port, timeout=30) as s:
            s.sendall(f"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                      "Connection: close\r\n\r\n".encode() + data)
            status, _, body, _ = read_http_response(s)
        self.assertEqual(status, "HTTP/1.1 200 OK")
        self.assertEqual(body.decode().split(), [str(BIG), sha256(data)])

    def test_forward_by_name(self):
        """-f localhost:PORT: the target name is resolved by the proxy."""
        self.fetch(self.start_proxy("-f", f"localhost:{self.origin.port}"))

    def test_forward_target_down(self):
        """When the target refuses, the client is closed (no bytes) and the proxy goes on."""
        proxy = self.start_proxy("-f", f"{LOOP4}:{free_port()}")
        with connect(proxy.port) as s:
            s.settimeout(5)
            self.assertEqual(recv_all(s), b"")
        self.assertTrue(proxy.alive)

    def test_forward_through_chain(self):
        """-f combined with -x: the forwarded connection goes through an upstream SOCKS5 proxy."""
        upstream = self.start_proxy(name="upstream")
        proxy = self.start_proxy("-f", f"{LOOP4}:{self.origin.port}",
                                 "-x", f"socks5://{LOOP4}:{upstream.port}")
        self.fetch(proxy)
        self.assertIn(f"socks5 -> {LOOP4}:{self.origin.port}", upstream.log_text())


# ---------------------------------------------------------------------------
# -f : the ruleset picks the target (neosocksd's load-balancer example)
# ---------------------------------------------------------------------------

class ForwardByRuleset(IntegrationCase):
    """-f : -r FILE: each forwarded connection asks ruleset.resolve(":0") for its target,
    as neosocksd does with its empty forward address."""

    @classmethod
    def setUpClass(cls):
        cls.origins = [cls.start_class_origin(), cls.start_class_origin()]

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rulesocks-lb-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def ruleset(self, text):
        path = os.path.join(self.dir, "lb.lua")
        with open(path, "w") as f:
            f.write(text)  # require("libruleset") finds the installed lua/ directory
        return path

    def fetch_all(self, proxy, n):
        for _ in range(n):
            rc, out, err = curl(f"http://{LOOP4}:{proxy.port}/hello", timeout=10)
            self.assertEqual((rc, out), (0, b"hello from origin\n"), err + proxy.log_tail())

    def routed_to(self, proxy):
        """The origin ports the forwarded sessions went to, in order (from the log)."""
        return [int(p) for p in re.findall(r"forward -> :0 via 127\.0\.0\.1:(\d+)",
                                           proxy.log_text())]

    def test_libruleset_lb_balances_over_two_origins(self):
        """neosocksd's lb.lua: route_default = lb.roundrobin of two redirects."""
        a, b = (o.port for o in self.origins)
        path = self.ruleset(
            "_G.libruleset = require('libruleset')\n"
            f"_G.route_default = {{ lb.roundrobin({{ rule.redirect('127.0.0.1:{a}'),"
            f" rule.redirect('127.0.0.1:{b}') }}) }}\n"
            "return _G.libruleset\n")
        proxy = self.start_proxy("-f", ":", "-r", path)
        self.fetch_all(proxy, 4)
        self.assertTrue(wait_until(lambda: len(self.routed_to(proxy)) == 4, 5), proxy.log_tail())
        self.assertEqual(self.routed_to(proxy), [a, b, a, b])

    def test_route_function_sees_the_empty_address(self):
        """A tiny ruleset: resolve gets ":0" and no credentials; nil rejects."""
        a, b = (o.port for o in self.origins)
        path = self.ruleset(
            "local n = 0\n"
            "_G.ruleset = { resolve = function(addr, user, pass)\n"
            "  assert(addr == ':0' and user == nil and pass == nil, addr)\n"
            "  n = n + 1\n"
            f"  if n == 3 then return nil end\n"
            f"  return n % 2 == 1 and '127.0.0.1:{a}' or '127.0.0.1:{b}'\n"
            "end }\n")
        proxy = self.start_proxy("-f", ":", "-r", path)
        self.fetch_all(proxy, 2)
        rc, out, _ = curl(f"http://{LOOP4}:{proxy.port}/hello", timeout=10)
        self.assertNotEqual(rc, 0, "the third connection is rejected by the ruleset")
        self.assertEqual(out, b"")
        self.fetch_all(proxy, 1)
        self.assertEqual(self.routed_to(proxy), [a, b, b])
        self.assertTrue(proxy.alive)

    def test_without_a_ruleset_is_refused_at_start_up(self):
        p = subprocess.run([BIN, "-l", f"{LOOP4}:{free_port()}", "-f", ":"],
                           capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("-f : needs a ruleset", p.stdout.decode() + p.stderr.decode())


# ---------------------------------------------------------------------------
# TCP Fast Open on listeners
# ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_getfd = 438


def listener_fastopen(proxy, port):
    """TCP_FASTOPEN of the proxy's listening socket on `port`, read from a duplicate of
    that very socket (pidfd_getfd(2): the test started the proxy, so it may)."""
    inode = next(iter(listening_inodes(port)))
    fd_dir = f"/proc/{proxy.pid}/fd"
    for name in os.listdir(fd_dir):
        if os.readlink(f"{fd_dir}/{name}") == f"socket:[{inode}]":
            pidfd = os.pidfd_open(proxy.pid)
            try:
                dup = _libc.syscall(SYS_pidfd_getfd, pidfd, int(name), 0)
                if dup < 0:
                    raise OSError(ctypes.get_errno(), "pidfd_getfd")
            finally:
                os.close(pidfd)
            with socket.socket(fileno=dup) as s:
                return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN)
    raise AssertionError(f"no fd of proxy {proxy.pid} holds the listener on {port}")


class FastOpen(IntegrationCase):
    """Listeners set TCP_FASTOPEN (RFC 7413), as neosocksd's do, unless --no-fastopen."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()

    def fetch(self, proxy):
        rc, out, err = curl("--socks5", f"{LOOP4}:{proxy.port}",
                            f"http://{LOOP4}:{self.origin.port}/hello", timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def fastopen_client(self, port):
        """A SOCKS5 greeting sent with MSG_FASTOPEN (data in the SYN when the kernel may)."""
        with socket.socket() as s:
            # blocking: a sendto() that connects would otherwise fail with EINPROGRESS
            s.sendto(b"\x05\x01\x00", socket.MSG_FASTOPEN, (LOOP4, port))
            s.settimeout(5)
            self.assertEqual(recv_exact(s, 2), b"\x05\x00")

    def test_on_by_default(self):
        proxy = self.start_proxy(http=True, api=True)
        for port in (proxy.port, proxy.http_port):
            self.assertGreater(listener_fastopen(proxy, port), 0, port)
        self.fetch(proxy)
        self.fastopen_client(proxy.port)

    def test_no_fastopen(self):
        proxy = self.start_proxy("--no-fastopen", http=True)
        for port in (proxy.port, proxy.http_port):
            self.assertEqual(listener_fastopen(proxy, port), 0, port)
        self.fetch(proxy)
        self.fastopen_client(proxy.port)


# ---------------------------------------------------------------------------
# --proto-timeout
# ---------------------------------------------------------------------------

class ProtoTimeout(IntegrationCase):
    """--proto-timeout (no argument) is --bidir-timeout: an idle relayed session is closed
    after -t seconds; without it the session stays."""

    def setUp(self):
        self.hold = HoldServer().start()
        self.addCleanup(self.hold.close)

    def idle_session_closes(self, proxy):
        with connect(proxy.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, self.hold.port)
            self.assertEqual(rep, 0, raw.hex())
            return wait_closed(s, 3) is not None

    def test_proto_timeout_is_bidir_timeout(self):
        for flag in ("--proto-timeout", "--bidir-timeout"):
            with self.subTest(flag=flag):
                self.assertTrue(self.idle_session_closes(self.start_proxy(flag, "-t", "1")))
        self.assertFalse(self.idle_session_closes(self.start_proxy("-t", "1")))

    def test_help_lists_the_new_flags(self):
        out = subprocess.run([BIN, "--help"], capture_output=True, timeout=10).stdout.decode()
        for flag in ("--proto-timeout", "--no-fastopen", "-f,--forward"):
            self.assertIn(flag, out)
        self.assertIn('":"', out)


# ---------------------------------------------------------------------------
# -m max sessions
# ---------------------------------------------------------------------------

class MaxSessions(IntegrationCase):
    """-m 2: at most two concurrent sessions."""

    def setUp(self):
        self.origin = Origin().start()
        self.addCleanup(self.origin.stop)
        self.proxy = self.start_proxy("-m", "2")

    def open_session(self):
        """A relayed, idle SOCKS5 session to the HTTP origin (which closes when we do)."""
        s = connect(self.proxy.port)
        self.addCleanup(s.close)
        raw, rep = socks5_handshake(s, LOOP4, self.origin.port)
        self.assertEqual(rep, 0, raw.hex())
        return s

    def test_third_session_refused(self):
        """With two relayed sessions open, a third connection is closed at once."""
        self.open_session()
        self.open_session()
        with connect(self.proxy.port) as s:
            took = wait_closed(s, 2)
        self.assertIsNotNone(took, "third concurrent session was admitted with -m 2")
        self.assertLess(took, 1.0)

    def test_half_open_sessions_count(self):
        """Sessions still in their handshake count too: a third is refused."""
        a, b = connect(self.proxy.port), connect(self.proxy.port)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.sendall(b"\x05")
        b.sendall(b"\x05")
        self.assertTrue(refused_promptly(self.proxy.port))

    def test_slot_frees_when_session_ends(self):
        """After one of the two sessions closes, a new session is admitted again."""
        first = self.open_session()
        self.open_session()
        self.assertTrue(refused_promptly(self.proxy.port))
        first.close()
        self.assertTrue(wait_until(lambda: admitted(self.proxy.port), 3),
                        "no session admitted after a slot was freed")
        rc, out, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}",
                            self.origin.url("/hello"), timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)


# ---------------------------------------------------------------------------
# --max-startups
# ---------------------------------------------------------------------------

class MaxStartups(IntegrationCase):
    """--max-startups 1:100:2: beyond one half-open connection, new ones are dropped."""

    def setUp(self):
        self.hold = HoldServer().start()
        self.addCleanup(self.hold.close)
        self.proxy = self.start_proxy("--max-startups", "1:100:2")

    def test_second_half_open_dropped(self):
        """One client stalled in its handshake: the next connection is closed at once."""
        with connect(self.proxy.port) as stalled:
            stalled.sendall(b"\x05")
            with connect(self.proxy.port) as s:
                took = wait_closed(s, 2)
            self.assertIsNotNone(took, "second half-open connection admitted")
            self.assertLess(took, 1.0)
            self.assertFalse(wait_closed(stalled, 0.2), "the first half-open client was dropped")

    def test_established_sessions_do_not_count(self):
        """Once the first client finishes its handshake, new connections are admitted again."""
        with connect(self.proxy.port) as first:
            first.sendall(b"\x05")
            self.assertTrue(refused_promptly(self.proxy.port))
            first.sendall(b"\x01\x00")
            self.assertEqual(recv_exact(first, 2), b"\x05\x00")
            first.sendall(socks5_request(LOOP4, self.hold.port))
            raw, rep = read_socks5_reply(first)
            self.assertEqual(rep, 0, raw.hex())
            self.assertTrue(wait_until(lambda: admitted(self.proxy.port), 3),
                            "connection dropped although no other client is half-open")


# ---------------------------------------------------------------------------
# --auth-required
# ---------------------------------------------------------------------------

class AuthRequired(IntegrationCase):
    """--auth-required: every protocol must carry credentials."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.proxy = cls.start_class_proxy("--auth-required", http=True)

    def test_socks5_no_auth_only_gets_ff(self):
        """A greeting offering only "no auth" gets method 0xFF, then close."""
        with connect(self.proxy.port) as s:
            s.sendall(b"\x05\x01\x00")
            self.assertEqual(recv_exact(s, 2), b"\x05\xff")
            self.assertIsNotNone(wait_closed(s, 2))

    def test_socks5_password_method_selected(self):
        """A greeting offering "no auth" and username/password gets method 0x02."""
        with connect(self.proxy.port) as s:
            s.sendall(b"\x05\x02\x00\x02")
            self.assertEqual(recv_exact(s, 2), b"\x05\x02")

    def test_socks5_empty_username_refused(self):
        """RFC 1929 auth with an empty username: status non-zero, then close."""
        with connect(self.proxy.port) as s:
            s.sendall(b"\x05\x01\x02")
            self.assertEqual(recv_exact(s, 2), b"\x05\x02")
            s.sendall(b"\x01\x00\x00")
            reply = recv_exact(s, 2)
            self.assertEqual(reply[0], 1, reply.hex())
            self.assertNotEqual(reply[1], 0, "empty username accepted")
            self.assertIsNotNone(wait_closed(s, 2))
        # The log names the reason, with the protocol named once.
        line = "closing: socks5: empty username"
        self.assertTrue(wait_until(lambda: line in self.proxy.log_text(), 2), self.proxy.log_tail())
        self.assertIsNone(re.search(r"\b(socks4a?|socks5|http): \1: ", self.proxy.log_text()),
                          self.proxy.log_tail())

    def test_socks5_with_credentials_download(self):
        """curl -x socks5://alice:secret@ downloads 10 MiB intact."""
        rc, out, err = curl("-x", f"socks5://alice:secret@{LOOP4}:{self.proxy.port}",
                            self.origin.url(f"/blob/{BIG}"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(BIG)))

    def test_socks5h_with_credentials(self):
        """curl -x socks5h://alice:secret@ with a name resolved by the proxy."""
        rc, out, err = curl("-x", f"socks5h://alice:secret@{LOOP4}:{self.proxy.port}",
                            self.origin.url("/hello", "localhost"), timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_curl_socks5_without_credentials_fails(self):
        """curl --socks5 without credentials fails with "No authentication method"."""
        rc, _, err = curl("--socks5", f"{LOOP4}:{self.proxy.port}", self.origin.url("/hello"),
                          timeout=10)
        self.assertEqual(rc, 97, err)
        self.assertIn("authentication", err.lower())

    def test_http_without_credentials_407(self):
        """CONNECT without Proxy-Authorization: 407 with Proxy-Authenticate: Basic."""
        with connect(self.proxy.http_port) as s:
            target = f"{LOOP4}:{self.origin.port}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, headers, body, _ = read_http_response(s)
            self.assertEqual(status, "HTTP/1.1 407 Proxy Authentication Required")
            self.assertTrue(headers.get("proxy-authenticate", "").startswith("Basic"), headers)
            self.assertEqual(int(headers["content-length"]), len(body))
            self.assertIsNotNone(wait_closed(s, 2))

    def test_curl_http_without_credentials_407(self):
        """curl -p -x http:// without credentials reports 407."""
        rc, _, err = curl("-p", "-x", f"http://{LOOP4}:{self.proxy.http_port}",
                          self.origin.url("/hello"), timeout=10)
        self.assertEqual(rc, 56, err)
        self.assertIn("407", err)

    def test_http_with_credentials_download(self):
        """curl -p -x http://alice:secret@ downloads 10 MiB intact."""
        rc, out, err = curl("-p", "-x", f"http://alice:secret@{LOOP4}:{self.proxy.http_port}",
                            self.origin.url(f"/blob/{BIG}"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(BIG)))

    def test_socks4_empty_userid_5b(self):
        """SOCKS4 with an empty USERID is rejected with 5B."""
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(self.origin.port))
            reply = recv_exact(s, 8)
            self.assertEqual(reply[:2], b"\x00\x5b", reply.hex())
            self.assertIsNotNone(wait_closed(s, 2))

    def test_socks4_with_userid_granted(self):
        """SOCKS4 with USERID "alice" is granted (5A) and relays."""
        with connect(self.proxy.port) as s:
            s.sendall(socks4_request(self.origin.port, userid=b"alice"))
            reply = recv_exact(s, 8)
            self.assertEqual(reply[:2], b"\x00\x5a", reply.hex())
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status, _, body, _ = read_http_response(s)
        self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello from origin\n"))


# ---------------------------------------------------------------------------
# -x proxy chain
# ---------------------------------------------------------------------------

class ProxyChain(IntegrationCase):
    """-x through a second rulesocks instance ("upstream")."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.upstream = cls.start_class_proxy(http=True, name="upstream")
        cls.want = sha256(blob(BIG))

    def front(self, chain):
        return self.start_proxy("-x", chain, name="front")

    def download_via(self, front):
        rc, out, err = curl("--socks5", f"{LOOP4}:{front.port}", self.origin.url(f"/blob/{BIG}"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out), BIG)
        self.assertEqual(sha256(out), self.want)

    def assert_upstream_carried(self, frontend, target):
        line = f"{frontend} -> {target}"
        self.assertTrue(wait_until(lambda: line in self.upstream.log_text(), 2),
                        f"upstream log has no \"{line}\"")

    def test_chain_socks5(self):
        """-x socks5://upstream: 10 MiB intact, the upstream saw a SOCKS5 request."""
        self.download_via(self.front(f"socks5://{LOOP4}:{self.upstream.port}"))
        self.assert_upstream_carried("socks5", f"{LOOP4}:{self.origin.port}")

    def test_chain_socks4a(self):
        """-x socks4a://upstream: 10 MiB intact, the upstream saw a SOCKS4 request."""
        self.download_via(self.front(f"socks4a://{LOOP4}:{self.upstream.port}"))
        self.assert_upstream_carried("socks4", f"{LOOP4}:{self.origin.port}")

    def test_chain_http(self):
        """-x http://upstream (CONNECT): 10 MiB intact, the upstream saw a CONNECT."""
        self.download_via(self.front(f"http://{LOOP4}:{self.upstream.http_port}"))
        self.assert_upstream_carried("http", f"{LOOP4}:{self.origin.port}")

    def test_chain_name_resolved_at_the_end(self):
        """A host name travels down the chain and is resolved by the last hop."""
        front = self.front(f"socks5://{LOOP4}:{self.upstream.port}")
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{front.port}",
                            self.origin.url("/hello", "localhost"), timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assert_upstream_carried("socks5", f"localhost:{self.origin.port}")

    def test_chain_two_hops(self):
        """-x socks5://upstream,http://upstream: two hops, 10 MiB intact."""
        self.download_via(self.front(f"socks5://{LOOP4}:{self.upstream.port},"
                                     f"http://{LOOP4}:{self.upstream.http_port}"))
        self.assert_upstream_carried("socks5", f"{LOOP4}:{self.upstream.http_port}")
        self.assert_upstream_carried("http", f"{LOOP4}:{self.origin.port}")

    def test_chain_half_close(self):
        """Half-close works across a chain: the origin sees EOF and its reply arrives whole."""
        front = self.front(f"socks5://{LOOP4}:{self.upstream.port}")
        up, down = blob(MiB, seed=21), blob(2 * MiB, seed=22)
        server = SinkThenSendServer(down).start()
        with connect(front.port, timeout=30) as s:
            raw, rep = socks5_handshake(s, LOOP4, server.port)
            self.assertEqual(rep, 0, raw.hex())
            s.sendall(up)
            s.shutdown(socket.SHUT_WR)
            got = recv_all(s)
        self.assertTrue(server.join(10))
        self.assertEqual((server.received_len, server.received_sha256), (len(up), sha256(up)))
        self.assertEqual(sha256(got), sha256(down))

    def test_chain_refused_target_rep_05(self):
        """A refused target behind a SOCKS5 hop: the hop's REP 0x05 reaches the client."""
        front = self.front(f"socks5://{LOOP4}:{self.upstream.port}")
        with connect(front.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, free_port())
            self.assertEqual(rep, 0x05, raw.hex())
            self.assertIsNotNone(wait_closed(s, 5))

    def test_chain_first_hop_down(self):
        """When the first hop itself is down, the client gets a failure REP and a close."""
        front = self.front(f"socks5://{LOOP4}:{free_port()}")
        with connect(front.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertIsNotNone(rep, f"truncated reply {raw.hex()}")
            self.assertNotEqual(rep, 0, "success reported although the hop is down")
            self.assertIsNotNone(wait_closed(s, 5))


class ChainHopTimeout(IntegrationCase):
    """-t 1 with a first hop that accepts TCP but never answers the SOCKS5 greeting.

    The dial cannot finish, so after about 1 s the client must learn that it
    timed out: REP 0x06 (TTL expired) for SOCKS5 and 504 for HTTP CONNECT,
    which is how src/net/dial_error.hpp maps DialError::kTimeout.
    """

    def setUp(self):
        self.hold = HoldServer().start()
        self.addCleanup(self.hold.close)
        self.proxy = self.start_proxy("-t", "1", "-x", f"socks5://{LOOP4}:{self.hold.port}",
                                      http=True, name="front")

    def test_socks5_silent_hop_rep_06(self):
        """SOCKS5 client: REP 0x06 within ~1-3 s, then close."""
        with connect(self.proxy.port) as s:
            t0 = time.monotonic()
            raw, rep = socks5_handshake(s, LOOP4, 80)
            took = time.monotonic() - t0
        self.assertEqual(rep, 0x06, f"reply {raw.hex() or '(none, closed)'} after {took:.2f} s")
        self.assertLess(took, 3.0)

    def test_http_silent_hop_504(self):
        """HTTP CONNECT client: 504 Gateway Timeout within ~1-3 s."""
        with connect(self.proxy.http_port) as s:
            t0 = time.monotonic()
            s.sendall(f"CONNECT {LOOP4}:80 HTTP/1.1\r\nHost: {LOOP4}:80\r\n\r\n".encode())
            status, _, _, raw = read_http_response(s)
            took = time.monotonic() - t0
        self.assertEqual(status, "HTTP/1.1 504 Gateway Timeout",
                         f"got {raw!r} after {took:.2f} s")
        self.assertLess(took, 3.0)


class ProxyChainAuth(IntegrationCase):
    """-x with credentials, to an upstream started with --auth-required."""

    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.upstream = cls.start_class_proxy("--auth-required", http=True, name="upstream")

    def fetch_via(self, chain):
        front = self.start_proxy("-x", chain, name="front")
        return curl("--socks5", f"{LOOP4}:{front.port}", self.origin.url("/hello"), timeout=10)

    def test_socks5_hop_with_credentials(self):
        """-x socks5://alice:secret@upstream works against --auth-required."""
        rc, out, err = self.fetch_via(f"socks5://alice:secret@{LOOP4}:{self.upstream.port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_http_hop_with_credentials(self):
        """-x http://alice:secret@upstream sends Proxy-Authorization."""
        rc, out, err = self.fetch_via(f"http://alice:secret@{LOOP4}:{self.upstream.http_port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_socks4a_hop_with_userid(self):
        """-x socks4a://alice@upstream sends USERID alice."""
        rc, out, err = self.fetch_via(f"socks4a://alice@{LOOP4}:{self.upstream.port}")
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)

    def test_socks5_hop_without_credentials_rep_02(self):
        """-x socks5://upstream without credentials: the client gets REP 0x02 (not allowed)."""
        front = self.start_proxy("-x", f"socks5://{LOOP4}:{self.upstream.port}", name="front")
        with connect(front.port) as s:
            raw, rep = socks5_handshake(s, LOOP4, self.origin.port)
        self.assertEqual(rep, 0x02, raw.hex())


# ---------------------------------------------------------------------------
# --log
# ---------------------------------------------------------------------------

class LogOutput(IntegrationCase):
    """--log picks the stream; -d without a syslog daemon warns and keeps stderr."""

    def run_briefly(self, *args):
        port = free_port()
        p = subprocess.Popen([BIN, "-l", f"{LOOP4}:{port}", *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.assertTrue(wait_until(lambda: listening_inodes(port), 10))
        finally:
            p.terminate()
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        return out.decode(), err.decode()

    def test_stdout_stderr_discard(self):
        out, err = self.run_briefly("--log", "stdout")
        self.assertIn("started", out)
        self.assertNotIn("started", err)
        out, err = self.run_briefly("--log", "stderr")
        self.assertIn("started", err)
        self.assertEqual(out, "")
        out, err = self.run_briefly("--log", "discard")
        self.assertEqual((out, err), ("", ""))

    def test_bad_output_is_refused(self):
        r = subprocess.run([BIN, "-l", f"{LOOP4}:1", "--log", "journal"], capture_output=True,
                           text=True, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--log", r.stderr)

    def test_syslog_fallback(self):
        if os.path.exists("/dev/log"):
            self.skipTest("a syslog daemon listens on /dev/log: nothing falls back")
        out, err = self.run_briefly("--log", "syslog")
        self.assertIn("syslog is absent", err)
        self.assertIn("started", err)


if __name__ == "__main__":
    unittest.main()
