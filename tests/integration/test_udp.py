"""SOCKS5 UDP ASSOCIATE (--enable-socks5-udp) with a real client: Debian's
python3-socks (PySocks) talking through rulesocks to UDP servers on loopback.

  Associate   echo by IPv4, IPv6 and host name; DNS to dnsmasq; 10,000
              datagrams with checksums; a foreign sender dropped; the
              association ends with its control connection; disabled by default
  Ruleset     the fifth argument "udp"; one destination allowed, another refused
"""

import hashlib
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import unittest
import urllib.request

from harness import (BIN, IO_TIMEOUT, LOOP4, LOOP6, IntegrationCase, free_port, has_ipv6_loopback,
                     wait_until)

try:
    import socks  # python3-socks
except ImportError:  # pragma: no cover
    socks = None


class UdpEcho:
    """A UDP echo server on `host` in a thread; answers every datagram with itself."""

    def __init__(self, host=LOOP4):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received += 1
            self.sock.sendto(data, peer)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def udp_client(proxy_port, rdns=True):
    s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    s.set_proxy(socks.SOCKS5, LOOP4, proxy_port, rdns=rdns)
    s.settimeout(IO_TIMEOUT)
    s.bind(("", 0))
    return s


def get_stats(api_port):
    with urllib.request.urlopen(f"http://{LOOP4}:{api_port}/stats", timeout=10) as r:
        return r.read().decode()


def dns_query(name, qid=0x1234):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def dns_answer_a(resp):
    """The first A record of a DNS response, as a dotted string."""
    qd, an = struct.unpack(">HH", resp[4:8])
    pos = 12
    for _ in range(qd):
        while resp[pos] != 0:
            pos += resp[pos] + 1
        pos += 5
    for _ in range(an):
        if resp[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while resp[pos] != 0:
                pos += resp[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", resp[pos:pos + 10])
        pos += 10
        if rtype == 1:
            return socket.inet_ntoa(resp[pos:pos + rdlen])
        pos += rdlen
    return None


@unittest.skipIf(socks is None, "python3-socks (PySocks) is not installed")
class Associate(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = UdpEcho(LOOP4)
        cls.addClassCleanup(cls.echo.stop)
        cls.proxy = cls.start_class_proxy("--enable-socks5-udp", "--udp-timeout", "30", api=True)

    def echo_once(self, s, dest, payload):
        s.sendto(payload, dest)
        data, src = s.recvfrom(65535)
        return data, src

    def test_echo_by_ipv4(self):
        with udp_client(self.proxy.port) as s:
            data, src = self.echo_once(s, (LOOP4, self.echo.port), b"hello over udp")
            self.assertEqual(data, b"hello over udp")
            self.assertEqual(src, (LOOP4, self.echo.port))

    @unittest.skipUnless(has_ipv6_loopback(), "no IPv6 loopback")
    def test_echo_by_ipv6(self):
        echo6 = UdpEcho(LOOP6)
        self.addCleanup(echo6.stop)
        with udp_client(self.proxy.port) as s:
            data, _ = self.echo_once(s, (LOOP6, echo6.port), b"v6 payload")
            self.assertEqual(data, b"v6 payload")

    def test_echo_by_host_name(self):
        # "localhost" is resolved by the proxy (rdns): the datagram carries the name.
        with udp_client(self.proxy.port, rdns=True) as s:
            data, _ = self.echo_once(s, ("localhost", self.echo.port), b"by name")
            self.assertEqual(data, b"by name")

    def test_many_datagrams_with_checksums(self):
        # 10,000 datagrams with a sequence number and a digest each: every
        # echo that comes back is intact, and losses (UDP may lose some when
        # the machine is busy) are accounted for, never silent corruption.
        total, window = 10000, 64
        sent = got = corrupt = 0
        seen = set()
        with udp_client(self.proxy.port) as s:
            s.settimeout(2.0)
            while sent < total:
                burst = min(window, total - sent)
                for i in range(sent, sent + burst):
                    body = os.urandom(32) + struct.pack(">I", i)
                    s.sendto(body + hashlib.sha256(body).digest(), (LOOP4, self.echo.port))
                sent += burst
                for _ in range(burst):
                    try:
                        data, _ = s.recvfrom(65535)
                    except socket.timeout:
                        break
                    body, digest = data[:-32], data[-32:]
                    if hashlib.sha256(body).digest() != digest:
                        corrupt += 1
                        continue
                    seen.add(struct.unpack(">I", body[-4:])[0])
                    got += 1
        self.assertEqual(corrupt, 0)
        self.assertEqual(len(seen), got)  # no duplicates
        lost = sent - got
        # Bounded, not timed: a handful of losses on a loaded machine is UDP.
        self.assertLess(lost, total // 10, f"{lost} of {total} datagrams lost")

    def test_foreign_sender_is_dropped(self):
        with udp_client(self.proxy.port) as s:
            self.echo_once(s, (LOOP4, self.echo.port), b"learn my port")
            relay = socks._orig_socket.getpeername(s)
            before = self.echo.received
            # Another local address sends a well-formed datagram to the relay.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind(("127.0.0.2", 0))
                hdr = b"\x00\x00\x00\x01" + socket.inet_aton(LOOP4) + struct.pack(
                    ">H", self.echo.port)
                for _ in range(5):
                    other.sendto(hdr + b"intruder", relay)
            # The association still works, and the echo never heard the intruder.
            data, _ = self.echo_once(s, (LOOP4, self.echo.port), b"still mine")
            self.assertEqual(data, b"still mine")
            self.assertEqual(self.echo.received, before + 1)
        self.assertRegex(get_stats(self.proxy.api_port), r"foreign [1-9]")

    def test_fragments_are_dropped(self):
        with udp_client(self.proxy.port) as s:
            self.echo_once(s, (LOOP4, self.echo.port), b"first")
            raw = socket.socket(fileno=os.dup(s.fileno()))
            try:
                hdr = b"\x00\x00\x01\x01" + socket.inet_aton(LOOP4) + struct.pack(
                    ">H", self.echo.port)
                before = self.echo.received
                raw.send(hdr + b"fragment")
                data, _ = self.echo_once(s, (LOOP4, self.echo.port), b"whole")
                self.assertEqual(data, b"whole")
                self.assertEqual(self.echo.received, before + 1)
            finally:
                raw.detach()
        self.assertRegex(get_stats(self.proxy.api_port), r"fragment [1-9]")

    def test_association_ends_with_its_control_connection(self):
        s = udp_client(self.proxy.port)
        self.echo_once(s, (LOOP4, self.echo.port), b"alive")
        relay = socks._orig_socket.getpeername(s)
        s._proxyconn.close()  # the TCP control connection
        s._proxyconn = None

        def relay_closed():
            # A closed relay port answers ICMP port unreachable: ECONNREFUSED.
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect(relay)
                probe.send(b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x07x")
                probe.settimeout(0.2)
                probe.recv(10)
            except ConnectionRefusedError:
                return True
            except socket.timeout:
                return False
            finally:
                probe.close()
            return False

        self.assertTrue(wait_until(relay_closed, 10), "relay port still open")
        s.close()

    def test_stats_count_associations(self):
        with udp_client(self.proxy.port) as s:
            self.echo_once(s, (LOOP4, self.echo.port), b"count me")
        text = get_stats(self.proxy.api_port)
        self.assertIn("UDP associations", text)


@unittest.skipIf(socks is None, "python3-socks (PySocks) is not installed")
class Flood(IntegrationCase):
    def test_a_datagram_flood_does_not_starve_tcp(self):
        origin = self.start_class_origin()
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        p = self.start_proxy("--enable-socks5-udp", loglevel=4)
        stop = threading.Event()
        sent = [0]

        def flood():
            with udp_client(p.port) as s:
                hdr = b"\x00\x00\x00\x01" + socket.inet_aton(LOOP4) + struct.pack(
                    ">H", echo.port)
                raw = socket.socket(fileno=os.dup(s.fileno()))
                try:
                    while not stop.is_set() and sent[0] < 200000:
                        try:
                            raw.send(hdr + b"x" * 512)
                            sent[0] += 1
                        except OSError:
                            pass
                finally:
                    raw.close()

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        try:
            self.assertTrue(wait_until(lambda: sent[0] > 2000 or not t.is_alive(), 30))
            self.assertTrue(t.is_alive(), "the flood ended early")
            # TCP requests through the same proxy complete while the flood runs.
            for _ in range(5):
                with socket.create_connection((LOOP4, p.port), timeout=IO_TIMEOUT) as c:
                    c.sendall(b"\x05\x01\x00")
                    self.assertEqual(recv_exact(c, 2), b"\x05\x00")
                    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(LOOP4) +
                              struct.pack(">H", origin.port))
                    self.assertEqual(recv_exact(c, 10)[:2], b"\x05\x00")
                    c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    self.assertTrue(recv_exact(c, 12).startswith(b"HTTP/1."))
        finally:
            stop.set()
            t.join(30)
        self.assertGreater(sent[0], 2000)


class Disabled(IntegrationCase):
    def test_udp_associate_is_refused_without_the_flag(self):
        p = self.start_proxy()
        with socket.create_connection((LOOP4, p.port), timeout=IO_TIMEOUT) as c:
            c.sendall(b"\x05\x01\x00")
            self.assertEqual(c.recv(2), b"\x05\x00")
            c.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
            self.assertEqual(c.recv(10)[:2], b"\x05\x07")  # command not supported


@unittest.skipIf(socks is None, "python3-socks (PySocks) is not installed")
class Limits(IntegrationCase):
    def associate(self, port):
        c = socket.create_connection((LOOP4, port), timeout=IO_TIMEOUT)
        c.sendall(b"\x05\x01\x00")
        self.assertEqual(c.recv(2), b"\x05\x00")
        c.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        return c, c.recv(10)

    def test_per_client_limit(self):
        p = self.start_proxy("--enable-socks5-udp", "--udp-max-per-client", "1", api=True)
        first, reply = self.associate(p.port)
        with first:
            self.assertEqual(reply[:2], b"\x05\x00")
            # The relay is on the address the client reached, never the wildcard.
            self.assertEqual(reply[3:8], b"\x01" + socket.inet_aton(LOOP4))
            second, reply2 = self.associate(p.port)
            with second:
                self.assertEqual(reply2[:2], b"\x05\x01")  # general failure
            self.assertIn("1 refused by limits", get_stats(p.api_port))
        # The place is given back when the first association ends.
        def admitted():
            c, r = self.associate(p.port)
            c.close()
            return r[:2] == b"\x05\x00"
        self.assertTrue(wait_until(admitted, 10))

    def test_advertise_and_idle_timeout(self):
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        p = self.start_proxy("--enable-socks5-udp", "--udp-advertise", "192.0.2.10",
                             "--udp-timeout", "1")
        c, reply = self.associate(p.port)
        with c:
            self.assertEqual(reply[:2], b"\x05\x00")
            self.assertEqual(reply[3:8], b"\x01" + socket.inet_aton("192.0.2.10"))
            # Idle for --udp-timeout: the association ends and closes its control connection.
            c.settimeout(IO_TIMEOUT)
            self.assertEqual(c.recv(1), b"")
        self.assertTrue(wait_until(lambda: "idle timeout" in p.log_text(), 10))

    @unittest.skipUnless(has_ipv6_loopback(), "no IPv6 loopback")
    def test_ipv6_client(self):
        echo = UdpEcho(LOOP6)
        self.addCleanup(echo.stop)
        port = free_port(socket.AF_INET6)
        self.start_proxy("--enable-socks5-udp", "-l", f"[{LOOP6}]:{port}", socks=False,
                         extra_ports=(port,))
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.bind((LOOP6, 0))
        u.settimeout(IO_TIMEOUT)
        with u, socket.create_connection((LOOP6, port), timeout=IO_TIMEOUT) as c:
            c.sendall(b"\x05\x01\x00")
            self.assertEqual(recv_exact(c, 2), b"\x05\x00")
            c.sendall(b"\x05\x03\x00\x04" + b"\x00" * 16 + struct.pack(">H", u.getsockname()[1]))
            reply = recv_exact(c, 22)
            self.assertEqual(reply[:4], b"\x05\x00\x00\x04")
            self.assertEqual(socket.inet_ntop(socket.AF_INET6, reply[4:20]), LOOP6)
            relay = (LOOP6, struct.unpack(">H", reply[20:22])[0])
            hdr = b"\x00\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, LOOP6) + struct.pack(
                ">H", echo.port)
            u.sendto(hdr + b"six", relay)
            data, src = u.recvfrom(65535)
            self.assertEqual(src[:2], relay)
            self.assertEqual(data, hdr + b"six")

    def test_a_chain_cannot_carry_udp(self):
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        p = self.start_proxy("--enable-socks5-udp", "-x", f"http://{LOOP4}:{free_port()}")
        with udp_client(p.port) as s:
            s.settimeout(1.0)
            s.sendto(b"through a chain", (LOOP4, echo.port))
            with self.assertRaises(socket.timeout):
                s.recvfrom(65535)
        self.assertTrue(wait_until(lambda: "cannot carry UDP" in p.log_text(), 10))
        self.assertEqual(echo.received, 0)


@unittest.skipIf(socks is None, "python3-socks (PySocks) is not installed")
class Upstream(IntegrationCase):
    """A second rulesocks as the socks5:// hop: the first opens its own association there."""

    def test_through_a_socks5_upstream(self):
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        hop = self.start_proxy("--enable-socks5-udp", api=True, name="hop")
        first = self.start_proxy("--enable-socks5-udp", "-x", f"socks5://{LOOP4}:{hop.port}",
                                 api=True)
        with udp_client(first.port) as s:
            for i in range(20):
                data, src = self.echo_once(s, (LOOP4, echo.port), b"via hop %d" % i)
                self.assertEqual(data, b"via hop %d" % i)
                self.assertEqual(src, (LOOP4, echo.port))
            data, _ = self.echo_once(s, ("localhost", echo.port), b"name via hop")
            self.assertEqual(data, b"name via hop")
        # The hop relayed them: its counters saw the datagrams.
        self.assertRegex(get_stats(hop.api_port), r"UDP datagrams\s*:?\s*up 2[1-9]")

    def echo_once(self, s, dest, payload):
        s.sendto(payload, dest)
        return s.recvfrom(65535)


    def test_ruleset_rewrites_and_sends_through_the_hop(self):
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        hop = self.start_proxy("--enable-socks5-udp", name="hop")
        d = tempfile.mkdtemp(prefix="rulesocks-udp-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "ruleset.lua")
        with open(path, "w") as f:
            f.write(f"""
local ruleset = {{}}
function ruleset.resolve(addr, user, pass, client, network)
  if network == "udp" and addr == "echo.test:7" then
    return "127.0.0.1:{echo.port}", "socks5://127.0.0.1:{hop.port}"
  end
  return nil
end
ruleset.route, ruleset.route6 = ruleset.resolve, ruleset.resolve
return ruleset
""")
        first = self.start_proxy("--enable-socks5-udp", "-r", path)
        with udp_client(first.port) as s:
            data, src = self.echo_once(s, ("echo.test", 7), b"rewritten")
            self.assertEqual(data, b"rewritten")
            # The reply names the destination the client wrote, not the rewrite.
            host = src[0].decode() if isinstance(src[0], bytes) else src[0]  # PySocks: bytes
            self.assertEqual((host, src[1]), ("echo.test", 7))
        self.assertEqual(echo.received, 1)
        self.assertIn("socks5 udp associate", hop.log_text())

class Forwarding(IntegrationCase):
    """-l udp://ADDR -f TARGET, driven by socat as the client."""

    def test_socat_through_udp_forwarding(self):
        socat = shutil.which("socat")
        if socat is None:
            self.skipTest("socat is not installed")
        echo = UdpEcho(LOOP4)
        self.addCleanup(echo.stop)
        port = free_port()
        p = self.start_proxy("-l", f"udp://{LOOP4}:{port}", "-f", f"{LOOP4}:{echo.port}",
                             socks=False, api=True)
        self.assertTrue(wait_until(lambda: "listening on udp://" in p.log_text(), 10))
        # Two clients at once: each gets its own replies back.
        outs = []
        for tag in (b"alpha", b"beta"):
            r = subprocess.run([socat, "-t", "2", "-T", "5", "-",
                                f"UDP4:{LOOP4}:{port}"],
                               input=tag * 100 + b"\n", capture_output=True, timeout=30)
            outs.append(r.stdout)
        self.assertEqual(outs[0], b"alpha" * 100 + b"\n")
        self.assertEqual(outs[1], b"beta" * 100 + b"\n")
        self.assertEqual(echo.received, 2)

    def test_udp_listener_needs_a_target(self):
        p = subprocess.run([BIN, "-l", f"udp://{LOOP4}:{free_port()}"], capture_output=True,
                           timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"needs -f", p.stderr)


def socks5_bind(proxy_port, expect_ip):
    """Sends a SOCKS5 BIND for `expect_ip`; returns the control socket and the
    first reply's (host, port)."""
    c = socket.create_connection((LOOP4, proxy_port), timeout=IO_TIMEOUT)
    c.sendall(b"\x05\x01\x00")
    assert c.recv(2) == b"\x05\x00"
    c.sendall(b"\x05\x02\x00\x01" + socket.inet_aton(expect_ip) + b"\x00\x00")
    return c, read_socks5_reply(c)


def recv_exact(c, n):
    out = b""
    while len(out) < n:
        chunk = c.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def read_socks5_reply(c):
    head = recv_exact(c, 4)
    if head[1] != 0:
        return head[1], None
    assert head[3] == 1, head
    addr = recv_exact(c, 6)
    return 0, (socket.inet_ntoa(addr[:4]), struct.unpack(">H", addr[4:])[0])


class Bind(IntegrationCase):
    """SOCKS5 BIND, FTP-active style: the client asks the proxy to listen, tells
    the "server" where, and the server connects back through the proxy."""

    def ftp_active(self, proxy_port, server_ip=LOOP4):
        control, (rep, where) = socks5_bind(proxy_port, server_ip)
        with control:
            self.assertEqual(rep, 0)
            self.assertNotEqual(where[1], 0)
            # The "server" connects to the address of the first reply.
            with socket.create_connection(where, timeout=IO_TIMEOUT,
                                          source_address=(server_ip, 0)) as data_conn:
                rep2, peer = read_socks5_reply(control)
                self.assertEqual(rep2, 0)
                self.assertEqual(peer[0], server_ip)
                data_conn.sendall(b"220 file contents\r\n")
                self.assertEqual(recv_exact(control, 19), b"220 file contents\r\n")
                control.sendall(b"ack")
                self.assertEqual(recv_exact(data_conn, 3), b"ack")
            return where

    def test_bind_direct(self):
        p = self.start_proxy("--enable-socks5-bind")
        where = self.ftp_active(p.port)
        self.assertEqual(where[0], LOOP4)  # the address the client came in on

    def test_bind_refuses_an_unexpected_peer(self):
        p = self.start_proxy("--enable-socks5-bind", "-t", "3")
        control, (rep, where) = socks5_bind(p.port, "127.0.0.5")
        with control:
            self.assertEqual(rep, 0)
            with socket.create_connection(where, timeout=IO_TIMEOUT,
                                          source_address=("127.0.0.2", 0)) as intruder:
                intruder.settimeout(IO_TIMEOUT)
                self.assertEqual(intruder.recv(1), b"")  # closed by the proxy
            # Nobody expected came within -t: the second reply says so.
            rep2, _ = read_socks5_reply(control)
            self.assertEqual(rep2, 6)  # TTL expired
        self.assertIn("refused: expected 127.0.0.5", p.log_text())

    def test_bind_disabled_by_default(self):
        p = self.start_proxy()
        control, (rep, _) = socks5_bind(p.port, LOOP4)
        control.close()
        self.assertEqual(rep, 7)

    def test_bind_through_a_socks5_upstream(self):
        hop = self.start_proxy("--enable-socks5-bind", name="hop")
        first = self.start_proxy("--enable-socks5-bind", "-x", f"socks5://{LOOP4}:{hop.port}")
        self.ftp_active(first.port)
        self.assertIn("socks5 bind listening", hop.log_text())


RULESET = r"""
-- DNS to one resolver only: UDP may reach RESOLVER:53 and nothing else; TCP
-- goes anywhere.
local RESOLVER = "%s"
local ruleset = {}
local function decide(addr, network)
  if network ~= "udp" then return addr end
  if addr == RESOLVER then return addr end
  return nil
end
function ruleset.resolve(addr, user, pass, client, network) return decide(addr, network) end
function ruleset.route(addr, user, pass, client, network) return decide(addr, network) end
function ruleset.route6(addr, user, pass, client, network) return decide(addr, network) end
return ruleset
"""


@unittest.skipIf(socks is None, "python3-socks (PySocks) is not installed")
class Ruleset(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="rulesocks-udp-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.dns_port = free_port()
        hosts = os.path.join(cls.dir, "hosts")
        with open(hosts, "w") as f:
            f.write("192.0.2.77 udp-test.example\n")
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not os.access(dnsmasq, os.X_OK):
            raise unittest.SkipTest("dnsmasq is not installed")
        cls.dns = subprocess.Popen(
            [dnsmasq, "--no-daemon", "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--addn-hosts=" + hosts, "--listen-address=127.0.0.3", "--bind-interfaces",
             f"--port={cls.dns_port}", "--user=" + pwd.getpwuid(os.geteuid()).pw_name,
             "--pid-file=" + os.path.join(cls.dir, "dnsmasq.pid"), "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop_dns():
            cls.dns.terminate()
            try:
                cls.dns.wait(5)
            except subprocess.TimeoutExpired:
                cls.dns.kill()
                cls.dns.wait(5)
        cls.addClassCleanup(stop_dns)
        cls.echo = UdpEcho(LOOP4)
        cls.addClassCleanup(cls.echo.stop)
        path = os.path.join(cls.dir, "ruleset.lua")
        with open(path, "w") as f:
            f.write(RULESET % f"127.0.0.3:{cls.dns_port}")
        cls.proxy = cls.start_class_proxy("--enable-socks5-udp", "-r", path, api=True)

    def test_dns_query_to_the_allowed_resolver(self):
        with udp_client(self.proxy.port) as s:
            resp = None
            # dnsmasq may still be starting: a few tries, each bounded.
            s.settimeout(1.0)
            for _ in range(10):
                s.sendto(dns_query("udp-test.example"), ("127.0.0.3", self.dns_port))
                try:
                    resp, _ = s.recvfrom(65535)
                    break
                except socket.timeout:
                    continue
            self.assertIsNotNone(resp, "no DNS answer through the association")
            self.assertEqual(resp[:2], b"\x12\x34")
            self.assertEqual(dns_answer_a(resp), "192.0.2.77")

    def test_other_destination_is_refused(self):
        with udp_client(self.proxy.port) as s:
            before = self.echo.received
            s.settimeout(1.0)
            for _ in range(3):
                s.sendto(b"not allowed", (LOOP4, self.echo.port))
            with self.assertRaises(socket.timeout):
                s.recvfrom(65535)
            self.assertEqual(self.echo.received, before)
        self.assertRegex(get_stats(self.proxy.api_port), r"rejected [1-9]")
        self.assertIn("udp", self.proxy.log_text())


if __name__ == "__main__":
    unittest.main()
