#!/usr/bin/env bash
# Tools the tests use beyond Python, installed once by `make install` (CI runs it on a
# fresh machine as root): Debian's nginx for tests/proxy/, Debian's Chromium for
# tests/report/ (it opens the HTML report headless) and the Node.js client's npm
# packages for tests/polyglot/. A tool that cannot be installed here is reported, and its
# tests fail in CI (CI=true) or skip locally.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt_tool PACKAGE TESTS: Debian's package, when its binary is missing and this is root.
# Only the binary is wanted: a package's own service is not started here.
apt_tool() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $1 ($2)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  else
    echo "warning: $1 is missing and cannot be installed here (needs root and apt-get);" \
      "$2 will be skipped (CI: failed)" >&2
  fi
}

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt_tool nginx tests/proxy
fi
if ! command -v chromium >/dev/null 2>&1; then
  apt_tool chromium tests/report
fi

# The Node.js client (tests/polyglot): its packages, exactly as the lock file says.
if command -v npm >/dev/null 2>&1; then
  echo "installing the Node.js client's packages (tests/polyglot: npm ci)"
  (cd tests/polyglot && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "warning: npm is missing (Node.js 18 or newer is needed); tests/polyglot will be" \
    "skipped (CI: failed)" >&2
fi
