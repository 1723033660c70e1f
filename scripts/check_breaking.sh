#!/usr/bin/env bash
# buf breaking: protos/ must stay wire- and source-compatible with the protos of a base
# commit (buf.yaml: FILE rules). The base is $BUF_BREAKING_AGAINST, else HEAD~1 (on a
# branch, pass its merge-base: BUF_BREAKING_AGAINST=$(git merge-base HEAD main)).
# A shallow clone without the base fetches one more commit first; if it cannot, this says
# so and fails: deepen the clone (git fetch --deepen=1) or name a base that is there.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF="${BUF:-.venv/bin/buf}"
base="${BUF_BREAKING_AGAINST:-HEAD~1}"

if ! git rev-parse -q --verify "${base}^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch -q --deepen=1 2>/dev/null || true
  fi
fi
if ! commit=$(git rev-parse -q --verify "${base}^{commit}"); then
  echo "buf breaking: no base commit ${base} here (a shallow clone?); run" \
    "'git fetch --deepen=1' or set BUF_BREAKING_AGAINST to a commit that exists" >&2
  exit 1
fi

against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
if ! git cat-file -e "${commit}:protos/buf.yaml" 2>/dev/null; then
  echo "buf breaking: ${base} has no protos/buf.yaml; nothing to compare with"
  exit 0
fi
git archive "$commit" protos | tar -x -C "$against"
"$BUF" breaking protos --against "$against/protos"
echo "buf breaking: protos/ is compatible with ${base} ($(git rev-parse --short "$commit"))"
