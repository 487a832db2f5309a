"""A job whose audio could not be stored (disk full) is fetched again by resume; spend
totals count every job that was billed, and no refunded one."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript

from .conftest import UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"


async def test_disk_full_then_resume_fetches_again(
    fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC fails the job, keeps its media; after space is freed resume stores it."""
    fake_server.plan(JobScript(duration=1.0))
    journal = tmp_path / "j.sqlite3"
    out = tmp_path / "out"
    out.mkdir()
    options = {"rate_limits": UNLIMITED, "journal": journal, "output_dir": out}

    async def disk_full(self: v.FileSink, size: int) -> tuple[bytes | None, Path | None]:
        await self.abort()
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(v.FileSink, "finish", disk_full)
        async with make_session(fake_server, **options) as session:
            job = await session.submit(MODEL, "a tiny sound for a full disk")
            outcome = await session.wait_outcome(job)
            spent, _ = session.spending()
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.AudioStorageError)
    assert fake_server.count("complete") == 0  # media kept on the server
    assert spent > 0

    async with make_session(fake_server, **options) as session:
        assert session.spending()[0] == pytest.approx(spent)  # the failed store was billed
        report = await session.resume()
        assert report.failed == ()
        assert (report.attached, report.storage_retried) == (1, 1)
        audio = await session.wait_for(report.jobs[0])
        assert session.journal is not None
        assert await session.journal.estimated_spend_usd() == pytest.approx(spent)
    assert audio.path is not None
    assert audio.path.read_bytes() == fake_server.audio_for(job.queue_id)
    assert fake_server.count("queue") == 1

    async with make_session(fake_server, **options) as session:
        again = await session.resume()
    assert (again.jobs, again.skipped) == ((), 1)


async def test_audio_over_the_cap_is_not_fetched_again(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """ResponseTooLarge is not a storage failure that can change: resume reports it."""
    fake_server.plan(JobScript(duration=1.0))
    journal = tmp_path / "j.sqlite3"
    limits = v.Limits(max_audio_file_bytes=16)
    options = {"rate_limits": UNLIMITED, "journal": journal, "output_dir": tmp_path}
    async with make_session(fake_server, limits=limits, **options) as session:
        job = await session.submit(MODEL, "a tiny sound too big")
        outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.ResponseTooLarge)
    async with make_session(fake_server, limits=limits, **options) as session:
        report = await session.resume()
    assert len(report.failed) == 1
    assert report.jobs == ()


@pytest.mark.parametrize("status", [400, 422, 500, 503])
async def test_a_refunded_failure_is_not_counted_as_spent(
    fake_server: FakeServer, tmp_path: Path, status: int
) -> None:
    """A generation that failed (refunded) leaves the spend total, here and after reopening."""
    fake_server.plan(JobScript(duration=1.0, fail_status=status), JobScript(duration=1.0))
    journal = tmp_path / "j.sqlite3"
    policy = v.RetryPolicy(attempts=2, initial_backoff=0.1)
    options = {"rate_limits": UNLIMITED, "journal": journal, "max_spend_usd": 100.0}
    async with make_session(fake_server, retry=policy, **options) as session:
        failing = await session.submit(MODEL, "a prompt the provider refuses")
        kept = await session.submit(MODEL, "a prompt that is generated")
        assert isinstance(await session.wait_outcome(failing), v.Failed)
        assert isinstance(await session.wait_outcome(kept), v.Succeeded)
        spent, _ = session.spending()
        assert session.journal is not None
        estimates = [e.estimate_usd or 0.0 for e in await session.journal.entries()]
    assert estimates[0] == estimates[1] > 0
    assert spent == pytest.approx(estimates[1])  # the refunded one is given back
    async with make_session(fake_server, **options) as session:
        assert session.spending()[0] == pytest.approx(spent)


async def test_an_expired_or_unknown_job_still_counts_as_spent(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A job whose media expired (404) or whose id the server forgot (400) was billed."""
    fake_server.plan(JobScript(duration=0.0), JobScript(duration=0.0))
    fake_server.inject("retrieve", Fault.status(404))
    fake_server.inject("retrieve", Fault.status(400, body={"error": "Request ID is invalid."}))
    journal = tmp_path / "j.sqlite3"
    options = {"rate_limits": UNLIMITED, "journal": journal, "max_spend_usd": 100.0}
    async with make_session(fake_server, **options) as session:
        jobs = [await session.submit(MODEL, f"a track the server loses {i}") for i in range(2)]
        outcomes = [await session.wait_outcome(job) for job in jobs]
        spent, _ = session.spending()
        assert session.journal is not None
        total = sum(e.estimate_usd or 0.0 for e in await session.journal.entries())
    errors = {type(o.error) for o in outcomes if isinstance(o, v.Failed)}
    assert errors == {v.MediaNotFoundError, v.InvalidQueueIdError}
    assert total > 0
    assert spent == pytest.approx(total)
    async with make_session(fake_server, **options) as session:
        assert session.spending()[0] == pytest.approx(total)
