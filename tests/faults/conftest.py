"""The fault tests' fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.faults.replicas import PG, create_database, drop_database


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for one test; its SQLAlchemy URL.
    Skipped where PostgreSQL is not running, except in CI."""
    try:
        name, url = create_database()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at {PG} is not reachable: {exc!r}")
    yield url
    drop_database(name)
