"""Watching a session: one job's last known state, how long a queue token will take, and
giving a job up.

:class:`JobStatus` is the frozen snapshot ``session.status()`` returns; :class:`JobWatch`
builds it (and does ``session.forget``) from what the scheduler, the submitter and the
budget know, sending nothing. :class:`EndedJobs` remembers how recent jobs ended once
their outcome was handed over (the scheduler drops a delivered job), bounded so a
long-lived session does not grow.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import attrs

from .._core.clock import Clock
from .._core.models import Job, Processing, QueueRequest
from .._core.outcomes import Outcome, Succeeded
from .._polling.estimator import DurationEstimator
from .._polling.scheduler import Scheduler
from .._rate.budget import RequestBudget

__all__ = [
    "PRIOR_RUN_SECONDS",
    "EndedJobs",
    "EstimateSource",
    "JobPhase",
    "JobStatus",
    "JobWatch",
    "expected_token_wait",
    "run_time_left",
    "running_status",
]

log = logging.getLogger("venice_audio_async")

#: Where a job stands; see :class:`JobStatus`.
JobPhase = Literal[
    "waiting_for_token", "queued", "running", "succeeded", "failed", "forgotten", "unknown"
]

#: Where ``JobStatus.estimated_seconds_left`` came from; see :class:`JobStatus`.
EstimateSource = Literal["job", "learned", "model_hint", "prior"]

#: How many ended jobs are remembered (oldest forgotten first).
_REMEMBERED = 10_000

#: The run time assumed for a job of a model nothing is known of yet: the API's "typical
#: job time is about a minute". A placeholder, marked ``estimate_source="prior"``.
PRIOR_RUN_SECONDS = 60.0
#: Below this survival probability the mean time left is taken from the hazard rate.
_TINY_SURVIVAL = 1e-9


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
    ``polled_seconds_ago`` seconds ago.

    ``estimated_seconds_left`` (never below 0) is there for every queued or running job,
    from the best source known, which ``estimate_source`` names:

    * ``"job"``: this job's own last ``retrieve`` answer: ``average_execution_time`` less
      the time run since queueing;
    * ``"learned"``: the run times of this model's jobs that finished in this session (once
      enough did for a fit): the mean time left of a job that has run this long;
    * ``"model_hint"``: the server's latest ``average_execution_time`` for this model
      (another job's answer), less the time since this one was queued;
    * ``"prior"``: nothing is known of the model yet: :data:`PRIOR_RUN_SECONDS` (60 s,
      the API's typical job) less the time since queueing. A placeholder, not a measure.

    (For a job attached or resumed here, "since queueing" counts from when this session
    took it up, until its first answer says how long it has run.)

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
    estimate_source: EstimateSource | None = None


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
        estimate_source="job" if left is not None else None,
    )


def run_time_left(
    estimator: DurationEstimator, model: str, age: float
) -> tuple[float, EstimateSource]:
    """Seconds a job of ``model`` that has run ``age`` seconds has probably left, without
    an answer of its own: learned run times, else the model's last server estimate, else
    the prior (see :class:`JobStatus`)."""
    stats = estimator.model_stats(model)
    belief = estimator.belief(model) if stats.median is not None else None
    if belief is not None:
        tail = belief.survival(age)
        if tail > _TINY_SURVIVAL:
            left = (belief.mean - belief.integrated_survival(age)) / tail
        else:  # far past every run seen: the hazard rate's mean wait
            left = 1.0 / belief.hazard(age)
        return max(0.0, left), "learned"
    if stats.hint is not None:
        return max(0.0, stats.hint - age), "model_hint"
    return max(0.0, PRIOR_RUN_SECONDS - age), "prior"


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


class EndedJobs:
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
        ended: EndedJobs,
        budget: RequestBudget,
        clock: Clock,
        submits_waiting: Mapping[int, QueueRequest],
        token_waiters: Mapping[str, int],
        estimator: DurationEstimator,
    ) -> None:
        self._estimator = estimator
        self._scheduler = scheduler
        self._ended = ended
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
            phase = self._ended.phase(job.queue_id) or "unknown"
            return JobStatus(phase=phase, job=job, request=job.request)
        outcome, running, polled_at = known
        if outcome is not None:
            ended: JobPhase = "succeeded" if isinstance(outcome, Succeeded) else "failed"
            return JobStatus(phase=ended, job=job, request=job.request)
        if running is None:
            status = JobStatus(phase="queued", job=job, request=job.request)
        else:
            status = running_status(job, running, now - polled_at)
        if status.estimated_seconds_left is not None:
            return status
        tracked = self._scheduler.jobs.get(job.queue_id)
        age = now - tracked.started if tracked is not None else 0.0
        left, source = run_time_left(self._estimator, job.model, age)
        return attrs.evolve(status, estimated_seconds_left=left, estimate_source=source)

    def forget(self, job: Job) -> None:
        """Stop tracking ``job``, noting and logging it; see ``AsyncSession.forget``.

        Raises:
            ValueError: a ``results()`` or ``wait_for()`` waits on the job right now.
        """
        if not self._scheduler.forget(job):
            return
        self._ended.note(job.queue_id, "forgotten")
        log.info(
            "forgot job %s (%s): no longer polled; it may still run and is paid for, "
            "attach(%r, %r) fetches it",
            job.queue_id,
            job.model,
            job.model,
            job.queue_id,
            extra={"queue_id": job.queue_id, "model": job.model},
        )
