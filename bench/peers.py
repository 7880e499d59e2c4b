"""Where bench/compare and bench/count find the neosocksd releases they measure against.

../shared/peers/neosocksd/build.sh builds them into a cache folder outside the repository
(nothing of neosocksd goes into it); this only looks there.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_SH = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "peers", "neosocksd",
                                         "build.sh"))
VERSIONS = ("2025-09", "2026-07")


def neosocksd_builds():
    """[(version, binary)] for each release build.sh has built, oldest first."""
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                         "rulesocks-peers")
    out = []
    for v in VERSIONS:
        p = os.path.join(cache, f"neosocksd-{v}", "build", "bin", "neosocksd")
        if os.access(p, os.X_OK):
            out.append((v, p))
    return out
