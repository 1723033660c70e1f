"""Opening a store: URLs, folders, SQLite settings."""

from __future__ import annotations

import pytest

from gateway.store import JobStore
from tests.store.conftest import make_job, template_body


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


async def test_a_store_of_an_older_version_is_brought_up_to_date(tmp_path) -> None:
    """A store made before principals: jobs without principal/spec_sha256, a global unique
    key index and one global templates table. Opening it keeps every row, makes keys per
    tenant and turns the old templates into shared ones."""
    import sqlite3

    path = tmp_path / "old.db"
    store = await JobStore.open(str(path))
    await store.close()
    db = sqlite3.connect(path)
    db.executescript(
        """
        DROP INDEX jobs_tenant_idempotency_key;
        ALTER TABLE jobs DROP COLUMN principal;
        ALTER TABLE jobs DROP COLUMN spec_sha256;
        CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key);
        DROP TABLE tenant_templates;
        CREATE TABLE templates (name VARCHAR NOT NULL, version VARCHAR NOT NULL,
            body TEXT NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (name, version));
        INSERT INTO templates VALUES ('base', '1', 'a: 1', 5.0);
        """
    )
    db.execute(
        "INSERT INTO jobs (job_id, name, tenant, priority, model, task_type, state, created_at,"
        " spec, idempotency_key, expanded, total) VALUES"
        " ('old', 'n', 'x', 5, 'm', 'chat', 1, 1.0, '{}', 'k', 0, 0)"
    )
    db.commit()
    db.close()

    store = await JobStore.open(str(path))
    try:
        old = await store.get_job("old")
        assert (old.principal, old.spec_sha256, old.idempotency_key) == ("", "", "k")
        assert await template_body(store, "base", "1") == "a: 1"  # shared now
        _, created = await store.create_job(make_job("new", tenant="y", idempotency_key="k"))
        assert created  # the old global index is gone
        _, created = await store.create_job(make_job("dup", tenant="x", idempotency_key="k"))
        assert not created  # and the per-tenant one is there
    finally:
        await store.close()
