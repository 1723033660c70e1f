"""`make lint` runs scripts/check_breaking.sh: buf breaking against the last commit's
protos. It works in a fresh shallow clone (it fetches the base commit) and fails on a
change that breaks clients, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / ".venv" / "bin" / "buf"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def buf() -> str:
    found = str(BUF) if BUF.exists() else shutil.which("buf")
    if found is None:
        message = "buf is not installed: `make install` (the buf-bin dev extra)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def git(cwd: Path, *args: str) -> str:
    done = run(["git", *args], cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_buf_breaking_in_a_shallow_clone_passes_then_catches_a_removed_field(tmp_path):
    binary = buf()
    source = tmp_path / "source"
    # A repository of two commits: the same protos, then a harmless change.
    shutil.copytree(
        ROOT / "protos", source / "protos", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        ROOT / "scripts", source / "scripts", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(source, "init", "-q", "-b", "main")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    gateway = source / "protos" / "batchinfer" / "v1" / "gateway.proto"
    gateway.write_text(gateway.read_text() + "\n// a comment\n")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "comment")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{source}", str(clone))
    assert git(clone, "rev-parse", "--is-shallow-repository").strip() == "true"
    checked = run(["bash", "scripts/check_breaking.sh"], clone, BUF=binary)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "compatible with HEAD~1" in checked.stdout

    # Dropping a field a client may send breaks it: buf says which.
    gateway = clone / "protos" / "batchinfer" / "v1" / "gateway.proto"
    text = gateway.read_text()
    assert "  string idempotency_key = 3;\n" in text
    gateway.write_text(text.replace("  string idempotency_key = 3;\n", "", 1))
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "break")
    broken = run(["bash", "scripts/check_breaking.sh"], clone, BUF=binary)
    assert broken.returncode != 0
    assert "idempotency_key" in broken.stdout + broken.stderr

    # With no way to get the base, it says what to do instead of passing.
    lonely = tmp_path / "lonely"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{clone}", str(lonely))
    git(lonely, "remote", "remove", "origin")
    alone = run(["bash", "scripts/check_breaking.sh"], lonely, BUF=binary)
    assert alone.returncode == 1 and "BUF_BREAKING_AGAINST" in alone.stderr
