"""The job journal, resume and the spending limit: no paid job is lost or paid twice."""

from __future__ import annotations

from pathlib import Path

import pytest

import venice_audio_async as v
from venice_audio_async.journal import JobState, Journal
from venice_audio_async.testing import FakeServer, Fault, JobScript
from venice_audio_async.types import CompleteRequest

from ..conftest import API_KEY, make_session

pytestmark = pytest.mark.anyio


async def test_journal_records_each_step(tmp_path: Path) -> None:
    """Intent, sending, queued, succeeded and released are each committed and reread."""
    path = tmp_path / "jobs.sqlite3"
    journal = await Journal.open(path)
    request = v.QueueRequest(model="stable-audio-25", prompt="rain on leaves", duration_seconds=10)
    row = await journal.add_intent(
        request, key="line-1", destination=str(tmp_path), estimate_usd=0.2
    )
    assert (await journal.get(row)).state is JobState.INTENT  # type: ignore[union-attr]
    await journal.mark_sending(row)
    assert await journal.estimated_spend_usd() == pytest.approx(0.2)
    await journal.mark_queued(row, "q-1")
    await journal.mark_succeeded(
        "q-1", path=str(tmp_path / "a.wav"), size=10, content_type="audio/wav"
    )
    await journal.mark_released("q-1")
    await journal.aclose()
    await journal.aclose()

    reopened = await Journal.open(path)
    (entry,) = await reopened.entries()
    assert entry.state is JobState.SUCCEEDED
    assert entry.request == request
    assert (entry.key, entry.queue_id, entry.size, entry.released) == ("line-1", "q-1", 10, True)
    assert (await reopened.by_key("line-1")) == entry
    assert await reopened.entries(JobState.QUEUED) == []
    await reopened.aclose()


async def test_failed_jobs_count_as_spent_rejected_and_refunded_ones_do_not(
    tmp_path: Path,
) -> None:
    """A job that failed was queued, so it may be billed (expired media, a failed store);
    a failed generation was refunded, and a request the API rejected never created a job."""
    journal = await Journal.open(tmp_path / "j.sqlite3")
    request = v.QueueRequest(model="m", prompt="p")
    a = await journal.add_intent(request, estimate_usd=1.0)
    b = await journal.add_intent(request, estimate_usd=2.0)
    c = await journal.add_intent(request, estimate_usd=4.0)
    d = await journal.add_intent(request, estimate_usd=8.0)
    await journal.mark_queued(a, "qa")
    await journal.mark_failed("qa", v.InferenceFailedError("x", status_code=500))
    await journal.mark_rejected(b, v.BadRequestError("no", status_code=400))
    await journal.mark_unknown(c, v.ConnectionDropped("gone"))
    await journal.mark_queued(d, "qd")
    await journal.mark_failed("qd", v.MediaNotFoundError("expired", status_code=404))
    assert await journal.estimated_spend_usd() == pytest.approx(12.0)
    failed = await journal.entries(JobState.FAILED, JobState.REJECTED)
    assert [(e.error_type, e.error_status) for e in failed] == [
        ("InferenceFailedError", 500),
        ("BadRequestError", 400),
        ("MediaNotFoundError", 404),
    ]
    await journal.aclose()


async def test_session_journals_a_job_to_the_end(fake_server: FakeServer, tmp_path: Path) -> None:
    """A journaled job ends "succeeded" with its file, size and release recorded."""
    fake_server.plan(JobScript(duration=2.0))
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path, output_dir=tmp_path) as session:
        job = await session.submit("stable-audio-25", "rain on leaves in spring")
        audio = await session.wait_for(job)
    journal = await Journal.open(journal_path)
    (entry,) = await journal.entries()
    await journal.aclose()
    assert entry.state is JobState.SUCCEEDED
    assert entry.queue_id == job.queue_id
    assert entry.path == str(audio.path)
    assert entry.size == audio.size
    assert entry.released is True
    assert entry.estimate_usd == pytest.approx(0.24)


async def test_lost_queue_answer_is_unknown_and_never_requeued_silently(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A dropped queue answer is journaled unknown; resume reports it and sends nothing."""
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path) as session:
        fake_server.inject("queue", Fault.drop())
        with pytest.raises(v.QueueOutcomeUnknown):
            await session.submit("stable-audio-25", "a request whose answer is lost")
    async with make_session(fake_server, journal=journal_path) as session:
        report = await session.resume()
    assert [e.state for e in report.unknown] == [JobState.UNKNOWN]
    assert report.jobs == ()
    assert fake_server.count("queue") == 1

    async with make_session(fake_server, journal=journal_path) as session:
        report = await session.resume(requeue_unknown=True)
        assert report.queued == 1
        await session.wait_for(report.jobs[0])
    assert fake_server.count("queue") == 2


async def test_resume_attaches_running_jobs_and_is_idempotent(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Jobs left running by a closed session are finished by resume, once."""
    fake_server.plan(*[JobScript(duration=300.0) for _ in range(4)])
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path, output_dir=tmp_path) as session:
        first = [
            await session.submit("stable-audio-25", f"a long ambient piece {i}") for i in range(4)
        ]
    assert fake_server.count("queue") == 4

    async with make_session(fake_server, journal=journal_path) as session:
        report = await session.resume()
        assert report.attached == 4
        assert {j.queue_id for j in report.jobs} == {j.queue_id for j in first}
        async with session.results(report.jobs) as results:
            outcomes = [o async for o in results]
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    for outcome in outcomes:
        assert isinstance(outcome, v.Succeeded)
        assert outcome.audio.path is not None
        assert outcome.audio.path.parent == tmp_path.resolve()
        assert outcome.audio.path.read_bytes() == fake_server.audio_for(outcome.job.queue_id)

    async with make_session(fake_server, journal=journal_path) as session:
        again = await session.resume()
    assert (again.jobs, again.skipped) == ((), 4)
    assert fake_server.count("queue") == 4


async def test_resume_queues_jobs_never_sent(fake_server: FakeServer, tmp_path: Path) -> None:
    """An intent that never left (the process died first) is queued by resume."""
    fake_server.plan(JobScript(duration=1.0))
    journal_path = tmp_path / "journal.sqlite3"
    journal = await Journal.open(journal_path)
    await journal.add_intent(v.QueueRequest(model="stable-audio-25", prompt="never sent before"))
    await journal.aclose()
    async with make_session(fake_server, journal=journal_path) as session:
        report = await session.resume()
        assert report.queued == 1
        audio = await session.wait_for(report.jobs[0])
    assert audio.size > 0
    assert fake_server.count("queue") == 1


async def test_expired_media_is_reported_on_resume(fake_server: FakeServer, tmp_path: Path) -> None:
    """A job whose media is gone by resume time ends failed with MediaNotFoundError."""
    fake_server.plan(JobScript(duration=1.0))
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path) as session:
        job = await session.submit("stable-audio-25", "soon to be forgotten")
    async with v.VeniceClient(api_key=API_KEY, base_url=fake_server.url) as client:
        await fake_server.clock.sleep(2.0)
        assert (await client.complete(CompleteRequest(job.model, job.queue_id))).success
    async with make_session(fake_server, journal=journal_path) as session:
        report = await session.resume()
        outcome = await session.wait_outcome(report.jobs[0])
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.MediaNotFoundError)
    journal = await Journal.open(journal_path)
    (entry,) = await journal.entries()
    await journal.aclose()
    assert entry.state is JobState.FAILED
    assert entry.error_type == "MediaNotFoundError"


async def test_spend_limit_refuses_before_sending(fake_server: FakeServer) -> None:
    """A job that would exceed max_spend_usd is refused; nothing is sent for it."""
    async with make_session(fake_server, max_spend_usd=0.5) as session:
        await session.submit("stable-audio-25", "first affordable piece")  # 0.24
        await session.submit("stable-audio-25", "second affordable piece")  # 0.48
        with pytest.raises(v.SpendLimitExceeded) as caught:
            await session.submit("stable-audio-25", "one piece too many")
        spent, limit = session.spending()
        assert spent == pytest.approx(0.48)
        assert limit == 0.5
    assert caught.value.limit_usd == 0.5
    assert caught.value.estimate_usd == pytest.approx(0.24)
    assert fake_server.count("queue") == 2


async def test_spend_counts_earlier_runs_in_the_journal(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A session reopening a journal counts what earlier runs already spent."""
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path) as session:
        await session.submit("stable-audio-25", "spent in an earlier run")
    async with make_session(fake_server, journal=journal_path, max_spend_usd=0.3) as session:
        with pytest.raises(v.SpendLimitExceeded):
            await session.submit("stable-audio-25", "over the limit now")


async def test_estimates_use_catalogue_then_quote(fake_server: FakeServer) -> None:
    """Estimates come from catalogue pricing, per model shape, without a quote request."""
    async with make_session(fake_server) as session:
        tts = v.QueueRequest(model="elevenlabs-tts-v3", prompt="x" * 2000, voice="Aria")
        assert await session.estimate_cost(tts) == pytest.approx(0.23)
        music = v.QueueRequest(model="elevenlabs-music", prompt="a long song", duration_seconds=90)
        assert await session.estimate_cost(music) == pytest.approx(1.73)
    assert fake_server.count("quote") == 0


async def test_quotes_are_cached(fake_server: FakeServer) -> None:
    """The same quote asked twice is one request."""
    async with make_session(fake_server) as session:
        a = await session.quote("elevenlabs-music", duration_seconds=60)
        b = await session.quote("elevenlabs-music", duration_seconds=60)
        c = await session.quote("elevenlabs-music", duration_seconds=120)
    assert a == b
    assert c.quote > a.quote
    assert fake_server.count("quote") == 2


async def test_resume_needs_a_journal(fake_server: FakeServer) -> None:
    """resume() on a session without a journal is refused clearly."""
    async with make_session(fake_server) as session:
        with pytest.raises(v.SessionStateError, match="journal"):
            await session.resume()


async def test_resume_takes_a_journal_path(fake_server: FakeServer, tmp_path: Path) -> None:
    """session.resume(path) adopts the journal of an earlier run and finishes its jobs."""
    fake_server.plan(JobScript(duration=5.0))
    journal_path = tmp_path / "journal.sqlite3"
    async with make_session(fake_server, journal=journal_path) as session:
        job = await session.submit("stable-audio-25", "left running by a crash")
    async with make_session(fake_server) as session:
        report = await session.resume(journal_path)
        assert [j.queue_id for j in report.jobs] == [job.queue_id]
        await session.wait_for(report.jobs[0])
        with pytest.raises(ValueError, match="already keeps"):
            await session.resume(tmp_path / "other.sqlite3")
    journal = await Journal.open(journal_path)
    assert [e.state for e in await journal.entries()] == [JobState.SUCCEEDED]
    await journal.aclose()
