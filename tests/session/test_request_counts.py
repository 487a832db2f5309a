"""statistics().requests counts every request sent, however its answer was used."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript
from venice_audio_async.types import FileSink

from ..conftest import UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"


async def test_retrieves_ending_in_a_storage_error_are_counted(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrieve whose audio could not be stored is still a request sent."""
    fake_server.plan(JobScript(duration=1.0))

    async def disk_full(self: FileSink, size: int) -> tuple[bytes | None, Path | None]:
        await self.abort()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSink, "finish", disk_full)
    async with make_session(fake_server, rate_limits=UNLIMITED, output_dir=tmp_path) as session:
        job = await session.submit(MODEL, "a tiny sound for a full disk")
        outcome = await session.wait_outcome(job)
        requests = session.statistics().requests
    assert isinstance(outcome, v.Failed)
    assert requests["retrieve"] == fake_server.count("retrieve")


async def test_retrieves_answered_with_a_non_audio_200_are_counted(
    fake_server: FakeServer,
) -> None:
    """A 200 that is neither a status nor audio is still a request sent."""
    fake_server.plan(JobScript(duration=0.0))
    fault = Fault.status(200, body="<html>maintenance</html>", content_type="text/html")
    async with make_session(
        fake_server, rate_limits=UNLIMITED, retry=v.RetryPolicy.testing(attempts=5)
    ) as session:
        fake_server.inject("retrieve", fault, times=2)
        job = await session.submit(MODEL, "a tiny sound behind a proxy")
        await session.wait_outcome(job)
        requests = session.statistics().requests
    assert fake_server.count("retrieve") >= 2
    assert requests["retrieve"] == fake_server.count("retrieve")


async def test_every_request_sent_is_counted_under_faults(fake_server: FakeServer) -> None:
    """429s, 503s, dropped and oversized answers on every endpoint: counts match the server."""
    fake_server.plan(*[JobScript(duration=1.0) for _ in range(3)])
    fake_server.inject("queue", Fault.status(429, retry_after=1.0))
    fake_server.inject("queue", Fault.status(503))
    fake_server.inject("retrieve", Fault.status(500), times=2)
    fake_server.inject("retrieve", Fault.drop())
    fake_server.inject("complete", Fault.status(503))
    async with make_session(
        fake_server,
        rate_limits=UNLIMITED,
        retry=v.RetryPolicy.testing(attempts=5),
        max_spend_usd=100.0,
    ) as session:
        jobs = [await session.submit(MODEL, f"a tiny sound under faults {i}") for i in range(3)]
        for job in jobs:
            await session.wait_outcome(job)
    requests = session.statistics().requests  # after close: every release is counted
    for endpoint in ("models", "quote", "queue", "retrieve", "complete"):
        assert requests.get(endpoint, 0) == fake_server.count(endpoint), endpoint
    assert fake_server.count("queue") == 5
