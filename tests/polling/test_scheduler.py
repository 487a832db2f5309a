"""The scheduler alone, in virtual time: a stub client, a ManualClock, nothing really waits."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

import venice_audio_async as v
from venice_audio_async._client import VeniceClient
from venice_audio_async._core.config import RateLimit
from venice_audio_async._polling.estimator import DurationEstimator, PollingBounds
from venice_audio_async._polling.release import ReleaseMedia
from venice_audio_async._polling.scheduler import Scheduler
from venice_audio_async._rate.budget import LocalBudget, RunTime
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import Retrier
from venice_audio_async.testing import ManualClock
from venice_audio_async.types import (
    AudioSink,
    CompleteRequest,
    CompleteResult,
    MemorySink,
    Processing,
    RetrieveRequest,
    VeniceHeaders,
)

pytestmark = pytest.mark.anyio


class StubClient:
    """Answers retrieve from a table of finish times on the ManualClock."""

    def __init__(self, clock: ManualClock, hint: float) -> None:
        self.clock = clock
        self.hint = hint
        self.finish: dict[str, float] = {}
        self.queued_at: dict[str, float] = {}
        self.hints: dict[str, float] = {}
        self.retrieves: list[tuple[float, str]] = []
        self.completes: list[str] = []
        self.fail: dict[str, list[v.VeniceError]] = {}

    def add(
        self, queue_id: str, duration: float, *, model: str = "m", hint: float | None = None
    ) -> v.Job:
        """A job of ``model`` finishing ``duration`` from now; ``hint`` replaces the
        client-wide ``average_execution_time`` for it."""
        now = self.clock.monotonic()
        self.queued_at[queue_id] = now
        self.finish[queue_id] = now + duration
        self.hints[queue_id] = self.hint if hint is None else hint
        return v.Job(model=model, queue_id=queue_id)

    async def retrieve(self, request: RetrieveRequest, *, sink: Any) -> Any:
        now = self.clock.monotonic()
        self.retrieves.append((now, request.queue_id))
        errors = self.fail.get(request.queue_id)
        if errors:
            raise errors.pop(0)
        if now < self.finish[request.queue_id]:
            elapsed = now - self.queued_at[request.queue_id]
            hint = self.hints.get(request.queue_id, self.hint)
            return Processing(average_execution_time=hint, execution_duration=elapsed)
        duration = self.finish[request.queue_id] - self.queued_at[request.queue_id]
        return v.AudioResult(
            content_type="audio/mpeg",
            format="mp3",
            size=3,
            data=b"abc",
            venice=VeniceHeaders(inference_time=duration),
        )

    async def complete(self, request: CompleteRequest) -> CompleteResult:
        self.completes.append(request.queue_id)
        return CompleteResult(success=True)


def _retrier(budget: LocalBudget, clock: ManualClock, policy: v.RetryPolicy) -> Retrier:
    """The retrier a session hands its scheduler: the one it sends every other request with."""
    return Retrier(acquire=budget.acquire, policy=policy, clock=clock)


class Harness:
    """A running scheduler plus helpers to move virtual time."""

    def __init__(self, clock: ManualClock, client: StubClient, scheduler: Scheduler) -> None:
        self.clock = clock
        self.client = client
        self.scheduler = scheduler

    async def settle(self) -> None:
        # Everything here is in-memory: pass the loop until nothing is runnable (anyio's
        # wait_all_tasks_blocked polls with real 0.1 s sleeps, far too slow for races).
        loop = asyncio.get_running_loop()
        for _ in range(400):
            await anyio.lowlevel.checkpoint()
            if not loop._ready:  # type: ignore[attr-defined]
                await anyio.lowlevel.checkpoint()
                if not loop._ready:  # type: ignore[attr-defined]
                    return

    async def run_until(self, condition: Any, *, limit: float = 10_000.0) -> None:
        """Advance virtual time wake-up by wake-up until ``condition()`` holds."""
        await self.settle()
        while not condition():
            assert self.clock.advance_to_next(), "nothing scheduled, condition unmet"
            assert self.clock.monotonic() < limit
            await self.settle()


@pytest.fixture
def retrieve_rate() -> float:
    """Retrieves per minute the harness allows."""
    return 120.0


@pytest.fixture
async def harness(retrieve_rate: float) -> AsyncIterator[Harness]:
    """A scheduler over a stub client on a ManualClock, retrieve limited per minute."""
    clock = ManualClock()
    client = StubClient(clock, hint=60.0)
    # The window alone (a session spreads its polls too): these tests are about the policy.
    rate = RateLimit(per_minute=retrieve_rate, burst=int(retrieve_rate))
    budget = LocalBudget(clock=clock, rates={"retrieve": rate})
    scheduler = Scheduler(
        client=cast(VeniceClient, client),
        budget=budget,
        estimator=DurationEstimator(bounds=PollingBounds(max_interval=300.0)),
        clock=clock,
        retrier=_retrier(budget, clock, v.RetryPolicy(initial_backoff=2.0, jitter=0.0)),
        limiter=RequestLimiter(8),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        yield Harness(clock, client, scheduler)
        tg.cancel_scope.cancel()


def _scheduler_on(
    budget: LocalBudget,
    clock: ManualClock,
    client: StubClient,
    *,
    requests: int,
    release: ReleaseMedia = "complete",
) -> Scheduler:
    """A scheduler over ``client`` with ``budget``, default bounds and retry policy, and
    ``requests`` request slots."""
    return Scheduler(
        client=cast(VeniceClient, client),
        budget=budget,
        estimator=DurationEstimator(bounds=PollingBounds()),
        clock=clock,
        retrier=_retrier(budget, clock, v.RetryPolicy()),
        limiter=RequestLimiter(requests),
        release=release,
    )


def _memory_sink() -> AudioSink:
    return MemorySink(1000)


class HearingBudget(LocalBudget):
    """A budget shared with other processes (it trades demand, here with nobody) through
    which this process hears ``heard``, the run times of the others' finished jobs, once;
    keeps what this process told of its own."""

    def __init__(self, heard: Sequence[RunTime], **options: Any) -> None:
        super().__init__(**options)
        self.heard = list(heard)
        self.told: list[RunTime] = []

    def share_demand(self, endpoint: str, demand: Sequence[float]) -> tuple[float, ...] | None:
        return None

    def share_run_times(self, finished: Sequence[RunTime]) -> Sequence[RunTime]:
        self.told.extend(finished)
        heard, self.heard = self.heard, []
        return heard


@pytest.mark.parametrize("hears", [False, True])
async def test_a_process_sharing_a_budget_learns_from_the_others_jobs(hears: bool) -> None:
    """The other processes' jobs of the model ran 45 s though the server estimates 20 s:
    heard through the budget, they move this process's fit before its own job ends, so it
    spends no polls around 20 s (alone it learns nothing until its own job ends: several).
    Its own job's run time is told to them."""
    clock = ManualClock()
    client = StubClient(clock, hint=20.0)
    others = [RunTime("m", 45.0 + 0.5 * i, 20.0) for i in range(20)] if hears else []
    budget = HearingBudget(others, clock=clock, rates={"retrieve": RateLimit(per_minute=120)})
    scheduler = _scheduler_on(budget, clock, client, requests=8)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        harness = Harness(clock, client, scheduler)
        scheduler.track(client.add("own", 50.0), _memory_sink, elapsed=0.0)
        await harness.run_until(lambda: scheduler.counts().succeeded == 1)
        tg.cancel_scope.cancel()
    early = [t for t, _ in client.retrieves if 10.0 <= t <= 32.0]
    if hears:
        assert early == [], client.retrieves
    else:
        assert len(early) >= 3, client.retrieves
    assert budget.told == [RunTime("m", 50.0, 20.0)]


async def test_learned_timing_hands_results_over_sooner(harness: Harness) -> None:
    """Durations shorter than the hint are learned: later waves are polled less and seen
    finished sooner than the first, within about a second."""
    waves = []
    for wave in range(4):
        batch = [harness.client.add(f"w{wave}-{i}", 50.0 + i * 0.1) for i in range(10)]
        for job in batch:
            harness.scheduler.track(job, _memory_sink, elapsed=0.0)
        waves.append(batch)
        await harness.run_until(lambda n=wave: harness.scheduler.counts().succeeded == 10 * (n + 1))

    def measure(batches: list[list[v.Job]]) -> tuple[float, float, float]:
        ids = {job.queue_id for batch in batches for job in batch}
        polls = sum(1 for _, qid in harness.client.retrieves if qid in ids) / len(ids)
        delays = sorted(
            max(t for t, q in harness.client.retrieves if q == qid) - harness.client.finish[qid]
            for qid in ids
        )
        return polls, delays[len(delays) // 2], delays[-1]

    first = measure(waves[:1])
    polls, median, worst = measure(waves[1:])
    # The fitted spread is shrunk towards the prior's (0.35), so even identical durations
    # get a few polls around their expected end.
    assert polls < first[0]
    assert median < 0.75 * first[1]
    assert median <= 1.5
    assert worst <= 2.5


async def test_retrieves_never_exceed_the_budget(harness: Harness) -> None:
    """However many jobs are due at once, retrieves stay within 120 per minute."""
    for i in range(400):
        harness.scheduler.track(harness.client.add(f"job-{i}", 5.0), _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().succeeded == 400)
    times = sorted(t for t, _ in harness.client.retrieves)
    start = 0
    for end, t in enumerate(times):
        while times[start] < t - 60.0:
            start += 1
        assert end - start + 1 <= 120
    assert len(times) >= 400


async def test_failures_back_off_then_fail(harness: Harness) -> None:
    """The API's 503 is retried with backoff, then the job fails with the error."""
    job = harness.client.add("doomed", 0.0)
    error = v.ServiceUnavailableError("busy", status_code=503, body={"error": "busy"})
    harness.client.fail["doomed"] = [error] * 10
    harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().failed == 1)
    times = [t for t, _ in harness.client.retrieves]
    assert len(times) == 5  # RetryPolicy.attempts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps)  # exponential backoff grows
    assert math.isclose(gaps[0], 2.0, abs_tol=1e-6)
    outcome = harness.scheduler.jobs.outcome_of("doomed")
    assert isinstance(outcome, v.Failed)
    assert outcome.error is error


async def test_failed_polls_back_off_to_the_cap_then_end_unreachable(harness: Harness) -> None:
    """Polls failing in transit are no verdict: the job is polled past ``attempts``, the
    waits grow to max_backoff and stay there, and after ``unreachable_after`` without an
    answer it ends as JobUnreachable (carrying the last error) and is polled no more."""
    job = harness.client.add("cut", 0.0)
    dropped = v.ConnectionDropped("dropped", endpoint="retrieve")
    harness.client.fail["cut"] = [dropped] * 1000
    harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().failed == 1)
    policy = v.RetryPolicy()
    times = [t for t, _ in harness.client.retrieves]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:4] == pytest.approx([2.0, 4.0, 8.0, 16.0])  # initial_backoff 2, jitter 0
    assert all(gap == pytest.approx(policy.max_backoff) for gap in gaps[4:])
    assert times[-1] - times[0] >= policy.unreachable_after
    assert times[-2] - times[0] < policy.unreachable_after
    outcome = harness.scheduler.jobs.outcome_of("cut")
    assert isinstance(outcome, v.Unreachable)
    assert isinstance(outcome.error, v.JobUnreachable)
    assert outcome.error.last_error is dropped
    polls = len(harness.client.retrieves)
    harness.clock.advance(10_000.0)
    await harness.settle()
    assert len(harness.client.retrieves) == polls


async def test_an_answer_ends_a_run_of_failed_polls(harness: Harness) -> None:
    """A job whose polls fail for most of ``unreachable_after``, answer once, then fail
    again, is judged from the answer on: it is delivered, not given up on."""
    job = harness.client.add("flaky", 3000.0, hint=3000.0)
    dropped = v.RequestTimeout("slow", endpoint="retrieve")
    harness.client.fail["flaky"] = [dropped] * 25  # about 660 s of failed polls
    harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: len(harness.client.retrieves) == 26)  # one answer
    harness.client.fail["flaky"] = [dropped] * 25  # as long again: 1320 s in all
    await harness.run_until(lambda: harness.scheduler.counts().succeeded == 1)
    assert harness.scheduler.counts().failed == 0
    times = [t for t, _ in harness.client.retrieves]
    assert times[50] - times[0] > v.RetryPolicy().unreachable_after


async def test_api_5xx_ends_a_job_only_when_repeated_identically(harness: Harness) -> None:
    """The API's 500 / 503 is its verdict only once the same answer came ``attempts``
    times in a row; answers that keep changing end the job unreachable, resumable."""
    job = harness.client.add("mixed", 0.0)
    busy = v.ServiceUnavailableError("busy", status_code=503, body={"error": "busy"})
    failed = v.InferenceFailedError("failed", status_code=500, body={"error": "failed"})
    harness.client.fail["mixed"] = [busy, failed] * 500
    harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().failed == 1)
    outcome = harness.scheduler.jobs.outcome_of("mixed")
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.JobUnreachable)
    assert len(harness.client.retrieves) > v.RetryPolicy().attempts


async def test_a_refused_key_stops_polling_every_job(harness: Harness) -> None:
    """A 401 on one job's poll ends every waiting job with that error at once (a revoked
    key would fail every poll, filling the API's failed-request window): none is polled
    again."""
    jobs = [harness.client.add(f"long-{i}", 5000.0) for i in range(3)]
    refused = v.AuthenticationError(
        "Authentication failed", status_code=401, body={"error": "Authentication failed"}
    )
    for job in jobs:
        harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: len(harness.client.retrieves) >= 3)
    harness.client.fail["long-1"] = [refused]
    await harness.run_until(lambda: harness.scheduler.counts().failed == 3)
    polls = len(harness.client.retrieves)
    assert sum(1 for _, qid in harness.client.retrieves if qid == "long-1") >= 2
    for job in jobs:
        outcome = harness.scheduler.jobs.outcome_of(job.queue_id)
        assert isinstance(outcome, v.Failed)
        assert type(outcome.error) is v.AuthenticationError
        assert outcome.error.status_code == 401
    harness.clock.advance(10_000.0)
    await harness.settle()
    assert len(harness.client.retrieves) == polls
    assert harness.scheduler.counts().in_flight == 0


async def test_job_errors_do_not_retry(harness: Harness) -> None:
    """A content-policy failure ends the job at the first answer."""
    job = harness.client.add("refused", 0.0)
    harness.client.fail["refused"] = [
        v.ContentPolicyError("no", status_code=422, body={"error": "no"})
    ]
    harness.scheduler.track(job, _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().failed == 1)
    assert len(harness.client.retrieves) == 1


async def test_success_releases_media(harness: Harness) -> None:
    """Finished audio in memory is released with complete, once, when it is taken."""
    harness.scheduler.track(harness.client.add("ok", 3.0), _memory_sink, elapsed=0.0)
    await harness.run_until(lambda: harness.scheduler.counts().succeeded == 1)
    await harness.settle()
    assert harness.client.completes == []  # nobody took it: the server keeps the copy
    harness.scheduler.take("ok")
    await harness.run_until(lambda: harness.client.completes == ["ok"])
    assert harness.scheduler.counts().released == 1


async def test_deadline_ends_a_long_job(harness: Harness) -> None:
    """A job past its deadline fails with JobDeadlineExceeded and is polled no more."""
    harness.scheduler.track(harness.client.add("slow", 10_000.0), _memory_sink, deadline=100.0)
    await harness.run_until(lambda: harness.scheduler.counts().failed == 1)
    outcome = harness.scheduler.jobs.outcome_of("slow")
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.JobDeadlineExceeded)
    polls = len(harness.client.retrieves)
    harness.clock.advance(1000.0)
    await harness.settle()
    assert len(harness.client.retrieves) == polls


async def test_decision_cost_does_not_grow_with_jobs(harness: Harness) -> None:
    """The heap holds one live entry per waiting job; stale entries are dropped lazily."""
    for i in range(1000):
        harness.scheduler.track(harness.client.add(f"j{i}", 500.0), _memory_sink, elapsed=0.0)
    await harness.settle()
    assert len(harness.scheduler._heap) <= 1000 + 1


async def test_a_poll_waiting_for_a_slot_is_not_sent_during_a_pause() -> None:
    """A poll that got its token, then waited for a request slot while a 429 paused the
    session, waits for the pause to end instead of going out inside it."""
    clock = ManualClock()
    client = StubClient(clock, hint=60.0)
    budget = LocalBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120, burst=120)})
    # One request at a time: the second poll waits for it.
    scheduler = _scheduler_on(budget, clock, client, requests=1, release="keep")
    gate = anyio.Event()
    original = client.retrieve

    async def slow_first(request: RetrieveRequest, *, sink: Any) -> Any:
        if len(client.retrieves) == 0:
            await gate.wait()
        return await original(request, sink=sink)

    client.retrieve = slow_first  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        harness = Harness(clock, client, scheduler)
        for name in ("a", "b"):
            scheduler.track(client.add(name, 500.0), _memory_sink, elapsed=None)
        await harness.settle()
        budget.pause(10.0, reason="429 from retrieve")  # as a 429 answer would
        gate.set()
        await harness.settle()
        sent = [t for t, _ in client.retrieves]
        assert sent == [0.0]  # the first (already on the wire); the second held back
        await harness.run_until(lambda: len(client.retrieves) >= 2)
        assert client.retrieves[1][0] >= 10.0
        tg.cancel_scope.cancel()


async def test_the_testing_policy_gives_up_after_its_attempts_without_waiting() -> None:
    """RetryPolicy.testing() never waits, so its polls could never reach a time limit on a
    clock that only moves when told: a job whose polls fail ``attempts`` times in a row
    ends unreachable there and then."""
    clock = ManualClock()
    client = StubClient(clock, hint=60.0)
    budget = LocalBudget(clock=clock, rates={"retrieve": RateLimit(per_minute=120, burst=120)})
    scheduler = Scheduler(
        client=cast(VeniceClient, client),
        budget=budget,
        estimator=DurationEstimator(bounds=PollingBounds()),
        clock=clock,
        retrier=_retrier(budget, clock, v.RetryPolicy.testing(attempts=3)),
        limiter=RequestLimiter(4),
    )
    job = client.add("gone", 0.0)
    client.fail["gone"] = [v.ConnectionDropped("dropped", endpoint="retrieve")] * 100
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        harness = Harness(clock, client, scheduler)
        scheduler.track(job, _memory_sink, elapsed=None)
        await harness.settle()
        tg.cancel_scope.cancel()
    assert clock.monotonic() == 0.0
    assert len(client.retrieves) == 3
    outcome = scheduler.jobs.outcome_of("gone")
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.JobUnreachable)
