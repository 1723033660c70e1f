"""Two traced runs of one real job, shared by every test here: content capture off and on."""

from __future__ import annotations

import pytest

from tests.telemetry_e2e.harness import Capture, run_traced_job


@pytest.fixture(scope="session")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """The job run with OTLP export on and content capture off (the default)."""
    return run_traced_job(tmp_path_factory.mktemp("traced"), capture_content=False)


@pytest.fixture(scope="session")
def traced_with_content(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """The same job with BATCHINFER_CAPTURE_CONTENT=true."""
    return run_traced_job(tmp_path_factory.mktemp("traced-content"), capture_content=True)
