"""rulesocks with other proxies around it: upstream peers, chains, faults, operations flags.

  ThirdPartyPeers   -x to microsocks (with and without RFC 1929 credentials), danted and
                    tinyproxy from Debian packages: 10 MiB intact; wrong credentials give
                    the client REP 0x02 at once
  Chains            two and three hops of other rulesocks instances, one of each scheme,
                    with and without credentials, a chain ending in microsocks, --pipe
  Faults            a dead hop, a silent hop (-t 1), wrong upstream credentials: the
                    protocol's error reply in time, while another client's 10 MiB
                    transfer through the same front instance completes intact
  Socks4aNames      targets SOCKS4 has no field for (0.0.0.x, IPv6) reach a real upstream
                    through a socks4a:// hop as SOCKS4A names, at once (they used to
                    wait for -t); credentials a scheme cannot carry are refused at -x
  Operations        -d, -u, --reuseport, -i, --tcp-sndbuf/--tcp-rcvbuf, --help, --version

The third-party peers (/usr/bin/microsocks, /usr/sbin/danted, /usr/bin/tinyproxy) are
required: contrib/dev.sh test installs them, and a missing one fails its tests.
"""

import concurrent.futures
import contextlib
import hashlib
import os
import pwd
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (
    BIN, HERE, LOOP4, MiB, HoldServer, IntegrationCase, SwitchHop, blob, connect, curl,
    danted, free_port, listening_inodes, microsocks, pids_holding, proc_gone, proc_status,
    read_http_head, read_http_response, recv_exact, sha256, socket_inodes, socks4_request,
    socks5_handshake, socks5_reply_bytes, tinyproxy, wait_closed, wait_until,
)

BIG = 10 * MiB
USER, PASSWORD = "alice", "secret"


def hop_uri(scheme, port, auth=False):
    """A -x entry for a hop on 127.0.0.1: socks4a carries a USERID, the others user:pass."""
    cred = "" if not auth else f"{USER}@" if scheme == "socks4a" else f"{USER}:{PASSWORD}@"
    return f"{scheme}://{cred}{LOOP4}:{port}"


class PeerCase(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()
        cls.want = sha256(blob(BIG))

    def assert_download(self, *client_args):
        """curl CLIENT_ARGS http://origin/blob/10MiB: exit 0, every byte intact."""
        rc, out, err = curl(*client_args, self.origin.url(f"/blob/{BIG}"))
        self.assertEqual(rc, 0, f"curl {' '.join(map(str, client_args))}: {err}")
        self.assertEqual(len(out), BIG)
        self.assertEqual(sha256(out), self.want)

    def assert_logged(self, service, text, since=0, timeout=2):
        self.assertTrue(wait_until(lambda: text in service.log_text()[since:], timeout),
                        f"{service.name} log has no \"{text}\":\n{service.log_tail()}")

    def socks5_error(self, port, target_port=None):
        """A SOCKS5 CONNECT to the origin (or target_port) through `port`:
        returns (raw reply, REP, seconds until the reply, seconds until the close)."""
        with connect(port) as s:
            t0 = time.monotonic()
            raw, rep = socks5_handshake(s, LOOP4, target_port or self.origin.port)
            took = time.monotonic() - t0
            closed = wait_closed(s, 5)
        return raw, rep, took, closed

    def http_error(self, port, target_port=None):
        """An HTTP CONNECT to the origin through `port`: (status line, raw head, seconds)."""
        target = f"{LOOP4}:{target_port or self.origin.port}"
        with connect(port) as s:
            t0 = time.monotonic()
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            status, _, _, raw = read_http_response(s)
            return status, raw, time.monotonic() - t0


# ---------------------------------------------------------------------------
# Third-party upstream proxies
# ---------------------------------------------------------------------------

class ThirdPartyPeers(PeerCase):
    """-x to proxies that are not rulesocks: whatever we speak must be what they expect."""

    def test_microsocks(self):
        """-x socks5://microsocks: 10 MiB intact, and microsocks made the connection."""
        ms = self.start_peer(microsocks())
        front = self.start_proxy("-x", ms.url("socks5"), name="front")
        self.assert_download("--socks5", f"{LOOP4}:{front.port}")
        self.assert_logged(ms, f"connected to {LOOP4}:{self.origin.port}")

    def test_microsocks_credentials(self):
        """-x socks5://user:pass@microsocks (microsocks -u -P): 10 MiB intact."""
        ms = self.start_peer(microsocks(USER, PASSWORD))
        front = self.start_proxy("-x", ms.url("socks5", USER, PASSWORD), name="front")
        self.assert_download("-x", f"socks5h://{LOOP4}:{front.port}")
        self.assert_logged(ms, f"connected to {LOOP4}:{self.origin.port}")

    def test_microsocks_wrong_credentials_rep_02(self):
        """Wrong or missing credentials for microsocks: REP 0x02 / HTTP 403 within 2 s."""
        ms = self.start_peer(microsocks(USER, PASSWORD))
        for name, uri in (("wrong password", ms.url("socks5", USER, "wrong")),
                          ("no credentials", ms.url("socks5"))):
            with self.subTest(name):
                front = self.start_proxy("-x", uri, http=True, name="front")
                raw, rep, took, closed = self.socks5_error(front.port)
                self.assertEqual(raw, socks5_reply_bytes(0x02), f"REP {rep}: {raw.hex()}")
                self.assertLess(took, 2.0)
                self.assertIsNotNone(closed, "not closed after the failure reply")
                status, head, took = self.http_error(front.http_port)
                self.assertEqual(status, "HTTP/1.1 403 Forbidden", head)
                self.assertLess(took, 2.0)
                self.assertTrue(front.alive)

    def test_danted(self):
        """-x socks5://danted: 10 MiB intact through Dante."""
        dante = self.start_peer(danted())
        front = self.start_proxy("-x", dante.url("socks5"), name="front")
        self.assert_download("--socks5", f"{LOOP4}:{front.port}")
        self.assert_logged(dante, f"{LOOP4}.{self.origin.port}")

    def test_tinyproxy(self):
        """-x http://tinyproxy (CONNECT): 10 MiB intact; the client speaks HTTP CONNECT too."""
        tp = self.start_peer(tinyproxy([self.origin.port]))
        front = self.start_proxy("-x", tp.url("http"), socks=False, http=True, name="front")
        self.assert_download("-p", "-x", f"http://{LOOP4}:{front.http_port}")
        self.assert_logged(tp, f"CONNECT {LOOP4}:{self.origin.port}")


# ---------------------------------------------------------------------------
# Chains of rulesocks instances
# ---------------------------------------------------------------------------

class Chains(PeerCase):
    """-x with two and three hops, each hop another rulesocks instance."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.open = [cls.start_class_proxy(http=True, name=f"hop{i}") for i in (1, 2, 3)]
        cls.auth = [cls.start_class_proxy("--auth-required", http=True, name=f"authhop{i}")
                    for i in (1, 2, 3)]
        cls.ms = cls.start_class_peer(microsocks(USER, PASSWORD))

    @staticmethod
    def port_of(hop, scheme):
        return hop.http_port if scheme == "http" else hop.port

    def run_chain(self, schemes, hops, auth, client, *front_args):
        """Builds -x from (scheme, instance) pairs, downloads 10 MiB, then checks in each
        hop's log that it carried the request to the next hop (the last to the origin)."""
        marks = [len(h.log_text()) for h in hops]
        chain = ",".join(hop_uri(s, self.port_of(h, s), auth) for s, h in zip(schemes, hops))
        front = self.start_proxy(*front_args, "-x", chain, http=True, name="front")
        if client == "http":
            self.assert_download("-p", "-x", f"http://{LOOP4}:{front.http_port}")
        else:
            self.assert_download(f"--{client}", f"{LOOP4}:{front.port}")
        nexts = [f"{LOOP4}:{self.port_of(h, s)}" for s, h in zip(schemes[1:], hops[1:])]
        nexts.append(f"{LOOP4}:{self.origin.port}")
        for scheme, hop, mark, nxt in zip(schemes, hops, marks, nexts):
            # The hop's frontend logs "socks4" for a SOCKS4A request to an IPv4 address.
            name = "socks4" if scheme == "socks4a" else scheme
            self.assert_logged(hop, f": {name} -> {nxt}", since=mark)
        return front

    def test_two_hops_socks5_http(self):
        """socks5 -> http, no credentials; curl speaks SOCKS5 to the front."""
        self.run_chain(["socks5", "http"], self.open[:2], False, "socks5")

    def test_two_hops_http_socks4a(self):
        """http -> socks4a, no credentials; curl speaks HTTP CONNECT to the front."""
        self.run_chain(["http", "socks4a"], self.open[:2], False, "http")

    def test_two_hops_auth_socks4a_socks5(self):
        """socks4a (USERID) -> socks5 (user:pass), both --auth-required."""
        self.run_chain(["socks4a", "socks5"], self.auth[:2], True, "socks5")

    def test_three_hops_socks4a_socks5_http(self):
        """socks4a -> socks5 -> http, no credentials; curl speaks SOCKS4A to the front."""
        self.run_chain(["socks4a", "socks5", "http"], self.open, False, "socks4a")

    def test_three_hops_auth_http_socks5_socks4a(self):
        """http -> socks5 -> socks4a, every hop --auth-required and given credentials."""
        self.run_chain(["http", "socks5", "socks4a"], self.auth, True, "socks5")

    def test_three_hops_pipe(self):
        """socks5 -> http -> socks4a with credentials and --pipe on the front instance."""
        front = self.run_chain(["socks5", "http", "socks4a"], self.auth, True, "socks5", "--pipe")
        self.assertTrue(front.alive)

    def mixed_chain(self):
        return ",".join([hop_uri("socks5", self.open[0].port),
                         hop_uri("http", self.open[1].http_port),
                         self.ms.url("socks5", USER, PASSWORD)])

    def test_three_hops_ending_in_microsocks(self):
        """rulesocks -> rulesocks (socks5) -> rulesocks (http) -> microsocks (user:pass)."""
        front = self.start_proxy("-x", self.mixed_chain(), name="front")
        mark = len(self.ms.log_text())
        self.assert_download("--socks5", f"{LOOP4}:{front.port}")
        self.assert_logged(self.ms, f"connected to {LOOP4}:{self.origin.port}", since=mark)

    def test_three_hops_ending_in_microsocks_pipe(self):
        """The same mixed chain with --pipe on the front instance."""
        front = self.start_proxy("--pipe", "-x", self.mixed_chain(), name="front")
        self.assert_download("--socks5", f"{LOOP4}:{front.port}")

    def test_dead_second_hop(self):
        """socks5://hop1,socks5://<nothing listening>: hop1's REP 0x05 reaches the client."""
        front = self.start_proxy(
            "-x", f"{hop_uri('socks5', self.open[0].port)},{hop_uri('socks5', free_port())}",
            name="front")
        raw, rep, took, closed = self.socks5_error(front.port)
        self.assertEqual(raw, socks5_reply_bytes(0x05), f"REP {rep}: {raw.hex()}")
        self.assertLess(took, 2.0)
        self.assertIsNotNone(closed)

    def test_silent_second_hop(self):
        """socks5://hop1,http://<silent>, -t 1 on the front: hop1 connects to the silent
        hop, whose CONNECT reply never comes; the client gets REP 0x06 after about 1 s."""
        with HoldServer() as hold:
            front = self.start_proxy(
                "-t", "1", "-x", f"{hop_uri('socks5', self.open[0].port)},"
                                 f"{hop_uri('http', hold.port)}", name="front")
            mark = len(self.open[0].log_text())
            raw, rep, took, closed = self.socks5_error(front.port)
            self.assertEqual(raw, socks5_reply_bytes(0x06), f"REP {rep}: {raw.hex()}")
            self.assertGreater(took, 0.8)
            self.assertLess(took, 3.0)
            self.assertIsNotNone(closed)
            self.assert_logged(self.open[0], f"socks5 -> {LOOP4}:{hold.port}", since=mark)
            self.assertTrue(front.alive)


# ---------------------------------------------------------------------------
# Faults while other sessions run
# ---------------------------------------------------------------------------

class Bystander(threading.Thread):
    """A SOCKS5 client downloading 10 MiB from the origin through `port`, reading at a
    bounded pace and holding its last MiB until `release` is set, so that its transfer
    is under way for as long as the test's faults take."""

    def __init__(self, port, origin_port):
        super().__init__(daemon=True)
        self.port, self.origin_port = port, origin_port
        self.relaying = threading.Event()
        self.release = threading.Event()
        self.received = 0
        self.digest = None
        self.error = None

    def run(self):
        try:
            with connect(self.port, timeout=30) as s:
                raw, rep = socks5_handshake(s, LOOP4, self.origin_port)
                if rep != 0:
                    raise AssertionError(f"bystander's handshake failed: {raw.hex()}")
                s.sendall(f"GET /blob/{BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                          .encode())
                status, headers, _ = read_http_head(s)
                if status != "HTTP/1.1 200 OK" or int(headers["content-length"]) != BIG:
                    raise AssertionError(f"bystander got {status} {headers}")
                h = hashlib.sha256()
                while self.received < BIG:
                    if self.received >= BIG - MiB and not self.release.is_set():
                        self.release.wait(20)
                    chunk = s.recv(min(64 * 1024, BIG - self.received))
                    if not chunk:
                        break
                    h.update(chunk)
                    self.received += len(chunk)
                    self.relaying.set()
                    if not self.release.is_set():
                        time.sleep(0.005)  # about 12 MB/s: still running during the faults
                self.digest = h.hexdigest()
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.relaying.set()


class Faults(PeerCase):
    """A faulty hop gets the client the protocol's error in time and disturbs nothing else.

    The front instance's chain is one hop, a SwitchHop: a bystander's session goes
    through it to a healthy upstream, then the hop is switched to the fault, and a
    SOCKS5 and an HTTP client ask for a connection at once while the bystander's
    10 MiB are still on their way.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.upstream = cls.start_class_proxy(http=True, name="upstream")

    def run_fault(self, scheme, healthy_port, fault, rep, status, max_time, min_time=0.0,
                  auth=False):
        hop = SwitchHop(healthy_port).start()
        self.addCleanup(hop.close)
        front = self.start_proxy("-t", "1", "-x", hop_uri(scheme, hop.port, auth), http=True,
                                 name="front")
        bystander = Bystander(front.port, self.origin.port)
        bystander.start()
        self.addCleanup(bystander.join, 30)
        self.addCleanup(bystander.release.set)
        self.assertTrue(bystander.relaying.wait(10), "the bystander's transfer did not start")
        self.assertIsNone(bystander.error)
        fault(hop)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            s5 = pool.submit(self.socks5_error, front.port)
            http = pool.submit(self.http_error, front.http_port)
            raw, got_rep, s5_took, closed = s5.result(timeout=30)
            got_status, head, http_took = http.result(timeout=30)
        progress = bystander.received
        bystander.release.set()
        bystander.join(30)

        self.assertEqual(raw, socks5_reply_bytes(rep), f"SOCKS5 REP {got_rep}: {raw.hex()}")
        self.assertIsNotNone(closed, "SOCKS5 client not closed after the failure reply")
        self.assertEqual(got_status, status, head)
        for took in (s5_took, http_took):
            self.assertGreaterEqual(took, min_time)
            self.assertLess(took, max_time)
        self.assertFalse(bystander.is_alive(), "the bystander's transfer did not finish")
        self.assertIsNone(bystander.error)
        self.assertLess(progress, BIG, "the bystander was done before the faults")
        self.assertEqual((bystander.received, bystander.digest), (BIG, self.want))
        self.assertTrue(front.alive)

    def test_dead_hop(self):
        """Nothing listening at the hop: REP 0x05 (refused) / 502, at once."""
        self.run_fault("socks4a", self.upstream.port, SwitchHop.go_dead,
                       0x05, "HTTP/1.1 502 Bad Gateway", 2.0)

    def test_silent_hop(self):
        """The hop accepts and never answers, -t 1: REP 0x06 (TTL expired) / 504 after ~1 s."""
        self.run_fault("http", self.upstream.http_port, SwitchHop.hold,
                       0x06, "HTTP/1.1 504 Gateway Timeout", 3.0, min_time=0.8)

    def test_wrong_credentials_socks5_hop(self):
        """microsocks refuses our user:pass: REP 0x02 (not allowed) / 403, at once."""
        ms = self.start_peer(microsocks(USER, "other"))
        self.run_fault("socks5", self.upstream.port, lambda hop: hop.relay_to(ms.port),
                       0x02, "HTTP/1.1 403 Forbidden", 2.0, auth=True)

    def test_wrong_credentials_http_hop(self):
        """tinyproxy (BasicAuth) answers 401 to wrong user:pass: REP 0x02 / 403, at once."""
        tp = self.start_peer(tinyproxy([self.origin.port], basic_auth=(USER, "other")))
        self.run_fault("http", self.upstream.http_port, lambda hop: hop.relay_to(tp.port),
                       0x02, "HTTP/1.1 403 Forbidden", 2.0, auth=True)


# ---------------------------------------------------------------------------
# Targets and credentials a hop's wire format has no field for
# ---------------------------------------------------------------------------

SOCKS4A_NAMES_RULESET = r"""
local ruleset = {}
-- Only the two odd targets are let through, to the origin: that they arrive
-- here as these addresses shows how the socks4a hop sent them.
local function decide(addr)
    if addr == "0.0.0.5:@PORT@" or addr == "[2001:db8::5]:@PORT@" then
        print("upstream asked for " .. addr)
        return "127.0.0.1:@ORIGIN@"
    end
    return nil
end
ruleset.resolve, ruleset.route, ruleset.route6 = decide, decide, decide
return ruleset
"""


class Socks4aNames(PeerCase):
    """rulesocks -t 10 -x socks4a://<real rulesocks upstream>, asked for 0.0.0.5 or an IPv6
    address by a SOCKS5, a SOCKS4A and an HTTP CONNECT client.

    SOCKS4 has no field for either: 0.0.0.x as DSTIP is the SOCKS4A marker, and its DSTIP
    is IPv4 only. The SOCKS4A request carries them as the host name, which the server
    resolves (a numeric literal to itself). Before, the request builder returned "" for
    both; for 0.0.0.5 the dialer then sent nothing and waited the whole -t (10 s), for
    IPv6 it failed with REP 0x08. The upstream's ruleset sends exactly these two
    addresses to the origin, so each client must get its success reply within 3 s
    and then the origin's page.
    """

    PORT = 8000  # the port the clients ask for; the upstream maps it to the origin

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="rulesocks-4a-names-")
        cls.addClassCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "ruleset.lua")
        with open(path, "w") as f:
            f.write(SOCKS4A_NAMES_RULESET.replace("@PORT@", str(cls.PORT))
                    .replace("@ORIGIN@", str(cls.origin.port)))
        cls.upstream = cls.start_class_proxy("-r", path, name="upstream")
        cls.front = cls.start_class_proxy("-t", "10", "-x", hop_uri("socks4a", cls.upstream.port),
                                          http=True, name="front")

    def fetch_hello(self, s):
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_http_response(s)
        self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello from origin\n"))

    def run_clients(self, socks5_host, socks4a_host, authority):
        for client in ("socks5", "socks4a", "http"):
            with self.subTest(client=client), connect(self.front.http_port if client == "http"
                                                      else self.front.port, timeout=15) as s:
                t0 = time.monotonic()
                if client == "socks5":
                    raw, rep = socks5_handshake(s, socks5_host, self.PORT)
                    answer = rep
                    ok = 0
                elif client == "socks4a":
                    s.sendall(socks4_request(self.PORT, host=socks4a_host))
                    raw = recv_exact(s, 8)
                    answer = raw[1] if len(raw) == 8 else None
                    ok = 0x5A
                else:
                    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
                              .encode())
                    answer, _, raw = read_http_head(s)
                    ok = "HTTP/1.1 200 Connection established"
                took = time.monotonic() - t0
                self.assertLess(took, 3.0, f"{client}: the reply took {took:.1f} s of -t 10")
                self.assertEqual(answer, ok, f"{client}: {raw!r}\n{self.front.log_tail()}")
                self.fetch_hello(s)
        self.assertIn(f"upstream asked for {socks5_host if ':' not in socks5_host else authority}",
                      self.upstream.log_text())

    def test_marker_range_ipv4_target(self):
        """0.0.0.5 goes as SOCKS4A name "0.0.0.5"; it used to hang until -t."""
        self.run_clients("0.0.0.5", "0.0.0.5", f"0.0.0.5:{self.PORT}")

    def test_ipv6_target(self):
        """2001:db8::5 goes as SOCKS4A name "2001:db8::5"; it used to fail with REP 0x08."""
        self.run_clients("2001:db8::5", "2001:db8::5", f"[2001:db8::5]:{self.PORT}")


class UncarriableCredentials(unittest.TestCase):
    """-x with credentials the scheme's wire format cannot carry is refused at start-up,
    naming the field and the limit (every dial through it used to wait for -t)."""

    def test_refused_at_start(self):
        for uri, why in (
                (f"socks5://{'u' * 300}:pw@{LOOP4}:1081",
                 "socks5 user name is 300 bytes, longer than the limit of 255"),
                (f"socks5://u:{'p' * 256}@{LOOP4}:1081",
                 "socks5 password is 256 bytes, longer than the limit of 255"),
                (f"socks4a://{'u' * 256}@{LOOP4}:1081",
                 "socks4a user id is 256 bytes, longer than the limit of 255"),
                (f"http://a%3Ab:pw@{LOOP4}:3128", "http user name contains ':'")):
            with self.subTest(uri=uri[:20]):
                p = subprocess.run([BIN, "-l", f"{LOOP4}:{free_port()}", "-x", uri],
                                   capture_output=True, text=True, timeout=10)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn(why, p.stderr)
                # The refusal names the problem, never the credentials themselves.
                userinfo = uri.split("://", 1)[1].rsplit("@", 1)[0]
                self.assertNotIn(userinfo, p.stderr)


# ---------------------------------------------------------------------------
# Operations flags
# ---------------------------------------------------------------------------

def project_version():
    with open(os.path.join(HERE, "..", "..", "CMakeLists.txt")) as f:
        m = re.search(r"project\(rulesocks\s+VERSION\s+([0-9][0-9.]*)", f.read())
    return m.group(1)


class Operations(PeerCase):
    def test_daemonize(self):
        """-d: the command returns at once, the daemon (found by its listening socket's
        inode) is detached, serves, and exits on SIGTERM sent to its PID."""
        port = free_port()
        cmd = [BIN, "-d", "--loglevel", "6", "-l", f"{LOOP4}:{port}"]
        # Without a syslog daemon -d keeps logging to its stderr: a file, not a pipe
        # that the launcher's caller would wait on for as long as the daemon runs.
        with tempfile.TemporaryFile() as log:
            launcher = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=log, timeout=10)
            log.seek(0)
            self.assertEqual(launcher.returncode, 0, log.read().decode(errors="replace"))
        inodes = wait_until(lambda: listening_inodes(port), 5)
        self.assertEqual(len(inodes), 1, f"listeners on port {port}: {inodes}")
        pids = wait_until(lambda: pids_holding(next(iter(inodes))), 5)
        self.assertEqual(len(pids), 1, f"processes holding the listener: {pids}")
        pid = pids[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            self.assertEqual(f.read().split(b"\0")[:-1], [a.encode() for a in cmd])

        def kill_if_left():  # only this very daemon, and only if the test did not stop it
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    ours = f.read().split(b"\0")[:-1] == [a.encode() for a in cmd]
                if ours and not proc_gone(pid):
                    os.kill(pid, signal.SIGKILL)
        self.addCleanup(kill_if_left)

        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        ppid, session = int(stat[1]), int(stat[3])
        self.assertNotEqual(ppid, os.getpid(), "the daemon is still our child")
        self.assertEqual(session, pid, "the daemon did not start its own session")
        self.assertEqual(os.readlink(f"/proc/{pid}/cwd"), "/")
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{port}",
                            self.origin.url("/hello", "localhost"), timeout=10)
        self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        self.assert_download("--socks5", f"{LOOP4}:{port}")

        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_until(lambda: proc_gone(pid), 5), "the daemon ignored SIGTERM")
        self.assertFalse(listening_inodes(port), "port still listening after the daemon left")

    def test_user_nobody(self):
        """-u nobody: the process runs as nobody (uid and gid, no supplementary groups)
        after binding, and still serves."""
        if os.geteuid() != 0:
            self.skipTest("-u needs root to drop privileges; these tests run as root in CI")
        nobody = pwd.getpwnam("nobody")
        proxy = self.start_proxy("-u", "nobody")
        status = proc_status(proxy.pid)
        self.assertEqual(status["Uid"].split(), [str(nobody.pw_uid)] * 4, status["Uid"])
        self.assertEqual(status["Gid"].split(), [str(nobody.pw_gid)] * 4, status["Gid"])
        self.assertEqual(status.get("Groups", "").split(), [], status.get("Groups"))
        self.assert_download("--socks5", f"{LOOP4}:{proxy.port}")

    def test_reuseport(self):
        """--reuseport: two instances bind the same port and both serve connections;
        without it a third instance cannot bind that port."""
        port = free_port()
        addr = f"{LOOP4}:{port}"
        a = self.start_proxy("--reuseport", "-l", addr, socks=False, extra_ports=(port,),
                             name="reuse-a")
        b = self.start_proxy("--reuseport", "-l", addr, socks=False, extra_ports=(port,),
                             name="reuse-b")
        self.assertTrue(wait_until(lambda: listening_inodes(port) & socket_inodes(b.pid), 5),
                        "second instance has no listener on the port")
        self.assertEqual(len(listening_inodes(port)), 2)

        def served(p):
            return p.log_text().count(f"socks5 -> {LOOP4}:{self.origin.port}")
        for _ in range(64):  # the kernel spreads connections by hash: both get some
            if served(a) and served(b):
                break
            with connect(port) as s:
                raw, rep = socks5_handshake(s, LOOP4, self.origin.port)
                self.assertEqual(rep, 0, raw.hex())
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                status, _, body, _ = read_http_response(s)
                self.assertEqual((status, body), ("HTTP/1.1 200 OK", b"hello from origin\n"))
        self.assertTrue(wait_until(lambda: served(a) and served(b), 2),
                        f"served: a {served(a)}, b {served(b)}")
        self.assert_download("--socks5", addr)

        third = subprocess.run([BIN, "-l", addr], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10)
        self.assertEqual(third.returncode, 1)
        self.assertIn("Address already in use", third.stderr.decode(errors="replace"))

    def test_netdev_lo(self):
        """-i lo: outbound sockets bound to the loopback device still reach the origin."""
        proxy = self.start_proxy("-i", "lo")
        self.assert_download("--socks5", f"{LOOP4}:{proxy.port}")

    def test_netdev_missing(self):
        """-i with no such device: each client gets its protocol's failure reply at once
        (SOCKS5 REP 0x01, SOCKS4 0x5B, HTTP 502) and the proxy goes on."""
        proxy = self.start_proxy("-i", "rsnodev0", http=True)
        raw, rep, took, closed = self.socks5_error(proxy.port)
        self.assertEqual(raw, socks5_reply_bytes(0x01), f"REP {rep}: {raw.hex()}")
        self.assertLess(took, 2.0)
        self.assertIsNotNone(closed)
        with connect(proxy.port) as s:
            s.sendall(socks4_request(self.origin.port))
            self.assertEqual(recv_exact(s, 8)[:2], b"\x00\x5b")
        status, head, took = self.http_error(proxy.http_port)
        self.assertEqual(status, "HTTP/1.1 502 Bad Gateway", head)
        self.assertTrue(proxy.alive)
        self.assertIn("rsnodev0", proxy.log_text())

    def test_tcp_buffers(self):
        """--tcp-sndbuf/--tcp-rcvbuf are accepted; small and large values both transfer
        10 MiB intact, with and without --pipe (and --no-nodelay/--no-keepalive)."""
        for args in (("--tcp-sndbuf", "4096", "--tcp-rcvbuf", "4096", "--no-nodelay",
                      "--no-keepalive"),
                     ("--tcp-sndbuf", "1048576", "--tcp-rcvbuf", "1048576", "--pipe")):
            with self.subTest(args=" ".join(args)):
                proxy = self.start_proxy(*args)
                self.assert_download("--socks5", f"{LOOP4}:{proxy.port}")

    def test_help_lists_every_flag(self):
        """--help exits 0 and lists every flag: those neosocksd's users rely on, and every
        one src/config.cpp defines."""
        p = subprocess.run([BIN, "--help"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        text = p.stdout.decode()
        listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", text))
        expected = {"-h", "--help", "-V", "--version", "-l", "--listen", "--http", "-f",
                    "--forward", "-x", "--proxy", "--api", "-r", "--ruleset", "-4", "-6",
                    "--nameserver", "-i", "--netdev", "-t", "--timeout", "--bidir-timeout",
                    "--loglevel", "-s", "--silence", "-v", "--verbose", "--pipe",
                    "--reuseport", "--auth-required", "-d", "--daemonize", "-u", "--user",
                    "-m", "--max-sessions", "--max-startups", "--memlimit", "--traceback",
                    "--tcp-sndbuf", "--tcp-rcvbuf", "--no-nodelay", "--no-keepalive"}
        with open(os.path.join(HERE, "..", "..", "src", "config.cpp")) as f:
            # Internal options (->group(""), e.g. --worker-fd of --workers) are hidden.
            for names, rest in re.findall(
                    r'add_(?:option|flag|flag_function)\(\s*"([^"]+)"([^;]*);', f.read()):
                if '->group("")' not in rest:
                    expected |= {n.lstrip("!") for n in names.split(",")}
        self.assertEqual(expected - listed, set(), f"flags missing from --help:\n{text}")
        for line in text.splitlines():
            self.assertNotIn("{", line, f"help line shows a raw default: {line!r}")

    def test_version(self):
        """--version and -V print "rulesocks <project version>" and exit 0."""
        want = f"rulesocks {project_version()}"
        for flag in ("--version", "-V"):
            with self.subTest(flag):
                p = subprocess.run([BIN, flag], capture_output=True, timeout=10)
                self.assertEqual(p.returncode, 0)
                self.assertEqual(p.stdout.decode().strip(), want)


if __name__ == "__main__":
    unittest.main()
