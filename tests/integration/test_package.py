"""Packaging: the man page and bash completion against --help, the systemd
unit, cmake --install and the .deb.

  ManPage          every flag of --help has an entry in contrib/rulesocks.8 and
                   every entry is a flag of --help (the message lists exactly
                   what is missing, so that branches adding flags merge easily)
  BashCompletion   contrib/rulesocks.bash-completion, sourced in bash: flags,
                   --loglevel and --block-outbound values, files for -r
  Unit             contrib/rulesocks.service passes systemd-analyze verify; its
                   default command line starts and serves
  Install          cmake --install into a DESTDIR: every file in its FHS place,
                   the unit rewritten for the prefix, the installed binary
                   finding its installed libruleset
  DebPackage       cpack's .deb: Debian library packages as dependencies;
                   dpkg -i, /usr/bin/rulesocks serves a SOCKS request with the
                   installed ruleset, dpkg -P afterwards (root only)

The build directory is the one RULESOCKS_BIN was built in (build/src/rulesocks
-> build).
"""

import glob
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest

from harness import (
    BIN, HERE, LOOP4, SANITIZED, IntegrationCase, Proxy, curl, free_ports,
)

REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
CONTRIB = os.path.join(REPO, "contrib")
MAN_PAGE = os.path.join(CONTRIB, "rulesocks.8")
COMPLETION = os.path.join(CONTRIB, "rulesocks.bash-completion")
UNIT = os.path.join(CONTRIB, "rulesocks.service")
BUILD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(BIN)))
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][A-Za-z0-9-]*)")


def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, **kw)


def help_flags():
    """Every flag name --help lists: "-l", "--listen", "-4", ..."""
    out = run([BIN, "--help"]).stdout
    flags = set()
    for line in out.splitlines():
        m = re.match(r"  (-\S+)", line)
        if m:
            flags.update(m.group(1).split(","))
    return flags


def roff_text(line):
    """A roff line as the words it prints: escapes and fonts removed."""
    line = line.replace("\\-", "-").replace("\\(dq", '"')
    line = re.sub(r"\\f[BIRP]", "", line)
    return re.sub(r'^\.(BR|B|IR|I|RB|RI)\s+', "", line).replace('"', " ")


def man_page_flags():
    """Flag names in the .TP entry headings of the OPTIONS section."""
    flags, section, after_tp = set(), None, False
    with open(MAN_PAGE) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith(".SH"):
                section = line[3:].strip().strip('"')
            elif line.startswith(".TP"):
                after_tp = True
            elif after_tp:
                after_tp = False
                if section == "OPTIONS":
                    flags.update(FLAG.findall(roff_text(line)))
    return flags


def unit_options(path):
    """The default RULESOCKS_OPTS of a unit file, as a list of arguments."""
    with open(path) as f:
        m = re.search(r'^Environment="RULESOCKS_OPTS=([^"]*)"', f.read(), re.M)
    assert m, f"no Environment=\"RULESOCKS_OPTS=...\" in {path}"
    return shlex.split(m.group(1))


def on_free_ports(args):
    """`args` with each 127.0.0.1:PORT moved to a free port (the defaults may be taken)."""
    addrs = [a for a in args if re.fullmatch(r"127\.0\.0\.1:\d+", a)]
    ports = dict(zip(addrs, free_ports(len(addrs))))
    return [f"{LOOP4}:{ports[a]}" if a in ports else a for a in args], \
        {a.rsplit(":", 1)[1]: p for a, p in ports.items()}


class ManPage(unittest.TestCase):
    def test_every_help_flag_is_in_the_man_page(self):
        missing = sorted(help_flags() - man_page_flags())
        self.assertEqual(missing, [], f"flags of --help without a .TP entry under OPTIONS "
                                      f"in contrib/rulesocks.8: {' '.join(missing)}")

    def test_every_man_page_flag_is_in_help(self):
        extra = sorted(man_page_flags() - help_flags())
        self.assertEqual(extra, [], f"contrib/rulesocks.8 documents flags that --help does "
                                    f"not list: {' '.join(extra)}")

    def test_the_flag_lists_are_not_empty(self):
        # Guards the two comparisons above against a parser that finds nothing.
        for flag in ("-l", "--listen", "--http", "-r", "--ruleset", "-4", "--no-fastopen"):
            self.assertIn(flag, help_flags())
            self.assertIn(flag, man_page_flags())

    def test_version_is_the_binary_s(self):
        version = run([BIN, "--version"]).stdout.split()[-1]
        with open(MAN_PAGE) as f:
            th = next(line for line in f if line.startswith(".TH "))
        self.assertIn(f'"rulesocks {version}"', th, "update .TH in contrib/rulesocks.8")

    def test_man_renders_without_warnings(self):
        if not shutil.which("man"):
            self.skipTest("man (man-db) is not installed")
        p = run(["man", "--warnings", "-l", MAN_PAGE], env={**os.environ, "MANWIDTH": "80"})
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")
        self.assertIn("--block-outbound", p.stdout)


class BashCompletion(unittest.TestCase):
    def complete(self, *words):
        """COMPREPLY for the command line `rulesocks words...` (the last word is completed)."""
        script = (f"source {shlex.quote(COMPLETION)}\n"
                  f"COMP_WORDS=({' '.join(shlex.quote(w) for w in (BIN, *words))})\n"
                  f"COMP_CWORD={len(words)}\n"
                  "_rulesocks\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
                  "complete -p rulesocks >&2\n")
        p = run(["bash", "--norc", "--noprofile", "-c", script], cwd=REPO)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("complete -F _rulesocks rulesocks", p.stderr)
        return [w for w in p.stdout.splitlines() if w]

    def test_flags_from_help(self):
        self.assertEqual(sorted(self.complete("-")), sorted(help_flags()))
        self.assertEqual(self.complete("--logl"), ["--loglevel"])
        self.assertEqual(self.complete("-l", "127.0.0.1:1080", "--no-f"), ["--no-fastopen"])

    def test_values(self):
        self.assertEqual(self.complete("--loglevel", ""), [str(n) for n in range(9)])
        self.assertEqual(self.complete("--loglevel", "=", "6"), ["6"])
        self.assertEqual(self.complete("--block-outbound", "loopback,m"), ["loopback,multicast"])
        self.assertEqual(self.complete("-l", ""), [])  # an address: nothing to guess

    def test_files_for_the_ruleset(self):
        self.assertIn("lua/ruleset.lua", self.complete("-r", "lua/rules"))
        self.assertIn("lua/libruleset.lua", self.complete("--ruleset", "lua/lib"))
        self.assertIn("contrib/rulesocks.8", self.complete("--api-key-file", "contrib/rulesocks."))


def systemd_analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        raise unittest.SkipTest("systemd-analyze is not installed (Debian package systemd)")
    p = run([exe, "--version"])
    if p.returncode != 0:
        raise unittest.SkipTest(f"systemd-analyze cannot run here: {p.stderr.strip()}")
    return exe


class Unit(IntegrationCase):
    def unit_for(self, binary):
        """A copy of the unit that runs `binary` (verify checks that ExecStart exists)."""
        d = tempfile.mkdtemp(prefix="rulesocks-unit-")
        self.addCleanup(shutil.rmtree, d)
        with open(UNIT) as f:
            text = f.read().replace("/usr/bin/rulesocks", binary)
        path = os.path.join(d, "rulesocks.service")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_systemd_analyze_verify(self):
        exe = systemd_analyze()
        # --man=no: the man page is checked once installed (DebPackage).
        p = run([exe, "verify", "--man=no", self.unit_for(BIN)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stderr.strip(), "", "systemd-analyze verify warns")

    def test_verify_catches_a_broken_unit(self):
        exe = systemd_analyze()
        path = self.unit_for("/nonexistent/rulesocks")
        p = run([exe, "verify", "--man=no", path])
        self.assertNotEqual(p.returncode, 0, "verify accepted an ExecStart that does not exist")

    def test_exposure_stays_low(self):
        exe = systemd_analyze()
        # systemd's 0..10 exposure score times ten; the unit scores 1.9 today.
        p = run([exe, "security", "--offline=yes", "--threshold=25", self.unit_for(BIN)])
        self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr)
        self.assertRegex(p.stdout, r"Overall exposure level for rulesocks.service: [0-9.]+ ")

    def test_regex_under_memory_deny_write_execute(self):
        # MemoryDenyWriteExecute= refuses writable+executable mappings, which
        # PCRE2's JIT wants; regex must then work without it. The kernel's
        # PR_SET_MDWE (Linux 6.3+, kept across execve) applies the same rule.
        wrapper = ("import ctypes, os, sys\n"
                   "libc = ctypes.CDLL(None, use_errno=True)\n"
                   "if libc.prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)\n"  # PR_SET_MDWE
                   "os.execv(sys.argv[1], sys.argv[1:])\n")
        probe = subprocess.run([sys.executable, "-c", wrapper, "/bin/true"], timeout=30)
        if probe.returncode == 77:
            self.skipTest("this kernel has no PR_SET_MDWE (Linux 6.3+)")
        d = tempfile.mkdtemp(prefix="rulesocks-mdwe-")
        self.addCleanup(shutil.rmtree, d)
        ruleset = os.path.join(d, "ruleset.lua")
        with open(ruleset, "w") as f:
            f.write("""
local re = regex.compile([[\\.example\\.(com|org)$]])
assert(re:find("www.example.org") and not re:find("www.example.net"))
assert(regex.compile("^ab", "i"):find("ABC") == 1)
_G.libruleset = require("libruleset")
_G.route_default = { rule.direct(), "direct" }
return libruleset
""")
        origin = self.start_class_origin()
        proxy = Proxy("-r", ruleset, name="rulesocks-mdwe")
        proxy.cmd[:0] = [sys.executable, "-c", wrapper]  # the same PID execs rulesocks
        proxy.start()
        self.addCleanup(self._stop_proxy, proxy)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{proxy.port}", origin.url("/hello"))
        self.assertEqual(rc, 0, err)
        self.assertIn("ruleset loaded", proxy.log_text())

    def test_what_the_unit_asks_for(self):
        with open(UNIT) as f:
            text = f.read()
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                     "PrivateTmp=yes", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
                     "ExecStart=/usr/bin/rulesocks $RULESOCKS_OPTS"):
            self.assertRegex(text, rf"(?m)^{re.escape(line)}$")
        self.assertNotRegex(text, r"(?m)^AmbientCapabilities=", "no capability by default")

    def test_default_command_line_serves(self):
        args = unit_options(UNIT)
        self.assertIn("/usr/share/rulesocks/lua/ruleset.lua", args)
        # The source tree's copy of the installed ruleset, on free ports.
        args = [os.path.join(REPO, "lua", "ruleset.lua") if a.endswith("/ruleset.lua") else a
                for a in args]
        args, ports = on_free_ports(args)
        origin = self.start_class_origin()
        proxy = self.start_proxy(*args, socks=False, extra_ports=ports.values())
        for via in (["--socks5-hostname", f"{LOOP4}:{ports['1080']}"],
                    ["-x", f"http://{LOOP4}:{ports['8080']}"]):
            rc, out, err = curl(*via, origin.url("/hello"))
            self.assertEqual((rc, err), (0, ""))
        rc, out, err = curl("--fail", f"http://{LOOP4}:{ports['9080']}/healthy")
        self.assertEqual(rc, 0, err)
        self.assertIn("ruleset loaded", proxy.log_text())


def cmake_install(prefix, destdir):
    p = run(["cmake", "--install", BUILD_DIR, "--prefix", prefix],
            env={**os.environ, "DESTDIR": destdir})
    if p.returncode != 0:
        raise AssertionError(f"cmake --install failed:\n{p.stdout}\n{p.stderr}")


class Install(IntegrationCase):
    def setUp(self):
        if not os.path.exists(os.path.join(BUILD_DIR, "cmake_install.cmake")):
            self.skipTest(f"{BUILD_DIR} is not a CMake build directory")
        self.dest = tempfile.mkdtemp(prefix="rulesocks-destdir-")
        self.addCleanup(shutil.rmtree, self.dest)

    def test_fhs_tree(self):
        cmake_install("/usr", self.dest)
        root = os.path.join(self.dest, "usr")
        expect = ["bin/rulesocks", "share/rulesocks/lua/libruleset.lua",
                  "share/rulesocks/lua/ruleset.lua", "share/rulesocks/lua/examples/minimal.lua",
                  "lib/systemd/system/rulesocks.service", "share/man/man8/rulesocks.8.gz",
                  "share/bash-completion/completions/rulesocks",
                  "share/doc/rulesocks/README.md", "share/doc/rulesocks/API.md"]
        missing = [e for e in expect if not os.path.isfile(os.path.join(root, e))]
        self.assertEqual(missing, [], f"not installed under {root}")
        self.assertTrue(os.access(os.path.join(root, "bin/rulesocks"), os.X_OK))
        with gzip.open(os.path.join(root, "share/man/man8/rulesocks.8.gz"), "rt") as f, \
                open(MAN_PAGE) as g:
            self.assertEqual(f.read(), g.read())
        with open(os.path.join(root, "lib/systemd/system/rulesocks.service")) as f, \
                open(UNIT) as g:
            self.assertEqual(f.read(), g.read(), "for /usr the unit is installed unchanged")
        for name in os.listdir(os.path.join(REPO, "lua", "examples")):
            self.assertTrue(os.path.isfile(os.path.join(root, "share/rulesocks/lua/examples",
                                                        name)), name)

    def test_other_prefix(self):
        cmake_install("/opt/rulesocks", self.dest)
        root = os.path.join(self.dest, "opt", "rulesocks")
        with open(os.path.join(root, "lib/systemd/system/rulesocks.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/opt/rulesocks/bin/rulesocks $RULESOCKS_OPTS", unit)
        self.assertIn("-r /opt/rulesocks/share/rulesocks/lua/ruleset.lua", unit)
        self.assertNotIn("/usr/bin/rulesocks", unit)
        self.assertNotIn("/usr/share/rulesocks", unit)

    def test_installed_binary_finds_its_library(self):
        # A copy installed somewhere it was not configured for (as the .deb
        # does) takes libruleset from beside itself, before any other copy.
        cmake_install("/opt/rulesocks", self.dest)
        root = os.path.join(self.dest, "opt", "rulesocks")
        lib = os.path.join(root, "share", "rulesocks", "lua", "libruleset.lua")
        ruleset = os.path.join(self.dest, "ruleset.lua")
        with open(ruleset, "w") as f:
            f.write(f"""
local found = package.searchpath("libruleset", package.path)
assert(found == {lib!r}, "libruleset from " .. tostring(found))
_G.libruleset = require("libruleset")
_G.route_default = {{ rule.direct(), "direct" }}
return libruleset
""")
        origin = self.start_class_origin()
        proxy = Proxy("-r", ruleset, name="installed-rulesocks")
        proxy.cmd[0] = os.path.join(root, "bin", "rulesocks")
        proxy.start()
        self.addCleanup(self._stop_proxy, proxy)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{proxy.port}", origin.url("/hello"))
        self.assertEqual(rc, 0, err)


def package_of(path):
    """The Debian package that holds library `path` (merged /usr: tries both spellings)."""
    real = os.path.realpath(path)
    for p in dict.fromkeys((path, real, re.sub(r"^/usr/", "/", real), "/usr" + real)):
        r = run(["dpkg-query", "-S", p])
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def needed_packages(binary):
    """Packages of the shared libraries `binary` loads (ldd), but the dynamic loader's."""
    pkgs = set()
    for line in run(["ldd", binary]).stdout.splitlines():
        m = re.search(r"=>\s+(/\S+)", line)
        if m:
            pkg = package_of(m.group(1))
            assert pkg, f"no Debian package holds {m.group(1)}"
            pkgs.add(pkg)
    return pkgs


class DebPackage(IntegrationCase):
    """Builds the .deb once (cpack in the release build directory)."""

    @classmethod
    def setUpClass(cls):
        if SANITIZED:
            raise unittest.SkipTest("the .deb is built from the release build, not an ASan one")
        for tool in ("cpack", "dpkg-deb", "dpkg-shlibdeps"):
            if not shutil.which(tool):
                raise unittest.SkipTest(f"{tool} is not installed (cmake, dpkg-dev)")
        if not os.path.exists(os.path.join(BUILD_DIR, "CPackConfig.cmake")):
            raise unittest.SkipTest(f"{BUILD_DIR} has no CPackConfig.cmake")
        cls.dir = tempfile.mkdtemp(prefix="rulesocks-deb-")
        cls.addClassCleanup(shutil.rmtree, cls.dir)
        p = run(["cpack", "--config", os.path.join(BUILD_DIR, "CPackConfig.cmake"),
                 "-B", cls.dir], timeout=300)
        debs = glob.glob(os.path.join(cls.dir, "rulesocks_*.deb"))
        if p.returncode != 0 or len(debs) != 1:
            raise AssertionError(f"cpack failed ({debs}):\n{p.stdout}\n{p.stderr}")
        cls.deb = debs[0]

    def field(self, name):
        return run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()

    def test_control(self):
        self.assertEqual(self.field("Package"), "rulesocks")
        self.assertEqual(self.field("Section"), "net")
        self.assertRegex(self.field("Maintainer"), r"^[^<>]+ <[^<>@]+@[^<>@]+>$")
        self.assertIn("SOCKS", self.field("Description"))
        version = run([BIN, "--version"]).stdout.split()[-1]
        self.assertEqual(self.field("Version"), version)

    def test_dependencies_are_debian_library_packages(self):
        depends = {d.strip().split(" ")[0] for d in self.field("Depends").split(",")}
        for pkg in ("libev4", "liblua5.4-0", "libc-ares2", "zlib1g", "libc6"):
            self.assertIn(pkg, depends)
        missing = needed_packages(BIN) - depends
        self.assertEqual(missing, set(), "libraries of the binary whose package is not a "
                                         f"dependency (Depends: {self.field('Depends')})")
        for d in depends:  # each with a version floor from the shlibs files
            self.assertTrue(run(["dpkg-query", "-W", d]).returncode == 0, f"{d} is not a package")

    def test_contents(self):
        listing = run(["dpkg-deb", "-c", self.deb]).stdout
        for path in ("./usr/bin/rulesocks", "./usr/lib/systemd/system/rulesocks.service",
                     "./usr/share/man/man8/rulesocks.8.gz", "./usr/share/rulesocks/lua/libruleset.lua",
                     "./usr/share/bash-completion/completions/rulesocks",
                     "./usr/share/doc/rulesocks/API.md"):
            self.assertRegex(listing, rf"(?m) {re.escape(path)}$")
        self.assertNotIn("./usr/local", listing)
        info = run(["dpkg-deb", "-I", self.deb]).stdout
        for script in ("postinst", "prerm", "postrm"):
            self.assertIn(script, info)

    def test_install_serve_purge(self):
        if os.geteuid() != 0:
            self.skipTest("dpkg -i needs root (the CI runs the tests as root)")
        status = run(["dpkg-query", "-W", "-f", "${Status}", "rulesocks"]).stdout
        if "installed" in status and "not-installed" not in status or \
                os.path.exists("/usr/bin/rulesocks"):
            self.skipTest("a rulesocks is already installed on this machine: not replacing it")
        purge = ["dpkg", "-P", "rulesocks"]
        self.addCleanup(run, purge)  # restores the machine however the test ends
        p = run(["dpkg", "-i", self.deb], timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

        p = run(["/usr/bin/rulesocks", "--version"])
        self.assertEqual((p.returncode, p.stdout), (0, run([BIN, "--version"]).stdout))
        unit = "/usr/lib/systemd/system/rulesocks.service"
        if shutil.which("systemd-analyze"):
            # Now with the man page the unit's Documentation= names.
            p = run(["systemd-analyze", "verify", unit])
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

        # The unit's own command line, on free ports, from /usr/bin.
        args, ports = on_free_ports(unit_options(unit))
        self.assertIn("/usr/share/rulesocks/lua/ruleset.lua", args)
        origin = self.start_class_origin()
        proxy = Proxy(*args, socks=False, extra_ports=ports.values(), name="installed-rulesocks")
        proxy.cmd[0] = "/usr/bin/rulesocks"
        proxy.start()
        self.addCleanup(proxy.kill)
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{ports['1080']}",
                            origin.url("/hello"))
        self.assertEqual((rc, err), (0, ""))
        self.assertIn("ruleset loaded from /usr/share/rulesocks/lua/ruleset.lua",
                      proxy.log_text())
        self._stop_proxy(proxy)

        p = run(purge, timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertFalse(os.path.exists("/usr/bin/rulesocks"))
        self.assertFalse(os.path.exists(unit))
