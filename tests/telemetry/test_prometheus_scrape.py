"""Debian's real `prometheus` scrapes a process's /metrics and answers a PromQL query.

The binary is installed by the test setup (apt-get) when missing; the test is skipped,
with the reason, when that is not possible here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.telemetry.conftest import CHILD, REPO, child_env

pytestmark = pytest.mark.slow


def prometheus_binary() -> str:
    """The prometheus binary; installs Debian's package when missing, else skips."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(
            "prometheus is not installed and apt-get as root is not available to install it"
        )
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=600,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"cannot install Debian's prometheus package: {error}")
    return shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def metrics_child() -> Iterator[int]:
    """A child process with telemetry set up and /metrics served; yields the port."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "serve"],
        env=child_env(),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield int(child.stdout.readline())  # type: ignore[union-attr]
    finally:
        child.communicate("", timeout=60)


def query(api_port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{api_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())["data"]["result"]
    except OSError:  # not listening yet
        return []


def test_prometheus_scrapes_and_queries_a_batchinfer_metric(
    metrics_child: int, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: batchinfer\n    static_configs: [{{targets: ['127.0.0.1:{metrics_child}']}}]\n"
    )
    api_port = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{api_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        result: list[dict] = []
        for _ in range(120):  # bounded: about a minute
            result = query(api_port, 'batchinfer_tasks_total{batchinfer_task_status="succeeded"}')
            if result or server.poll() is not None:
                break
            time.sleep(0.5)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert result, f"no batchinfer_tasks_total in Prometheus; its log:\n{stderr.decode()[-3000:]}"
    [series] = result
    assert series["metric"]["job"] == "batchinfer"
    assert series["metric"]["batchinfer_tenant"] == "team-a"
    assert float(series["value"][1]) == 3.0
