"""A gateway stopped in the middle of expanding an uploaded, incremental job: the next
one takes the expansion over from the stored tasks (the same path a replica takes when
another died), reading the file from the store, and the job's counts come out as if
one gateway had expanded it all."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient, read_local_job
from gateway.render_pool import CHUNK, Renderer, TaskRow
from gateway.server import serve
from gateway.store import JobStore
from tests.gateway.fake_server import Script


class StopsAfterFirstChunk:
    """The gateway's own renderer, but an expansion waits after its first chunk until the
    gateway stops: a gateway that goes away mid-expansion, at a point the test knows."""

    def __init__(self, inner: Renderer) -> None:
        self.inner = inner
        self.first_stored = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def expand(
        self, spec: Any, templates: Any, *, job_id: str, skip: int
    ) -> AsyncGenerator[list[TaskRow], None]:
        async for chunk in self.inner.expand(spec, templates, job_id=job_id, skip=skip):
            yield chunk
            self.first_stored.set()  # asked for more: the chunk is in the store
            await asyncio.get_running_loop().create_future()  # until cancelled


def write_job(folder: Path, rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "rows.jsonl").open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"t{i}", "text": f"w{i}"}) + "\n")
    job = folder / "job.yaml"
    job.write_text(
        "version: 1\nname: inc\nmodel: m\ntask: generate\ntemplate: '{{ text }}'\n"
        "params: {max_new_tokens: 4}\ninputs: {file: rows.jsonl, id: '{{ id }}'}\n"
    )
    return job


async def test_a_restart_mid_expansion_resumes_from_the_store_with_counts_right(
    fleet: Any, tmp_path: Path
) -> None:
    earlier, rows = 3000, 3 * CHUNK  # the first run's rows are reused by the second
    await fleet.start([Script()])
    first, _ = await fleet.run_job(
        write_job(tmp_path / "first", earlier).read_text(), tmp_path / "first" / "job.yaml"
    )
    assert first.counts.succeeded == earlier
    api = fleet.gateway.api
    gate = StopsAfterFirstChunk(api.submitter.renderer)
    api.submitter.expansion.renderer = gate
    job = await fleet.client.submit(read_local_job(write_job(tmp_path / "second", rows), {}, None))
    await gate.first_stored.wait()
    config = fleet.gateway.engine.config
    await fleet.client.close()
    await fleet.gateway.stop(grace=0.1)
    store = await JobStore.open(config.resolved_store_url())
    try:  # stopped with one chunk stored, of which every task was reused
        record = await store.get_job(job.job_id)
        assert record is not None and record.input_id and not record.expanded
        assert sum((await store.counts(job.job_id)).values()) == CHUNK
    finally:
        await store.close()
    fleet.gateway = await serve(config)  # same data dir: the SQLite store and uploads/
    fleet.client = GatewayClient(fleet.gateway.address)
    out = io.StringIO()
    await fleet.client.follow_results(job.job_id, out)
    ids = [json.loads(line)["id"] for line in out.getvalue().splitlines()]
    assert sorted(ids) == sorted(f"t{i}" for i in range(rows))
    done = await fleet.client.get(job.job_id)
    assert done.expanded
    counts = done.counts
    assert (counts.total, counts.succeeded, counts.reused) == (rows, rows, earlier), counts
    # The file's pieces went once the job was expanded; no copy is left in uploads/.
    assert [p async for p in fleet.gateway.store.input_pieces(record.input_id)] == []
    uploads = config.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
