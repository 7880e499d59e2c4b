"""Plain HTTP proxying with real browsers and tools: headless Chromium loading a page with
several resources through --proxy-server=http:// (the --http port and the mixed -l port, with
socks5:// on the mixed port as a control, and https:// on a tls:// --http port), a wget -r mirror of the same page, and a slowloris
run by slowhttptest that must not hold up other clients.

chromium, slowhttptest and wget are Debian packages that contrib/dev.sh test installs: a
missing one is a failure, not a skip.

  RULESOCKS_BIN=build/src/rulesocks /usr/bin/python3 -m unittest -v test_browser
"""

import base64
import collections
import csv
import hashlib
import http.server
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from harness import (LOOP4, IntegrationCase, api_stats, curl, free_ports, stats_field,
                     wait_until)

# Loopback only: anything else Chromium may try on its own is refused, never dialled.
RULESET = """\
local ruleset = {}
local function decide(addr)
    local host = addr:match("^(.-):%d+$")
    if host == "127.0.0.1" then return addr end
    return nil
end
function ruleset.resolve(addr) return decide(addr) end
function ruleset.route(addr) return decide(addr) end
function ruleset.route6(addr) return nil end
return ruleset
"""

MARKER = "rulesocks-page-ok"
# Enough resources that the six connections a browser opens per proxied host must be reused.
IMAGES = [f"/img/{i}.gif" for i in range(24)]


def gif(i):
    """A valid 1x1 GIF that differs by its colour byte, so every image is its own file."""
    return (b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes([i, 0x40, 0x80]) +
            b"\xff\xff\xff!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00"
            b"\x00\x02\x02D\x01\x00;")


def site():
    """{path: (content type, body)}: a page, its stylesheet, its script and its images."""
    imgs = "".join(f'<img src="{p}" width="1" height="1">' for p in IMAGES)
    files = {
        "/index.html": ("text/html",
                        '<!DOCTYPE html><html><head><title>t</title>'
                        '<link rel="stylesheet" href="/style.css"></head>'
                        f'<body><div id="out">js did not run</div>{imgs}'
                        '<script src="/app.js"></script></body></html>'),
        # The script reads the stylesheet's colour: the marker proves CSS and JS both arrived.
        "/style.css": ("text/css", "#out { color: rgb(1, 2, 3); }\n"),
        "/app.js": ("application/javascript",
                    "var c = getComputedStyle(document.getElementById('out')).color;\n"
                    f"document.getElementById('out').textContent = '{MARKER} ' + c;\n"),
        "/favicon.ico": ("image/gif", gif(255)),
    }
    for i, p in enumerate(IMAGES):
        files[p] = ("image/gif", gif(i))
    return {k: (t, v.encode() if isinstance(v, str) else v) for k, (t, v) in files.items()}


class SiteOrigin:
    """A threaded HTTP/1.1 origin on 127.0.0.1 serving site(), keeping a log of
    (path, Via header) per request and the number of connections it accepted."""

    def __init__(self):
        self.files = site()
        self.log = []
        self.accepted = 0
        self.lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, fmt, *args):
                pass

            def setup(self):
                super().setup()
                with origin.lock:
                    origin.accepted += 1

            def do_GET(self):
                with origin.lock:
                    origin.log.append((self.path, self.headers.get("Via")))
                ctype, body = origin.files.get(self.path, ("text/plain", None))
                code = 200 if body is not None else 404
                body = body if body is not None else b"not found\n"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server((LOOP4, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://{LOOP4}:{self.port}{path}"

    def take_log(self):
        with self.lock:
            log, self.log = self.log, []
            return log

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def require(program, package):
    path = shutil.which(program)
    if path is None:
        raise AssertionError(f"{program} not found: install the Debian package {package} "
                             "(contrib/dev.sh test installs it)")
    return path


def run_bounded(cmd, timeout, **kw):
    """Runs cmd in its own process group; on timeout kills that group (by the child's PID,
    which is the group's id) and fails. Returns the CompletedProcess."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError(f"{cmd[0]} did not finish within {timeout} s\n"
                             f"{err.decode(errors='replace')[-2000:]}")
    finally:
        # Chromium leaves helper processes (zygote, GPU, network service) in its group.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


class BrowserCase(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = SiteOrigin()
        cls.addClassCleanup(cls.origin.stop)
        cls.dir = tempfile.mkdtemp(prefix="rulesocks-browser-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        ruleset = cls.ruleset = os.path.join(cls.dir, "ruleset.lua")
        with open(ruleset, "w") as f:
            f.write(RULESET)
        cls.proxy = cls.start_class_proxy("-r", ruleset, "-t", "2", http=True, api=True,
                                          name="browser-proxy")

    def counters(self):
        text = api_stats(self.proxy.api_port)
        return stats_field(text, "Accepted"), stats_field(text, "Requests")

    # -- headless Chromium

    def chromium(self, proxy_url, extra=()):
        binary = require("chromium", "chromium")
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.dir)
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               f"--proxy-server={proxy_url}", "--proxy-bypass-list=<-loopback>", *extra,
               "--dump-dom", self.origin.url("/index.html")]
        env = dict(os.environ, HOME=profile, XDG_CONFIG_HOME=profile, XDG_CACHE_HOME=profile)
        env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
        p = run_bounded(cmd, 45, env=env)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace")[-2000:])
        return p.stdout.decode(errors="replace")

    def assert_page_loaded(self, dom, log):
        self.assertIn(f"{MARKER} rgb(1, 2, 3)", dom, dom[-2000:])
        paths = collections.Counter(path for path, _ in log)
        for path in ["/index.html", "/style.css", "/app.js"] + IMAGES:
            self.assertEqual(paths[path], 1, (path, log))

    def test_chromium_through_http_proxy_ports(self):
        """--proxy-server=http:// on the --http port and on the mixed -l port: the page, its
        stylesheet, script and images all arrive (the script's marker in the DOM reads the
        stylesheet's colour), each with the proxy's Via, on fewer connections than requests."""
        for port in (self.proxy.http_port, self.proxy.port):
            with self.subTest(port=port):
                self.origin.take_log()
                accepted0, requests0 = self.counters()
                dom = self.chromium(f"http://{LOOP4}:{port}")
                log = self.origin.take_log()
                accepted1, requests1 = self.counters()
                self.assert_page_loaded(dom, log)
                # Every request came through the proxy, which added its Via.
                self.assertEqual([via for _, via in log if via != "1.1 rulesocks"], [], log)
                # Each request counted one by one, carried by fewer client connections
                # (api_stats is on the API port: it adds to neither counter).
                self.assertGreaterEqual(requests1 - requests0, len(log))
                self.assertGreater(accepted1 - accepted0, 0)
                self.assertLess(accepted1 - accepted0, len(log),
                                f"no keep-alive: {accepted1 - accepted0} connections "
                                f"for {len(log)} requests")

    def test_chromium_socks5_control(self):
        """The same page through socks5:// on the mixed port, where HTTP is tunnelled."""
        self.origin.take_log()
        accepted0, _ = self.counters()
        dom = self.chromium(f"socks5://{LOOP4}:{self.proxy.port}")
        log = self.origin.take_log()
        accepted1, _ = self.counters()
        self.assert_page_loaded(dom, log)
        # Tunnelled: the origin sees the browser's own requests, without a Via.
        self.assertEqual([via for _, via in log if via is not None], [], log)
        self.assertGreater(accepted1 - accepted0, 0)

    def test_chromium_through_https_proxy(self):
        """--proxy-server=https:// on a tls:// --http listener, whose self-signed certificate
        Chromium trusts by its key (--ignore-certificate-errors-spki-list)."""
        d = tempfile.mkdtemp(prefix="tls-", dir=self.dir)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")

        def openssl(*args, data=None):
            return subprocess.run(["openssl", *args], input=data, check=True,
                                  capture_output=True, timeout=60).stdout

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                "-keyout", key, "-out", cert)
        der = openssl("pkey", "-pubin", "-outform", "der",
                      data=openssl("x509", "-pubkey", "-noout", "-in", cert))
        spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
        port, = free_ports(1)
        self.start_proxy("-r", self.ruleset, "-t", "2", "--tls-cert", cert, "--tls-key", key,
                         "--http", f"tls://{LOOP4}:{port}", socks=False, extra_ports=[port],
                         name="browser-https-proxy")
        self.origin.take_log()
        dom = self.chromium(f"https://localhost:{port}",
                            extra=[f"--ignore-certificate-errors-spki-list={spki}"])
        log = self.origin.take_log()
        self.assert_page_loaded(dom, log)
        self.assertEqual([via for _, via in log if via != "1.1 rulesocks"], [], log)

    # -- wget

    def test_wget_mirror(self):
        """wget -r -l1 with http_proxy (the mixed port) gets every file of the page intact."""
        binary = require("wget", "wget")
        out = tempfile.mkdtemp(prefix="wget-", dir=self.dir)
        self.origin.take_log()
        accepted0, _ = self.counters()
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["http_proxy"] = f"http://{LOOP4}:{self.proxy.port}"
        p = run_bounded([binary, "-q", "-r", "-l1", "-nH", "-e", "robots=off", "-P", out,
                         self.origin.url("/index.html")], 30, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        log = self.origin.take_log()
        accepted1, _ = self.counters()
        self.assertEqual([via for _, via in log if via != "1.1 rulesocks"], [], log)
        # wget keeps its one proxy connection for the whole mirror.
        self.assertEqual((accepted1 - accepted0, len(log)), (1, len(self.origin.files) - 1))
        for path, (_, body) in self.origin.files.items():
            if path == "/favicon.ico":
                continue  # not linked from the page
            with self.subTest(path=path):
                with open(os.path.join(out, path.lstrip("/")), "rb") as f:
                    self.assertEqual(f.read(), body)

    # -- slow headers

    def test_slowloris_does_not_block_others(self):
        """40 slowloris connections (one more header line a second, for at most 6 s) on the
        --http port: a curl -x meanwhile is served as fast as before, and the proxy closes
        every slow connection once -t (2 s) has passed since it opened, although it keeps
        sending bytes."""
        binary = require("slowhttptest", "slowhttptest")
        prefix = os.path.join(self.dir, "slowloris")
        conns, length = 40, 6
        proxy = f"http://{LOOP4}:{self.proxy.http_port}"
        want = site()["/style.css"][1]

        def probe():
            start = time.monotonic()
            rc, body, err = curl("-x", proxy, self.origin.url("/style.css"), timeout=10)
            self.assertEqual((rc, body), (0, want), err)
            return time.monotonic() - start

        def sessions():
            return stats_field(api_stats(self.proxy.api_port), "Sessions")

        usual = max(probe() for _ in range(5))
        bad0 = self.bad_requests()
        cmd = [binary, "-H", "-c", str(conns), "-r", str(conns), "-i", "1", "-x", "10",
               "-l", str(length), "-p", "3", "-g", "-o", prefix, "-u",
               self.origin.url("/index.html"), "-d", f"{LOOP4}:{self.proxy.http_port}"]
        result = {}
        started = time.monotonic()
        t = threading.Thread(target=lambda: result.update(p=run_bounded(cmd, 30)), daemon=True)
        t.start()
        # Served while all the slow connections are open.
        self.assertTrue(wait_until(lambda: sessions() >= conns, 5),
                        "slowhttptest did not open its connections")
        during = []
        while sessions() >= conns and len(during) < 50:
            during.append(probe())
        self.assertTrue(wait_until(lambda: sessions() == 0, 5), "slow connections stay open")
        closed = time.monotonic() - started
        t.join(30)
        self.assertFalse(t.is_alive())
        p = result["p"]
        self.assertEqual(p.returncode, 0, p.stderr)
        # slowhttptest's verdict: it ended because the proxy closed all its connections.
        report = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", p.stdout.decode(errors="replace"))
        verdict = re.search(r"Exit status:\s*(.+)", report)
        self.assertEqual(verdict and verdict.group(1).strip(), "No open connections left",
                         report[-600:])
        self.assertGreaterEqual(len(during), 3, "too few probes while the attack held")
        self.assertLess(max(during), max(1.0, 5 * usual), (usual, during))
        # Closed by the header deadline, not by slowhttptest's own end (-l 6).
        self.assertGreater(closed, 1.5)
        self.assertLess(closed, length - 1)
        # Every connection was made (open now plus closed so far: the report samples once a
        # second, so a sample may fall between the first close and the last connect; /stats
        # above saw them all open at once).
        with open(prefix + ".csv") as f:
            reached = max(int(row["Connected"]) + int(row["Closed"]) for row in csv.DictReader(f))
        self.assertGreaterEqual(reached, conns)
        self.assertGreaterEqual(self.bad_requests() - bad0, conns)

    def bad_requests(self):
        line = [ln for ln in api_stats(self.proxy.api_port).splitlines()
                if ln.startswith("Requests")][0]
        return int(re.search(r"(\d+) bad", line).group(1))
