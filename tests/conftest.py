"""Checks every test gets: no asyncio warnings in the logs of the processes it started."""

from __future__ import annotations

import pytest

from tests.logs import asyncio_warnings_in


@pytest.fixture(autouse=True)
def no_asyncio_warnings_in_subprocess_logs(request: pytest.FixtureRequest):
    """Subprocess tests keep each process's log under tmp_path: fail on asyncio warnings."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder = request.getfixturevalue("tmp_path")
    yield
    found = asyncio_warnings_in(folder)
    if found:
        pytest.fail("asyncio warnings in the logs:\n" + "\n".join(found[:20]), pytrace=False)
