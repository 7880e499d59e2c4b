"""TLS with real clients: tls:// listeners (SOCKS over TLS, an HTTPS proxy, the API over
HTTPS), https:// and socks5s:// hops between two rulesocks, RPC to an https:// API, mTLS,
certificate reload on SIGHUP, and refusals (wrong CA, expired certificate, host-name
mismatch, plain-text client) that leave other clients served.

The CA and certificates are made with the openssl CLI in a temporary directory.

  RULESOCKS_BIN=build/src/rulesocks /usr/bin/python3 -m unittest -v test_tls
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

from harness import (LOOP4, MiB, IO_TIMEOUT, RPC_TYPE, IntegrationCase, api_post, blob, curl,
                     free_ports, lua_values, read_http_response, recv_all, sha256,
                     socks5_handshake, wait_closed, wait_until)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Certs:
    """A CA and certificates signed by it: good (localhost, 127.0.0.1), expired, one for
    another name, a client certificate, and a second CA nobody trusts."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rulesocks-tls-")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for ca in ("ca", "otherca"):
            openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                    "-days", "30", "-subj", f"/CN=rulesocks test {ca}", cwd=self.dir)
        self._leaf("good", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1", 30)
        self._leaf("good2", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1", 30)
        self._leaf("expired", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1", -1)
        self._leaf("wrongname", "other.example", "subjectAltName=DNS:other.example", 30)
        self._leaf("client", "client", "extendedKeyUsage=clientAuth", 30)
        self._leaf("untrusted", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1", 30,
                   ca="otherca")

    def _leaf(self, name, cn, ext, days, ca="ca"):
        with open(os.path.join(self.dir, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
                cwd=self.dir)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), "-extfile",
                f"{name}.ext", cwd=self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def server_args(self, name="good"):
        return ["--tls-cert", self.path(f"{name}.pem"), "--tls-key", self.path(f"{name}.key")]

    def client_context(self, cert=None):
        ctx = ssl.create_default_context(cafile=self.path("ca.pem"))
        if cert:
            ctx.load_cert_chain(self.path(f"{cert}.pem"), self.path(f"{cert}.key"))
        return ctx

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def tls_connect(ctx, port, host="localhost"):
    raw = socket.create_connection((LOOP4, port), timeout=IO_TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except Exception:
        raw.close()
        raise


class Reply:
    def __init__(self, status_line, body):
        self.status = int(status_line.split()[1]) if status_line else None
        self.body = body


def http_get_over(sock, path, host="origin"):
    """GET `path` through a tunnel already open on `sock`; a Reply (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    status, _, body, _ = read_http_response(sock)
    if isinstance(status, bytes):
        status = status.decode()
    return Reply(status, body)


class TlsCase(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = Certs()
        cls.addClassCleanup(cls.certs.remove)
        cls.origin = cls.start_class_origin()

    def tls_node(self, *args, name="good", socks=True, http=True, extra=()):
        """A rulesocks with tls:// SOCKS and HTTP listeners on free ports."""
        sp, hp = free_ports(2)
        cmd = list(self.certs.server_args(name))
        ports = []
        if socks:
            cmd += ["-l", f"tls://{LOOP4}:{sp}"]
            ports.append(sp)
        if http:
            cmd += ["--http", f"tls://{LOOP4}:{hp}"]
            ports.append(hp)
        p = self.start_proxy(*cmd, *args, *extra, socks=False, extra_ports=ports,
                             name=f"tls-{name}")
        p.tls_port, p.https_port = sp, hp
        return p

    def origin_url(self, path):
        return f"http://{LOOP4}:{self.origin.port}{path}"


class Listeners(TlsCase):
    def test_https_proxy_with_curl(self):
        node = self.tls_node()
        proxy = f"https://localhost:{node.https_port}"
        # Plain HTTP proxying, then CONNECT (-p), both through the TLS proxy.
        for extra in ([], ["-p"]):
            rc, out, err = curl("--proxy", proxy, "--proxy-cacert", self.certs.path("ca.pem"),
                                *extra, self.origin_url("/hello"))
            self.assertEqual(rc, 0, err)
            self.assertEqual(out, b"hello from origin\n")
        rc, out, err = curl("--proxy", f"https://127.0.0.1:{node.https_port}", "--proxy-cacert",
                            self.certs.path("ca.pem"), self.origin_url(f"/blob/{MiB}"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(blob(MiB)))

    def test_socks5_over_tls(self):
        node = self.tls_node(http=False)
        with tls_connect(self.certs.client_context(), node.tls_port) as s:
            self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0)
            reply = http_get_over(s, "/hello")
            self.assertEqual(reply.status, 200)
            self.assertEqual(reply.body, b"hello from origin\n")

    def test_openssl_s_client(self):
        node = self.tls_node(socks=False)
        request = f"CONNECT {LOOP4}:{self.origin.port} HTTP/1.1\r\nHost: x\r\n\r\n"
        p = subprocess.run(
            ["openssl", "s_client", "-connect", f"{LOOP4}:{node.https_port}", "-servername",
             "localhost", "-verify_return_error", "-CAfile", self.certs.path("ca.pem"),
             "-brief", "-ign_eof"],
            input=request.encode(), capture_output=True, timeout=60)
        text = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        self.assertIn("Verification: OK", text)
        self.assertIn("HTTP/1.1 200", text)

    def test_tls_versions_below_1_2_refused(self):
        node = self.tls_node(http=False)
        ctx = self.certs.client_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises((ssl.SSLError, OSError)):
            tls_connect(ctx, node.tls_port).close()
        with tls_connect(self.certs.client_context(), node.tls_port) as s:
            self.assertIn(s.version(), ("TLSv1.2", "TLSv1.3"))

    def test_plaintext_and_stalled_clients_fail_alone(self):
        node = self.tls_node("-t", "3", http=False)
        # A TLS client that never finishes its handshake holds nothing up.
        stalled = socket.create_connection((LOOP4, node.tls_port), timeout=IO_TIMEOUT)
        self.addCleanup(stalled.close)
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
        plain = socket.create_connection((LOOP4, node.tls_port), timeout=IO_TIMEOUT)
        self.addCleanup(plain.close)
        # A SOCKS5 greeting and request: no TLS record header.
        plain.sendall(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50")
        self.assertTrue(wait_closed(plain, IO_TIMEOUT), "plain-text client not closed")
        with tls_connect(self.certs.client_context(), node.tls_port) as s:
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0)
            self.assertEqual(http_get_over(s, "/hello").status, 200)
        self.assertTrue(wait_until(lambda: "TLS handshake failed" in node.log_text(), 10))
        # The stalled one is closed by -t, as any half-done handshake.
        self.assertTrue(wait_closed(stalled, 30), "stalled handshake never timed out")
        self.assertTrue(wait_until(lambda: "TLS handshake timed out" in node.log_text(), 10))

    def test_mtls_requires_a_client_certificate(self):
        node = self.tls_node("--tls-client-ca", self.certs.path("ca.pem"), http=False)
        with self.assertRaises((ssl.SSLError, OSError)):
            # TLS 1.3 reports a missing certificate after the handshake: on the first read.
            with tls_connect(self.certs.client_context(), node.tls_port) as s:
                s.sendall(b"\x05\x01\x00")
                if not s.recv(2):
                    raise ConnectionError("closed")
        self.assertTrue(wait_until(lambda: "certificate" in node.log_text(), 10))
        with tls_connect(self.certs.client_context(cert="client"), node.tls_port) as s:
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0)
            self.assertEqual(http_get_over(s, "/hello").status, 200)

    def test_sighup_reloads_the_certificate(self):
        d = tempfile.mkdtemp(prefix="rulesocks-reload-")
        self.addCleanup(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        shutil.copy(self.certs.path("good.pem"), cert)
        shutil.copy(self.certs.path("good.key"), key)
        port, = free_ports(1)
        node = self.start_proxy("--tls-cert", cert, "--tls-key", key, "-l",
                                f"tls://{LOOP4}:{port}", socks=False, extra_ports=[port])

        def serial():
            with tls_connect(self.certs.client_context(), port) as s:
                return s.getpeercert()["serialNumber"]

        def good_serial(name):
            out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in",
                                  self.certs.path(f"{name}.pem")], capture_output=True,
                                 check=True, text=True).stdout
            return out.strip().split("=")[1].upper()

        self.assertEqual(serial().upper(), good_serial("good"))
        # An established session survives the reload.
        live = tls_connect(self.certs.client_context(), port)
        self.addCleanup(live.close)
        _, rep = socks5_handshake(live, LOOP4, self.origin.port)
        self.assertEqual(rep, 0)
        shutil.copy(self.certs.path("good2.pem"), cert)
        shutil.copy(self.certs.path("good2.key"), key)
        os.kill(node.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "TLS certificate reloaded" in node.log_text(), 10))
        self.assertEqual(serial().upper(), good_serial("good2"))
        self.assertEqual(http_get_over(live, "/hello").status, 200)
        live.close()
        # A broken file is refused and the last good certificate stays.
        with open(key, "w") as f:
            f.write("not a key\n")
        os.kill(node.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "TLS reload failed" in node.log_text(), 10))
        self.assertEqual(serial().upper(), good_serial("good2"))


class Hops(TlsCase):
    def chain(self, scheme, server="good", *front_args):
        back = self.tls_node(name=server)
        port = back.https_port if scheme == "https" else back.tls_port
        front = self.start_proxy("-x", f"{scheme}://localhost:{port}", *front_args,
                                 http=True, name=f"front-{scheme}")
        return front, back

    def bulk_both_ways(self, front):
        n = 10 * MiB
        data = blob(n, 7)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{front.port}",
                            self.origin_url(f"/blob/{n}/7"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(sha256(out), sha256(data))
        up = os.path.join(self.certs.dir, "upload.bin")
        with open(up, "wb") as f:
            f.write(data)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{front.port}", "--data-binary",
                            f"@{up}", "-H", "Content-Type: application/octet-stream",
                            self.origin_url("/sink"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.decode().split(), [str(n), sha256(data)])

    def test_https_hop_10mib_both_ways(self):
        front, _ = self.chain("https", "good", "--tls-ca", self.certs.path("ca.pem"))
        self.bulk_both_ways(front)

    def test_socks5s_hop_10mib_both_ways_with_pipe(self):
        # --pipe falls back to copying on the TLS leg and still splices nowhere else.
        front, _ = self.chain("socks5s", "good", "--tls-ca", self.certs.path("ca.pem"), "--pipe")
        self.bulk_both_ways(front)

    def test_https_hop_with_credentials(self):
        back = self.tls_node("--auth-required", name="good", socks=False)
        front = self.start_proxy("-x", f"https://user:secret@localhost:{back.https_port}",
                                 "--tls-ca", self.certs.path("ca.pem"))
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{front.port}",
                            self.origin_url("/hello"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"hello from origin\n")

    def test_mixed_chains(self):
        back = self.tls_node(name="good")
        plain = self.start_proxy(name="plain-hop")
        ca = ["--tls-ca", self.certs.path("ca.pem")]
        # TLS, then SOCKS5 inside it; plain SOCKS5, then TLS through its tunnel.
        for chain in (f"socks5s://localhost:{back.tls_port},socks5://{LOOP4}:{plain.port}",
                      f"socks5://{LOOP4}:{plain.port},https://localhost:{back.https_port}"):
            with self.subTest(chain=chain):
                front = self.start_proxy("-x", chain, *ca)
                rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{front.port}",
                                    self.origin_url("/hello"))
                self.assertEqual((rc, out), (0, b"hello from origin\n"), err)
        # A second TLS layer inside the first is refused, naming the hop.
        front = self.start_proxy(
            "-x", f"https://localhost:{back.https_port},socks5s://localhost:{back.tls_port}", *ca)
        with socket.create_connection((LOOP4, front.port), timeout=IO_TIMEOUT) as s:
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0x01)
        self.assertTrue(wait_until(lambda: "TLS inside TLS is not supported" in front.log_text(),
                                   10))

    def refused(self, server, trust, expect, host="localhost"):
        back = self.tls_node(name=server)
        args = ["--tls-ca", self.certs.path(trust)] if trust else []
        front = self.start_proxy("-x", f"socks5s://{host}:{back.tls_port}", *args, http=True)
        # SOCKS5: 0x04 host unreachable for a certificate refused.
        with socket.create_connection((LOOP4, front.port), timeout=IO_TIMEOUT) as s:
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0x04)
        # HTTP CONNECT: 502 naming the reason.
        rc, out, err = curl("--proxy", f"http://{LOOP4}:{front.http_port}", "-p",
                            self.origin_url("/hello"))
        self.assertNotEqual(rc, 0)
        self.assertIn("502", err)
        self.assertTrue(wait_until(lambda: expect.lower() in front.log_text().lower(), 10),
                        front.log_tail())
        # The server behind keeps serving (a client that checks nothing).
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        lax.check_hostname = False
        lax.verify_mode = ssl.CERT_NONE
        with tls_connect(lax, back.tls_port) as s:
            _, rep = socks5_handshake(s, LOOP4, self.origin.port)
            self.assertEqual(rep, 0)

    def test_wrong_ca_refused(self):
        self.refused("untrusted", "ca.pem", "unable to get local issuer certificate")

    def test_system_store_alone_refuses_the_test_ca(self):
        self.refused("good", None, "unable to get local issuer certificate")

    def test_expired_certificate_refused(self):
        self.refused("expired", "ca.pem", "certificate has expired")

    def test_host_name_mismatch_refused(self):
        self.refused("wrongname", "ca.pem", "Hostname mismatch")

    def test_ip_address_mismatch_refused(self):
        self.refused("wrongname", "ca.pem", "IP address mismatch", host=LOOP4)


class Api(TlsCase):
    def test_api_over_https_with_key(self):
        port, = free_ports(1)
        node = self.start_proxy(*self.certs.server_args(), "--api", f"tls://{LOOP4}:{port}",
                                "--api-key", "k3y", socks=False, extra_ports=[port])
        url = f"https://localhost:{port}/stats"
        ca = ["--cacert", self.certs.path("ca.pem")]
        rc, out, err = curl(*ca, "-o", "/dev/null", "-w", "%{http_code}", url)
        self.assertEqual((rc, out), (0, b"401"), err)
        for header in ("Authorization: Bearer k3y", "X-API-Key: k3y"):
            rc, out, err = curl(*ca, "-o", "/dev/null", "-w", "%{http_code}", "-H", header, url)
            self.assertEqual((rc, out), (0, b"200"), err)
        # A plain-text client on the HTTPS port gets no HTTP answer (at most a TLS
        # alert) and is closed; the API goes on.
        with socket.create_connection((LOOP4, port), timeout=IO_TIMEOUT) as s:
            s.sendall(b"GET /healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertNotIn(b"HTTP/1.1", recv_all(s))
        rc, out, err = curl(*ca, "-o", "/dev/null", "-w", "%{http_code}",
                            f"https://localhost:{port}/healthy")
        self.assertEqual((rc, out), (0, b"200"), err)
        self.assertTrue(wait_until(lambda: "TLS handshake failed" in node.log_text(), 10))

    def test_rpc_between_nodes_over_https_with_keys(self):
        port, = free_ports(1)
        self.start_proxy(*self.certs.server_args(), "--api", f"tls://{LOOP4}:{port}",
                         "--api-key", "b-key", "-r", os.path.join(os.path.dirname(__file__),
                                                                 "..", "..", "lua", "ruleset.lua"),
                         socks=False, extra_ports=[port], name="node-b")
        a = self.start_proxy("--api-key", "a-key", "--tls-ca", self.certs.path("ca.pem"), "-r",
                             os.path.join(os.path.dirname(__file__), "..", "..", "lua",
                                          "ruleset.lua"),
                             socks=False, api=True, name="node-a")
        def invoke_from_a(key):
            script = f"""
                neosocksd.setapikey("localhost:{port}", {key})
                local ok, result = await.invoke([[return "pong " .. (20 + 22)]],
                                                "https://localhost:{port}")
                if not ok then return false, result end
                return true, result()
            """
            reply = api_post(a.api_port, "/ruleset/rpcall", script,
                             [("Content-Type", RPC_TYPE), ("X-API-Key", "a-key")])
            self.assertEqual(reply.status, 200, reply.text)
            return lua_values(reply.body)

        # rpcall's own ok, then ours, then B's (result()).
        self.assertEqual(invoke_from_a('"b-key"'), [True, True, True, b"pong 42"])
        # Without B's key the call reaches B over TLS and B refuses it.
        _, ok, why = invoke_from_a('""')
        self.assertIs(ok, False)
        self.assertIn(b"401", why)
        # By address: the certificate's IP entry is checked (and the key is per address).
        script = f"""
            neosocksd.setapikey("127.0.0.1:{port}", "b-key")
            local ok, result = await.invoke("return 7", "https://127.0.0.1:{port}")
            if not ok then return false, result end
            return true, result()
        """
        reply = api_post(a.api_port, "/ruleset/rpcall", script,
                         [("Content-Type", RPC_TYPE), ("X-API-Key", "a-key")])
        self.assertEqual(reply.status, 200, reply.text)
        self.assertEqual(lua_values(reply.body), [True, True, True, 7])


if __name__ == "__main__":
    import unittest
    unittest.main()
