"""rulesocks under systemd: sd_notify readiness with a stand-in notify socket.

  Notify   NOTIFY_SOCKET names an AF_UNIX datagram socket (a path, or an
           abstract "@name"): READY=1 once every listener is bound,
           RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP
           reload, STOPPING=1 at SIGTERM; an unusable NOTIFY_SOCKET is a
           warning and the proxy serves anyway; without it nothing is sent.

The unit file, man page, completion and package are checked in test_package.
"""

import os
import signal
import socket
import tempfile
import threading
import unittest
from unittest import mock

from harness import (
    IO_TIMEOUT, LOOP4, IntegrationCase, Proxy, curl, wait_until,
)

RULESET = """
local function direct(addr) return addr end
return { resolve = direct, route = direct, route6 = direct }
"""


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's; keeps every
    message and, for each, whether the proxy listened on all its ports then."""

    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)  # lets close() end the reader promptly
        self.proxy = None
        self.messages = []  # (text, listening at arrival)
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            listening = self.proxy is not None and self.proxy.proc is not None and \
                self.proxy.listening()
            with self.cond:
                self.messages.append((data.decode(), listening))
                self.cond.notify_all()

    def wait_for(self, count):
        """The first `count` messages (waits up to IO_TIMEOUT for them)."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= count, timeout=IO_TIMEOUT)
            return list(self.messages)

    def close(self):
        self.closed = True
        self.sock.close()
        self.thread.join(timeout=IO_TIMEOUT + 1)


class Notify(IntegrationCase):
    @classmethod
    def setUpClass(cls):
        cls.origin = cls.start_class_origin()

    def setUp(self):
        self.dir = self.enterContext(tempfile.TemporaryDirectory())
        self.ruleset = os.path.join(self.dir, "ruleset.lua")
        with open(self.ruleset, "w") as f:
            f.write(RULESET)

    def notify_socket(self, address):
        n = NotifySocket(address)
        self.addCleanup(n.close)
        return n

    def start_notified(self, notify, *args, **kw):
        proxy = Proxy(*args, **kw)
        notify.proxy = proxy
        # Popen copies the environment when it starts the child.
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": notify.address}):
            proxy.start()
        self.addCleanup(self._stop_proxy, proxy)
        return proxy

    def fetch(self, proxy):
        rc, out, err = curl("--socks5-hostname", f"{LOOP4}:{proxy.port}",
                            self.origin.url("/hello"))
        self.assertEqual(rc, 0, err)

    def lifecycle(self, address):
        n = self.notify_socket(address)
        proxy = self.start_notified(n, "-r", self.ruleset, http=True, api=True)
        msgs = n.wait_for(1)
        self.assertEqual(msgs[:1], [("READY=1", True)],
                         "READY=1 first, with every listener (-l, --http, --api) bound")
        self.fetch(proxy)
        os.kill(proxy.pid, signal.SIGHUP)
        msgs = n.wait_for(3)
        self.assertEqual(len(msgs), 3, msgs)
        self.assertRegex(msgs[1][0], r"\ARELOADING=1\nMONOTONIC_USEC=[0-9]+\Z")
        self.assertEqual(msgs[2][0], "READY=1")
        self.assertIn("ruleset reloaded", proxy.log_text())
        self.fetch(proxy)
        self._stop_proxy(proxy)
        msgs = n.wait_for(4)
        self.assertEqual([m for m, _ in msgs[3:]], ["STOPPING=1"])

    def test_path_socket(self):
        self.lifecycle(os.path.join(self.dir, "notify"))

    def test_abstract_socket(self):
        self.lifecycle(f"@rulesocks-test-notify-{os.getpid()}-{id(self)}")

    def test_unusable_socket_is_a_warning(self):
        missing = os.path.join(self.dir, "nobody-listens-here")
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": missing}):
            proxy = self.start_proxy()
        self.fetch(proxy)
        self.assertTrue(wait_until(lambda: "sd_notify" in proxy.log_text(), IO_TIMEOUT))
        self.assertIn(missing, proxy.log_text())

    def test_nothing_sent_without_notify_socket(self):
        n = self.notify_socket(os.path.join(self.dir, "notify"))
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with mock.patch.dict(os.environ, env, clear=True):
            proxy = self.start_proxy()
        self.fetch(proxy)
        os.kill(proxy.pid, signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "SIGHUP" in proxy.log_text(), IO_TIMEOUT))
        self._stop_proxy(proxy)
        self.assertEqual(n.messages, [])


if __name__ == "__main__":
    unittest.main()
