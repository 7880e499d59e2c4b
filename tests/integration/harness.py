"""Shared machinery for the rulesocks integration tests.

Everything here drives the real binary (path in $RULESOCKS_BIN) on loopback
with real clients: curl, an in-process HTTP origin and raw sockets that check
handshake replies byte for byte; and third-party proxies from Debian packages
(microsocks, danted, tinyproxy) as its upstream peers.

Rules kept throughout:
  * every wait is bounded (socket timeouts, deadlines, subprocess timeouts);
  * only 127.0.0.0/8 and ::1 are used;
  * only processes started here are stopped, and always by their own PID.
"""

import collections
import contextlib
import hashlib
import math
import http.server
import os
import random
import re
import resource
import selectors
import shutil
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
# RULESOCKS_TEST_WORKERS=N: every Proxy runs with --workers N (unless the test
# pins workers=1); the whole suite should pass with 2 as with 1.
TEST_WORKERS = int(os.environ.get("RULESOCKS_TEST_WORKERS", "1") or "1")

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


def hup_and_wait(test, proxy, needle, timeout=10):
    """Sends SIGHUP to the proxy's own PID and waits until its log shows `needle`
    once more than before."""
    count = proxy.log_text().count(needle)
    os.kill(proxy.pid, signal.SIGHUP)
    test.assertTrue(wait_until(lambda: proxy.log_text().count(needle) > count, timeout),
                    proxy.log_tail())


def _listen_table():
    """[(port, socket inode)] of every TCP socket in LISTEN state (/proc/net/tcp, tcp6)."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        rows.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[9])))
        except OSError:
            pass
    return rows


def _listening_ports():
    """Local ports in LISTEN state, from /proc/net/tcp and tcp6."""
    return {port for port, _ in _listen_table()}


def listening_inodes(port):
    """Socket inodes of the TCP listeners on `port` (several with SO_REUSEPORT)."""
    return {inode for p, inode in _listen_table() if p == port}


def child_pids(pid):
    """PIDs of the children of process `pid` (the workers of --workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def socket_inodes(pid):
    """Inodes of the sockets that process `pid` holds open (empty if it is gone)."""
    inodes = set()
    d = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(d)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def pids_holding(inode):
    """PIDs of the processes that have socket `inode` open (a /proc/*/fd scan)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and inode in socket_inodes(int(entry)):
            pids.append(int(entry))
    return pids


def proc_status(pid):
    """/proc/PID/status as {field: value}; empty when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def proc_gone(pid):
    """True once `pid` has exited (no such process, or a zombie waiting for its reaper)."""
    state = proc_status(pid).get("State", "")
    return not state or state.startswith(("Z", "X"))


# --------------------------------------------------------------------------
# Processes under test: rulesocks itself and third-party peers
# --------------------------------------------------------------------------

class Service:
    """A child process run for a test, with its output in a temporary log file.

    start() waits (bounded) until every port in `ports` is in LISTEN state,
    reading /proc/net/tcp rather than connecting, so that the readiness probe
    never becomes a session of its own. stop() signals this process's own PID
    and nothing else.
    """

    live = []     # running instances
    started = []  # every instance ever started, in order (for log dumps on failure)

    def __init__(self, cmd, name, ports=(), nofile=None):
        self.cmd = [str(a) for a in cmd]
        self.name = name
        self.ports = {p for p in ports if p}
        self.nofile = nofile  # RLIMIT_NOFILE soft limit of the child (None: inherit ours)
        self.proc = None
        self.returncode = None
        self.log_path = None

    def check_binary(self):
        """Raises when the program to run is missing (subclasses say how)."""

    def open_log(self):
        fd, self.log_path = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
        return os.fdopen(fd, "wb")

    # -- lifecycle --

    def start(self):
        self.check_binary()
        env = None
        if SANITIZED and self.nofile:
            # Out of fds, UBSan's vptr check misreports (see CMakeLists.txt): keep going, and
            # let sanitizer_reports() tell its false report from real ones.
            env = dict(os.environ)
            env["UBSAN_OPTIONS"] = env.get("UBSAN_OPTIONS", "") + ":halt_on_error=0"
        with self.open_log() as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=self._limits if self.nofile else None)
        Service.live.append(self)
        Service.started.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.listening():
            if self.proc.poll() is not None:
                self._forget()
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} during start-up\n"
                    f"command: {' '.join(self.cmd)}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} did not listen on {sorted(self.ports)} within "
                    f"{START_TIMEOUT} s\ncommand: {' '.join(self.cmd)}\n{self.log_tail()}")
            time.sleep(0.01)
        return self

    def listening(self):
        """Whether this process itself listens on every port it should (with
        SO_REUSEPORT another process may hold the same port)."""
        if not self.ports:
            return True
        table, mine = _listen_table(), socket_inodes(self.proc.pid)
        for child in child_pids(self.proc.pid):  # --workers: they hold the proxy ports
            mine |= socket_inodes(child)
        return all(any(p == port and inode in mine for p, inode in table) for port in self.ports)

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
        if self in Service.live:
            Service.live.remove(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is None:
            self.remove_log()
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

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def sanitizer_reports(self):
        """UBSan reports in the log, but for the one a process out of fds makes up: a
        vptr check whose memory probe (a pipe) failed, which ends "<memory cannot be printed>"."""
        lines = self.log_text().splitlines()
        reports = []
        for i, line in enumerate(lines):
            if "runtime error:" not in line:
                continue
            report = lines[i:i + 3]
            fd_less_vptr_probe = ("does not point to an object of type" in line and
                                  any("invalid vptr" in r for r in report) and
                                  any("<memory cannot be printed>" in r for r in report))
            if not fd_less_vptr_probe:
                reports.append("\n".join(report))
        return reports

    def log_tail(self, lines=40):
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:]) if text else "(empty log)"


class Proxy(Service):
    """Runs the rulesocks binary for the duration of a `with` block.

    Proxy(*args, socks=True, http=False, api=False, loglevel=6)
      socks: add "-l 127.0.0.1:<free port>" (self.port)
      http:  add "--http 127.0.0.1:<free port>" (self.http_port)
      api:   add "--api 127.0.0.1:<free port>" (self.api_port)
      nofile: RLIMIT_NOFILE soft limit of the proxy process (default: inherited)
      args:  any further flags, e.g. "-t", "1" or "-f", "127.0.0.1:8080"
      extra_ports: listen ports given in `args` that start-up should also wait for

    Start-up waits (bounded) until every listen port is in LISTEN state (which
    keeps the probe from skewing -m, --max-startups and the fd baseline).

    stop() sends SIGTERM to this process's PID, waits up to 5 s, then
    SIGKILLs it; leaving the block asserts a clean exit (code 0).
    """

    def __init__(self, *args, socks=True, http=False, api=False, loglevel=6, name="rulesocks",
                 extra_ports=(), nofile=None, workers=None):
        ports = free_ports(3)
        self.port = ports[0] if socks else None
        self.http_port = ports[1] if http else None
        self.api_port = ports[2] if api else None
        cmd = [BIN, "--loglevel", str(loglevel)]
        if socks:
            cmd += ["-l", f"{LOOP4}:{self.port}"]
        if http:
            cmd += ["--http", f"{LOOP4}:{self.http_port}"]
        if api:
            cmd += ["--api", f"{LOOP4}:{self.api_port}"]
        cmd += list(args)
        # workers=1 pins one process (a test that counts one process's fds, say).
        self.workers = TEST_WORKERS if workers is None else workers
        if self.workers > 1 and "--workers" not in cmd:
            cmd[3:3] = ["--workers", str(self.workers)]  # before any "--" and positionals
        self.extra_ports = tuple(extra_ports)  # more listen ports (from args) to wait for
        super().__init__(cmd, name, (self.port, self.http_port, self.api_port, *self.extra_ports),
                         nofile=nofile)

    def check_binary(self):
        if not os.access(BIN, os.X_OK):
            raise unittest.SkipTest(f"rulesocks binary not found at {BIN}; set RULESOCKS_BIN")

    def listening(self):
        """With --workers: the supervisor holds the API, and every worker every proxy port."""
        if self.workers <= 1:
            return super().listening()
        table = _listen_table()
        kids = child_pids(self.proc.pid)
        if len(kids) < self.workers:
            return False
        def holds(pid, port):
            mine = socket_inodes(pid)
            return any(p == port and inode in mine for p, inode in table)
        # The API is the supervisor's; every other port each worker's.
        return all(holds(self.proc.pid, p) or all(holds(k, p) for k in kids) for p in self.ports)

    def worker_pids(self):
        return child_pids(self.proc.pid) if self.workers > 1 else [self.proc.pid]

    def __exit__(self, exc_type, exc, tb):
        code, took = self.stop()
        if exc_type is None and code != 0:
            raise AssertionError(
                f"{self.name} exited with {code} after SIGTERM (took {took:.1f} s), "
                f"expected a graceful exit 0\n{self.log_tail()}")
        if exc_type is None:
            self.remove_log()  # on failure the log stays for IntegrationCase to print
        return False

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


class Peer(Service):
    """A third-party proxy from a Debian package (microsocks, danted, tinyproxy).

    Each instance gets its own temporary directory for its configuration file,
    log and PID file, and a free port on 127.0.0.1 (self.port). A missing
    binary is a test failure, not a skip: the README's test command
    (contrib/dev.sh test) installs these packages. "{dir}" in `args` and
    `config` stands for the temporary directory. Build one with microsocks(),
    danted() or tinyproxy().
    """

    def __init__(self, name, binary, package, args, port, config=None):
        self.dir = tempfile.mkdtemp(prefix=f"{name}-")
        self.binary, self.package, self.port = binary, package, port
        cmd = [binary] + [str(a).replace("{dir}", self.dir) for a in args]
        if config is not None:
            with open(os.path.join(self.dir, f"{name}.conf"), "w") as f:
                f.write(config.replace("{dir}", self.dir))
        super().__init__(cmd, name, (port,))

    def check_binary(self):
        if not os.access(self.binary, os.X_OK):
            shutil.rmtree(self.dir, ignore_errors=True)
            raise AssertionError(
                f"{self.binary} is missing: install the Debian package \"{self.package}\" "
                f"(contrib/dev.sh test installs it) to run the third-party peer tests")

    def open_log(self):
        self.log_path = os.path.join(self.dir, f"{self.name}.log")
        return open(self.log_path, "wb")

    def remove_log(self):
        super().remove_log()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, scheme, user=None, password=None):
        auth = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        return f"{scheme}://{auth}{LOOP4}:{self.port}"


def microsocks(user=None, password=None):
    """microsocks on 127.0.0.1 (SOCKS5), with RFC 1929 credentials when given."""
    port = free_port()
    args = ["-i", LOOP4, "-p", port]
    if user is not None:
        args += ["-u", user, "-P", password]
    return Peer("microsocks", "/usr/bin/microsocks", "microsocks", args, port)


def danted():
    """Dante's SOCKS server in the foreground, no authentication, 127.0.0.0/8 only."""
    port = free_port()
    config = f"""\
logoutput: stderr
internal: {LOOP4} port = {port}
external: {LOOP4}
clientmethod: none
socksmethod: none
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect error
}}
"""
    return Peer("danted", "/usr/sbin/danted", "dante-server",
                ["-f", "{dir}/danted.conf"], port, config)


def tinyproxy(connect_ports, basic_auth=None):
    """tinyproxy in the foreground on 127.0.0.1 (HTTP CONNECT to `connect_ports` only),
    logging to stderr; basic_auth=(user, password) requires those credentials."""
    port = free_port()
    lines = [f"Port {port}", f"Listen {LOOP4}", "Timeout 30", f"Allow {LOOP4}",
             "MaxClients 64", "LogLevel Info", 'PidFile "{dir}/tinyproxy.pid"']
    lines += [f"ConnectPort {p}" for p in connect_ports]
    if basic_auth:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    return Peer("tinyproxy", "/usr/bin/tinyproxy", "tinyproxy",
                ["-d", "-c", "{dir}/tinyproxy.conf"], port, "\n".join(lines) + "\n")


class IntegrationCase(unittest.TestCase):
    """Prints the log tail of every running process when a test fails or errors."""

    def run(self, result=None):
        first_new = len(Service.started)
        before = (len(result.failures), len(result.errors)) if result else None
        outcome = super().run(result)
        mine = Service.started[first_new:]
        if result is not None and (len(result.failures), len(result.errors)) != before:
            for p in list(dict.fromkeys(Service.live + mine)):
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
        self.assertEqual(p.sanitizer_reports(), [], f"{p.name}: sanitizer reports")

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
        if p.sanitizer_reports():
            raise AssertionError(f"{p.name}: sanitizer reports: {p.sanitizer_reports()}")
        p.remove_log()

    # Third-party peers: stopped by PID at cleanup; their exit code is theirs to choose.
    def start_peer(self, peer):
        self.addCleanup(peer.stop)
        return peer.start()

    @classmethod
    def start_class_peer(cls, peer):
        def stop():
            peer.stop()
            peer.remove_log()
        cls.addClassCleanup(stop)
        return peer.start()

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

    def _send_chunked(self, body, piece=64 * 1024):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), piece):
            part = body[i:i + piece]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\nX-Trailer: done\r\n\r\n")

    def _read_body(self):
        """The request body, Content-Length or chunked (trailers skipped)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))
        out = bytearray()
        while True:
            line = self.rfile.readline()
            if not line:
                raise ConnectionError("client closed inside a chunked body")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def do_GET(self):
        # /blob/<n>[/<seed>]: n deterministic pseudo-random bytes
        # /chunked/<n>: the same as /blob/<n>, in chunked coding with a trailer
        # /headers: the request line and fields as received, as text
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "blob" and len(parts) in (2, 3) and all(p.isdigit() for p in parts[1:]):
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) == 3 else None
            self._send(200, blob(n, seed))
        elif parts[0] == "chunked" and len(parts) == 2 and parts[1].isdigit():
            self._send_chunked(blob(int(parts[1])))
        elif parts == ["headers"]:
            self._send(200, (self.requestline + "\n" + str(self.headers)).encode(), "text/plain")
        elif parts == ["hello"]:
            self._send(200, b"hello from origin\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    do_HEAD = do_GET

    def _method(self):
        # Any other method: "<METHOD> <path> <body length>".
        body = self._read_body()
        self._send(200, f"{self.command} {self.path} {len(body)}\n".encode(), "text/plain")

    do_DELETE = do_OPTIONS = do_PATCH = _method

    def do_POST(self):
        # /echo returns the body; /sink returns "<length> <sha256>" of it
        # (Content-Length or chunked).
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_body()
            if self.path == "/echo":
                self._send(200, body)
            else:
                self._send(200, f"{len(body)} {sha256(body)}\n".encode(), "text/plain")
            return
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


def recv_head(conn, buf=b""):
    """Reads from conn until an HTTP head ends; returns (head, the bytes after it), or
    None when the peer closes first. `buf` holds bytes already read."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


class TcpServer:
    """A raw TCP server on a free loopback port, accepting on a thread of its own
    until close(). Subclasses say what becomes of each connection in
    on_accept(conn), which runs on the accepting thread (start a thread there for
    anything slow), and may release more in close()."""

    def __init__(self, host=LOOP4, backlog=64):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)  # how often the loop looks at _stop
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def on_accept(self, conn):
        raise NotImplementedError

    def serve_in_thread(self, conn):
        """For on_accept: runs self.serve(conn) on a thread of its own."""
        threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.on_accept(conn)

    def start(self):
        self.thread.start()
        return self

    def close(self):
        """Stops accepting and closes the listening socket."""
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False


class EchoServer(TcpServer):
    """Echoes what each connection sends; `firsts` keeps the first bytes each one read
    (to check what a proxy sent before the client's bytes)."""

    def __init__(self, host=LOOP4):
        super().__init__(host)
        self.firsts = []

    def on_accept(self, conn):
        self.serve_in_thread(conn)

    def serve(self, conn):
        with conn:
            conn.settimeout(10)
            first = True
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if first:
                    self.firsts.append(data)
                    first = False
                conn.sendall(data)


class HoldServer(TcpServer):
    """Raw TCP server that accepts connections and keeps them open, silent, until close()."""

    def __init__(self, host=LOOP4):
        super().__init__(host)
        self.conns = []

    def on_accept(self, conn):
        self.conns.append(conn)

    def close(self):
        super().close()
        for c in self.conns:
            c.close()


class SwitchHop(TcpServer):
    """A TCP hop in front of a real proxy whose behaviour the test switches as it runs,
    so that one rulesocks instance (whose -x chain is fixed) can meet a faulty hop
    while its other sessions keep working through the same hop address.

    relay_to(port): new connections are piped to 127.0.0.1:port (half-close kept)
    hold():         new connections are accepted and left silent
    go_dead():      the listening socket is closed: new connections are refused
    Connections already accepted keep what they had, whatever the mode.
    """

    def __init__(self, backend_port, host=LOOP4):
        super().__init__(host)
        self.backend = backend_port  # None: hold
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks = []
        self._threads = []

    def relay_to(self, port):
        with self._lock:
            self.backend = port

    def hold(self):
        with self._lock:
            self.backend = None

    def go_dead(self):
        super().close()

    def on_accept(self, conn):
        with self._lock:
            backend = self.backend
            self.accepted += 1
            self._socks.append(conn)
        if backend is None:
            return
        try:
            up = socket.create_connection((LOOP4, backend), timeout=IO_TIMEOUT)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._socks.append(up)
        for src, dst in ((conn, up), (up, conn)):
            src.settimeout(30)
            t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
            self._threads.append(t)
            t.start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):  # a reset on one side resets the other
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self):
        if not self._stop.is_set():
            self.go_dead()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(timeout=5)


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


def read_http_head(sock, limit=64 * 1024):
    """Reads a response head byte by byte, and not one byte more (what follows it,
    e.g. tunnelled data after a CONNECT reply, stays in the socket).

    Returns (status line, {lower-case name: value}, raw head bytes); the status
    line is None if the connection closed before a complete head.
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
        return None, {}, bytes(raw)
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, bytes(raw)


def read_http_response(sock, limit=64 * 1024):
    """Reads a response head and a Content-Length body, and not one byte more.

    Returns (status line, {lower-case name: value}, body, raw head bytes);
    the status line is None if the connection closed before a complete head.
    """
    status, headers, raw = read_http_head(sock, limit)
    if status is None:
        return None, {}, b"", raw
    body = recv_exact(sock, int(headers.get("content-length", "0")))
    return status, headers, body, raw


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
# The RESTful API: raw HTTP exchanges and RPC replies
# --------------------------------------------------------------------------

RPC_TYPE = "application/x-neosocksd-rpc; version=1"


class HttpReply:
    """One HTTP response: status (int), headers ({lower-case name: value}), body (bytes)."""

    def __init__(self, status, headers, body, raw_head=b""):
        self.status = status
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    @property
    def text(self):
        return self.body.decode(errors="replace")

    def __repr__(self):
        return f"HttpReply({self.status}, {self.headers!r}, {self.body[:200]!r})"


def http_request_bytes(method, target, body=b"", headers=(), host="api"):
    """A request with Content-Length framing (for a body, or for POST) and `headers`
    (pairs) added as they are."""
    out = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
    for name, value in headers:
        out += f"{name}: {value}\r\n"
    if body or method in ("POST", "PUT"):
        out += f"Content-Length: {len(body)}\r\n"
    return out.encode("latin-1") + b"\r\n" + body


def read_reply(sock, limit=64 * MiB):
    """Reads one response (Content-Length, chunked, or up to EOF after a head that
    says neither); None when the connection closes before a complete head."""
    status, headers, body, raw = read_http_response(sock)
    if status is None:
        return None
    code = int(status.split()[1])
    if 100 <= code < 200:
        return read_reply(sock, limit)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            line = bytearray()
            while not line.endswith(b"\r\n"):
                c = sock.recv(1)
                if not c:
                    return HttpReply(code, headers, bytes(body), raw)
                line += c
            n = int(line.split(b";")[0], 16)
            body += recv_exact(sock, n + 2)[:n]
            if n == 0:
                break
        body = bytes(body)
    elif "content-length" not in headers and code not in (204, 304):
        body = recv_all(sock, limit)
    return HttpReply(code, headers, body, raw)


def api_call(port, method, target, body=b"", headers=(), timeout=IO_TIMEOUT):
    """One request on a fresh connection to 127.0.0.1:port; returns an HttpReply."""
    if isinstance(body, str):
        body = body.encode()
    with connect(port, timeout=timeout) as s:
        s.sendall(http_request_bytes(method, target, body, headers))
        reply = read_reply(s)
    if reply is None:
        raise AssertionError(f"{method} {target}: connection closed without a response")
    return reply


def api_post(port, target, body=b"", headers=(), timeout=IO_TIMEOUT):
    return api_call(port, "POST", target, body, headers, timeout)


def rpcall(port, code, timeout=IO_TIMEOUT):
    """POSTs `code` to /ruleset/rpcall and returns the reply's values (see lua_values):
    [True, results...] or [False, error message]."""
    reply = api_post(port, "/ruleset/rpcall", code, [("Content-Type", RPC_TYPE)], timeout)
    if reply.status != 200:
        raise AssertionError(f"rpcall answered {reply.status}: {reply.text}")
    return lua_values(reply.body)


def lua_quote(data):
    """A Lua string literal holding exactly `data` (bytes or str)."""
    if isinstance(data, str):
        data = data.encode()
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\x{b:02x}"
                         for b in data) + '"'


class LuaTable(dict):
    """A Lua table read by lua_values: keys and values as Python values, except that
    the keys true and false are LuaTable.TRUE and LuaTable.FALSE (Python's True
    and 1 are the same key)."""

    TRUE = ("lua", True)
    FALSE = ("lua", False)

    def seq(self):
        """The values at 1..n, for the border n."""
        out, i = [], 1
        while i in self:
            out.append(self[i])
            i += 1
        return out


class _LuaReader:
    _ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
                "\\": 92, '"': 34, "'": 39, "\n": 10}
    _NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

    def __init__(self, text):
        self.s = text
        self.i = 0

    def error(self, what):
        raise ValueError(f"lua_values: {what} at offset {self.i}: {self.s[self.i:self.i + 40]!r}")

    def ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self):
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, c):
        if self.peek() != c:
            self.error(f"expected {c!r}")
        self.i += 1

    def word(self, w):
        if self.s.startswith(w, self.i) and not (
                self.s[self.i + len(w):self.i + len(w) + 1].isalnum()):
            self.i += len(w)
            return True
        return False

    def value(self):
        c = self.peek()
        if c == '"' or c == "'":
            return self.string()
        if c == "{":
            return self.table()
        if c == "(":
            # marshal's NaN: (0/0)
            self.i += 1
            a = self.value()
            self.expect("/")
            b = self.value()
            self.expect(")")
            if b == 0:
                return float("nan") if a == 0 else math.copysign(float("inf"), a)
            return a / b
        if c == "-":
            self.i += 1
            v = self.value()
            if isinstance(v, int):
                return _wrap64(-v)
            return -v
        for w, v in (("nil", None), ("true", True), ("false", False)):
            if self.word(w):
                return v
        m = self._NUMBER.match(self.s, self.i)
        if not m:
            self.error("unexpected text")
        self.i = m.end()
        t = m.group()
        if t[:2] in ("0x", "0X"):
            return _wrap64(int(t, 16))
        if any(ch in t for ch in ".eE"):
            return float(t)
        n = int(t)
        return n if n < 2 ** 63 else float(t)

    def string(self):
        q = self.s[self.i]
        self.i += 1
        out = bytearray()
        while True:
            if self.i >= len(self.s):
                self.error("unterminated string")
            c = self.s[self.i]
            self.i += 1
            if c == q:
                return bytes(out)
            if c != "\\":
                out += c.encode("latin-1")
                continue
            e = self.s[self.i]
            self.i += 1
            if e in self._ESCAPES:
                out.append(self._ESCAPES[e])
            elif e == "x":
                out.append(int(self.s[self.i:self.i + 2], 16))
                self.i += 2
            elif e.isdigit():
                j = self.i - 1
                while self.i < len(self.s) and self.i - j < 3 and self.s[self.i].isdigit():
                    self.i += 1
                out.append(int(self.s[j:self.i]))
            elif e == "z":
                while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
                    self.i += 1
            elif e == "u":
                j = self.s.index("}", self.i)
                out += chr(int(self.s[self.i + 1:j], 16)).encode()
                self.i = j + 1
            else:
                self.error(f"bad escape \\{e}")

    def table(self):
        self.expect("{")
        t, n = LuaTable(), 0
        while self.peek() != "}":
            if self.peek() == "[":
                self.i += 1
                k = self.value()
                if k is True or k is False:
                    k = LuaTable.TRUE if k else LuaTable.FALSE
                self.expect("]")
                self.expect("=")
                t[k] = self.value()
            else:
                n += 1
                v = self.value()
                if v is not None:
                    t[n] = v
            if self.peek() in (",", ";"):
                self.i += 1
        self.i += 1
        return t


def _wrap64(n):
    n &= (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n


def lua_values(text):
    """The values of a marshal()led reply "return v1,v2,...": nil is None, strings are
    bytes, integers int, floats float, tables LuaTable. Only what marshal() writes."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    r = _LuaReader(text)
    r.ws()
    if not r.word("return"):
        r.error("expected 'return'")
    values = []
    if r.peek() == "":
        return values
    while True:
        values.append(r.value())
        if r.peek() != ",":
            break
        r.i += 1
    if r.peek() != "":
        r.error("trailing text")
    return values


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


class DuplexServer(TcpServer):
    """Raw TCP origin for bidirectional integrity checks, one thread pair per connection.

    A client sends a 16-byte header (!QQ: length n, offset k), then n upload
    bytes; at the same time the server sends n download bytes, duplex_payload(n, k),
    followed, once the upload is in, by the 32-byte SHA-256 digest of what it
    received. So one exchange checks both directions at once. A connection may
    carry any number of exchanges, one after the other; `exchanges` counts them.
    """

    HEADER = struct.Struct("!QQ")

    def __init__(self, host=LOOP4, backlog=256):
        super().__init__(host, backlog)
        self.errors = []
        self.exchanges = 0
        self._lock = threading.Lock()

    def on_accept(self, conn):
        self.serve_in_thread(conn)

    def serve(self, conn):
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
