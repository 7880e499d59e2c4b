"""-c config.lua (neosocksd's format), --dump-config, and SIGHUP with a config file.

  ExampleConfig    contrib/config.lua boots: proxy, API, its ruleset (api.neosocksd.internal)
  BadConfig        an unknown field, a wrong type, a chunk error: exit 2, the field named
  Override         flags given on the command line win over the file; `...` and .gz
  DumpConfig       --dump-config round-trips through -c
  SighupConfig     SIGHUP while 50 clients transfer: none fails, new rules apply to new
                   requests, live fields change, the others are named as needing a restart
"""

import gzip
import os
import subprocess
import tempfile
import threading
import unittest

from harness import (
    BIN, HERE, LOOP4, DuplexServer, IntegrationCase, Proxy, connect, curl, duplex_exchange,
    free_port, hup_and_wait, socks5_handshake,
)

EXAMPLE = os.path.join(HERE, "..", "..", "contrib", "config.lua")


def run(*args, timeout=20):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class ConfigCase(IntegrationCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, name, text):
        path = os.path.join(self.dir.name, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def start_with_config(self, path, *args, extra_ports=(), **kw):
        # socks=False: the config file has the listeners.
        p = Proxy("-c", path, *args, socks=False, extra_ports=extra_ports, **kw)
        # Proxy puts --loglevel first: the file's loglevel would be overridden.
        p.cmd.remove("--loglevel")
        p.cmd.remove("6")
        p.start()
        self.addCleanup(self._stop_proxy, p)
        return p


class ExampleConfig(ConfigCase):
    def test_example_boots(self):
        origin = self.start_class_origin()
        port, api = free_port(), free_port()
        p = self.start_with_config(EXAMPLE, "--", f"{LOOP4}:{port}", f"{LOOP4}:{api}",
                                   extra_ports=(port, api))
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{port}", origin.url("/hello"))
        self.assertEqual(rc, 0, err)
        # Its ruleset maps api.neosocksd.internal to the API (libruleset's redirect).
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{port}",
                            "http://api.neosocksd.internal/healthy")
        self.assertEqual(rc, 0, err)
        self.assertIn("ruleset loaded from", p.log_text())

    def test_example_dumps(self):
        r = run("-c", EXAMPLE, "--dump-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('listen = { "127.0.0.1:1080" }', r.stdout)
        self.assertIn("startup_limit_rate = 30,", r.stdout)
        self.assertIn("ruleset table of", r.stdout)


class BadConfig(ConfigCase):
    def check(self, text, *needles):
        path = self.write("bad.lua", text)
        r = run("-c", path)
        self.assertEqual(r.returncode, 2, r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        self.assertIn(path, r.stderr)

    def test_unknown_field(self):
        self.check('return { listen = "127.0.0.1:1", lisen = "x" }', "unknown field `lisen'")

    def test_wrong_types(self):
        self.check('return { listen = "127.0.0.1:1", timeout = "60" }',
                   "field `timeout' must be a number")
        self.check('return { listen = "127.0.0.1:1", max_sessions = 1.5 }',
                   "field `max_sessions' must be an integer")
        self.check('return { listen = "127.0.0.1:1", pipe = 1 }', "field `pipe' must be a boolean")
        self.check('return { listen = { "127.0.0.1:1", 2 } }', "field `listen' must be a string")
        self.check('return { listen = "127.0.0.1:1", loglevel = 9 }',
                   "field `loglevel' is out of range")
        self.check('return { listen = "127.0.0.1:1", on = print }', "field `on' has the wrong type")
        self.check('return { listen = "127.0.0.1:1", tcp_fastopen_connect = true }', "not supported")
        self.check('return { listen = "127.0.0.1:1", udp_timeout = 0 }',
                   "field `udp_timeout' is out of range")

    def test_chunk_errors(self):
        self.check("return {", "unexpected symbol")
        self.check("return 42", "expected the chunk to return a table, got number")
        self.check('error("no config for you")', "no config for you")
        r = run("-c", os.path.join(self.dir.name, "missing.lua"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot open", r.stderr)


class Override(ConfigCase):
    def test_flags_win(self):
        path = self.write("c.lua", 'return { listen = "127.0.0.1:1", timeout = 5, '
                                   'loglevel = 2, max_sessions = 7 }')
        r = run("-c", path, "-l", "127.0.0.1:2", "-t", "9", "--dump-config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('listen = { "127.0.0.1:2" },', r.stdout)
        self.assertIn("timeout = 9,", r.stdout)
        self.assertIn("loglevel = 2,", r.stdout)  # from the file: not given as a flag
        self.assertIn("max_sessions = 7,", r.stdout)

    def test_flag_listener_is_the_one_bound(self):
        file_port, flag_port = free_port(), free_port()
        path = self.write("c.lua", f'return {{ listen = "{LOOP4}:{file_port}" }}')
        p = self.start_with_config(path, "-l", f"{LOOP4}:{flag_port}", extra_ports=(flag_port,))
        self.assertIn(f"listening on {LOOP4}:{flag_port}", p.log_text())
        self.assertNotIn(f"{LOOP4}:{file_port}", p.log_text())

    def test_arguments_and_gzip(self):
        text = "local listen, t = ...\nreturn { listen = listen, timeout = tonumber(t) }\n"
        path = os.path.join(self.dir.name, "c.lua.gz")
        with gzip.open(path, "wt") as f:
            f.write(text)
        r = run("-c", path, "--dump-config", "--", "127.0.0.1:3", "2.5")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('listen = { "127.0.0.1:3" },', r.stdout)
        self.assertIn("timeout = 2.5,", r.stdout)


class DumpConfig(ConfigCase):
    def test_round_trip(self):
        flags = ["-l", "127.0.0.1:1080", "-l", "[::1]:1080", "--http", "127.0.0.1:8080",
                 "--api", "127.0.0.1:9080", "-x", "socks5://u:p@192.0.2.1:1080", "-t", "7.25",
                 "-m", "100", "--max-startups", "5:30:50", "--block-outbound", "loopback,local",
                 "-6", "--pipe", "--no-nodelay", "--accept-proxy-protocol",
                 "--send-proxy-protocol", "v2", "--log", "stdout", "--loglevel", "5"]
        first = run(*flags, "--dump-config")
        self.assertEqual(first.returncode, 0, first.stderr)
        path = self.write("dump.lua", first.stdout)
        second = run("-c", path, "--dump-config")
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(first.stdout, second.stdout)
        for line in ('http_listen = { "127.0.0.1:8080" },', "resolve_pf = 10,",
                     "timeout = 7.25,", "block_loopback = true,", "block_multicast = false,",
                     "startup_limit_full = 50,", 'send_proxy_protocol = "v2",',
                     "tcp_nodelay = false,"):
            self.assertIn(line, first.stdout)


# a.test goes to the duplex server and b.test is refused; the reload swaps them.
CONFIG = """
local listen = ...
local open_host = "@OPEN@"
return {
    listen = listen,
    loglevel = 6,
    max_sessions = @MAX@,
    timeout = @TIMEOUT@,
    ruleset = {
        resolve = function(addr)
            local host, port = neosocksd.splithostport(addr)
            if host == open_host then return "127.0.0.1:" .. port end
            return nil
        end,
    },
}
"""


def config_text(open_host, max_sessions=0, timeout=60):
    return (CONFIG.replace("@OPEN@", open_host).replace("@MAX@", str(max_sessions))
            .replace("@TIMEOUT@", str(timeout)))


class SighupConfig(ConfigCase):
    CLIENTS = 50

    def test_reload_under_load(self):
        duplex = DuplexServer().start()
        self.addCleanup(duplex.close)
        port = free_port()
        path = self.write("c.lua", config_text("a.test"))
        p = self.start_with_config(path, "--", f"{LOOP4}:{port}", extra_ports=(port,))
        half = threading.Barrier(self.CLIENTS + 1, timeout=120)
        resume = threading.Event()
        errors = []

        def client(i):
            try:
                with connect(port, timeout=60) as s:
                    _, rep = socks5_handshake(s, "a.test", duplex.port)
                    if rep != 0:
                        errors.append(f"client {i}: REP {rep}")
                        half.abort()
                        return
                    errors.extend(filter(None, [duplex_exchange(s, 256 * 1024, i, i + 1)]))
                    half.wait()
                    # The second half runs across and after the reload.
                    resume.wait(120)
                    errors.extend(filter(None, [duplex_exchange(s, 256 * 1024, i + 2, i + 3)]))
            except Exception as e:  # noqa: BLE001 - every failure is the test's business
                errors.append(f"client {i}: {e!r}")
                half.abort()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(self.CLIENTS)]
        for t in threads:
            t.start()
        half.wait()
        self.write("c.lua", config_text("b.test", max_sessions=500, timeout=30))
        resume.set()
        hup_and_wait(self, p, "config " + path + " reloaded")
        for t in threads:
            t.join(180)
        self.assertEqual(errors, [])
        self.assertEqual(duplex.exchanges, 2 * self.CLIENTS)
        log = p.log_text()
        self.assertIn("SIGHUP: max_sessions = 500", log)
        self.assertIn("SIGHUP: timeout changed in", log)
        self.assertIn("ruleset reloaded from " + path, log)
        # New requests follow the new rules.
        with connect(port) as s:
            self.assertEqual(socks5_handshake(s, "b.test", duplex.port)[1], 0)
        with connect(port) as s:
            self.assertEqual(socks5_handshake(s, "a.test", duplex.port)[1], 2)

    def test_broken_file_keeps_everything(self):
        origin = self.start_class_origin()
        port = free_port()
        path = self.write("c.lua", config_text("a.test"))
        p = self.start_with_config(path, "--", f"{LOOP4}:{port}", extra_ports=(port,))
        self.write("c.lua", 'return { listen = "127.0.0.1:1", bogus = true }')
        hup_and_wait(self, p, "not reloaded")
        self.assertIn("unknown field `bogus'", p.log_text())
        rc, _, err = curl("--socks5-hostname", f"{LOOP4}:{port}",
                          f"http://a.test:{origin.port}/hello")
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    unittest.main()
