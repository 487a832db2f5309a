"""When a running job is worth a poll: the expected-delay index with a window price.

Retrieves cost nothing but rate-limit room, so room left unused is latency wasted. The policy
(measured against a lower bound in docs/performance.md):

* A job's **worth** now is the delay it has accrued in expectation since its last poll, given
  its run-time belief (:class:`~._polling.run_time_belief.RunTimeBelief`) and its age. Worth
  grows with time, so at a given price each job has one **due time** at which it becomes worth a
  poll; the scheduler keeps jobs in a heap by due time and polls the head when a token is free.
* The **price** (seconds of delay one poll must save) starts at
  :attr:`~._polling.estimator.PollingBounds.delay_per_poll` and rises as the rate window fills:
  for each look-ahead ``x`` the fluid-limit demand ``D_x`` (polls the jobs in flight, and
  jobs arriving at the recent rate, would want over ``x`` at price 1) is set against ``F_x``,
  the grants the window will allow by then; ``price = max(floor, max_x (D_x / (0.95 F_x))^2)``.
  A burst of jobs therefore spreads its polls over the window instead of spending every
  token in its first seconds and starving the rest.
* Safety rules on top: at least ``min_interval`` between two polls of a job, at most
  ``max_interval``; a job past its model's 99th percentile is polled at gaps growing with its
  overrun (a tenth of it, at most 10 s), so a stuck job cannot eat the budget; attached and
  resumed jobs are polled at once (their first answer says how long they have run).

Processes sharing one window (a ``RedisBudget``) price their polls at one figure: each adds the
others' demand, as the budget last heard it, to its own, so a poll is sent by the process
whose job is worth it, not by the one that asks first.

The price is recomputed from a uniform sample of at most :data:`SAMPLE` jobs, so its cost
does not grow with the number of jobs in flight.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .._rate.budget import RateWindow
from .estimator import PollingBounds
from .run_time_belief import RunTimeBelief

__all__ = ["JobView", "PollPolicy"]

#: Look-ahead horizons (seconds) at which demand is set against the window's free grants.
LOOK_AHEAD = (2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.5)
#: At most this many jobs are read to price the window.
SAMPLE = 256
#: Demand is planned for this share of the free grants: a little below 1 keeps a few tokens for
#: jobs the belief expects to finish sooner than they do (swept 0.6-1.2 over the four workloads
#: of docs/performance.md: 0.95 keeps every job within 15 s there, and in the 200 races of
#: tests/polling/test_polling.py, where 1.0 lets one job be 15.2 s late; see benchmarks/).
_SLACK = 0.95
#: Other clients on the key (a window's ``others``) are expected to want at most this many
#: times this process's own polls: a process that has barely polled yet must not price
#: itself out of the window its peers fill.
_OTHERS_AT_MOST = 4.0
#: Past a belief's 99th percentile, a poll gap is at least this share of the overrun ...
_OVERRUN_SHARE = 0.1
#: ... and past its 1st percentile never more than this (seconds): however unlikely the
#: belief thinks it is that the job has finished, it is watched.
_LIVE_MAX_GAP = 10.0
#: The solve's answer is worth the price within its tolerance (1e-4 in log terms): a
#: share of the price it surely lies beyond.
_SURELY_BELOW = 0.999


class JobView(Protocol):
    """What the policy reads of one tracked job (the scheduler's record has these)."""

    #: The run-time belief for the job, ``None`` while nothing is known of its model.
    belief: RunTimeBelief | None
    #: Clock time its run began (``now - execution_duration`` once the server says).
    started: float
    #: Its age when a poll last saw it running (0 at submit).
    seen_running_at_age: float
    #: Clock time of its last poll, ``-inf`` if never polled.
    last_poll: float
    tracked_at: float
    #: Poll at once: attached or resumed, so how long it has run is not known yet.
    prompt: bool


_Job = TypeVar("_Job", bound=JobView)


class PollPolicy:
    """Prices polls against the rate window and says when each job becomes worth one.

    Internal; one per scheduler.
    """

    def __init__(self, bounds: PollingBounds, *, rng: random.Random | None = None) -> None:
        self.bounds = bounds
        self.price = bounds.delay_per_poll
        self._rng = rng or random.Random()
        self._arrivals: deque[tuple[float, RunTimeBelief | None]] = deque()
        self._tails: dict[RunTimeBelief, tuple[float, float]] = {}  # (P1, P99)

    # ------------------------------------------------------------------ one job

    def due(self, job: JobView, now: float, price: float | None = None) -> float:
        """The clock time at which ``job`` is next worth a poll at ``price`` (default: the
        current price)."""
        bounds = self.bounds
        polled = job.last_poll > -math.inf
        reference = job.last_poll if polled else job.tracked_at
        if job.prompt:
            return now
        belief = job.belief
        if belief is None:
            # Nothing known: the first answer brings the server's estimate; without one
            # keep backing off with the age.
            if not polled:
                return job.tracked_at + bounds.first_poll
            age = max(0.0, job.last_poll - job.started)
            return job.last_poll + bounds.clamp(max(bounds.first_poll, 0.5 * age))
        seen = job.seen_running_at_age
        price = self.price if price is None else price
        p01, p99 = self._quantiles(belief)
        latest = reference + bounds.max_interval
        # Once the job may well have finished, never leave it unpolled for long: this
        # bounds the delay of jobs that finish early, where the belief sees little chance.
        live = max(job.started + p01, reference) + _LIVE_MAX_GAP
        # A poll is never worth more than the time since the last one, so the solve lands
        # at least ``price`` past ``seen``: when the caps come first anyway, it is not run.
        if min(job.started + max(seen, 0.0) + _SURELY_BELOW * price, live) >= latest:
            return latest
        due = min(job.started + belief.age_worth(seen, price), live)
        if polled:
            floor = job.last_poll + bounds.min_interval
            if seen > p99:
                floor = job.last_poll + max(
                    bounds.min_interval, min(_LIVE_MAX_GAP, _OVERRUN_SHARE * (seen - p99))
                )
            due = max(due, floor)
        return min(due, latest)

    def _quantiles(self, belief: RunTimeBelief) -> tuple[float, float]:
        cached = self._tails.get(belief)
        if cached is None:
            if len(self._tails) > 4096:
                self._tails.clear()
            cached = self._tails[belief] = (belief.quantile(0.01), belief.quantile(0.99))
        return cached

    # ------------------------------------------------------------------ the price

    def note_arrival(self, now: float, belief: RunTimeBelief | None) -> None:
        """A job was submitted: arrivals in the last window predict the next window's."""
        self._arrivals.append((now, belief))

    def reprice(
        self,
        now: float,
        jobs: Sequence[JobView],
        total: int,
        window: RateWindow | None,
        exchange: Callable[[tuple[float, ...]], Sequence[float] | None] | None = None,
    ) -> float:
        """Recompute the price from ``jobs`` (all jobs in flight, or a uniform sample of
        them standing for ``total``) and the retrieve window; returns it.

        ``exchange``: for a window shared with other processes, takes this process's demand
        at each :data:`LOOK_AHEAD` horizon and returns the others' (``None``: none known);
        the price is then set by the demand of all, one figure for every process.

        Other clients the API's stated counts show in the window (``window.others``: web
        workers with budgets of their own, outside clients) are expected to go on wanting
        polls in the proportion they used the window so far, up to :data:`_OTHERS_AT_MOST`
        times ours: independent processes then price their polls much as processes sharing
        one budget do, and leave room for each other without being told of each other
        (unless ``retrieve_share`` below 1 already sets the others' part aside)."""
        floor = self.bounds.delay_per_poll
        if window is None:
            self.price = floor
            return floor
        span = window.window
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= now - span:
            arrivals.popleft()
        share = self.bounds.retrieve_share
        reserved = window.limit - math.floor(share * window.limit)
        scale = total / len(jobs) if jobs else 0.0
        demands: list[float] = []
        for x in LOOK_AHEAD:
            demand = 0.0
            for job in jobs:
                belief = job.belief
                if belief is None:
                    continue
                age = now - job.started
                seen = job.seen_running_at_age
                tail = belief.survival(seen)
                if tail <= 0:
                    continue
                demand += (belief.fluid_polls(age + x) - belief.fluid_polls(age)) / tail
            demand *= scale
            for _, belief in arrivals:
                if belief is not None:
                    demand += belief.fluid_polls_of_arrivals(x) / span
            demands.append(demand)
        others = exchange(tuple(demands)) if exchange is not None else None
        # Per poll of ours (or of the processes sharing the budget), how many the key's other
        # clients used: the API's count beyond our grants, against ours in the same window.
        # A share below 1 is the user's own word on how much of the window is the others'.
        unseen = (
            min(_OTHERS_AT_MOST, window.others / max(1, len(window.grants))) if share >= 1 else 0.0
        )
        price = floor
        for i, x in enumerate(LOOK_AHEAD):
            demand = demands[i] + (others[i] if others is not None else 0.0)
            demand *= 1.0 + unseen
            free = window.free_after(x, now) - reserved
            price = max(price, (demand / (_SLACK * max(free, 0.5))) ** 2)
        self.price = price
        return price

    def sample(self, jobs: Sequence[_Job]) -> Sequence[_Job]:
        """At most :data:`SAMPLE` of ``jobs``, uniformly."""
        if len(jobs) <= SAMPLE:
            return jobs
        return [jobs[i] for i in self._rng.sample(range(len(jobs)), SAMPLE)]
