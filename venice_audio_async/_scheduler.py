"""The polling scheduler: when to ask ``retrieve`` about which job, within the budget.

One scheduler per session multiplexes every in-flight ``queue_id`` over the session's one
connection pool. Its loop:

1. pops the job whose next poll is due from a heap (O(log n): no scan of all jobs per tick);
2. waits for a ``retrieve`` token from the shared :class:`~._budget.RequestBudget` (which
   also holds the whole session during ``Retry-After`` pauses and near the error budget);
3. hands the poll to one of a fixed set of worker tasks (as many as the session's request
   limiter allows) and goes on.

A poll either reschedules the job (still running: the next time comes from the
:class:`~._estimator.DurationEstimator`, fed with the server's ETA hints and the durations
already seen for that model), retries it later with backoff (5xx, timeouts, dropped or
truncated bodies), or ends it with an :data:`~._models.Outcome` that is pushed into the
memory object stream of every consumer waiting on that job. Consumers only read streams,
so breaking out of a loop or being cancelled cannot corrupt the scheduler.

Guarantee: a tracked ``queue_id`` is never dropped. It ends delivered, failed with its
error, or handed back through :meth:`Scheduler.unfinished` (a consumer went away, or the
session closed while it was still running).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._audio import AudioSink
from ._budget import RequestBudget
from ._client import VeniceClient
from ._clock import Clock
from ._config import RetryPolicy
from ._errors import (
    APIStatusError,
    JobDeadlineExceeded,
    RateLimitError,
    VeniceError,
)
from ._estimator import DurationEstimator
from ._limiter import RequestLimiter
from ._models import (
    AudioResult,
    CompleteRequest,
    Failed,
    Job,
    Outcome,
    Processing,
    RetrieveRequest,
    Succeeded,
)
from ._retry import call_idempotent, is_transient

__all__ = ["ReleaseMode", "Scheduler", "SinkFactory"]

log = logging.getLogger("venice_audio_async")

#: Builds a fresh sink for one download attempt of a job.
SinkFactory = Callable[[Job], AudioSink]
#: Awaited with each outcome before it is delivered (the journal records it there).
OutcomeHook = Callable[[Outcome], Awaitable[None]]
#: Awaited after a job's media was released on the server.
ReleaseHook = Callable[[Job], Awaitable[None]]
ReleaseMode = str  # "complete" | "delete_on_retrieve" | "keep"

_PRESSURE_HORIZON = 5.0  # seconds of token wait that count as full budget pressure
_REPLAN_CHUNK = 256  # jobs re-planned per event-loop pass when a model's timing is learned
_STALE_BATCH = 1024  # stale heap entries dropped per event-loop pass
_MAX_WORKERS = 256  # polls in flight at once, at most (also capped by the request limiter)


@attrs.define(eq=False)
class _Tracked:
    job: Job
    sink_factory: SinkFactory
    tracked_at: float
    deadline: float | None
    due: float = 0.0
    blind: bool = True  # scheduled without any duration information for its model
    hint: float | None = None  # the server's latest average_execution_time for this job
    failures: int = 0
    in_flight: bool = False
    outcome: Outcome | None = None
    subscribers: list[MemoryObjectSendStream[Outcome]] = attrs.field(factory=list)
    abandoned: bool = False
    entry: int = -1  # heap entry sequence that is current; older entries are stale


@attrs.frozen
class SchedulerCounts:
    """Counters the session folds into its statistics."""

    in_flight: int
    succeeded: int
    failed: int
    abandoned: int
    polls: int
    released: int


class Scheduler:
    """Owns the heap of jobs to poll and the tasks that poll them. Internal."""

    def __init__(
        self,
        *,
        client: VeniceClient,
        budget: RequestBudget,
        estimator: DurationEstimator,
        clock: Clock,
        retry: RetryPolicy,
        limiter: RequestLimiter,
        release_limiter: RequestLimiter | None = None,
        release: ReleaseMode = "complete",
        rng: random.Random | None = None,
        on_outcome: OutcomeHook | None = None,
        on_released: ReleaseHook | None = None,
    ) -> None:
        self._workers = max(1, min(limiter.total, _MAX_WORKERS))
        self._on_outcome = on_outcome
        self._on_released = on_released
        self._client = client
        self._budget = budget
        self._estimator = estimator
        self._clock = clock
        self._retry = retry
        self._limiter = limiter
        self._release_limiter = release_limiter or limiter  # complete must not queue behind polls
        self._release = release
        self._rng = rng or random.Random()
        self._jobs: dict[str, _Tracked] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._lateness = 0.0
        self._counts: Counter[str] = Counter()
        # In-flight jobs per model, and the (mu, sigma) their schedule was computed from:
        # when a model's timing is learned, its waiting jobs are re-planned at once instead
        # of each sleeping through a schedule made from the wide prior.
        self._by_model: dict[str, set[str]] = {}
        self._releasing = 0
        self._released_all = anyio.Event()
        self._plan_basis: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------ tracking

    def track(
        self,
        job: Job,
        sink_factory: SinkFactory,
        *,
        deadline: float | None = None,
        elapsed: float | None = None,
    ) -> None:
        """Start polling ``job``. ``deadline`` is seconds from now; ``elapsed`` what is known
        of its run time so far (``None`` for a job queued elsewhere at an unknown time)."""
        if job.queue_id in self._jobs and self._jobs[job.queue_id].outcome is None:
            return
        now = self._clock.monotonic()
        tracked = _Tracked(
            job=job,
            sink_factory=sink_factory,
            tracked_at=now - (elapsed or 0.0),
            deadline=None if deadline is None else now + deadline,
        )
        self._jobs[job.queue_id] = tracked
        self._counts["tracked"] += 1
        self._by_model.setdefault(job.model, set()).add(job.queue_id)
        self._schedule(tracked, self._first_delay(tracked, now))

    def _first_delay(self, tracked: _Tracked, now: float) -> float:
        elapsed = now - tracked.tracked_at
        tracked.blind = not self._estimator.knows(tracked.job.model)
        self._note_basis(tracked.job.model, tracked.hint)
        return self._estimator.next_poll_delay(
            tracked.job.model, elapsed, pressure=self.pressure, hint=tracked.hint
        )

    def _schedule(self, tracked: _Tracked, delay: float) -> None:
        tracked.due = self._clock.monotonic() + max(0.0, delay)
        if tracked.deadline is not None:
            tracked.due = min(tracked.due, tracked.deadline)
        tracked.entry = next(self._seq)
        heapq.heappush(self._heap, (tracked.due, tracked.entry, tracked.job.queue_id))
        if self._heap[0][1] == tracked.entry:
            self._wake.set()  # the loop may be sleeping towards a later job

    @property
    def pressure(self) -> float:
        """0 when retrieve tokens are spare, 1 when due jobs wait long for them."""
        return min(1.0, self._lateness / _PRESSURE_HORIZON)

    def outcome_of(self, queue_id: str) -> Outcome | None:
        tracked = self._jobs.get(queue_id)
        return tracked.outcome if tracked else None

    def is_tracked(self, queue_id: str) -> bool:
        return queue_id in self._jobs

    def subscribe(self, job: Job, stream: MemoryObjectSendStream[Outcome]) -> bool:
        """Deliver ``job``'s outcome into ``stream``. Returns False if the job is unknown.

        A job already finished is delivered at once; a job abandoned earlier is tracked
        again (a new consumer wants it).
        """
        tracked = self._jobs.get(job.queue_id)
        if tracked is None:
            return False
        if tracked.outcome is not None:
            stream.send_nowait(tracked.outcome)
            del self._jobs[job.queue_id]  # delivered: the consumer holds it now
            return True
        tracked.subscribers.append(stream)
        if tracked.abandoned:
            tracked.abandoned = False
            self._counts["abandoned"] -= 1
            self._schedule(tracked, 0.0)
        return True

    def unsubscribe(self, job: Job, stream: MemoryObjectSendStream[Outcome]) -> None:
        """Stop delivering to ``stream``; the last consumer leaving stops the polling."""
        tracked = self._jobs.get(job.queue_id)
        if tracked is None or stream not in tracked.subscribers:
            return
        tracked.subscribers.remove(stream)
        if not tracked.subscribers and tracked.outcome is None and not tracked.abandoned:
            tracked.abandoned = True
            tracked.entry = -1  # its heap entry goes stale
            self._counts["abandoned"] += 1

    def unfinished(self) -> list[Job]:
        """Jobs queued (paid for) whose outcome was never reached: keep their ids."""
        return [t.job for t in self._jobs.values() if t.outcome is None]

    def counts(self) -> SchedulerCounts:
        counts = self._counts
        # Kept as counters, not counted over every job: progress displays call this often.
        in_flight = counts["tracked"] - counts["succeeded"] - counts["failed"] - counts["abandoned"]
        return SchedulerCounts(
            in_flight=in_flight,
            succeeded=self._counts["succeeded"],
            failed=self._counts["failed"],
            abandoned=self._counts["abandoned"],
            polls=self._counts["polls"],
            released=self._counts["released"],
        )

    # ------------------------------------------------------------------ the loop

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Poll due jobs until cancelled. Started by the session with ``tg.start``."""
        # Polls run on long-lived workers fed through a memory stream: cheaper than a new
        # task per poll (benchmarks/overhead.py), and bounded like the request limiter.
        send, receive = anyio.create_memory_object_stream[_Tracked](max_buffer_size=math.inf)
        async with anyio.create_task_group() as tg, send, receive:
            self._tg = tg
            for _ in range(self._workers):
                tg.start_soon(self._work, receive.clone())
            task_status.started()
            while True:
                tracked = await self._next_due()
                await self._budget.acquire("retrieve")
                now = self._clock.monotonic()
                # Lateness (how long a due job waited for its token) measures pressure.
                late = max(0.0, now - tracked.due)
                self._lateness = 0.8 * self._lateness + 0.2 * late
                if tracked.outcome is not None or tracked.abandoned:
                    continue
                tracked.in_flight = True
                send.send_nowait(tracked)

    async def _work(self, receive: MemoryObjectReceiveStream[_Tracked]) -> None:
        async with receive:
            async for tracked in receive:
                await self._poll(tracked)

    async def _next_due(self) -> _Tracked:
        stale = 0
        while True:
            if not self._heap:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            due, entry, queue_id = self._heap[0]
            tracked = self._jobs.get(queue_id)
            if tracked is None or tracked.entry != entry or tracked.outcome is not None:
                heapq.heappop(self._heap)  # stale entry (re-planned, finished or abandoned)
                stale += 1
                if stale % _STALE_BATCH == 0:
                    await anyio.lowlevel.checkpoint()  # a mass re-plan must not stall the loop
                continue
            now = self._clock.monotonic()
            if due > now:
                await self._sleep_or_wake(due - now)
                continue
            heapq.heappop(self._heap)
            tracked.entry = -1
            if tracked.deadline is not None and now >= tracked.deadline:
                await self._finish(
                    tracked,
                    Failed(tracked.job, JobDeadlineExceeded(tracked.job, now - tracked.tracked_at)),
                )
                continue
            if tracked.blind and self._estimator.knows(tracked.job.model):
                # Scheduled blind; another job of the model has since taught us its timing.
                self._schedule(tracked, self._first_delay(tracked, now))
                continue
            return tracked

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake = anyio.Event()
        await self._clock.wait(self._wake, seconds)

    # ------------------------------------------------------------------ one poll

    async def _poll(self, tracked: _Tracked) -> None:
        job = tracked.job
        delete = True if self._release == "delete_on_retrieve" else None
        request = RetrieveRequest(
            model=job.model, queue_id=job.queue_id, delete_media_on_completion=delete
        )
        self._counts["polls"] += 1
        try:
            async with self._limiter:
                answer = await self._client.retrieve(request, sink=tracked.sink_factory(job))
        except RateLimitError:
            # The budget already paused the whole session; this is not the job's fault.
            tracked.in_flight = False
            self._reschedule_soon(tracked)
            return
        except VeniceError as error:
            tracked.in_flight = False
            await self._on_error(tracked, error)
            return
        finally:
            tracked.in_flight = False
        now = self._clock.monotonic()
        if isinstance(answer, Processing):
            self._on_running(tracked, answer, now)
        else:
            await self._on_audio(tracked, answer, now)

    def _reschedule_soon(self, tracked: _Tracked) -> None:
        if tracked.outcome is None and not tracked.abandoned:
            self._schedule(tracked, 0.0)

    def _on_running(self, tracked: _Tracked, status: Processing, now: float) -> None:
        tracked.failures = 0
        model = tracked.job.model
        if status.average_execution_time is not None:
            self._estimator.observe_hint(model, status.average_execution_time)
            tracked.hint = status.average_execution_time
        if status.execution_duration is not None:
            tracked.tracked_at = now - status.execution_duration
        tracked.blind = False
        self._note_basis(model, tracked.hint)
        if tracked.abandoned:
            return
        delay = self._estimator.next_poll_delay(
            model,
            now - tracked.tracked_at,
            pressure=self.pressure,
            hint=tracked.hint,
        )
        self._schedule(tracked, delay)

    async def _on_audio(self, tracked: _Tracked, audio: AudioResult, now: float) -> None:
        duration = audio.venice.inference_time
        if duration is None:
            duration = now - tracked.tracked_at
        self._estimator.observe_duration(tracked.job.model, duration, hint=tracked.hint)
        released = self._release == "delete_on_retrieve"
        await self._finish(tracked, Succeeded(tracked.job, audio, released=released))
        self._replan_if_learned(tracked.job.model, tracked.hint)
        if self._release == "complete":
            # In its own task: a worker must not sit through complete's retries.
            self._releasing += 1
            assert self._tg is not None
            self._tg.start_soon(self._release_media, tracked.job)

    def _note_basis(self, model: str, hint: float | None) -> None:
        """Remember what a model's first schedules were computed from."""
        if model not in self._plan_basis:
            basis = self._estimator.distribution(model, hint=hint)
            if basis is not None:
                self._plan_basis[model] = basis

    def _replan_if_learned(self, model: str, hint: float | None) -> None:
        basis = self._estimator.distribution(model, hint=hint)
        if basis is None:
            return
        old = self._plan_basis.get(model)
        self._plan_basis[model] = basis
        if (
            old is not None
            and abs(basis[0] - old[0]) < 0.02
            and abs(basis[1] - old[1]) < 0.2 * old[1]
        ):
            return  # no news: the waiting jobs' schedule stands
        waiting = list(self._by_model.get(model, ()))
        if len(waiting) <= _REPLAN_CHUNK:
            self._replan(model, waiting)
        elif self._tg is not None:
            # Many waiting jobs: re-plan in chunks so polls are not held up behind it.
            self._tg.start_soon(self._replan_in_chunks, model, waiting)

    async def _replan_in_chunks(self, model: str, waiting: list[str]) -> None:
        for start in range(0, len(waiting), _REPLAN_CHUNK):
            self._replan(model, waiting[start : start + _REPLAN_CHUNK])
            await anyio.lowlevel.checkpoint()

    def _replan(self, model: str, queue_ids: list[str]) -> None:
        now = self._clock.monotonic()
        for queue_id in queue_ids:
            tracked = self._jobs.get(queue_id)
            if tracked is None or tracked.entry < 0 or tracked.in_flight:
                continue  # delivered, being polled right now, or done
            if tracked.outcome is not None or tracked.abandoned:
                continue
            delay = self._estimator.next_poll_delay(
                model, now - tracked.tracked_at, pressure=self.pressure, hint=tracked.hint
            )
            if abs((now + delay) - tracked.due) > self._estimator.bounds.min_interval:
                self._schedule(tracked, delay)

    async def wait_releases(self) -> None:
        """Wait until no ``complete`` call is in flight (the session's close drains them)."""
        while self._releasing:
            await self._released_all.wait()

    async def _release_media(self, job: Job) -> None:
        # Only after the bytes are stored (the sink committed); failures are logged, never
        # raised: the audio is safe, the server will expire the media on its own.
        # (The caller counted it in _releasing before starting this task.)
        try:
            await self._send_complete(job)
        finally:
            self._releasing -= 1
            if not self._releasing:
                self._released_all.set()
                self._released_all = anyio.Event()

    async def _send_complete(self, job: Job) -> None:
        request = CompleteRequest(model=job.model, queue_id=job.queue_id)
        try:
            result = await call_idempotent(
                "complete",
                lambda: self._client.complete(request),
                budget=self._budget,
                limiter=self._release_limiter,
                policy=self._retry,
                clock=self._clock,
                rng=self._rng,
            )
        except VeniceError as error:
            log.warning("could not release media of job %s: %s", job.queue_id, error)
            return
        if result.success:
            self._counts["released"] += 1
            if self._on_released is not None:
                with anyio.CancelScope(shield=True):
                    await self._on_released(job)

    async def _on_error(self, tracked: _Tracked, error: VeniceError) -> None:
        if self._retryable(error):
            tracked.failures += 1
            if tracked.failures < self._retry.attempts and not tracked.abandoned:
                delay = self._retry.backoff(tracked.failures, self._rng.random())
                self._schedule(tracked, delay)
                return
        await self._finish(tracked, Failed(tracked.job, error))

    @staticmethod
    def _retryable(error: VeniceError) -> bool:
        # retrieve is safe to repeat (the media stays until released): a single 5xx or a
        # dropped body is not a failure, a persistent one is. 408/425 also invite a retry.
        if is_transient(error):
            return True
        return isinstance(error, APIStatusError) and error.status_code in (408, 425)

    async def _finish(self, tracked: _Tracked, outcome: Outcome) -> None:
        if tracked.outcome is not None:
            return
        if isinstance(outcome, Failed):
            _drop_tracebacks(outcome.error)
        tracked.outcome = outcome
        tracked.entry = -1
        if self._on_outcome is not None:
            # Recorded (journal) before anyone is told, so a crash right after delivery
            # cannot forget that the audio is stored.
            with anyio.CancelScope(shield=True):
                await self._on_outcome(outcome)
        self._by_model.get(tracked.job.model, set()).discard(tracked.job.queue_id)
        self._counts["succeeded" if isinstance(outcome, Succeeded) else "failed"] += 1
        if tracked.abandoned:
            tracked.abandoned = False
            self._counts["abandoned"] -= 1
        delivered = False
        for stream in tracked.subscribers:
            try:
                stream.send_nowait(outcome)
                delivered = True
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.debug("consumer of job %s went away", tracked.job.queue_id)
        tracked.subscribers.clear()
        if delivered:
            # An outcome is handed over once; keeping it (and its audio) would grow a
            # long-lived session without bound. Undelivered ones wait for a consumer.
            self._jobs.pop(tracked.job.queue_id, None)

    def snapshot(self) -> dict[str, Any]:
        """Internal numbers for debugging and benchmarks."""
        return {"heap": len(self._heap), "jobs": len(self._jobs), "pressure": self.pressure}


def _drop_tracebacks(error: BaseException) -> None:
    """Detach the scheduler's frames from an error handed over as data.

    A ``Failed`` outcome may be kept for long; its traceback's frames would keep the
    scheduler, the transport and through them the whole (closed) session alive. The error
    chain and messages stay; ``wait_for`` re-raising it starts a fresh traceback.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
