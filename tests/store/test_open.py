"""Opening a store: URLs, folders, SQLite settings."""

from __future__ import annotations

import pytest

from gateway.store import JobStore
from tests.store.conftest import make_job


async def test_plain_path_creates_folders_and_reopens(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"
    store = await JobStore.open(str(path))
    await store.create_job(make_job())
    await store.close()
    await store.close()  # closing twice is harmless
    assert path.exists()
    again = await JobStore.open(f"sqlite:///{path}")
    assert (await again.get_job("job-1")) is not None
    await again.close()


async def test_sqlite_pragmas_are_set(tmp_path) -> None:
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    backend = store._backend
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    pragmas = await backend.run(
        lambda c: [c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in names], write=False
    )
    await store.close()
    assert pragmas == ["wal", 1, 1, 30000]


async def test_aiosqlite_driver_works_too(tmp_path) -> None:
    store = await JobStore.open(f"{tmp_path}/j.db", sqlite_driver="aiosqlite")
    assert (await store.create_job(make_job()))[1]
    assert (await store.get_job("job-1")).name == "summarize"
    await store.close()


async def test_bad_urls_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="mysql://x"):
        await JobStore.open("mysql://x")
    with pytest.raises(ValueError, match="sqlite_driver"):
        await JobStore.open(f"{tmp_path}/j.db", sqlite_driver="odbc")
