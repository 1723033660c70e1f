"""Fixtures for the telemetry tests: OTLP receivers and a child-process runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.telemetry.otlp_receiver import OtlpReceiver

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("child.py")


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/gRPC receiver on 127.0.0.1, started."""
    with OtlpReceiver("grpc") as receiver:
        yield receiver


@pytest.fixture
def otlp_http_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on 127.0.0.1, started."""
    with OtlpReceiver("http") as receiver:
        yield receiver


def child_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any OTEL_/BATCHINFER_ setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "BATCHINFER_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(overrides)
    return env


def run_child(scenario: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs tests/telemetry/child.py SCENARIO to the end; fails the test on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, str(CHILD), scenario],
        env=child_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"child {scenario} exited {done.returncode}:\n{done.stderr}"
    return done
