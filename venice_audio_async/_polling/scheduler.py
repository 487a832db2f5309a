"""The polling scheduler: which job to ask ``retrieve`` about, and when, within the budget.

It owns every tracked job (:class:`JobTable`), the heap of due times, the loop that takes
the head when it is due and a ``retrieve`` token is free, the poll workers, and what each
answer does to its job (reschedule, back off, finish). :class:`PendingRekeys` re-keys jobs
after a price or fit move; :class:`WindowPacer` paces polls against the retrieve window.
How it decides and what it guarantees: docs/polling.md, "How the scheduler works".
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._client import VeniceClient
from .._core.audio import SinkFactory
from .._core.clock import Clock
from .._core.config import RetryPolicy
from .._core.errors import (
    APIStatusError,
    JobDeadlineExceeded,
    JobUnreachable,
    VeniceError,
    drop_tracebacks,
)
from .._core.logging import attempt_context
from .._core.models import AudioResult, Job, Processing
from .._core.outcomes import Failed, Outcome, Succeeded, Unreachable
from .._rate.budget import (
    RateWindow,
    RequestBudget,
    RunTime,
    session_paused,
    share_run_times,
    try_acquire_now,
)
from .._rate.limiter import RequestLimiter
from .._rate.retry import PollVerdict, Retrier, judge_poll
from .estimator import DurationEstimator
from .held_audio import HeldAudio
from .model_fits import LARGE_DROP, ModelFits, RekeyScope
from .policy import PollPolicy
from .release import MediaReleaser, ReleaseHook, ReleaseMedia
from .tracked import EPSILON, DueHeap, TrackedJob

__all__ = ["JobTable", "PendingRekeys", "Scheduler", "WindowPacer"]

log = logging.getLogger("venice_audio_async")

#: Awaited with each outcome before it is delivered (the journal records it there).
OutcomeHook = Callable[[Outcome], Awaitable[None]]

_HORIZON = 30.0  # seconds: how far ahead jobs are keyed, and re-keyed by a sweep
_STALE_BATCH = 1024  # stale heap entries dropped per event-loop pass
_MAX_WORKERS = 256  # polls in flight at once, at most (also capped by the request limiter)


# --------------------------------------------------------------------------- sweep
# Re-keying the jobs whose next poll may have come earlier: the scheduler's sweep.
#
# When the price falls or a model's fit moves, due times may come earlier; keys may err early
# but never late (see :mod:`._polling.scheduler`), so those jobs must be re-keyed. The jobs keyed
# within the scheduler's horizon are found by walking the heap from its root and pruning at
# the horizon (a heap's children are never due before their parent), so the work grows with
# the jobs due soon, not with all jobs; jobs keyed further out are looked at only when their
# model's fit moved a lot (:class:`~._polling.model_fits.RekeyScope`). Those near go first,
# and a large re-key is spread over loop passes (:data:`SLICE` jobs each) so that it never
# stalls other tasks.

SLICE = 1024  # jobs a sweep re-keys per event-loop pass


class PendingRekeys:
    """The jobs still to re-key, and the rule for re-keying them. Internal; one per
    scheduler, which hands it how to price a job (``due``) and key it (``schedule``)."""

    def __init__(
        self,
        heap: DueHeap,
        by_model: Mapping[str, Mapping[str, TrackedJob]],
        clock: Clock,
        horizon: float,
        due: Callable[[TrackedJob, float], float],
        schedule: Callable[[TrackedJob, float], object],
    ) -> None:
        self._heap = heap
        self._by_model = by_model
        self._clock = clock
        self._horizon = horizon
        self._due = due  # when a job is next worth a poll
        self._schedule = schedule  # key a job at a due time
        self._started = False  # the price fell or a fit moved: re-key jobs due soon
        self._models: set[str] = set()  # fits that moved a lot: re-key all their jobs
        self._rekey: deque[TrackedJob] = deque()  # jobs still to look at

    @property
    def pending(self) -> bool:
        """Whether jobs may wait to be re-keyed (the loop sweeps before it sleeps)."""
        return self._started or bool(self._rekey)

    def start(self, reach: RekeyScope, model: str) -> bool:
        """A change reaching ``reach`` (of ``model``'s jobs); returns whether a sweep is due."""
        if reach is RekeyScope.NONE:
            return False
        if reach is RekeyScope.ALL:
            self._models.add(model)
        self._started = True
        return True

    def run(self) -> bool:
        """Re-key up to :data:`SLICE` jobs; returns whether some are left to look at."""
        if self._started:
            self._started = False
            horizon = self._clock.monotonic() + self._horizon
            self._rekey.extendleft(self._heap.keyed_before(horizon))
            for model in self._models:
                self._rekey.extend(self._by_model.get(model, {}).values())
            self._models.clear()
        now = self._clock.monotonic()
        rekey = self._rekey
        for _ in range(min(len(rekey), SLICE)):
            tracked = rekey.popleft()
            if tracked.prompt or tracked.failures or tracked.in_flight or not tracked.waiting:
                continue  # going out at once anyway, backing off after an error, or polled
            due = self._due(tracked, now)
            if due < tracked.keyed_due - EPSILON:
                self._schedule(tracked, due)
        return bool(rekey)


# --------------------------------------------------------------------------- pacer
# Pacing the poller against the retrieve window: when a token may be taken, when to re-price.
#
# The :class:`~._polling.policy.PollPolicy` says what a poll must be worth (the price); this module
# decides when that price is recomputed from the window (every :data:`REPRICE_SECONDS` while
# jobs wait, or after :data:`REPRICE_GRANTS` grants, whichever comes first) and keeps the
# poller inside its share of the retrieve limit (``PollingBounds.retrieve_share``), reading
# only the budget's synchronous views: it never takes a token itself.

REPRICE_SECONDS = 0.5  # the window is re-priced at least this often while jobs wait ...
REPRICE_GRANTS = 4  # ... and after this many grants
#: A price below this share of the one jobs were keyed at makes them due sooner: re-key.
PRICE_DROP = 0.9
#: Sharing a budget, demand is traded at least this often while jobs run (and before every
#: poll is priced): well inside RedisBudget's DEMAND_STALE. At the floor price too: a process
#: whose jobs are not due yet still wants polls soon, and the others must price them.
SHARE_SECONDS = 1.0


def _spread(window: RateWindow) -> float:
    """When the next poll may go so that what is left of ``window`` lasts: spread evenly
    from the last grant until the window frees (its oldest grant leaves), and until the
    reset the API stated for what it says is left. With others on the same window, each
    process that spreads so leaves them room, and none runs the window dry early (a 429,
    or a job that finishes late, then waits for the rest of the window)."""
    last = window.grants[-1]
    free = max(0, window.limit - len(window.grants))
    ready = last + max(0.0, window.grants[0] + window.window - last) / (free + 1)
    left, until = window.allowance, window.allowance_until
    if left is not None and until is not None:
        ready = max(ready, last + max(0.0, until - last) / (left + 1))
    return ready


class WindowPacer:
    """Re-prices the policy from the budget's retrieve window. Internal; one per scheduler."""

    def __init__(self, policy: PollPolicy, budget: RequestBudget) -> None:
        self._policy = policy
        self._budget = budget
        self._repriced_at = -math.inf
        self._grants = 0
        self._keyed_price = policy.price
        self._crowded = False  # other clients on the key, as of the last re-pricing
        self._shared_at = -math.inf  # demand last traded without a poll due
        # A budget that can hand a free token over synchronously (an in-process one) saves
        # the poller acquire's cancellation checkpoint; others answer False and it waits.
        # A budget shared between processes (RedisBudget) trades this process's demand for
        # the others', so all price their polls at one figure; the protocol's default shares
        # with nobody, and then the price is not asked to exchange anything.
        shares = getattr(type(budget), "share_demand", None) not in (
            None,
            RequestBudget.share_demand,
        )
        self._share: Callable[[tuple[float, ...]], Sequence[float] | None] | None = (
            self._trade if shares else None
        )
        self._others_want = False  # the processes sharing the budget want polls too
        # ... and, when it can, trades it without a grant too (RedisBudget.exchange_demand):
        # a process whose polls wait takes no token, and would drop out of the trade.
        exchange = getattr(budget, "exchange_demand", None) if shares else None
        self._exchange: Callable[[str], Awaitable[None]] | None = exchange
        self.grants_now = getattr(type(budget), "try_acquire_now", None) not in (
            None,
            RequestBudget.try_acquire_now,  # the protocol's default never grants
        )

    @property
    def shares(self) -> bool:
        """Whether the budget is shared with other processes (poll demand is traded)."""
        return self._share is not None

    async def share(
        self,
        clock: Clock,
        live: Sequence[TrackedJob],
        refresh: Callable[[TrackedJob], object],
        *,
        due: bool,
    ) -> bool:
        """With a budget shared between processes, before the loop decides: trade poll
        demand with the others (``due``: a job is due, so a poll is about to be priced; else
        at least every :data:`SHARE_SECONDS` while jobs run) and re-price if it
        is time. Returns :meth:`maybe_reprice`'s answer (always False for a budget of one).

        The shared price is made of every process's demand and grants. Traded only with
        this process's own grants, it goes stale exactly while its polls wait (priced out):
        the others stop counting its demand, and it prices its next poll on what it heard
        last, alone and on a window without the others' latest grants: far too low."""
        if self._share is None:
            return False
        now = clock.monotonic()
        if not due and not (live and now - self._shared_at >= SHARE_SECONDS):
            return False
        self._shared_at = now
        if self._exchange is not None:
            await self._exchange("retrieve")
        return self.maybe_reprice(clock.monotonic(), live, refresh)

    def _trade(self, demand: tuple[float, ...]) -> Sequence[float] | None:
        """This process's demand for the others' (see ``RequestBudget.share_demand``)."""
        others = self._budget.share_demand("retrieve", demand)
        self._others_want = others is not None and any(value > 0 for value in others)
        return others

    def take_token_now(self) -> bool:
        """Take a retrieve token if the budget has one free now (no waiting, no I/O)."""
        if not self.grants_now:
            return False
        if not try_acquire_now(self._budget, "retrieve"):
            return False
        self._grants += 1
        return True

    async def take_token(self) -> None:
        """Take a retrieve token for the poller (waiting, FIFO, if none is free)."""
        if not self.take_token_now():
            await self._budget.acquire("retrieve")
            self._grants += 1

    def token_ready(self) -> float:
        """When the poller may take a retrieve token (its share of the window included).

        While other clients use the key too (the last re-pricing saw them in the API's
        stated count), what the API says is left until its reset is spread evenly over the
        time to it: each of several processes that do so leaves the others room, and none
        runs the key's window dry (a 429 there costs the rest of the window)."""
        ready = self._budget.next_available("retrieve")
        share = self._policy.bounds.retrieve_share
        if share < 1 or self._crowded:
            window = self._budget.window("retrieve")
            if window is not None and window.grants:
                inside = len(window.grants)
                allowed = max(1, math.floor(share * window.limit))
                if inside >= allowed:
                    ready = max(ready, window.grants[inside - allowed] + window.window)
                if self._crowded:
                    ready = max(ready, _spread(window))
        return ready

    def paused(self, clock: Clock) -> bool:
        """Whether the whole session is paused right now (a 429, the error budget)."""
        # The clock is read after the budget's own reading: read before, a free budget
        # would look a few microseconds ahead and every poll would read its pauses.
        if self._budget.next_available("retrieve") <= clock.monotonic():
            return False  # the common case: nothing more to read
        return session_paused(self._budget)

    def wake_at(self, due: float, now: float, *, jobs_waiting: bool) -> float:
        """Sleep towards ``due``, but wake to re-price while the price is raised (it falls
        as grants leave the window, which can make jobs due sooner)."""
        if jobs_waiting and self._policy.price > self._policy.bounds.delay_per_poll:
            due = min(due, max(now, self._repriced_at) + REPRICE_SECONDS)
        if jobs_waiting and self._share is not None:
            # Sharing a budget: the others price on this process's demand, kept current.
            due = min(due, max(now, self._shared_at) + SHARE_SECONDS)
        return due

    def maybe_reprice(
        self, now: float, live: Sequence[TrackedJob], refresh: Callable[[TrackedJob], object]
    ) -> bool:
        """Re-price if it is time; ``refresh`` brings a sampled job's belief up to date.
        Returns whether the price fell enough that jobs keyed earlier should be re-keyed."""
        if now - self._repriced_at < REPRICE_SECONDS and self._grants < REPRICE_GRANTS:
            return False
        self._repriced_at = now
        self._grants = 0
        window = self._budget.window("retrieve")
        sample = self._policy.sample(live) if window is not None else ()
        for tracked in sample:
            refresh(tracked)
        price = self._policy.reprice(now, sample, len(live), window, self._share)
        # Others on the window: other clients in the API's count, or processes sharing the
        # budget that want polls (heard in the trade just made). A share below 1 is the
        # user's own word on the others' part of the window.
        self._crowded = (
            window is not None
            and (window.others > 0 or self._others_want)
            and self._policy.bounds.retrieve_share >= 1
        )
        fell = price < PRICE_DROP * self._keyed_price
        self._keyed_price = price
        return fell


# --------------------------------------------------------------------------- job table
# Every job a scheduler knows: in flight (still to be polled), or finished and not taken.
#
# The table is the bookkeeping half of the scheduler (the other half decides when to poll):
#
# * ``jobs``: every tracked ``queue_id``, running or holding an outcome nobody took yet;
# * ``live``: the jobs still running, in a list the poll policy samples (O(1) removal by
#   swapping with the last);
# * ``by_model``: the running jobs of each model, oldest first (a refit reads the oldest as
#   right-censored).
#
# Outcomes stay here until a caller takes them (:meth:`JobTable.take`); in-memory audio is
# counted against the cap by :class:`~._polling.held_audio.HeldAudio`, which may drop the bytes of
# the oldest (the job is then *evicted*: finished, downloaded again when wanted).


class JobTable:
    """The scheduler's jobs, by id, by model and in flight. Internal."""

    def __init__(self, held: HeldAudio) -> None:
        self.held = held
        self.jobs: dict[str, TrackedJob] = {}
        self.live: list[TrackedJob] = []
        self.by_model: dict[str, dict[str, TrackedJob]] = {}

    def get(self, queue_id: str) -> TrackedJob | None:
        return self.jobs.get(queue_id)

    def __contains__(self, queue_id: str) -> bool:
        return queue_id in self.jobs

    def outcome_of(self, queue_id: str) -> Outcome | None:
        """The outcome of a job not handed over yet (``None``: running, or unknown)."""
        tracked = self.jobs.get(queue_id)
        return tracked.outcome if tracked else None

    def finished_at(self, queue_id: str) -> float:
        """When the job's outcome was reached (``inf``: not yet, or unknown)."""
        tracked = self.jobs.get(queue_id)
        return tracked.finished_at if tracked is not None and tracked.outcome else math.inf

    def was_taken(self, queue_id: str) -> bool:
        """Whether ``queue_id``'s outcome was handed over recently (bounded record)."""
        return self.held.was_taken(queue_id)

    def add_live(self, tracked: TrackedJob) -> None:
        """Track a running job (new, or evicted and to be downloaded again)."""
        queue_id = tracked.job.queue_id
        self.jobs[queue_id] = tracked
        tracked.slot = len(self.live)
        self.live.append(tracked)
        self.by_model.setdefault(tracked.job.model, {})[queue_id] = tracked

    def end_live(self, tracked: TrackedJob) -> None:
        """Remove a finished or forgotten job from the running views."""
        slot = tracked.slot
        if slot < 0:
            return
        last = self.live.pop()
        if last is not tracked:
            self.live[slot] = last
            last.slot = slot
        tracked.slot = -1
        self.by_model.get(tracked.job.model, {}).pop(tracked.job.queue_id, None)

    def keep(self, outcome: Outcome, sink_factory: SinkFactory, now: float) -> None:
        """Hold an outcome known from elsewhere (the journal) for a caller to take."""
        queue_id = outcome.job.queue_id
        if queue_id in self.jobs:
            return
        self.jobs[queue_id] = TrackedJob(
            job=outcome.job,
            sink_factory=sink_factory,
            tracked_at=now,
            started=now,
            deadline_at=None,
            prompt=False,
            outcome=outcome,
            finished_at=now,
        )

    def hold_audio(self, tracked: TrackedJob, audio: AudioResult) -> None:
        """Count untaken in-memory audio; over the cap, evict the oldest (kept on the server)."""
        if audio.data is None:
            return
        for queue_id in self.held.hold(tracked.job.queue_id, len(audio.data), tracked.release):
            victim = self.jobs.get(queue_id)
            if victim is None or victim.outcome is None:
                continue
            log.info(
                "dropped the untaken audio of job %s (over max_untaken_bytes); it is "
                "downloaded again when taken",
                queue_id,
            )
            victim.outcome = None
            victim.evicted = True

    def take(self, queue_id: str) -> TrackedJob | None:
        """A caller took the job's outcome: drop it. Returns the job when its media is to
        be released now (in-memory audio, released once taken)."""
        tracked = self.jobs.get(queue_id)
        if tracked is None or (tracked.outcome is None and not tracked.evicted):
            return None  # (evicted: a stream still held its bytes, and handed them over)
        del self.jobs[queue_id]
        return tracked if self.held.taken(queue_id, tracked.outcome) else None

    def forget(self, queue_id: str) -> TrackedJob | None:
        """Drop a job the caller no longer wants. Returns it if it was still running.

        Raises:
            ValueError: a consumer waits on the job right now.
        """
        tracked = self.jobs[queue_id]
        if tracked.subscribers:
            raise ValueError(f"job {queue_id} is being waited on; leave that wait first")
        del self.jobs[queue_id]
        if tracked.outcome is not None:
            return None
        tracked.forgotten = True
        tracked.entry = -1  # its heap entries are stale now
        self.end_live(tracked)
        return tracked

    def progress(self, queue_id: str) -> tuple[Outcome | None, Processing | None, float] | None:
        """What is known of a tracked job: its outcome (finished, not handed over yet),
        the last "still running" answer, and when it was polled (``clock`` time)."""
        tracked = self.jobs.get(queue_id)
        if tracked is None:
            return None
        return tracked.outcome, tracked.last_status, tracked.last_poll

    def finished(self) -> list[Job]:
        """Jobs with an outcome nobody has taken yet, oldest first."""
        return [t.job for t in self.jobs.values() if t.outcome is not None or t.evicted]

    def unfinished(self) -> list[Job]:
        """Jobs queued (paid for) whose outcome was never reached: keep their ids."""
        return [t.job for t in self.jobs.values() if t.outcome is None and not t.evicted]

    @property
    def untaken(self) -> int:
        """How many finished outcomes wait to be taken."""
        return len(self.jobs) - len(self.live)


@attrs.frozen
class SchedulerCounts:
    """Counters the session folds into its statistics."""

    in_flight: int
    succeeded: int
    failed: int
    untaken: int
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
        retrier: Retrier,
        limiter: RequestLimiter,
        release_limiter: RequestLimiter | None = None,
        release: ReleaseMedia = "complete",
        max_untaken_bytes: int | None = None,
        rng: random.Random | None = None,
        on_outcome: OutcomeHook | None = None,
        on_released: ReleaseHook | None = None,
    ) -> None:
        self._workers = max(1, min(limiter.total, _MAX_WORKERS))
        self._on_outcome = on_outcome
        self._client = client
        self._budget = budget
        self._fits = ModelFits(estimator)
        self._bounds = estimator.bounds
        self._clock = clock
        self._limiter = limiter
        self._release = release
        self._rng = rng or random.Random()
        self._retry = retrier.policy
        self._retrier = retrier  # the session's one: its backoff, jitter and waiter counts
        self._job_retriers: dict[RetryPolicy, Retrier] = {}  # for jobs with a policy of their own
        self._releaser = MediaReleaser(
            client=client,
            retrier=self._retrier,
            limiter=release_limiter or limiter,  # complete must not queue behind polls
            on_released=on_released,
        )
        self._policy = PollPolicy(estimator.bounds, rng=self._rng)
        #: Every job known: running, or finished and not taken (queries read it directly).
        self.jobs = JobTable(HeldAudio(max_bytes=max_untaken_bytes, release=release))
        self._heap = DueHeap()
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._counts: Counter[str] = Counter()
        self._pacer = WindowPacer(self._policy, budget)
        self._sweep = PendingRekeys(
            self._heap, self.jobs.by_model, clock, _HORIZON, self._due, self._schedule
        )
        self._parked = False  # the loop sleeps in _sleep_or_wake

    # ------------------------------------------------------------------ tracking

    def track(
        self,
        job: Job,
        sink_factory: SinkFactory,
        *,
        deadline: float | None = None,
        elapsed: float | None = None,
        retry: RetryPolicy | None = None,
        release: ReleaseMedia | None = None,
    ) -> None:
        """Start polling ``job``. ``deadline`` is seconds from now; ``elapsed`` what is known
        of its run time so far: 0 for a job just queued, ``None`` for one queued elsewhere
        at an unknown time. A job with a history (attached, resumed) is polled at once.
        ``retry`` and ``release`` are the job's own (``session.with_options``), when not
        the session's."""
        if job.queue_id in self.jobs:
            return  # running, or finished and kept until taken: attaching again changes nothing
        if self.jobs.held.took_audio(job.queue_id):
            self._track_handed_over(job, sink_factory)
            return  # (a failure handed over is polled again: its media was never released)
        now = self._clock.monotonic()
        tracked = TrackedJob(
            job=job,
            sink_factory=sink_factory,
            tracked_at=now,
            started=now - (elapsed or 0.0),
            deadline_at=None if deadline is None else now + deadline,
            prompt=elapsed is None or elapsed > 0,
            retry=retry,
            release=release,
        )
        self.jobs.add_live(tracked)
        self._counts["tracked"] += 1
        belief = self._fits.belief_of(tracked)
        if not tracked.prompt:
            self._policy.note_arrival(now, belief)
        if belief is None and not tracked.prompt and not self._fits.probe(job.model):
            # One job per unknown model asks for the server's estimate; the others wait
            # for it (its answer re-keys them).
            self._schedule(tracked, now + self._bounds.max_interval)
            return
        self._schedule(tracked, self._policy.due(tracked, now))

    def _track_handed_over(self, job: Job, sink_factory: SinkFactory) -> None:
        """``job``'s audio was handed over by this session: it is never polled again (its
        media may be released: the poll would end in a 404 counted as a failure). Audio
        still in its file is kept as its outcome again, to be handed over from there;
        otherwise a wait for it raises ``OutcomeAlreadyTaken``."""
        stored = self.jobs.held.stored(job.queue_id)
        path = None if stored is None else stored.audio.path
        # One stat, from a synchronous call (attach): cheap, and it must answer now.
        if stored is None or path is None or not _holds(path, stored.audio.size):
            log.info(
                "job %s was handed over already by this session and its audio is not in a "
                "file here: it is not polled again",
                job.queue_id,
                extra={"queue_id": job.queue_id, "model": job.model},
            )
            return
        log.info(
            "job %s was handed over already; its audio is still in %s: handed over again "
            "from there",
            job.queue_id,
            path,
            extra={"queue_id": job.queue_id, "model": job.model},
        )
        self.jobs.keep(stored, sink_factory, self._clock.monotonic())

    def _release_of(self, tracked: TrackedJob) -> ReleaseMedia:
        return tracked.release or self._release

    def _retrier_of(self, tracked: TrackedJob) -> Retrier:
        """The job's retry policy at work: the session's, or one its view gave (one
        retrier per policy, on the same budget)."""
        if tracked.retry is None or tracked.retry == self._retry:
            return self._retrier
        retrier = self._job_retriers.get(tracked.retry)
        if retrier is None:
            retrier = self._job_retriers[tracked.retry] = self._retrier.with_policy(tracked.retry)
        return retrier

    def _schedule(self, tracked: TrackedJob, due: float, *, wake: bool = True) -> bool:
        """Key ``tracked`` at ``due``; whether it is now the head (``wake``: tell the loop)."""
        if tracked.deadline_at is not None:
            due = min(due, tracked.deadline_at)
        now = self._clock.monotonic()
        horizon = now + _HORIZON
        key = due
        if due > horizon:
            # Keyed early and checked when popped, so that what may bring it sooner is
            # caught without a look at every job: a price fall (keyed no later than it is
            # due at the floor price), a small fit move (keyed where a fall of LARGE_DROP
            # would put it; larger moves re-key the model's jobs), a long wait (half-way).
            at_floor = self._policy.due(tracked, now, price=self._bounds.delay_per_poll)
            slack = math.exp(-LARGE_DROP) * (due - tracked.started)
            key = max(horizon, min(now + 0.5 * (due - now), tracked.started + slack, at_floor))
        tracked.capped = key < due
        tracked.keyed_price = self._policy.price
        tracked.keyed_version = self._fits.version(tracked.job.model)
        head = self._heap.push(tracked, key)
        if head and wake:
            self._wake.set()  # the loop may be sleeping towards a later job
        return head

    def take(self, queue_id: str) -> None:
        """The one hand-over rule, applied by every reader of outcomes (``results()`` over
        jobs given at once or over time, ``generate_many``, and through them ``wait_for``,
        ``generate`` and the CLI) at the moment it yields the job's outcome to its caller,
        never when the outcome is queued for yielding: the outcome is dropped, remembered
        as handed over, and in-memory media is released now (per ``release_media``; a
        stored file's was released when it was stored). Taking it again does nothing."""
        release = self.jobs.take(queue_id)
        if release is not None and self._tg is not None:
            self._releaser.start(release.job, self._tg)

    def keep_outcome(self, outcome: Outcome, sink_factory: SinkFactory) -> None:
        """Hold an outcome known from elsewhere (the journal) for a consumer to take."""
        self.jobs.keep(outcome, sink_factory, self._clock.monotonic())

    def subscribe(self, job: Job, stream: MemoryObjectSendStream[Outcome]) -> bool:
        """Deliver ``job``'s outcome into ``stream``. Returns False if the job is unknown.

        A job already finished is delivered at once; one whose audio was dropped (over
        the untaken-audio cap) is polled again at once.
        """
        tracked = self.jobs.get(job.queue_id)
        if tracked is None:
            return False
        if tracked.outcome is not None:
            stream.send_nowait(tracked.outcome)  # kept until the consumer takes it
            return True
        if tracked.evicted:
            tracked.evicted = False
            tracked.answered()
            self.jobs.add_live(tracked)
            self._counts["succeeded"] -= 1  # counted again when it arrives
            self._schedule(tracked, self._clock.monotonic())
        tracked.subscribers.append(stream)
        return True

    def unsubscribe(self, job: Job, stream: MemoryObjectSendStream[Outcome]) -> None:
        """Stop delivering to ``stream``. The job is still polled: it is paid for."""
        tracked = self.jobs.get(job.queue_id)
        if tracked is not None and stream in tracked.subscribers:
            tracked.subscribers.remove(stream)

    def forget(self, job: Job) -> bool:
        """Stop tracking ``job``: never poll it again, keep no outcome of it. Returns
        False if it was not tracked.

        Raises:
            ValueError: a consumer waits on the job right now.
        """
        if job.queue_id not in self.jobs:
            return False
        if self.jobs.forget(job.queue_id) is not None:
            self._end_probe(job.model)
            self._counts["forgotten"] += 1
        return True

    def counts(self) -> SchedulerCounts:
        counts = self._counts
        # Kept as counters, not counted over every job: progress displays call this often.
        finished = counts["succeeded"] + counts["failed"]
        return SchedulerCounts(
            in_flight=counts["tracked"] - finished - counts["forgotten"],
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            untaken=self.jobs.untaken,
            polls=counts["polls"],
            released=self._releaser.released,
        )

    # ------------------------------------------------------------------ the loop

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Poll jobs as they become worth it until cancelled. Started with ``tg.start``."""
        # Polls run on long-lived workers fed through a queue: cheaper than a new task per
        # poll, and bounded like the request limiter. asyncio's queue, not anyio's memory
        # stream: its get() takes a waiting item without a pass through the event loop.
        queue: asyncio.Queue[TrackedJob] = asyncio.Queue()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for _ in range(self._workers):
                tg.start_soon(self._work, queue)
            task_status.started()
            while True:
                tracked = await self._next_worth_polling()
                if self.jobs.held.full:
                    # delete_on_retrieve with the untaken-audio cap reached: a download now
                    # would have to be kept or lost. Polls wait until callers take results.
                    self._schedule(tracked, self._clock.monotonic())
                    await self.jobs.held.wait_for_room()
                    continue
                await self._pacer.take_token()
                if tracked.outcome is not None or tracked.forgotten:
                    continue
                tracked.in_flight = True
                queue.put_nowait(tracked)

    async def _work(self, queue: asyncio.Queue[TrackedJob]) -> None:
        while True:
            tracked: TrackedJob | None = await queue.get()
            while tracked is not None:  # a worker may take its next job itself
                tracked = await self._poll(tracked)

    async def _next_worth_polling(self) -> TrackedJob:
        while True:
            if self._sweep.run() or (len(self._heap) > _STALE_BATCH and self._heap.stale_head()):
                await anyio.lowlevel.checkpoint()  # a mass re-key must not stall the loop
            # Sharing a budget: this process's demand and the others' as of now, not as of
            # its last grant (it may have had none for a while). Alone: nothing to read.
            if self._pacer.shares:
                head = self._heap.head()
                now = self._clock.monotonic()
                due = head is not None and self._heap.head_due() <= now + EPSILON
                live, refresh = self.jobs.live, self._fits.belief_of
                if await self._pacer.share(self._clock, live, refresh, due=due):
                    self._start_sweep()
                self._learn_from_others(())
            step = self._step()
            if isinstance(step, TrackedJob):
                return step
            if step is None:  # the head's deadline passed
                head, now = self._heap.pop_head(), self._clock.monotonic()
                error = JobDeadlineExceeded(head.job, now - head.tracked_at)
                await self._finish(head, Failed(head.job, error))
            elif step >= 0:
                await self._sleep_or_wake(step)

    def _learn_from_others(self, finished: Sequence[RunTime]) -> None:
        """Sharing a budget: tell the other processes how long this process's ``finished``
        jobs ran, and learn from how long theirs ran (each process would otherwise learn
        its models from its own share of the jobs only, and poll worse for it)."""
        for run in share_run_times(self._budget, finished):
            running = self.jobs.by_model.get(run.model, {}).values()
            scope = self._fits.observe_run(run.model, run.seconds, run.hint, running)
            self._start_sweep(scope, run.model)

    def _step(self) -> TrackedJob | float | None:
        """One decision, without waiting: the job to poll now (popped from the heap; its
        token is still to be taken), else seconds to wait (negative: decide again at once),
        or ``None`` when the head's deadline has passed."""
        head = self._heap.head()
        now = self._clock.monotonic()
        if head is None:
            return math.inf
        due = self._heap.head_due()
        if due > now + EPSILON:
            return self._pacer.wake_at(due, now, jobs_waiting=bool(self.jobs.live)) - now
        if head.deadline_at is not None and now >= head.deadline_at:
            return None
        ready = self._pacer.token_ready()
        now = self._clock.monotonic()  # read after: the budget reads the clock too
        if ready > now + EPSILON:
            return ready - now
        if self._pacer.maybe_reprice(now, self.jobs.live, self._fits.belief_of):
            self._start_sweep()
        if (
            head.capped
            or self._policy.price > head.keyed_price
            or self._fits.version(head.job.model) != head.keyed_version
        ):
            # Keyed at the horizon, or the price rose or the fit moved: still worth it?
            worth_at = self._due(head, now)
            if worth_at > now + EPSILON:
                self._schedule(head, worth_at)
                return -1.0
        return self._heap.pop_head()

    def _take_now(self, keyed_head: TrackedJob | None) -> TrackedJob | None:
        """The next job for the worker that just keyed ``keyed_head`` at the heap's head
        (``None``: it did not), decided here while the loop sleeps: a poll then costs no
        pass of the loop's task. The loop is woken for whatever is left to it."""
        free = self._parked and self._pacer.grants_now and not self._sweep.pending
        job = self._step() if free and not self.jobs.held.full else -1.0
        if not isinstance(job, TrackedJob):
            if keyed_head is not None or job is None:
                self._wake.set()
            return None
        if not self._pacer.take_token_now():
            self._schedule(job, self._clock.monotonic())
            return None
        if keyed_head is not None and keyed_head is not job:
            self._wake.set()
        job.in_flight = job.waiting
        return job if job.waiting else None

    def _due(self, tracked: TrackedJob, now: float) -> float:
        """When ``tracked`` is next worth a poll, with its belief brought up to date (the
        deadline is applied where jobs are keyed, in :meth:`_schedule`)."""
        self._fits.belief_of(tracked)
        return self._policy.due(tracked, now)

    def _start_sweep(self, reach: RekeyScope = RekeyScope.NEAR, model: str = "") -> None:
        if self._sweep.start(reach, model):
            self._wake.set()

    async def _sleep_or_wake(self, seconds: float) -> None:
        if self._wake.is_set():
            self._wake = anyio.Event()  # a fresh one only when the last was used
        if self._sweep.pending:
            return  # re-key first: a job may now be due sooner than the one slept for
        self._parked = True  # workers may take due jobs themselves meanwhile (_take_now)
        try:
            await self._clock.wait(self._wake, seconds)
        finally:
            self._parked = False

    # ------------------------------------------------------------------ one poll

    async def _poll(self, tracked: TrackedJob) -> TrackedJob | None:  # and the next, if any
        request = tracked.request(delete=self._release_of(tracked) == "delete_on_retrieve")
        answer: Processing | AudioResult | VeniceError
        sent = math.inf
        try:
            with attempt_context(tracked.failures + 1):  # for the request's log record
                async with self._limiter:
                    if self._pacer.paused(self._clock):
                        # A 429 paused the session while this poll waited for a request
                        # slot: its token is spent, but sending now would break the pause.
                        tracked.in_flight = False
                        self._schedule(tracked, self._clock.monotonic())
                        return None
                    self._counts["polls"] += 1
                    sent = self._clock.monotonic()  # (the wait for a slot is ours, not the API's)
                    answer = await self._client.retrieve(request, sink=tracked.sink_factory())
        except VeniceError as error:
            answer = error
        finally:
            tracked.in_flight = False
        if tracked.forgotten:
            return None  # forgotten while this poll was in flight
        now = self._clock.monotonic()
        if isinstance(answer, Processing):
            return self._on_running(tracked, answer, now)
        if isinstance(answer, VeniceError):
            await self._on_error(tracked, answer, sent, now)
        else:
            await self._on_audio(tracked, answer, now)
        return None

    def _on_running(self, tracked: TrackedJob, status: Processing, now: float) -> TrackedJob | None:
        tracked.answered()
        self._end_probe(tracked.job.model)
        self._fits.observe_hint(tracked, status.average_execution_time)
        if status.execution_duration is not None:
            tracked.started = now - status.execution_duration
        tracked.last_poll = now
        tracked.last_status = status
        tracked.seen_running_at_age = max(0.0, now - tracked.started)
        tracked.prompt = False
        head = self._schedule(tracked, self._due(tracked, now), wake=False)
        return self._take_now(tracked if head else None)

    def _end_probe(self, model: str) -> None:
        """A job of a model being probed answered: the jobs waiting on it are re-keyed."""
        if self._fits.probing:  # rarely: only while a model's first estimate is awaited
            self._start_sweep(self._fits.end_probe(model), model)

    async def _on_audio(self, tracked: TrackedJob, audio: AudioResult, now: float) -> None:
        model = tracked.job.model
        self._end_probe(model)
        duration = audio.venice.inference_time
        if duration is None:
            duration = now - tracked.started
        release = self._release_of(tracked)
        released = release == "delete_on_retrieve"
        await self._finish(tracked, Succeeded(tracked.job, audio, released=released))
        if tracked.job.queue_id in self.jobs:
            self.jobs.hold_audio(tracked, audio)
        running = self.jobs.by_model.get(model, {}).values()
        self._start_sweep(self._fits.observe_finished(tracked, duration, running), model)
        if self._pacer.shares:
            self._learn_from_others([RunTime(model, duration, tracked.hint)])
        if release == "complete":
            if audio.path is None and tracked.job.queue_id in self.jobs:
                # Only in memory: the server's copy stays until a caller takes the audio.
                self.jobs.held.release_when_taken(tracked.job.queue_id)
            else:
                assert self._tg is not None
                self._releaser.start(tracked.job, self._tg)

    async def wait_releases(self) -> None:
        """Wait until no ``complete`` call is in flight (the session's close drains them)."""
        await self._releaser.wait()

    async def _on_error(
        self, tracked: TrackedJob, error: VeniceError, sent: float, now: float
    ) -> None:
        # Retrieve is safe to repeat (the media stays until released), so only the API's
        # verdict ends a job; what a poll met in transit says nothing about the job itself.
        verdict = judge_poll(error)
        if verdict is PollVerdict.FINAL:
            await self._finish(tracked, Failed(tracked.job, error))
            return
        if verdict is PollVerdict.KEY_REFUSED:
            await self._key_refused(tracked, error)
            return
        unreached: float | None = None
        retrier = self._retrier_of(tracked)
        if verdict is PollVerdict.REPEAT:
            assert isinstance(error, APIStatusError)
            answer = (error.status_code, error.message)
            tracked.repeats = tracked.repeats + 1 if answer == tracked.answer else 1
            tracked.answer = answer
            if tracked.repeats >= retrier.policy.attempts:
                await self._finish(tracked, Failed(tracked.job, error))
                return
        if verdict is not PollVerdict.WAIT:
            # Errors that never settle into a verdict (varying 5xx, transit) end it too.
            if tracked.unreached_since is None:
                tracked.unreached_since = min(sent, now)
            unreached = now - tracked.unreached_since
            # Given up on only with evidence: the time, and at least `attempts` polls.
            tried = tracked.failures + 1 >= retrier.policy.attempts
            if tried and unreached >= retrier.policy.unreachable_after:
                log.warning(
                    "job %s: no verdict from the API for %.0f s (last: %s); it is kept to be "
                    "fetched later",
                    tracked.job.queue_id,
                    unreached,
                    type(error).__name__,
                    extra={"queue_id": tracked.job.queue_id},
                )
                gone = JobUnreachable(tracked.job, unreached, error)
                await self._finish(tracked, Unreachable(tracked.job, gone))
                return
        delay = retrier.poll_again_in(
            error, tracked.failures, queue_id=tracked.job.queue_id, unreached=unreached
        )
        if verdict is not PollVerdict.WAIT:  # a 429 paused the session: no attempt spent
            tracked.failures += 1
        self._schedule(tracked, self._clock.monotonic() + delay)

    async def _key_refused(self, tracked: TrackedJob, error: VeniceError) -> None:
        """A poll's key was refused (401 / 402 / 403): stop polling every job, each ending
        with that error (the journal keeps them "queued", for ``resume``). Polls already in
        flight end by their own answers."""
        assert isinstance(error, APIStatusError)
        waiting = [job for job in self.jobs.live if job is not tracked and not job.in_flight]
        log.error(
            "retrieve of job %s was refused (%s): polling stops for it and %d other job(s), "
            "all kept to be fetched once the key is accepted again",
            tracked.job.queue_id,
            error,
            len(waiting),
            extra={"queue_id": tracked.job.queue_id, "status": error.status_code},
        )
        await self._finish(tracked, Failed(tracked.job, error))
        for other in waiting:
            if other.waiting:  # (may have ended while an earlier one was being recorded)
                await self._finish(other, Failed(other.job, _refusal_like(error)))

    async def _finish(self, tracked: TrackedJob, outcome: Outcome) -> None:
        if tracked.outcome is not None:
            return
        self._end_probe(tracked.job.model)
        if isinstance(outcome, Failed):
            drop_tracebacks(outcome.error)
        tracked.outcome = outcome
        tracked.finished_at = self._clock.monotonic()
        tracked.entry = -1
        if self._on_outcome is not None:
            # Recorded (journal) before anyone is told, so a crash right after delivery
            # cannot forget that the audio is stored.
            with anyio.CancelScope(shield=True):
                await self._on_outcome(outcome)
        self.jobs.end_live(tracked)
        self._counts["succeeded" if isinstance(outcome, Succeeded) else "failed"] += 1
        # Pushed to every consumer waiting, but kept until one of them takes it: a
        # consumer may leave with it still unread in its stream.
        for stream in tracked.subscribers:
            try:
                stream.send_nowait(outcome)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.debug("consumer of job %s went away", tracked.job.queue_id)
        tracked.subscribers.clear()


def _holds(path: Path, size: int) -> bool:
    """Whether ``path`` is still a file of ``size`` bytes (the audio once stored there)."""
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _refusal_like(error: APIStatusError) -> APIStatusError:
    """A copy of a key's refusal for another job it stopped (each outcome owns its error)."""
    return type(error)(
        error.message,
        status_code=error.status_code,
        body=error.body,
        headers=error.headers,
        endpoint=error.endpoint,
    )
