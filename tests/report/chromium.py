"""Debian's headless Chromium for the report tests: it opens the HTML report as a person's
browser would (tests/setup_tools.sh installs it; missing, the tests fail in CI and skip
elsewhere, as tests/proxy does for nginx)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = (
    "chromium is not installed: `make install` runs tests/setup_tools.sh (apt-get install chromium)"
)
FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files")


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return found


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # Its own profile folder: a shared one is locked by any other Chromium running.
    env = {**os.environ, "HOME": str(home)}
    command = [chromium_binary(), *FLAGS, f"--user-data-dir={home / 'profile'}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(page: Path, home: Path) -> str:
    """The DOM after Chromium loaded the page (its scripts, if any, run)."""
    return _run("--dump-dom", page.resolve().as_uri(), home=home).stdout


def screenshot(page: Path, shot: Path, home: Path, size: str = "1280,2400") -> bytes:
    _run(f"--screenshot={shot}", f"--window-size={size}", page.resolve().as_uri(), home=home)
    return shot.read_bytes()
