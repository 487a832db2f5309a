"""The users' flows: results while a batch queues, deadlines over the whole call, jobs that
outlive a wait (come back later, forget), and watching a job's status."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import venice_audio_async as v
from venice_audio_async.journal import JobState
from venice_audio_async.testing import FakeServer, Fault, JobScript, ScaledClock

from ..conftest import API_KEY, TIME_SCALE, make_session

pytestmark = pytest.mark.anyio

#: A slower scale for tests that measure a few virtual seconds (scheduling noise is real ms).
SLOW_SCALE = 0.01


def _requests(count: int, model: str = "stable-audio-25") -> list[v.QueueRequest]:
    return [v.QueueRequest(model=model, prompt=f"a short piece number {i}") for i in range(count)]


@pytest.fixture
async def limited() -> AsyncIterator[FakeServer]:
    """A fake server with the documented 40 queue / 120 retrieve per minute, 5 s jobs."""
    async with FakeServer(
        time_scale=TIME_SCALE,
        api_keys=[API_KEY],
        rate_limits={"queue": 40, "retrieve": 120},
        job_script=JobScript(duration=5.0),
    ) as fake:
        yield fake


@pytest.fixture
async def slow() -> AsyncIterator[FakeServer]:
    """The same limits on a slower time scale, for tests that time a few seconds."""
    async with FakeServer(
        time_scale=SLOW_SCALE,
        api_keys=[API_KEY],
        rate_limits={"queue": 40, "retrieve": 120},
        job_script=JobScript(duration=60.0),
    ) as fake:
        yield fake


# --------------------------------------------------------------------------- generate_many


async def test_generate_many_hands_over_results_while_still_queueing(limited: FakeServer) -> None:
    """200 requests at 40/min: the first outcome comes long before the 100th queue."""
    queued_at_first: int | None = None
    outcomes: list[v.BatchOutcome] = []
    async with make_session(limited) as session, session.generate_many(_requests(200)) as results:
        async for outcome in results:
            if queued_at_first is None:
                queued_at_first = limited.count("queue")
            outcomes.append(outcome)
    assert queued_at_first is not None
    assert queued_at_first < 100
    assert len(outcomes) == 200
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    assert limited.count("queue") == 200
    assert all(r.status != 429 for r in limited.requests)


async def test_generate_many_early_exit_sends_no_further_queue(slow: FakeServer) -> None:
    """Leaving the block after the first outcome sends nothing more; queued jobs stay tracked."""
    limited = slow
    async with make_session(slow, clock=ScaledClock(SLOW_SCALE)) as session:
        budget = session._parts.budget
        async with session.generate_many(_requests(100)) as results:
            async for _ in results:
                break
        # Queue calls that had their token at the exit: the last may still be on the wire
        # (never cut short), so the server may count it only after the exit.
        had_token = budget.statistics().endpoints["queue"].granted
        await session._parts.clock.sleep(30.0)
        stats = session.statistics()
    assert had_token < 100
    # Nothing sent after the exit, not even by a submit whose token came in the same loop
    # pass (a wasted token then: test_retry's race test).
    assert limited.count("queue") <= had_token
    # Every job the server created is accounted for: running, or finished here.
    created = limited.count("queue")
    assert stats.jobs_in_flight + stats.jobs_succeeded + stats.jobs_failed == created


async def test_generate_many_validates_the_whole_batch_first(limited: FakeServer) -> None:
    """Every problem of every request is reported at once, and nothing is sent."""
    requests = _requests(3)
    requests[0] = v.QueueRequest(model="stable-audio-25", prompt=" ")
    requests[2] = v.QueueRequest(model="stable-audio-25", prompt="ok", speed=-1.0)
    async with make_session(limited) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            async with session.generate_many(requests):
                pass
    fields = {p.field.split(".")[0] for p in caught.value.problems}
    assert fields == {"[0]", "[2]"}
    assert limited.count("queue") == 0


async def test_generate_many_refusal_is_an_outcome_without_a_job(limited: FakeServer) -> None:
    """A request the API refuses at queue time (402) yields Refused, carrying the request."""
    limited.inject("queue", Fault.status(402))
    requests = _requests(3)
    seen: list[v.BatchOutcome] = []
    async with make_session(limited) as session, session.generate_many(requests) as results:
        seen = [o async for o in results]
    refused = [o for o in seen if isinstance(o, v.Refused)]
    assert len(seen) == 3
    assert len(refused) == 1
    match refused[0]:
        case v.Refused(request=request, error=v.PaymentRequiredError()):
            assert request in requests
        case _:
            pytest.fail(f"unexpected {refused[0]!r}")
    assert not hasattr(refused[0], "job")


async def test_generate_many_spend_limit_refuses_what_does_not_fit(limited: FakeServer) -> None:
    """Requests past max_spend_usd come out as Refused; only what fits is queued."""
    session = make_session(limited, max_spend_usd=0.5)  # 0.24 a piece
    async with session, session.generate_many(_requests(5)) as results:
        seen = [o async for o in results]
    refused = [o for o in seen if isinstance(o, v.Refused)]
    assert len(refused) == 3
    assert all(isinstance(o.error, v.SpendLimitExceeded) for o in refused)
    assert limited.count("queue") == 2


async def test_results_accepts_jobs_as_they_are_submitted(limited: FakeServer) -> None:
    """results() of a memory stream yields each job's outcome, while jobs keep coming."""
    send, receive = anyio.create_memory_object_stream[v.Job](10)
    got: list[v.Outcome] = []
    async with make_session(limited) as session:

        async def submit_over_time() -> None:
            async with send:
                for request in _requests(4):
                    await send.send(await session.submit_request(request))
                    await session._parts.clock.sleep(2.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_over_time)
            async with receive, session.results(receive) as results:
                got = [o async for o in results]
    assert len(got) == 4
    assert all(isinstance(o, v.Succeeded) for o in got)
    assert len({o.job.queue_id for o in got}) == 4


# --------------------------------------------------------------------------- deadlines


async def test_generate_timeout_covers_the_wait_for_a_queue_token(slow: FakeServer) -> None:
    """Behind 20 submits at 40/min, generate(timeout=5) gives up at once (its place in
    line says its token would come too late), unsent."""
    async with make_session(slow, clock=ScaledClock(SLOW_SCALE)) as session:
        clock = session._parts.clock
        backlog = _requests(20)
        async with anyio.create_task_group() as tg:
            for request in backlog:
                tg.start_soon(session.submit_request, request)
            while session.statistics().submits_waiting < 10:
                await anyio.lowlevel.checkpoint()
            stats = session.statistics()
            started = clock.monotonic()
            with pytest.raises(v.QueueDeadlineExceeded) as caught:
                await session.generate("stable-audio-25", "one more, quickly", timeout=5)
            took = clock.monotonic() - started
        assert stats.expected_queue_wait > 5
    assert took < 2.0  # virtual seconds (20 ms real at this scale); it used to wait ~5 s
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.request.prompt == "one more, quickly"
    assert slow.count("queue") == 20
    assert all(r.body.get("prompt") != "one more, quickly" for r in slow.requests_to("queue"))


async def test_submit_deadline_covers_the_token_wait_too(slow: FakeServer) -> None:
    """submit(deadline=) refuses before sending when no token comes in time."""
    session = make_session(slow, clock=ScaledClock(SLOW_SCALE))
    async with session, anyio.create_task_group() as tg:
        for request in _requests(12):
            tg.start_soon(session.submit_request, request)
        while session.statistics().submits_waiting < 5:
            await anyio.lowlevel.checkpoint()
        with pytest.raises(v.QueueDeadlineExceeded):
            await session.submit("stable-audio-25", "a late one, please", deadline=2)
    assert slow.count("queue") == 12


async def test_queue_in_flight_is_kept_and_handed_back_with_the_timeout(slow: FakeServer) -> None:
    """A queue answer arriving after the timeout is kept: the error carries the job."""
    slow.inject("queue", Fault.delay(8.0))
    async with make_session(slow, clock=ScaledClock(SLOW_SCALE)) as session:
        with pytest.raises(v.JobDeadlineExceeded) as caught:
            await session.generate("stable-audio-25", "slow to queue", timeout=3)
        job = caught.value.job
        assert job in session.unfinished()
    assert slow.count("queue") == 1


# --------------------------------------------------------------------------- come back later


async def test_wait_again_on_the_job_the_timeout_carries(limited: FakeServer) -> None:
    """generate times out, wait_for(error.job) later hands over the audio."""
    async with make_session(limited) as session:
        with pytest.raises(v.JobDeadlineExceeded) as caught:
            await session.generate("stable-audio-25", "patience, please", timeout=1)
        audio = await session.wait_for(caught.value.job, timeout=60)
    assert audio.size > 0


async def test_attach_again_in_the_same_session_keeps_the_finished_outcome(
    limited: FakeServer,
) -> None:
    """Coming back with attach(model, queue_id) after the job finished costs no request."""
    async with make_session(limited) as session:
        with pytest.raises(v.JobDeadlineExceeded) as caught:
            await session.generate("stable-audio-25", "back in a minute", timeout=1)
        job = caught.value.job
        await session._parts.clock.sleep(20.0)  # finished (and polled) while nobody waited
        assert session.status(job).phase == "succeeded"
        retrieves = limited.count("retrieve")
        audio = await session.wait_for(session.attach(job.model, job.queue_id), timeout=5)
        assert limited.count("retrieve") == retrieves
    assert audio.size > 0


async def test_attach_in_another_session_fetches_with_one_poll(limited: FakeServer) -> None:
    """A job left running is fetched by attach elsewhere with one retrieve once it is done."""
    async with make_session(limited) as first:
        with pytest.raises(v.JobDeadlineExceeded) as caught:
            await first.generate("stable-audio-25", "come back later", timeout=1)
        job = caught.value.job
        first.forget(job)
        await first._parts.clock.sleep(10.0)  # the job finishes meanwhile
    async with make_session(limited) as second:
        before = limited.count("retrieve")
        audio = await second.wait_for(second.attach(job.model, job.queue_id), timeout=30)
        assert limited.count("retrieve") - before == 1
    assert audio.size > 0


async def test_forget_stops_polling_and_listing(
    limited: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A forgotten job is no longer polled nor listed, and its id is logged."""
    limited.plan(JobScript(duration=100.0))
    async with make_session(limited) as session:
        job = await session.submit("stable-audio-25", "never mind")
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            session.forget(job)
        polls = limited.count("retrieve")
        await session._parts.clock.sleep(30.0)
        assert session.unfinished() == []
        assert session.statistics().jobs_in_flight == 0
        assert session.status(job).phase == "forgotten"
        assert limited.count("retrieve") == polls
    assert any(job.queue_id in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------- status


async def test_status_follows_a_job(limited: FakeServer) -> None:
    """status(): queued, then running with the server's estimate and time left, then done."""
    limited.plan(JobScript(duration=20.0, average_execution_time=24.0))
    async with make_session(limited) as session:
        job = await session.submit("stable-audio-25", "watch me, please")
        assert session.status(job).phase == "queued"
        clock = session._parts.clock
        while session.status(job).phase == "queued":
            await clock.sleep(0.5)
        running = session.status(job)
        assert running.phase == "running"
        assert running.average_execution_time == pytest.approx(24.0)
        assert running.execution_duration is not None
        assert running.estimated_seconds_left is not None
        assert 0 < running.estimated_seconds_left < 24.0
        await session.wait_for(job, timeout=60)
        assert session.status(job).phase == "succeeded"
        assert session.status(v.Job(model="stable-audio-25", queue_id="nope")).phase == "unknown"


async def test_status_of_a_request_waiting_for_its_token(slow: FakeServer) -> None:
    """status(request) says a submit waits here for a queue token, and how long."""
    requests = _requests(20)
    session = make_session(slow, clock=ScaledClock(SLOW_SCALE))
    async with session, anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(session.submit_request, request)
        while session.statistics().submits_waiting < 12:
            await anyio.lowlevel.checkpoint()
        waiting = [s for s in map(session.status, requests) if s.phase == "waiting_for_token"]
        tg.cancel_scope.cancel()
    assert len(waiting) >= 10
    assert all(status.job is None for status in waiting)
    assert all(status.request in requests for status in waiting)
    assert all(status.token_wait is not None for status in waiting)
    assert all(status.token_wait > 0 for status in waiting if status.token_wait is not None)


async def test_cancelled_while_queue_is_on_the_wire_keeps_the_job(
    slow: FakeServer, tmp_path: Path
) -> None:
    """A submit cancelled mid-queue still gets its job tracked and journaled as queued."""
    slow.inject("queue", Fault.delay(5.0))
    journal = tmp_path / "journal.sqlite3"
    async with make_session(slow, clock=ScaledClock(SLOW_SCALE), journal=journal) as session:
        with anyio.move_on_after(2.0 * SLOW_SCALE):  # cancelled while the answer is awaited
            await session.submit("stable-audio-25", "cancelled half way through")
        assert slow.count("queue") == 1
        assert len(session.unfinished()) == 1
        assert session.journal is not None
        entries = await session.journal.entries()
    assert [entry.state for entry in entries] == [JobState.QUEUED]
