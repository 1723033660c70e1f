"""JobResult.seq is a cursor, not a position (docs/api.md, "Cursors"): it increases in
completion order within a job, is shared by every job (so a job's seqs have gaps and
need not start at 1), and StreamResults(after_seq) resumes exactly after it."""

from __future__ import annotations

import asyncio

from batchinfer.v1 import gateway_pb2

from tests.gateway.conftest import job_yaml
from tests.gateway.fake_server import Script


async def _seqs(stub, job_id: str, after: int = 0) -> list[int]:
    request = gateway_pb2.StreamResultsRequest(job_id=job_id, after_seq=after, no_follow=True)
    return [r.seq async for page in stub.StreamResults(request) for r in page.results]


async def test_seq_is_an_increasing_cursor_shared_by_jobs(fleet, tmp_path):
    await fleet.start([Script(window=8, delay_s=0.01)])
    first, second = await asyncio.gather(
        fleet.run_job(job_yaml(30, name="a"), tmp_path / "a.yaml"),
        fleet.run_job(job_yaml(30, name="b"), tmp_path / "b.yaml"),
    )
    stub = fleet.client.stub
    a, b = await _seqs(stub, first[0].job_id), await _seqs(stub, second[0].job_id)
    assert len(a) == len(b) == 30
    assert a == sorted(a) and b == sorted(b)
    assert not set(a) & set(b)  # one sequence for the whole store
    assert a[-1] - a[0] + 1 > 30 or b[-1] - b[0] + 1 > 30 or max(a[0], b[0]) > 1
    assert await _seqs(stub, first[0].job_id, after=a[9]) == a[10:]
