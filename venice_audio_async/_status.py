"""Watching a session: one job's last known state, how long a queue token will take, and
giving a job up.

:class:`JobStatus` is the frozen snapshot ``session.status()`` returns; :class:`JobWatch`
builds it (and does ``session.forget``) from what the scheduler, the submitter and the
budget know, sending nothing. :class:`StatusBook` remembers how recent jobs ended once
their outcome was handed over (the scheduler drops a delivered job), bounded so a
long-lived session does not grow.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import attrs

from ._budget import RequestBudget
from ._clock import Clock
from ._models import Job, Outcome, Processing, QueueRequest, Succeeded
from ._scheduler import Scheduler

__all__ = [
    "JobPhase",
    "JobStatus",
    "JobWatch",
    "StatusBook",
    "expected_token_wait",
    "running_status",
]

log = logging.getLogger("venice_audio_async")

#: Where a job stands; see :class:`JobStatus`.
JobPhase = Literal[
    "waiting_for_token", "queued", "running", "succeeded", "failed", "forgotten", "unknown"
]

#: How many ended jobs the book remembers (oldest forgotten first).
_REMEMBERED = 10_000


@attrs.frozen(kw_only=True)
class JobStatus:
    """A job's last known state, from ``session.status()``. Times are in seconds.

    ``phase`` is one of:

    * ``"waiting_for_token"``: the request waits here for a ``queue`` token (nothing sent
      yet; ``job`` is ``None``), expected to get it in ``token_wait`` seconds;
    * ``"queued"``: queued at Venice, not polled yet;
    * ``"running"``: the last ``retrieve`` said it is still running;
    * ``"succeeded"`` / ``"failed"``: it ended with that outcome;
    * ``"forgotten"``: ``session.forget`` stopped tracking it (it may still run, billed);
    * ``"unknown"``: this session does not know it (never submitted here, or ended long
      ago).

    While running, ``average_execution_time`` is the server's estimate of the whole run
    (its P80) and ``execution_duration`` the time it had run at the last poll,
    ``polled_seconds_ago`` seconds ago; ``estimated_seconds_left`` is the estimate less
    the time run since queueing, never below 0.

    .. versionadded:: 0.1.0
    """

    phase: JobPhase
    job: Job | None = None
    request: QueueRequest | None = None
    average_execution_time: float | None = None
    execution_duration: float | None = None
    polled_seconds_ago: float | None = None
    estimated_seconds_left: float | None = None
    token_wait: float | None = None


def running_status(job: Job, processing: Processing, polled_seconds_ago: float) -> JobStatus:
    """The status of a running job from its last ``retrieve`` answer."""
    average, ran = processing.average_execution_time, processing.execution_duration
    left = None
    if average is not None and ran is not None:
        left = max(0.0, average - ran - polled_seconds_ago)
    return JobStatus(
        phase="running",
        job=job,
        request=job.request,
        average_execution_time=average,
        execution_duration=ran,
        polled_seconds_ago=polled_seconds_ago,
        estimated_seconds_left=left,
    )


def expected_token_wait(budget: RequestBudget, endpoint: str, waiting: int, now: float) -> float:
    """Seconds the last of ``waiting`` callers is expected to wait for an ``endpoint`` token.

    The first gets one when the budget says; each further one a window's share later (the
    configured rate, as lowered by 429s or capped by a limit the API stated).
    """
    if waiting <= 0:
        return 0.0
    first = max(0.0, budget.next_available(endpoint) - now)
    window = budget.window(endpoint)
    if window is None or window.limit <= 0:
        return first
    return first + (waiting - 1) * window.window / window.limit


class StatusBook:
    """How recent jobs ended, and which were forgotten, by ``queue_id`` (bounded)."""

    def __init__(self, remembered: int = _REMEMBERED) -> None:
        self._ended: OrderedDict[str, JobPhase] = OrderedDict()
        self._remembered = remembered

    def note(self, queue_id: str, phase: JobPhase) -> None:
        self._ended[queue_id] = phase
        self._ended.move_to_end(queue_id)
        while len(self._ended) > self._remembered:
            self._ended.popitem(last=False)

    def phase(self, queue_id: str) -> JobPhase | None:
        return self._ended.get(queue_id)

    def recording(
        self, hook: Callable[[Outcome], Awaitable[None]]
    ) -> Callable[[Outcome], Awaitable[None]]:
        """``hook``, noting each outcome's kind first (the scheduler's outcome hook)."""

        async def record(outcome: Outcome) -> None:
            phase: JobPhase = "succeeded" if isinstance(outcome, Succeeded) else "failed"
            self.note(outcome.job.queue_id, phase)
            await hook(outcome)

        return record


class JobWatch:
    """Answers ``session.status()`` and does ``session.forget()``.

    ``submits_waiting`` holds the requests waiting here for a ``queue`` token (by
    ``id()``), ``token_waiters`` the callers waiting for a token per endpoint; both are
    live views owned by the submitter and the retrier.
    """

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        book: StatusBook,
        budget: RequestBudget,
        clock: Clock,
        submits_waiting: Mapping[int, QueueRequest],
        token_waiters: Mapping[str, int],
    ) -> None:
        self._scheduler = scheduler
        self._book = book
        self._budget = budget
        self._clock = clock
        self._submits_waiting = submits_waiting
        self._token_waiters = token_waiters

    def status(self, job: Job | QueueRequest) -> JobStatus:
        """The last known state of ``job``; see ``AsyncSession.status``."""
        now = self._clock.monotonic()
        if isinstance(job, QueueRequest):
            if id(job) in self._submits_waiting:
                waiting = self._token_waiters["queue"]
                wait = expected_token_wait(self._budget, "queue", waiting, now)
                return JobStatus(phase="waiting_for_token", request=job, token_wait=wait)
            return JobStatus(phase="unknown", request=job)
        known = self._scheduler.jobs.progress(job.queue_id)
        if known is None:
            phase = self._book.phase(job.queue_id) or "unknown"
            return JobStatus(phase=phase, job=job, request=job.request)
        outcome, running, polled_at = known
        if outcome is not None:
            ended: JobPhase = "succeeded" if isinstance(outcome, Succeeded) else "failed"
            return JobStatus(phase=ended, job=job, request=job.request)
        if running is None:
            return JobStatus(phase="queued", job=job, request=job.request)
        return running_status(job, running, now - polled_at)

    def forget(self, job: Job) -> None:
        """Stop tracking ``job``, noting and logging it; see ``AsyncSession.forget``.

        Raises:
            ValueError: a ``results()`` or ``wait_for()`` waits on the job right now.
        """
        if not self._scheduler.forget(job):
            return
        self._book.note(job.queue_id, "forgotten")
        log.info(
            "forgot job %s (%s): no longer polled; it may still run and is paid for, "
            "attach(%r, %r) fetches it",
            job.queue_id,
            job.model,
            job.model,
            job.queue_id,
            extra={"queue_id": job.queue_id, "model": job.model},
        )
