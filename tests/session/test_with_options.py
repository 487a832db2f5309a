"""``session.with_options(...)``: views sharing the session's pool, budget and scheduler,
with their own timeout, retry policy and release_media per job."""

from __future__ import annotations

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"
PROMPT = "rain on a tin roof"


def _retrieve_flags(server: FakeServer, queue_id: str) -> set[object]:
    return {
        (r.body or {}).get("delete_media_on_completion")
        for r in server.requests_to("retrieve")
        if (r.body or {}).get("queue_id") == queue_id
    }


def _completed(server: FakeServer) -> list[str]:
    return [str((r.body or {}).get("queue_id")) for r in server.requests_to("complete")]


async def test_release_media_per_job_and_one_pool_budget_and_statistics(
    fake_server: FakeServer,
) -> None:
    """Two views of one session: each job is released as the view that submitted it says,
    the session's own job as the session says; one pool, one budget, one scheduler, and the
    session's statistics count every job and request."""
    async with make_session(fake_server) as session:
        deleting = session.with_options(release_media="delete_on_retrieve")
        keeping = session.with_options(release_media="keep")
        for view in (deleting, keeping):
            assert view._parts.client is session._parts.client
            assert view._parts.budget is session._parts.budget
            assert view._parts.scheduler is session._parts.scheduler
        by_deleting = await deleting.submit(MODEL, PROMPT, duration_seconds=5)
        by_keeping = await keeping.submit(MODEL, PROMPT, duration_seconds=5)
        by_session = await session.submit(MODEL, PROMPT, duration_seconds=5)
        # Waited for through another view: the job keeps the options it was submitted with.
        for job in (by_deleting, by_keeping, by_session):
            assert (await keeping.wait_for(job)).data
        await session._parts.scheduler.wait_releases()
        stats = session.statistics()
        assert stats == deleting.statistics()
    assert _retrieve_flags(fake_server, by_deleting.queue_id) == {True}
    assert _retrieve_flags(fake_server, by_keeping.queue_id) == {None}
    assert _retrieve_flags(fake_server, by_session.queue_id) == {None}
    assert _completed(fake_server) == [by_session.queue_id]
    assert stats.jobs_succeeded == 3
    assert stats.requests["queue"] == 3
    assert stats.media_released == 1


async def test_retry_per_job(fake_server: FakeServer) -> None:
    """A job's polls are given up on per the retry policy of the view that submitted it:
    the same repeated 500 ends one job after 2 polls and the other after 4."""
    session_policy = v.RetryPolicy.testing(attempts=4)
    async with make_session(fake_server, retry=session_policy) as session:
        hasty = session.with_options(retry=v.RetryPolicy.testing(attempts=2))
        jobs = [
            await hasty.submit(MODEL, PROMPT, duration_seconds=5),
            await session.submit(MODEL, PROMPT, duration_seconds=5),
        ]
        for job in jobs:
            fake_server.inject(
                "retrieve",
                Fault.status(500),
                times=None,
                queue_id=job.queue_id,
                during=(0, 10_000),
            )
        outcomes = [await session.wait_outcome(job) for job in jobs]
    assert all(isinstance(outcome, v.Failed) for outcome in outcomes)
    polls = [
        sum(
            1
            for r in fake_server.requests_to("retrieve")
            if (r.body or {})["queue_id"] == j.queue_id
        )
        for j in jobs
    ]
    assert polls == [2, 4]


async def test_retry_of_the_queue_call(fake_server: FakeServer) -> None:
    """The view's policy retries its queue calls: a 503 (no job created) is retried by a
    view allowing it, and ends the call of a session allowing one attempt only."""
    async with make_session(fake_server, retry=v.RetryPolicy.testing(attempts=1)) as session:
        fake_server.inject("queue", Fault.status(503))
        with pytest.raises(v.ServiceUnavailableError):
            await session.submit(MODEL, PROMPT, duration_seconds=5)
        patient = session.with_options(retry=v.RetryPolicy.testing(attempts=3))
        fake_server.inject("queue", Fault.status(503))
        job = await patient.submit(MODEL, PROMPT, duration_seconds=5)
        assert (await session.wait_for(job)).data
    assert [r.status for r in fake_server.requests_to("queue")] == [503, 503, 200]


async def test_timeout_is_each_calls_whole_deadline(fake_server: FakeServer) -> None:
    """A view's timeout bounds generate and wait_for when they are given none; one given
    wins; the session itself still waits without a deadline."""
    fake_server.plan(JobScript(duration=100.0))
    async with make_session(fake_server) as session:
        quick = session.with_options(timeout=5.0)
        with pytest.raises(v.JobDeadlineExceeded) as ended:
            await quick.generate(MODEL, PROMPT, duration_seconds=5)
        job = ended.value.job
        with pytest.raises(v.JobDeadlineExceeded):
            await quick.wait_for(job)
        assert (await quick.wait_for(job, timeout=500.0)).data
    assert quick._timeout == 5.0
    assert session._timeout is None


async def test_options_are_checked_and_views_need_no_closing(fake_server: FakeServer) -> None:
    session = make_session(fake_server)
    with pytest.raises(ValueError, match="release_media"):
        session.with_options(release_media="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RetryPolicy"):
        session.with_options(retry=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        session.with_options(timeout=-1)
    view = session.with_options(timeout=5.0).with_options(release_media="keep")
    assert view._timeout == 5.0  # a view of a view keeps the first view's options
    assert view._view_release == "keep"
    await view.models()  # starts the one session
    del view  # no ResourceWarning for a view: the session is the one to close
    await session.aclose()


def test_untaken_audio_of_a_job_deleted_on_retrieve_is_never_dropped() -> None:
    """Over max_untaken_bytes, the oldest untaken audio is dropped (downloaded again when
    taken), except a job deleted on retrieve through a view: it could not be."""
    from venice_audio_async._polling.held_audio import HeldAudio

    held = HeldAudio(max_bytes=100, release="complete")
    assert held.hold("deleted", 60, "delete_on_retrieve") == []
    assert held.hold("kept", 30) == []
    assert held.hold("newest", 30) == ["kept"]  # not "deleted", though older
