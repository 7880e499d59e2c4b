"""--tproxy: Linux TPROXY in a network namespace of its own.

  Transparent   in `unshare -rn` (a user and network namespace: nothing outside is
                touched), nftables sends TCP to 198.51.100.0/24:80 to the listener;
                ruleset.route sees the original destination and the client gets its
                bytes through; a connection to the listener itself is refused

The namespace part runs this file again as `unshare -rn python3 test_tproxy.py
inside BIN`. When the kernel or the container refuses something (user
namespaces, policy routing, the nftables tproxy expression, IP_TRANSPARENT), the
test is skipped with the exact reason.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from harness import BIN, LOOP4, EchoServer, IntegrationCase, listening_inodes, recv_exact

SKIP = 77  # exit code of the inside part: the machine refused; stdout says why
TARGET = "198.51.100.1"  # TEST-NET-2: not routed anywhere, redirected here

NFT = """
table ip rulesocks_test {
  chain pre {
    type filter hook prerouting priority mangle;
    ip daddr 198.51.100.0/24 tcp dport 80 meta mark set 1 tproxy to 127.0.0.1:@PORT@ accept
  }
  # Locally made connections (the test's client) pass PREROUTING only when
  # routed back in through lo: mark them in OUTPUT, and table 100 sends marked
  # packets to lo.
  chain out {
    type route hook output priority mangle;
    ip daddr 198.51.100.0/24 tcp dport 80 meta mark set 1
  }
}
"""

RULESET = """
local origin = "@ORIGIN@"
local ruleset = {}
function ruleset.route(addr, username, password, client)
    io.stderr:write("route " .. addr .. " from " .. tostring(client) .. "\\n")
    if addr == "198.51.100.1:80" then return origin end
    return nil
end
return ruleset
"""


def skip(why):
    print(f"SKIP: {why}", flush=True)
    sys.exit(SKIP)


def sh(*cmd, stdin=None):
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        skip(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()} (exit {r.returncode})")


def inside(binary):
    """Runs in the new namespace (we are its root); prints results, exits."""
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "route", "add", "198.51.100.0/24", "dev", "lo", "src", LOOP4)
    sh("ip", "rule", "add", "fwmark", "1", "lookup", "100")
    sh("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    s = socket.socket()
    s.bind((LOOP4, 0))
    port = s.getsockname()[1]
    s.close()
    sh("nft", "-f", "-", stdin=NFT.replace("@PORT@", str(port)))
    echo = EchoServer().start()
    tmp = tempfile.mkdtemp(prefix="tproxy-")
    rules = os.path.join(tmp, "ruleset.lua")
    with open(rules, "w") as f:
        f.write(RULESET.replace("@ORIGIN@", f"{LOOP4}:{echo.port}"))
    log_path = os.path.join(tmp, "rulesocks.log")
    with open(log_path, "wb") as log:
        p = subprocess.Popen([binary, "--tproxy", "-l", f"{LOOP4}:{port}", "-r", rules,
                              "--loglevel", "6"], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not listening_inodes(port):
            if p.poll() is not None:
                text = open(log_path).read()
                if "TRANSPARENT" in text:
                    skip(f"rulesocks --tproxy refused: {text.strip()}")
                print(f"FAIL: rulesocks exited with {p.returncode}:\n{text}")
                sys.exit(1)
            if time.monotonic() > deadline:
                print("FAIL: rulesocks did not listen")
                sys.exit(1)
            time.sleep(0.01)
        with socket.create_connection((TARGET, 80), timeout=10) as c:
            me = c.getsockname()
            c.sendall(b"through tproxy")
            print(f"ECHO {recv_exact(c, 14)!r}")
            print(f"CLIENT {me[0]}:{me[1]}")
        # The listener's own address is no redirected connection: closed.
        with socket.create_connection((LOOP4, port), timeout=10) as c:
            c.settimeout(10)
            print(f"DIRECT {c.recv(1)!r}")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        echo.close()
    print(f"EXIT {p.returncode}")
    print("LOG")
    with open(log_path) as f:
        print(f.read(), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0)


class Transparent(IntegrationCase):
    def test_original_destination_goes_to_route(self):
        if not os.access(BIN, os.X_OK):
            self.skipTest(f"rulesocks binary not found at {BIN}")
        for tool in ("/usr/bin/unshare", "/usr/sbin/ip", "/usr/sbin/nft"):
            if not os.access(tool, os.X_OK):
                raise AssertionError(f"{tool} is missing: install nftables and iproute2 "
                                     f"(contrib/dev.sh test installs them)")
        r = subprocess.run(["/usr/bin/unshare", "-rn", sys.executable, os.path.abspath(__file__),
                            "inside", os.path.abspath(BIN)], capture_output=True, text=True,
                           timeout=60, cwd=os.path.dirname(os.path.abspath(__file__)))
        if r.returncode == SKIP:
            self.skipTest(r.stdout.strip())
        if r.returncode != 0 and "unshare" in r.stderr and not r.stdout:
            self.skipTest(f"unshare -rn refused: {r.stderr.strip()}")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout
        self.assertIn("ECHO b'through tproxy'", out)
        self.assertIn("DIRECT b''", out)
        self.assertIn("EXIT 0", out)
        client = out.split("CLIENT ")[1].split()[0]
        self.assertIn(f"route {TARGET}:80 from {client}", out)
        self.assertIn(f"{client}: tproxy -> {TARGET}:80 via", out)
        self.assertIn("not redirected: closed", out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["inside"]:
        inside(sys.argv[2])
    unittest.main()
