"""A job whose audio could not be stored (disk full) is fetched again by resume; spend
totals count every job that was billed, and no refunded one."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

import venice_audio_async as v
from venice_audio_async._session.resume import has_work, step_for
from venice_audio_async.journal import JobState, Journal, JournalEntry
from venice_audio_async.testing import FakeServer, Fault, JobScript
from venice_audio_async.types import FileSink

from ..conftest import UNLIMITED, make_client, make_session

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

    async def disk_full(self: FileSink, size: int) -> tuple[bytes | None, Path | None]:
        await self.abort()
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(FileSink, "finish", disk_full)
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


# --------------------------------------------------------------------------- no verdict

#: Errors an earlier version marked jobs failed with, although the API never judged them.
_NO_VERDICTS: list[v.VeniceError] = [
    v.ConnectionDropped("retrieve request: the connection was dropped", endpoint="retrieve"),
    v.RequestTimeout("retrieve request: no answer in time", endpoint="retrieve"),
    v.TruncatedResponse("retrieve request: the body was cut short", endpoint="retrieve"),
    v.ConnectError("retrieve request: cannot connect", endpoint="retrieve"),
    v.MalformedResponse("retrieve request: unreadable answer", endpoint="retrieve"),
    v.ServerError("<html>502 Bad Gateway</html>", status_code=502, endpoint="retrieve"),
    v.ServerError("HTTP 504 with no error message", status_code=504, endpoint="retrieve"),
    v.AuthenticationError("Authentication failed", status_code=401, endpoint="retrieve"),
]


async def _journal_with_failed_rows(
    server: FakeServer, path: Path, errors: list[v.VeniceError]
) -> list[str]:
    """A journal whose jobs (really queued on ``server``) are marked failed with
    ``errors``, as an earlier version recorded polls that failed; their queue ids."""
    server.plan(*[JobScript(duration=0.0) for _ in errors])
    queue_ids = []
    async with make_client(server) as client, await Journal.open(path) as journal:
        for i, error in enumerate(errors):
            request = v.QueueRequest(MODEL, f"a job whose poll met {type(error).__name__} {i}")
            row = await journal.add_intent(request, estimate_usd=0.01)
            await journal.mark_sending(row)
            job = await client.queue(request)
            await journal.mark_queued(row, job.queue_id)
            await journal.mark_failed(job.queue_id, error)
            queue_ids.append(job.queue_id)
    return queue_ids


async def test_resume_fetches_jobs_failed_without_a_verdict(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Rows an earlier version marked failed after polls failed in transit (or a refused
    key) are fetched by resume while the media is kept; the API's own verdict (a 422)
    stays reported."""
    journal = tmp_path / "j.sqlite3"
    verdict = v.ContentPolicyError(
        "policy", status_code=422, body={"error": "policy"}, endpoint="retrieve"
    )
    ids = await _journal_with_failed_rows(fake_server, journal, [*_NO_VERDICTS, verdict])
    options = {"rate_limits": UNLIMITED, "journal": journal}
    async with make_session(fake_server, **options) as session:
        assert session.journal is not None
        entries = await session.journal.entries()
        assert has_work(entries, requeue_unknown=False)
        report = await session.resume()
        assert (report.attached, report.fetched_again) == (len(_NO_VERDICTS),) * 2
        assert [e.queue_id for e in report.failed] == [ids[-1]]
        async with session.results(report.jobs) as results:
            outcomes = [o async for o in results]
        rows = await session.journal.entries()
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    for outcome in outcomes:
        assert isinstance(outcome, v.Succeeded)
        assert outcome.audio.data == fake_server.audio_for(outcome.job.queue_id)
    assert [r.state for r in rows] == [JobState.SUCCEEDED] * len(_NO_VERDICTS) + [JobState.FAILED]
    assert not has_work(rows, requeue_unknown=False)
    assert fake_server.count("queue") == len(ids)  # nothing queued again


def test_one_rule_says_what_resume_does_with_each_row() -> None:
    """step_for is the rule both the library's resume and the CLI's "is there work" use."""

    def row(state: JobState, **fields: Any) -> JournalEntry:
        values: dict[str, Any] = {
            "id": 1,
            "key": None,
            "request": v.QueueRequest(MODEL, "p"),
            "state": state,
            "queue_id": "q",
            "destination": None,
            "name": None,
            "estimate_usd": None,
            "path": None,
            "size": None,
            "content_type": None,
            "error": None,
            "error_type": None,
            "error_status": None,
            "released": False,
            "created_at": 0.0,
            "queued_at": None,
            "finished_at": None,
        }
        values.update(fields)
        return JournalEntry(**values)

    failed = JobState.FAILED
    cases = [
        (row(JobState.INTENT), "send", "send"),
        (row(JobState.UNKNOWN), "report lost", "send again"),
        (row(JobState.SENDING), "report lost", "send again"),
        (row(JobState.QUEUED), "attach", "attach"),
        (row(JobState.SUCCEEDED), "skip", "skip"),
        (row(JobState.REJECTED, error_status=400), "report failed", "report failed"),
        (row(failed, error_type="AudioStorageError"), "fetch again", "fetch again"),
        (row(failed, error_type="ConnectionDropped"), "fetch again", "fetch again"),
        (row(failed, error_type="ServerError", error_status=502), "fetch again", "fetch again"),
        (row(failed, error_type="ServerError", error_status=520), "fetch again", "fetch again"),
        (row(failed, error_type="AudioStorageError", released=True), "report failed", None),
        (row(failed, error_type="ConnectionDropped", queue_id=None), "report failed", None),
        (row(failed, error_type="ContentPolicyError", error_status=422), "report failed", None),
        (row(failed, error_type="InferenceFailedError", error_status=500), "report failed", None),
        (row(failed, error_type="MediaNotFoundError", error_status=404), "report failed", None),
        (row(failed, error_type="ResponseTooLarge"), "report failed", None),
    ]
    for entry, plain, requeue in cases:
        assert step_for(entry, requeue_unknown=False).value == plain, entry
        assert step_for(entry, requeue_unknown=True).value == (requeue or plain), entry
        work = plain in ("send", "attach", "fetch again")
        assert has_work([entry], requeue_unknown=False) is work, entry
