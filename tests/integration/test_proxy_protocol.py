"""PROXY protocol v1/v2: --accept-proxy-protocol and --send-proxy-protocol.

  AcceptHeader     raw v1/v2 headers before SOCKS5, HTTP CONNECT and -f: the ruleset
                   (4th callback argument) and the logs see the client they name
  BadHeaders       a missing or malformed header closes that connection only, while a
                   relayed session on the same listener keeps going
  NotEnabled       without the flag a header is not trusted: a bad request
  HAProxyInFront   Debian's haproxy with send-proxy-v2 and send-proxy in front
  SendHeader       --send-proxy-protocol v1|v2 for direct dials and -f
"""

import os
import socket
import struct
import tempfile
import unittest

from harness import (
    LOOP4, EchoServer, IntegrationCase, Peer, blob, connect, free_port, read_http_response,
    recv_exact, socks5_handshake, wait_closed, wait_until,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# Lets a request through only when the client is the one the test expects,
# and writes every client it sees to stderr (the proxy's log).
RULESET = """
local allowed = ...
_G.ruleset = {}
local function decide(addr, username, password, client)
    io.stderr:write("ruleset client=" .. tostring(client) .. "\\n")
    if client and client:find(allowed, 1, true) == 1 then return addr end
    return nil
end
ruleset.route, ruleset.route6, ruleset.resolve = decide, decide, decide
return ruleset
"""


def write_ruleset(allowed):
    fd, path = tempfile.mkstemp(prefix="pp-ruleset-", suffix=".lua")
    with os.fdopen(fd, "w") as f:
        f.write(RULESET.replace("local allowed = ...", f"local allowed = {allowed!r}"))
    return path


def v1(src, sport, dst="127.0.0.1", dport=1080):
    return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, sport, dst="127.0.0.1", dport=1080):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class Base(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.echo = EchoServer().start()
        cls.addClassCleanup(cls.echo.close)

    def ruleset(self, allowed):
        path = write_ruleset(allowed)
        self.addCleanup(os.unlink, path)
        return path

    def echo_ok(self, s, data=b"ping"):
        s.sendall(data)
        self.assertEqual(recv_exact(s, len(data)), data)


class AcceptHeader(Base):
    def setUp(self):
        self.p = self.start_proxy("--accept-proxy-protocol", "-r", self.ruleset("192.0.2.7:"),
                                  http=True)

    def test_v1_and_v2_before_socks5(self):
        for header in (v1("192.0.2.7", 56324), v2("192.0.2.7", 56325)):
            with connect(self.p.port) as s:
                s.sendall(header)
                rep = socks5_handshake(s, LOOP4, self.echo.port)[1]
                self.assertEqual(rep, 0, header)
                self.echo_ok(s)
        log = self.p.log_text()
        self.assertIn("ruleset client=192.0.2.7:56324", log)
        self.assertIn("ruleset client=192.0.2.7:56325", log)
        # The session's own log lines name the real client too.
        self.assertIn(f"192.0.2.7:56324: socks5 -> {LOOP4}:{self.echo.port}", log)

    def test_other_client_is_what_the_ruleset_judges(self):
        with connect(self.p.port) as s:
            s.sendall(v2("198.51.100.9", 4000))
            self.assertEqual(socks5_handshake(s, LOOP4, self.echo.port)[1], 2)  # not allowed
        self.assertIn("ruleset client=198.51.100.9:4000", self.p.log_text())

    def test_header_and_request_in_one_write(self):
        with connect(self.p.http_port) as s:
            s.sendall(v1("192.0.2.7", 9) +
                      f"CONNECT {LOOP4}:{self.echo.port} HTTP/1.1\r\n\r\n".encode())
            status = read_http_response(s)[0]
            self.assertIn(" 200 ", status)
            self.echo_ok(s)

    def test_local_command_keeps_the_connection_address(self):
        # HAProxy's health checks: v2 LOCAL, no address; the connection's own applies.
        with connect(self.p.port) as s:
            s.sendall(SIG + bytes([0x20, 0x00, 0, 0]))
            self.assertEqual(socks5_handshake(s, LOOP4, self.echo.port)[1], 2)
        self.assertIn("ruleset client=127.0.0.1:", self.p.log_text())


class ForwardWithHeader(Base):
    def test_forward_reads_the_header_before_dialing(self):
        p = self.start_proxy("--accept-proxy-protocol", "-f", f"{LOOP4}:{self.echo.port}")
        with connect(p.port) as s:
            s.sendall(v1("192.0.2.8", 1234) + b"hello")
            self.assertEqual(recv_exact(s, 5), b"hello")
        self.assertIn("192.0.2.8:1234: forward ->", p.log_text())
        # The header itself never reaches the target.
        self.assertTrue(wait_until(lambda: self.echo.firsts, 5))
        self.assertFalse(any(f.startswith(b"PROXY") for f in self.echo.firsts))


class BadHeaders(Base):
    def test_bad_header_closes_only_that_connection(self):
        p = self.start_proxy("--accept-proxy-protocol", "-t", "5")
        with connect(p.port) as good:
            good.sendall(v1("192.0.2.7", 1))
            self.assertEqual(socks5_handshake(good, LOOP4, self.echo.port)[1], 0)
            bad = [
                b"\x05\x01\x00",                                   # missing: a SOCKS5 greeting
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",               # a field short
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",               # bare LF
                SIG + bytes([0x21, 0x11, 0, 4]) + b"\0" * 4,       # short for IPv4
                SIG + bytes([0x31, 0x11, 0, 12]) + b"\0" * 12,     # version 3
                b"PROXY UNKNOWN " + b"x" * 200,                    # too long
            ]
            for data in bad:
                with connect(p.port) as s:
                    s.sendall(data)
                    self.assertIsNotNone(wait_closed(s, 5), data)
            self.echo_ok(good, blob(256 * 1024))
        self.assertIn("proxy protocol:", p.log_text())

    def test_silent_client_is_bounded_by_the_timeout(self):
        p = self.start_proxy("--accept-proxy-protocol", "-t", "1")
        with connect(p.port) as s:
            s.sendall(b"PROXY TCP4 ")
            self.assertIsNotNone(wait_closed(s, 10))


class NotEnabled(Base):
    def test_header_is_a_bad_request(self):
        p = self.start_proxy("-r", self.ruleset("192.0.2.7:"))
        # v1 looks like an HTTP request line to the sniffer: a 400, never trusted.
        with connect(p.port) as s:
            s.sendall(v1("192.0.2.7", 1) + b"\x05\x01\x00")
            status = read_http_response(s)[0]
            self.assertIn(" 400 ", status)
        # v2 starts with CR: no protocol at all, closed.
        with connect(p.port) as s:
            s.sendall(v2("192.0.2.7", 1) + b"\x05\x01\x00")
            self.assertIsNotNone(wait_closed(s, 5))
        self.assertNotIn("ruleset client=192.0.2.7", p.log_text())


def haproxy(backend_port, option):
    port = free_port()
    config = f"""\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend front
    bind {LOOP4}:{port}
    default_backend back
backend back
    server rulesocks {LOOP4}:{backend_port} {option}
"""
    return Peer("haproxy", "/usr/sbin/haproxy", "haproxy",
                ["-db", "-f", "{dir}/haproxy.conf"], port, config)


class HAProxyInFront(Base):
    def check(self, option):
        p = self.start_proxy("--accept-proxy-protocol", "-r", self.ruleset("127.0.0.1:"))
        h = self.start_peer(haproxy(p.port, option))
        with connect(h.port) as s:
            me = s.getsockname()
            self.assertEqual(socks5_handshake(s, LOOP4, self.echo.port)[1], 0)
            self.echo_ok(s)
        # The ruleset and the log see this socket's address, not HAProxy's.
        log = p.log_text()
        self.assertIn(f"ruleset client={me[0]}:{me[1]}", log)
        self.assertIn(f"{me[0]}:{me[1]}: socks5 -> {LOOP4}:{self.echo.port}", log)

    def test_send_proxy_v2(self):
        self.check("send-proxy-v2")

    def test_send_proxy_v1(self):
        self.check("send-proxy")


class SendHeader(Base):
    def test_direct_dials_send_v1_and_v2(self):
        for version, prefix in (("v1", b"PROXY TCP4 127.0.0.1 127.0.0.1 "), ("v2", SIG)):
            self.echo.firsts.clear()
            p = self.start_proxy("--send-proxy-protocol", version)
            with connect(p.port) as s:
                me = s.getsockname()
                self.assertEqual(socks5_handshake(s, LOOP4, self.echo.port)[1], 0)
                # The echo returns the header it was sent first, then our bytes.
                s.sendall(b"x")
                self.assertTrue(wait_until(lambda: self.echo.firsts, 5))
            first = self.echo.firsts[0]
            self.assertTrue(first.startswith(prefix), first)
            if version == "v1":
                self.assertIn(f" {me[1]} {p.port}\r\n".encode(), first)
            else:
                self.assertEqual(first[16:24], socket.inet_aton(me[0]) + socket.inet_aton(LOOP4))
                self.assertEqual(struct.unpack("!HH", first[24:28]), (me[1], p.port))

    def test_forward_relays_the_received_client(self):
        # Chained: a front rulesocks that sends v2, a back one that accepts it and forwards.
        back = self.start_proxy("--accept-proxy-protocol", "-f", f"{LOOP4}:{self.echo.port}")
        front = self.start_proxy("--send-proxy-protocol", "v2", "-f", f"{LOOP4}:{back.port}")
        with connect(front.port) as s:
            me = s.getsockname()
            self.echo_ok(s)
        self.assertIn(f"{me[0]}:{me[1]}: forward ->", back.log_text())


if __name__ == "__main__":
    unittest.main()
