"""Shared machinery for the rulesocks integration tests.

Everything here drives the real binary (path in $RULESOCKS_BIN) on loopback
with real clients: curl, an in-process HTTP origin and raw sockets that check
handshake replies byte for byte.

Rules kept throughout:
  * every wait is bounded (socket timeouts, deadlines, subprocess timeouts);
  * only 127.0.0.0/8 and ::1 are used;
  * only processes started here are stopped, and always by their own PID.
"""

import collections
import contextlib
import hashlib
import http.server
import os
import random
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("RULESOCKS_BIN") or os.path.join(
    HERE, "..", "..", "build-itest", "src", "rulesocks")

MiB = 1024 * 1024
LOOP4 = "127.0.0.1"
# True when RULESOCKS_BIN is an ASan+UBSan build (set by tests/integration/CMakeLists.txt):
# tests that are too slow there scale down.
SANITIZED = os.environ.get("RULESOCKS_SANITIZED", "0").upper() in ("1", "ON", "TRUE", "YES")
LOOP6 = "::1"

# Seconds. Generous for a loaded CI machine, small enough to keep the suite fast.
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
IO_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def sha256(data):
    return hashlib.sha256(data).hexdigest()


def blob(n, seed=None):
    """n deterministic pseudo-random bytes; the same (n, seed) gives the same bytes."""
    return _blob(n, n if seed is None else seed)


_blob_cache = {}
_blob_lock = threading.Lock()


def _blob(n, seed):
    key = (n, seed)
    with _blob_lock:
        data = _blob_cache.get(key)
        if data is None:
            data = random.Random(seed).randbytes(n)
            if n >= 64 * 1024:
                _blob_cache[key] = data
        return data


def free_port(family=socket.AF_INET):
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    host = LOOP6 if family == socket.AF_INET6 else LOOP4
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n, family=socket.AF_INET):
    """n distinct free ports (all bound at once, so they cannot repeat)."""
    host = LOOP6 if family == socket.AF_INET6 else LOOP4
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOP6, 0))
        return True
    except OSError:
        return False


def wait_until(predicate, timeout, interval=0.02):
    """Polls predicate() until it is truthy or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _listening_ports():
    """Local ports in LISTEN state, from /proc/net/tcp and tcp6."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


# --------------------------------------------------------------------------
# The proxy under test
# --------------------------------------------------------------------------

class Proxy:
    """Runs the rulesocks binary for the duration of a `with` block.

    Proxy(*args, socks=True, http=False, loglevel=6)
      socks: add "-l 127.0.0.1:<free port>" (self.port)
      http:  add "--http 127.0.0.1:<free port>" (self.http_port)
      args:  any further flags, e.g. "-t", "1" or "-f", "127.0.0.1:8080"
      extra_ports: listen ports given in `args` that start-up should also wait for
      nofile: RLIMIT_NOFILE soft limit of the proxy process (default: inherited)

    Start-up waits (bounded) until every listen port is in LISTEN state. The
    readiness check reads /proc/net/tcp rather than connecting, so that the
    probe never becomes a session of its own (which would skew -m,
    --max-startups and the fd baseline).

    stop() sends SIGTERM to this process's PID, waits up to 5 s, then
    SIGKILLs it; leaving the block asserts a clean exit (code 0).
    """

    live = []     # running instances
    started = []  # every instance ever started, in order (for log dumps on failure)

    def __init__(self, *args, socks=True, http=False, loglevel=6, name="rulesocks",
                 extra_ports=(), nofile=None):
        self.name = name
        self.nofile = nofile  # RLIMIT_NOFILE soft limit for the proxy (None: inherit ours)
        ports = free_ports(2)
        self.port = ports[0] if socks else None
        self.http_port = ports[1] if http else None
        self.cmd = [BIN, "--loglevel", str(loglevel)]
        if socks:
            self.cmd += ["-l", f"{LOOP4}:{self.port}"]
        if http:
            self.cmd += ["--http", f"{LOOP4}:{self.http_port}"]
        self.cmd += [str(a) for a in args]
        self.extra_ports = tuple(extra_ports)  # more listen ports (from args) to wait for
        self.proc = None
        self.returncode = None
        self.log_path = None

    # -- lifecycle --

    def start(self):
        if not os.access(BIN, os.X_OK):
            raise unittest.SkipTest(f"rulesocks binary not found at {BIN}; set RULESOCKS_BIN")
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=self._limits if self.nofile else None)
        Proxy.live.append(self)
        Proxy.started.append(self)
        want = {p for p in (self.port, self.http_port, *self.extra_ports) if p}
        deadline = time.monotonic() + START_TIMEOUT
        while not want <= _listening_ports():
            if self.proc.poll() is not None:
                self._forget()
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} during start-up\n"
                    f"command: {' '.join(self.cmd)}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} did not listen on {sorted(want)} within {START_TIMEOUT} s\n"
                    f"{self.log_tail()}")
            time.sleep(0.01)
        return self

    def _limits(self):  # runs in the child, between fork and exec
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile, hard), hard))

    def stop(self, sig=signal.SIGTERM, grace=STOP_GRACE):
        """Signals the process by PID and reaps it; returns (exit code, seconds taken).

        Falls back to SIGKILL after `grace` seconds (then the code is negative).
        """
        if self.proc is None or self.returncode is not None:
            return self.returncode, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        self.returncode = self.proc.returncode
        self._forget()
        return self.returncode, time.monotonic() - t0

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_GRACE)
        self.returncode = self.proc.returncode if self.proc else None
        self._forget()

    def _forget(self):
        if self in Proxy.live:
            Proxy.live.remove(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        code, took = self.stop()
        if exc_type is None and code != 0:
            raise AssertionError(
                f"{self.name} exited with {code} after SIGTERM (took {took:.1f} s), "
                f"expected a graceful exit 0\n{self.log_tail()}")
        if exc_type is None:
            self.remove_log()  # on failure the log stays for IntegrationCase to print
        return False

    def remove_log(self):
        if self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            self.log_path = None

    # -- observation --

    @property
    def pid(self):
        return self.proc.pid

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_kinds(self):
        """Counter of open fds by kind: "socket", "pipe", "anon_inode:[eventpoll]", "file"..."""
        kinds = collections.Counter()
        d = f"/proc/{self.pid}/fd"
        for fd in os.listdir(d):
            try:
                target = os.readlink(f"{d}/{fd}")
            except OSError:
                continue  # closed meanwhile
            kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) else \
                target if target.startswith("anon_inode:") else "file"
            kinds[kind] += 1
        kinds.setdefault("pipe", 0)
        return kinds

    def cpu_seconds(self):
        """User + system CPU time the process has used so far (from /proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, lines=40):
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:]) if text else "(empty log)"


class IntegrationCase(unittest.TestCase):
    """Prints the log tail of every running proxy when a test fails or errors."""

    def run(self, result=None):
        first_new = len(Proxy.started)
        before = (len(result.failures), len(result.errors)) if result else None
        outcome = super().run(result)
        mine = Proxy.started[first_new:]
        if result is not None and (len(result.failures), len(result.errors)) != before:
            for p in list(dict.fromkeys(Proxy.live + mine)):
                print(f"\n--- {p.name} (pid {p.pid}) log tail, after {self.id()} ---\n"
                      f"{p.log_tail()}", file=sys.stderr)
        for p in mine:
            if not p.alive:
                p.remove_log()
        return outcome

    # Start a proxy for one test; it is stopped (and its exit code checked) at cleanup.
    def start_proxy(self, *args, **kw):
        p = Proxy(*args, **kw).start()
        self.addCleanup(self._stop_proxy, p)
        return p

    def _stop_proxy(self, p):
        code, took = p.stop()
        self.assertEqual(code, 0, f"{p.name} exited with {code} after SIGTERM "
                                  f"(took {took:.1f} s)\n{p.log_tail()}")

    @classmethod
    def start_class_proxy(cls, *args, **kw):
        p = Proxy(*args, **kw).start()
        cls.addClassCleanup(cls._stop_class_proxy, p)
        return p

    @staticmethod
    def _stop_class_proxy(p):
        code, took = p.stop()
        if code != 0:
            raise AssertionError(f"{p.name} exited with {code} after SIGTERM "
                                 f"(took {took:.1f} s)\n{p.log_tail()}")
        p.remove_log()

    @classmethod
    def start_class_origin(cls, host=LOOP4):
        o = Origin(host).start()
        cls.addClassCleanup(o.stop)
        return o


# --------------------------------------------------------------------------
# HTTP origin
# --------------------------------------------------------------------------

class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # socket timeout: a stuck client never pins a thread for long

    def log_message(self, fmt, *args):
        pass

    def _send(self, code, body, ctype="application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        # /blob/<n>[/<seed>]: n deterministic pseudo-random bytes
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "blob" and len(parts) in (2, 3) and all(p.isdigit() for p in parts[1:]):
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) == 3 else None
            self._send(200, blob(n, seed))
        elif parts == ["hello"]:
            self._send(200, b"hello from origin\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self):
        # /echo returns the body; /sink returns "<length> <sha256>" of it.
        length = int(self.headers.get("Content-Length", "0"))
        remaining, h, chunks = length, hashlib.sha256(), []
        echo = self.path == "/echo"
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 256 * 1024))
            if not chunk:
                break
            remaining -= len(chunk)
            h.update(chunk)
            if echo:
                chunks.append(chunk)
        if self.path == "/echo":
            self._send(200, b"".join(chunks))
        elif self.path == "/sink":
            self._send(200, f"{length - remaining} {h.hexdigest()}\n".encode(), "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    do_PUT = do_POST


class _OriginServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # Clients that abort mid-response are part of some tests: stay quiet about them.
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class _OriginServer6(_OriginServer):
    address_family = socket.AF_INET6


class Origin:
    """A threaded HTTP/1.1 origin on 127.0.0.1 or ::1 (a free port).

    GET  /blob/<n>      n deterministic pseudo-random bytes (harness.blob(n))
    GET  /hello         a short text body
    POST /echo          the request body back
    POST /sink          "<length> <sha256>\\n" of the request body
    """

    def __init__(self, host=LOOP4):
        self.host = host
        cls = _OriginServer6 if ":" in host else _OriginServer
        self.server = cls((host, 0), _OriginHandler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def url(self, path, host=None):
        host = host or self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{path}"


# --------------------------------------------------------------------------
# Raw TCP peers for exact-byte and half-close tests
# --------------------------------------------------------------------------

class SinkThenSendServer:
    """One-connection raw TCP server: reads until EOF, then sends `reply` and closes.

    After join(): self.received_len, self.received_sha256, self.error.
    """

    def __init__(self, reply, host=LOOP4):
        self.reply = reply
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(1)
        self.sock.settimeout(IO_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.received_len = 0
        self.received_sha256 = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(30)
                h = hashlib.sha256()
                while True:
                    chunk = conn.recv(256 * 1024)
                    if not chunk:
                        break
                    self.received_len += len(chunk)
                    h.update(chunk)
                self.received_sha256 = h.hexdigest()
                conn.sendall(self.reply)
        except Exception as e:  # reported by the test through self.error
            self.error = e
        finally:
            self.sock.close()

    def start(self):
        self.thread.start()
        return self

    def join(self, timeout=30):
        self.thread.join(timeout)
        return not self.thread.is_alive()


class HoldServer:
    """Raw TCP server that accepts connections and keeps them open, silent, until close()."""

    def __init__(self, host=LOOP4):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except (socket.timeout, OSError):
                continue

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------
# Raw client sockets
# --------------------------------------------------------------------------

def connect(port, host=LOOP4, timeout=IO_TIMEOUT):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock, n):
    """Exactly n bytes, or fewer if the peer closes first."""
    out = bytearray()
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def recv_all(sock, limit=64 * MiB):
    """Everything until EOF (a reset also ends it)."""
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = sock.recv(256 * 1024)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def wait_closed(sock, timeout):
    """Seconds until the peer closed (EOF or reset), discarding data; None if still open."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return time.monotonic() - t0
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
        except socket.timeout:
            return None


def is_open(sock, wait=0.3):
    """True when the peer has not closed within `wait` seconds (no data expected)."""
    return wait_closed(sock, wait) is None


# SOCKS5 constants (RFC 1928)
S5_CONNECT, S5_BIND, S5_UDP = 1, 2, 3
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 1, 3, 4


def socks5_address(host):
    """ATYP + address bytes for an IPv4/IPv6 literal or a host name."""
    for family, atyp in ((socket.AF_INET, ATYP_V4), (socket.AF_INET6, ATYP_V6)):
        try:
            return bytes([atyp]) + socket.inet_pton(family, host)
        except OSError:
            pass
    name = host.encode()
    return bytes([ATYP_DOMAIN, len(name)]) + name


def socks5_request(host, port, cmd=S5_CONNECT):
    return bytes([5, cmd, 0]) + socks5_address(host) + struct.pack("!H", port)


def read_socks5_reply(sock):
    """Reads one SOCKS5 reply; returns (raw bytes, REP) or (raw, None) when truncated."""
    head = recv_exact(sock, 4)
    if len(head) < 4:
        return head, None
    atyp = head[3]
    if atyp == ATYP_V4:
        rest = recv_exact(sock, 4 + 2)
    elif atyp == ATYP_V6:
        rest = recv_exact(sock, 16 + 2)
    elif atyp == ATYP_DOMAIN:
        n = recv_exact(sock, 1)
        rest = n + (recv_exact(sock, n[0] + 2) if n else b"")
    else:
        rest = b""
    return head + rest, head[1]


def socks5_handshake(sock, host, port, cmd=S5_CONNECT, auth=None):
    """Greeting (+ RFC 1929 auth) + request; returns (raw reply, REP) of the request.

    Raises AssertionError if the method selection is not what a client expects.
    """
    if auth:
        sock.sendall(b"\x05\x01\x02")
        method = recv_exact(sock, 2)
        if method != b"\x05\x02":
            raise AssertionError(f"method selection {method!r}, expected 05 02")
        user, password = (x.encode() for x in auth)
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        status = recv_exact(sock, 2)
        if status != b"\x01\x00":
            raise AssertionError(f"auth status {status!r}, expected 01 00")
    else:
        sock.sendall(b"\x05\x01\x00")
        method = recv_exact(sock, 2)
        if method != b"\x05\x00":
            raise AssertionError(f"method selection {method!r}, expected 05 00")
    sock.sendall(socks5_request(host, port, cmd))
    return read_socks5_reply(sock)


def socks5_reply_bytes(rep):
    """The reply rulesocks sends for a failure: bound address 0.0.0.0:0."""
    return bytes([5, rep, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])


def socks4_request(port, ip=LOOP4, userid=b"", host=None, cmd=1):
    """SOCKS4 request; with `host` it is SOCKS4A (IP 0.0.0.1 + name)."""
    if host is not None:
        ip = "0.0.0.1"
    req = bytes([4, cmd]) + struct.pack("!H", port) + socket.inet_aton(ip) + userid + b"\x00"
    if host is not None:
        req += host.encode() + b"\x00"
    return req


def read_http_response(sock, limit=64 * 1024):
    """Reads a response head and a Content-Length body, and not one byte more.

    (The head is read byte by byte: what follows it, e.g. tunnelled data after
    a CONNECT reply, stays in the socket for the caller.)
    Returns (status line, {lower-case name: value}, body, raw head bytes);
    the status line is None if the connection closed before a complete head.
    """
    raw = bytearray()
    while not raw.endswith(b"\r\n\r\n") and len(raw) < limit:
        try:
            c = sock.recv(1)
        except ConnectionResetError:
            break
        if not c:
            break
        raw += c
    if not raw.endswith(b"\r\n\r\n"):
        return None, {}, b"", bytes(raw)
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = recv_exact(sock, int(headers.get("content-length", "0")))
    return lines[0], headers, body, bytes(raw)


# --------------------------------------------------------------------------
# curl
# --------------------------------------------------------------------------

_CURL_ENV = {k: v for k, v in os.environ.items()
             if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                                  "socks_proxy", "curl_home")}


def curl(*args, timeout=60):
    """Runs curl, bounded by `timeout` seconds; returns (rc, stdout bytes, stderr str).

    -q skips any .curlrc, and proxy variables are dropped from the environment,
    so only the proxy given in `args` is used.
    """
    cmd = ["curl", "-q", "--silent", "--show-error", "--max-time", str(timeout),
           *[str(a) for a in args]]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout + 10, env=_CURL_ENV)
    except subprocess.TimeoutExpired as e:
        return -1, e.stdout or b"", f"curl timed out: {' '.join(cmd)}"
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


# --------------------------------------------------------------------------
# Load and fault helpers
# --------------------------------------------------------------------------

def raise_nofile(want=None):
    """Raises this process's RLIMIT_NOFILE soft limit to `want` (default: the hard limit).

    Processes started afterwards (the proxy) inherit it. Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def closed_by_peer(socks, timeout, want=None, quiet=None, min_wait=0.0):
    """Returns the set of sockets whose peer closed (EOF or reset) within `timeout` s.

    Returns early once all (or `want`) have closed, or, with `quiet`, once
    `min_wait` s have passed and no socket closed for `quiet` s. Data is read
    and discarded. Works for thousands of sockets (epoll).
    """
    closed = set()
    want = len(socks) if want is None else want
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        t0 = time.monotonic()
        deadline, last_close = t0 + timeout, t0
        while len(closed) < want:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                break
            if quiet is not None and now - t0 >= min_wait and now - last_close >= quiet:
                break
            for key, _ in sel.select(min(left, 0.05)):
                s = key.fileobj
                try:
                    data = s.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset
                    data = b""
                if not data:
                    closed.add(s)
                    sel.unregister(s)
                    last_close = time.monotonic()
    return closed


def api_stats(api_port, timeout=10):
    """The text of GET /stats from the API on api_port."""
    rc, out, err = curl(f"http://{LOOP4}:{api_port}/stats", timeout=timeout)
    if rc != 0:
        raise AssertionError(f"/stats failed: rc={rc} {err}")
    return out.decode()


def stats_field(text, name):
    """The first integer of the "name : ..." line of a /stats text, or None."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            digits = value.split()
            return int(digits[0]) if digits and digits[0].isdigit() else None
    return None


class DuplexServer:
    """Raw TCP origin for bidirectional integrity checks, one thread pair per connection.

    A client sends a 16-byte header (!QQ: length n, offset k), then n upload
    bytes; at the same time the server sends n download bytes, duplex_payload(n, k),
    followed, once the upload is in, by the 32-byte SHA-256 digest of what it
    received. So one exchange checks both directions at once. A connection may
    carry any number of exchanges, one after the other; `exchanges` counts them.
    """

    HEADER = struct.Struct("!QQ")

    def __init__(self, host=LOOP4, backlog=256):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.errors = []
        self.exchanges = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                conn.settimeout(60)
                while True:
                    # The client closes after its last exchange (it has read the digest).
                    head = recv_exact(conn, self.HEADER.size)
                    if len(head) < self.HEADER.size:
                        return
                    n, k = self.HEADER.unpack(head)
                    sender = threading.Thread(target=conn.sendall,
                                              args=(duplex_payload(n, k),), daemon=True)
                    sender.start()
                    h, left = hashlib.sha256(), n
                    while left > 0:
                        chunk = conn.recv(min(left, 256 * 1024))
                        if not chunk:
                            break
                        h.update(chunk)
                        left -= len(chunk)
                    sender.join(60)
                    conn.sendall(h.digest())
                    with self._lock:
                        self.exchanges += 1
            except Exception as e:  # reported through self.errors
                with self._lock:
                    self.errors.append(repr(e))

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False


_DUPLEX_BASE_LEN = 8 * MiB


def duplex_payload(n, k):
    """n bytes of a fixed random stream starting at offset k (zero-copy memoryview).

    Different offsets give different data everywhere, so sessions that swap
    bytes are caught, without generating a blob per session.
    """
    base = _blob(_DUPLEX_BASE_LEN, "duplex")
    with _blob_lock:
        doubled = _blob_cache.get("duplex2")
        if doubled is None:
            doubled = _blob_cache["duplex2"] = base + base
    k %= _DUPLEX_BASE_LEN
    if n > _DUPLEX_BASE_LEN:
        raise ValueError("duplex payloads are at most 8 MiB")
    return memoryview(doubled)[k:k + n]


def duplex_exchange(sock, n, up_offset, down_offset):
    """Runs one DuplexServer exchange on a connected (tunnelled) socket.

    Uploads duplex_payload(n, up_offset) from a second thread while receiving.
    Returns None if both directions arrived intact, else a description.
    """
    up = duplex_payload(n, up_offset)
    send_error = []

    def send():
        try:
            sock.sendall(up)
        except OSError as e:
            send_error.append(repr(e))

    sock.sendall(DuplexServer.HEADER.pack(n, down_offset))
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    h, got = hashlib.sha256(), 0
    tail = bytearray()
    while got < n + 32:
        try:
            chunk = sock.recv(256 * 1024)
        except (ConnectionResetError, socket.timeout) as e:
            sender.join(5)
            return f"after {got} bytes: {e!r}"
        if not chunk:
            break
        body = chunk[:max(0, n - got)]
        h.update(body)
        tail += chunk[len(body):]
        got += len(chunk)
    sender.join(30)
    if send_error:
        return f"upload failed: {send_error[0]}"
    if got != n + 32:
        return f"short download: {got} of {n + 32} bytes"
    if h.digest() != hashlib.sha256(duplex_payload(n, down_offset)).digest():
        return "download corrupted (sha256 mismatch)"
    if bytes(tail) != hashlib.sha256(up).digest():
        return "upload corrupted (the origin's sha256 differs)"
    return None


_HOLD_SCRIPT = r"""
import os, selectors, socket, sys
sel = selectors.DefaultSelector()
ls = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
ls.bind((sys.argv[1], 0))
ls.listen(int(sys.argv[2]))
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
held = set()
print(ls.getsockname()[1], flush=True)
while True:
    for key, _ in sel.select():
        f = key.fileobj
        if f is ls:
            for _ in range(256):
                try:
                    c, _ = ls.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                held.add(c)
        elif f is sys.stdin:
            line = sys.stdin.readline()
            if not line:
                sys.exit(0)
            print(len(held), flush=True)
        else:
            try:
                data = f.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(f)
                held.discard(f)
                f.close()
"""


class HoldProcess:
    """A separate process (own fd table) that accepts TCP connections and holds them.

    Connections stay open and silent until their peer closes (then it closes
    too), so relayed sessions to it are held open as long as the client wants.
    count() asks it how many it holds. Stopped by closing its stdin, then by PID.
    """

    def __init__(self, host=LOOP4, backlog=4096, nofile=None):
        self.host, self.backlog, self.nofile = host, backlog, nofile
        self.proc = None
        self.port = None

    def _limits(self):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile, hard), hard))

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_SCRIPT, self.host, str(self.backlog)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=self._limits if self.nofile else None)
        self.port = int(self._readline(START_TIMEOUT))
        return self

    def _readline(self, timeout):
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise AssertionError("hold process did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"hold process exited ({self.proc.poll()})")
        return line.strip()

    def count(self, timeout=10):
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self._readline(timeout))

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_GRACE)
        self.proc.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
