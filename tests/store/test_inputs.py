"""Uploaded input files in the store and the expansion lease, on every backend: what lets
any replica expand a job and exactly one do it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.limits import Limits
from gateway.store import ExpansionLost, JobState, JobStore
from gateway.store.input_ops import PIECE_BYTES
from gateway.stored_inputs import InputFiles, InputMissing
from gateway.uploads import Upload
from tests.store.conftest import OpenStore, make_job, make_tasks

MIB = 1024 * 1024


def file_bytes(size: int) -> bytes:
    line = b'{"text": "%d"}\n'
    out = bytearray()
    i = 0
    while len(out) < size:
        out += line % i
        i += 1
    return bytes(out[:size])


async def upload(store: JobStore, folder: Path, data: bytes, chunk: int = 300_000) -> Upload:
    """`data` received as a client would send it, in chunks that do not align with pieces."""
    received = Upload(folder, ".input", Limits(), store, clock=lambda: 100.0)
    for start in range(0, len(data), chunk):
        await received.write(data[start : start + chunk], "job.yaml")
    await received.finish()
    return received


async def stored(store: JobStore, input_id: str) -> list[bytes]:
    return [piece async for piece in store.input_pieces(input_id)]


async def test_an_upload_is_stored_in_pieces_as_it_streams_and_reads_back_whole(
    store: JobStore, tmp_path: Path
) -> None:
    data = file_bytes(3 * MIB + 12345)
    received = await upload(store, tmp_path / "up", data)
    pieces = await stored(store, received.input_id)
    assert [len(p) for p in pieces] == [PIECE_BYTES] * 3 + [12345]
    assert b"".join(pieces) == data
    assert received.path is not None and received.path.read_bytes() == data
    await received.discard()  # a refused submission: nothing is left, here or there
    assert await stored(store, received.input_id) == []
    assert list((tmp_path / "up").iterdir()) == []


async def test_another_replica_gets_the_file_from_the_store_and_deletes_its_copy(
    store: JobStore, tmp_path: Path
) -> None:
    data = file_bytes(2 * MIB + 7)
    received = await upload(store, tmp_path / "a", data)
    spec = {"input_id": received.input_id, "input_bytes": len(data), "upload": "/elsewhere"}
    elsewhere = InputFiles(tmp_path / "b", store)  # a replica that never saw the upload
    async with elsewhere.materialised(spec) as local:
        path = Path(local["upload"])
        assert path.parent == tmp_path / "b" and path.read_bytes() == data
    assert not path.exists()
    # Pieces missing (or a wrong size) fail the expansion instead of silently losing rows.
    with pytest.raises(InputMissing, match=f"{len(data) + 1:,} bytes"):
        async with elsewhere.materialised({**spec, "input_bytes": len(data) + 1}):
            pass
    assert list((tmp_path / "b").iterdir()) == []


async def test_pieces_go_once_the_job_is_expanded_or_ends(store: JobStore, tmp_path: Path) -> None:
    first = await upload(store, tmp_path, file_bytes(MIB + 1))
    second = await upload(store, tmp_path, file_bytes(10))
    other = await upload(store, tmp_path, file_bytes(10))
    await store.create_job(make_job("expanded", input_id=first.input_id))
    await store.create_job(make_job("cancelled", input_id=second.input_id))
    await store.create_job(make_job("running", input_id=other.input_id))
    await store.mark_expanded("expanded", 5)
    await store.set_job_state("cancelled", JobState.CANCELLED)
    await store.set_job_state("running", JobState.RUNNING)
    assert await stored(store, first.input_id) == []
    assert await stored(store, second.input_id) == []
    assert b"".join(await stored(store, other.input_id)) == file_bytes(10)


async def test_pieces_of_no_job_are_dropped_once_stale(store: JobStore, tmp_path: Path) -> None:
    named = await upload(store, tmp_path, file_bytes(10))  # stored at t=100
    orphan = await upload(store, tmp_path, file_bytes(10))
    await store.create_job(make_job(input_id=named.input_id))
    assert await store.drop_stale_inputs(before=100.0) == 0  # not older than `before` yet
    assert await store.drop_stale_inputs(before=101.0) == 1
    assert await stored(store, orphan.input_id) == []
    assert await stored(store, named.input_id) != []


async def test_expansion_passes_only_from_a_gone_replica_and_fences_the_old_one(
    store: JobStore,
) -> None:
    await store.register_replica("a", 1.0)
    await store.register_replica("b", 1.0)
    await store.create_job(make_job(expander="a"))
    await store.add_tasks("job-1", make_tasks(3), expander="a")
    assert await store.claim_expansion("job-1", "b") is None  # a lives: it goes on
    await store.leave("a")  # its row gone: what reclaim_dead does to a silent replica
    assert await store.claim_expansion("job-1", "b") == 3  # resumes after what is stored
    assert (await store.get_job("job-1")).expander == "b"
    # a comes back (it was only frozen): its next chunk is refused and nothing of it stored.
    await store.register_replica("a", 2.0)
    with pytest.raises(ExpansionLost):
        await store.add_tasks("job-1", make_tasks(2, start=3), expander="a")
    assert sum((await store.counts("job-1")).values()) == 3
    assert await store.claim_expansion("job-1", "a") is None  # b lives now
    await store.add_tasks("job-1", make_tasks(2, start=3), expander="b")
    await store.mark_expanded("job-1", 5)
    await store.leave("b")
    assert await store.claim_expansion("job-1", "a") is None  # nothing left to expand
    with pytest.raises(ExpansionLost):
        await store.add_tasks("job-1", make_tasks(1, start=5), expander="b")


async def test_an_ended_job_or_one_of_an_earlier_process_is_claimed_as_it_should(
    store: JobStore,
) -> None:
    await store.create_job(make_job("old"))  # stored before expanders were recorded: ''
    await store.create_job(make_job("ended", expander="gone"))
    await store.set_job_state("ended", JobState.CANCELLED)
    assert await store.claim_expansion("old", "b") == 0
    assert await store.claim_expansion("ended", "b") is None


async def test_replicas_claiming_at_once_leave_one_winner(open_store: OpenStore) -> None:
    stores = [await open_store() for _ in range(4)]
    for i, s in enumerate(stores):
        await s.register_replica(f"r{i}", 1.0)
    await stores[0].create_job(make_job(expander="dead"))
    await stores[0].add_tasks("job-1", make_tasks(4), expander="dead")
    won = await asyncio.gather(*(s.claim_expansion("job-1", f"r{i}") for i, s in enumerate(stores)))
    assert sorted(won, key=lambda x: x is None) == [4, None, None, None]
