#!/usr/bin/env bash
# Tools the tests use beyond Python, installed once by `make install` (CI runs it on a
# fresh machine as root): Debian's nginx for tests/proxy/ and the Node.js client's npm
# packages for tests/polyglot/. A tool that cannot be installed here is reported, and its
# tests fail in CI (CI=true) or skip locally.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nginx (tests/proxy)"
    apt-get update -qq
    # Only the binary is wanted: the package's own service is not started here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  else
    echo "warning: nginx is missing and cannot be installed here (needs root and apt-get);" \
      "tests/proxy will be skipped (CI: failed)" >&2
  fi
fi

# The Node.js client (tests/polyglot): its packages, exactly as the lock file says.
if command -v npm >/dev/null 2>&1; then
  echo "installing the Node.js client's packages (tests/polyglot: npm ci)"
  (cd tests/polyglot && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "warning: npm is missing (Node.js 18 or newer is needed); tests/polyglot will be" \
    "skipped (CI: failed)" >&2
fi
