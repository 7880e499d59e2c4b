"""The Lua-level tests (tests/lua/*.lua) inside the real binary.

Each script is loaded as the ruleset of a rulesocks with a SOCKS listener
and an API (so that await.invoke and neosocksd.invoke reach a real node: this
one); without the unit tests' test_done() it ends the process with
os.exit(0) on success and os.exit(1) on failure.
"""

import glob
import os
import subprocess
import unittest

from harness import BIN, HERE, LOOP4, free_ports

LUA_DIR = os.path.join(HERE, "..", "lua")
TIMEOUT = 120


class LuaScripts(unittest.TestCase):
    def test_scripts_exist(self):
        self.assertGreaterEqual(len(glob.glob(os.path.join(LUA_DIR, "*.lua"))), 3)

    def run_script(self, name):
        socks, api = free_ports(2)
        cmd = [BIN, "-l", f"{LOOP4}:{socks}", "--api", f"{LOOP4}:{api}", "--loglevel", "4",
               "-r", os.path.join(LUA_DIR, name)]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            self.fail(f"{name} did not finish within {TIMEOUT} s:\n{(e.stdout or b'').decode()}")
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"{name} failed:\n{out[-6000:]}")

    def test_neosocksd_api(self):
        self.run_script("neosocksd_api.lua")

    def test_await_api(self):
        self.run_script("await_api.lua")

    def test_libruleset(self):
        self.run_script("libruleset_test.lua")


if __name__ == "__main__":
    unittest.main()
