"""Every fenced code block of API.md and README.md, run against the real binary.

The info string after the opening fence says what a block is:

  ```sh           shell commands. A line `rulesocks ...` that listens (-l,
                  --http, --api; or -c FILE with the addresses after "--"),
                  and has no --dump-config, is a server: it is started in the background
                  (and waited for) before the lines after it run, and stopped
                  at the end of the block, where it must exit 0. The other
                  lines run with `sh -e` (rulesocks on PATH, cwd = the
                  repository) and must exit 0. A comment `# -> TEXT` says that
                  the commands above it print TEXT (checked in order). A block
                  without a server of its own gets the default node (below).
  ```lua          a chunk run as an asynchronous routine on a fresh default
                  node through POST /ruleset/rpcall: it must not raise
                  (assertions in the chunk check what the text claims).
  ```lua ruleset  a whole ruleset: loaded with POST /ruleset/update on a fresh
                  default node (must answer 200), then POST /stats (200).
  ... norun       not run (a command that cannot run here by nature); these
                  must stay few.

The default node is what `contrib/dev.sh run --http 127.0.0.1:8080` starts:
SOCKS on 127.0.0.1:1080, HTTP CONNECT on 127.0.0.1:8080, the API on
127.0.0.1:9080, ruleset lua/ruleset.lua. The documents' web server is
127.0.0.1:8000 (here an in-process origin answering every GET with 200).

Addresses are rewritten before running: every 127.0.0.1:PORT or
localhost:PORT gets a free port of its own (the same within one block; 8000
is the origin), and /tmp/ becomes a private temporary directory. A node's
log must not show warnings or errors after a lua block.

Loopback only; every wait is bounded; processes are stopped by their PID.
"""

import http.server
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import BIN, HERE, LOOP4, Proxy, free_ports

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DOCS = ("API.md", "README.md")
RPC_TYPE = "application/x-neosocksd-rpc; version=1"
ORIGIN_PORT = 8000
DEFAULT_NODE = {"socks": 1080, "http": 8080, "api": 9080}
SCRIPT_TIMEOUT = 30
# At most this share of the blocks may be norun.
NORUN_SHARE = 0.10

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
LOOPBACK = re.compile(r"\b(127\.0\.0\.1|localhost):(\d{1,5})\b")
EXPECT = re.compile(r"^\s*# -> (.*)$")
# Log lines of warnings, errors and fatal errors (see src/core/log.cpp).
BAD_LOG = re.compile(r"^[WEF] \d{4}-", re.M)
LISTEN_FLAGS = ("-l", "--listen", "--http", "--api")
CONFIG_FLAGS = ("-c", "--config")

# No proxy from the environment, for curl or urllib.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ENV = {k: v for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                             "socks_proxy", "curl_home")}


class Block:
    def __init__(self, doc, line, info, body):
        self.doc, self.line, self.body = doc, line, body
        words = info.split()
        self.lang = words[0] if words else ""
        self.flags = set(words[1:])

    @property
    def where(self):
        return f"{self.doc}:{self.line}"

    @property
    def norun(self):
        return "norun" in self.flags

    @property
    def kind(self):
        if self.norun:
            return "norun"
        if self.lang == "sh" and not self.flags:
            return "sh"
        if self.lang == "lua" and not self.flags:
            return "lua"
        if self.lang == "lua" and self.flags == {"ruleset"}:
            return "ruleset"
        return None


def read_blocks(doc):
    """The fenced blocks of a Markdown file, in order."""
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        lines = f.read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{doc}:{start}: unterminated code block")
        text = textwrap.dedent("\n".join(body)) if indent else "\n".join(body)
        out.append(Block(doc, start, info.strip(), text))
        i += 1
    return out


class Ports:
    """Documented loopback ports -> free ones, consistently within one block."""

    def __init__(self, origin_port, tmpdir):
        self.pool = free_ports(24)
        self.map = {ORIGIN_PORT: origin_port}
        self.tmpdir = tmpdir

    def port(self, documented):
        if documented not in self.map:
            self.map[documented] = self.pool.pop()
        return self.map[documented]

    def sub(self, text):
        text = LOOPBACK.sub(lambda m: f"{m.group(1)}:{self.port(int(m.group(2)))}", text)
        return text.replace("/tmp/", self.tmpdir + "/")


def listen_ports(args):
    """The ports a rulesocks command line listens on (with -c FILE: also the
    addresses after "--", which the examples' config files listen on)."""
    ports = []
    if "--" in args and any(a in CONFIG_FLAGS for a in args):
        ports += [int(a.rsplit(":", 1)[1]) for a in args[args.index("--") + 1:]
                  if re.fullmatch(r"[\d.]+:\d+", a)]
        args = args[:args.index("--")]
    for i, a in enumerate(args):
        value = None
        if a in LISTEN_FLAGS and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
        elif a.startswith(tuple(f + "=" for f in LISTEN_FLAGS if f.startswith("--"))):
            value = a.split("=", 1)[1]
        # A udp:// listener is no TCP port to wait for.
        if value and ":" in value and not value.startswith("udp://"):
            ports.append(int(value.rsplit(":", 1)[1]))
    return ports


def is_server(args):
    # --dump-config (like --help) prints and exits: no server.
    if not args or args[0] != "rulesocks" or "--dump-config" in args:
        return False
    return bool(listen_ports(args)) or any(
        a in LISTEN_FLAGS or a.split("=", 1)[0] in LISTEN_FLAGS for a in args[1:])


def logical_lines(body):
    """(text, first line index) of each line, backslash continuations joined."""
    out, cur, first = [], None, 0
    for n, line in enumerate(body.split("\n")):
        if cur is None:
            cur, first = "", n
        if line.endswith("\\"):
            cur += line[:-1]
            continue
        out.append((cur + line, first))
        cur = None
    if cur is not None:
        out.append((cur, first))
    return out


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, fmt, *args):
        pass

    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self._reply(b"hello from origin\n")

    do_HEAD = do_GET

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self._reply(self.rfile.read(n))


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class DocExamples(unittest.TestCase):
    blocks = [b for doc in DOCS for b in read_blocks(doc)]

    @classmethod
    def setUpClass(cls):
        cls.cwd = os.getcwd()
        os.chdir(ROOT)  # the documents' relative paths (lua/ruleset.lua)
        cls.origin = _Origin((LOOP4, 0), _OriginHandler)
        cls.origin_thread = threading.Thread(target=cls.origin.serve_forever,
                                             kwargs={"poll_interval": 0.1}, daemon=True)
        cls.origin_thread.start()
        cls.bindir = tempfile.mkdtemp(prefix="rulesocks-docs-bin-")
        os.symlink(os.path.abspath(BIN), os.path.join(cls.bindir, "rulesocks"))

    @classmethod
    def tearDownClass(cls):
        cls.origin.shutdown()
        cls.origin.server_close()
        cls.origin_thread.join(timeout=5)
        shutil.rmtree(cls.bindir, ignore_errors=True)
        os.chdir(cls.cwd)

    # -- the census --

    def test_every_block_is_run_or_marked_norun(self):
        unknown = [f"{b.where}: ```{b.lang} {' '.join(sorted(b.flags))}" for b in self.blocks
                   if b.kind is None]
        self.assertEqual(unknown, [], "blocks that are neither sh, lua, lua ruleset nor norun")
        norun = [b.where for b in self.blocks if b.norun]
        self.assertGreater(len(self.blocks), 50)
        self.assertLessEqual(len(norun), NORUN_SHARE * len(self.blocks),
                             f"too many norun blocks: {norun}")

    # -- running --

    def test_examples(self):
        counts = {"sh": 0, "lua": 0, "ruleset": 0, "norun": 0}
        t0 = time.monotonic()
        for block in self.blocks:
            if block.kind is None:
                continue  # reported by the census
            counts[block.kind] += 1
            if block.norun:
                continue
            with self.subTest(block.where):
                tmpdir = tempfile.mkdtemp(prefix="rulesocks-docs-")
                try:
                    ports = Ports(self.origin.server_address[1], tmpdir)
                    getattr(self, "run_" + block.kind)(block, ports)
                finally:
                    shutil.rmtree(tmpdir, ignore_errors=True)
        run = counts["sh"] + counts["lua"] + counts["ruleset"]
        self.assertEqual(run + counts["norun"], len(self.blocks), "blocks neither run nor norun")
        print(f"\ndocs: {run} blocks run ({counts['sh']} sh, {counts['lua']} lua, "
              f"{counts['ruleset']} lua ruleset), {counts['norun']} norun, "
              f"in {time.monotonic() - t0:.1f} s")

    # A node for one block; stopped (exit 0 checked) by the caller's cleanup.
    def start_node(self, args, block, nodes):
        p = Proxy(socks=False, name=f"{block.doc}:{block.line}",
                  extra_ports=tuple(listen_ports(args)))
        p.cmd = [BIN, *args[1:]]
        p.start()
        nodes.append(p)
        return p

    def default_node(self, block, ports, nodes):
        args = ["rulesocks",
                "-l", f"{LOOP4}:{ports.port(DEFAULT_NODE['socks'])}",
                "--http", f"{LOOP4}:{ports.port(DEFAULT_NODE['http'])}",
                "--api", f"{LOOP4}:{ports.port(DEFAULT_NODE['api'])}",
                "-r", "lua/ruleset.lua", "--loglevel", "5"]
        return self.start_node(args, block, nodes)

    def stop_nodes(self, block, nodes):
        # The log tails of a failed block's nodes go to stderr.
        failing = sys.exc_info()[0] is not None
        # Lua examples must run clean; shell examples may show errors on purpose.
        check_log = block.kind in ("lua", "ruleset")
        problems = []
        for p in reversed(nodes):
            code, _ = p.stop()
            bad = check_log and BAD_LOG.findall(p.log_text())
            if code != 0 or bad:
                problems.append(f"{' '.join(p.cmd)}\nexit {code}\n{p.log_tail()}")
            elif failing:
                print(f"\n--- {block.where}: {' '.join(p.cmd)}\n{p.log_tail()}", file=sys.stderr)
            p.remove_log()
        if problems:
            self.fail(f"{block.where}: a node failed or logged a warning:\n" +
                      "\n".join(problems))

    def api(self, port, path, body, content_type="text/plain", timeout=SCRIPT_TIMEOUT):
        req = urllib.request.Request(f"http://{LOOP4}:{port}{path}", data=body.encode(),
                                     headers={"Content-Type": content_type}, method="POST")
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def run_lua(self, block, ports):
        nodes = []
        try:
            self.default_node(block, ports, nodes)
            status, reply = self.api(ports.port(DEFAULT_NODE["api"]), "/ruleset/rpcall",
                                     ports.sub(block.body), RPC_TYPE)
            self.assertEqual(status, 200, f"{block.where}: {reply}")
            self.assertTrue(reply.startswith("return true"), f"{block.where}: {reply}")
        finally:
            self.stop_nodes(block, nodes)

    def run_ruleset(self, block, ports):
        nodes = []
        try:
            self.default_node(block, ports, nodes)
            api = ports.port(DEFAULT_NODE["api"])
            status, reply = self.api(api, "/ruleset/update?chunkname=%40" + block.where,
                                     ports.sub(block.body))
            self.assertEqual(status, 200, f"{block.where}: {reply}")
            status, reply = self.api(api, "/stats", "")
            self.assertEqual(status, 200, f"{block.where}: {reply}")
        finally:
            self.stop_nodes(block, nodes)

    def run_sh(self, block, ports):
        nodes, script, expects = [], [], []
        lines = logical_lines(ports.sub(block.body))
        has_server = any(is_server(shlex.split(t, comments=True)) for t, _ in lines
                         if t.lstrip().startswith("rulesocks "))
        try:
            if not has_server:
                self.default_node(block, ports, nodes)
            for text, n in lines:
                m = EXPECT.match(text)
                if m:
                    expects.append(m.group(1))
                    continue
                args = shlex.split(text, comments=True) if text.lstrip().startswith(
                    "rulesocks ") else []
                if is_server(args):
                    self.run_script(block, script, expects)
                    script, expects = [], []
                    self.start_node(args, block, nodes)
                else:
                    script.append(text)
            self.run_script(block, script, expects)
        finally:
            self.stop_nodes(block, nodes)

    def run_script(self, block, lines, expects):
        if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
            self.assertEqual(expects, [], f"{block.where}: `# ->` without a command")
            return
        env = dict(_ENV, PATH=self.bindir + os.pathsep + _ENV.get("PATH", ""))
        p = subprocess.Popen(["sh", "-e", "-c", "\n".join(lines)], cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the session this test started
            out, err = p.communicate(timeout=5)
            self.fail(f"{block.where}: timed out after {SCRIPT_TIMEOUT} s:\n"
                      + "\n".join(lines))
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"{block.where}: exit {p.returncode}\n"
                         + "\n".join(lines) + f"\nstdout:\n{out}\nstderr:\n{err}")
        pos = 0
        for want in expects:
            at = out.find(want, pos)
            self.assertGreaterEqual(at, 0, f"{block.where}: expected {want!r} in the output "
                                    f"(after offset {pos}):\n{out}\nstderr:\n{err}")
            pos = at + len(want)


if __name__ == "__main__":
    unittest.main()
