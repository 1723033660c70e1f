#!/usr/bin/env bash
# Tools the tests use beyond Python, installed once by `make install` (CI runs it on a
# fresh machine as root): Debian's nginx for tests/proxy/. A tool that cannot be
# installed here is reported, and its tests fail in CI (CI=true) or skip locally.
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
