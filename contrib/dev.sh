#!/bin/sh
# rulesocks developer entry point (the README's two commands):
#   contrib/dev.sh run   install missing Debian packages, build, run the proxy on 127.0.0.1:1080
#                        with the default ruleset (lua/ruleset.lua) and the API on 127.0.0.1:9080
#   contrib/dev.sh test  install missing Debian packages, build, run every test (incl. ASan+UBSan)
set -eu
cd "$(dirname "$0")/.."

PACKAGES="build-essential cmake pkg-config libev-dev liblua5.4-dev lua5.4 libc-ares-dev \
zlib1g-dev libssl-dev libpcre2-dev libfmt-dev libcli11-dev libgtest-dev curl python3"
TEST_PACKAGES="microsocks dante-server tinyproxy wget python3-requests chromium slowhttptest prometheus \
dpkg-dev file systemd man-db haproxy nftables python3-socks dnsmasq socat openssl stunnel4"
JOBS=$(nproc 2>/dev/null || echo 2)

install_missing() {
  missing=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  echo "installing:$missing"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # Services from these packages (danted, tinyproxy) are for tests only: do not start them.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends $missing
}

build() {  # build DIR [cmake args...] [-- build args...]
  dir=$1
  shift
  configure=""
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    configure="$configure $1"
    shift
  done
  [ $# -gt 0 ] && shift
  # shellcheck disable=SC2086
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo $configure >/dev/null
  cmake --build "$dir" -j "$JOBS" "$@"
}

case "${1:-}" in
  run)
    install_missing $PACKAGES
    build build
    shift
    exec build/src/rulesocks -l 127.0.0.1:1080 --api 127.0.0.1:9080 -r lua/ruleset.lua "$@"
    ;;
  test)
    install_missing $PACKAGES $TEST_PACKAGES
    build build -DRULESOCKS_WERROR=ON
    ctest --test-dir build -j "$JOBS" --output-on-failure --timeout 600
    # The regex library's other back end (POSIX <regex.h>): its tests only.
    build build-posix -DRULESOCKS_WERROR=ON -DRULESOCKS_REGEX=POSIX -- --target ruleset_test
    build-posix/tests/ruleset_test --gtest_brief=1 --gtest_filter='RegexTest.*:Scripts/LuaScriptTest.*'
    # The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
    build build-asan -DRULESOCKS_WERROR=ON -DRULESOCKS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --test-dir build-asan -j "$JOBS" --output-on-failure --timeout 600
    ;;
  *)
    echo "usage: $0 run [rulesocks flags...] | test" >&2
    exit 2
    ;;
esac
