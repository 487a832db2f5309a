"""One endpoint's rate limit: a sliding-window log, plus pacing, with an adaptive limit.

Venice states limits as "N requests per minute" without saying how its window is aligned.
A plain token bucket with capacity ``B`` and rate ``N/60`` can grant ``B + N`` requests within
60 s (a full bucket, then a minute of refills), which a server counting a fixed or sliding
60 s window rejects. So the hard rule here is exact: **at most N grants in any window of
60 s + margin**, enforced by keeping the last N grant times in a deque (a grant is allowed when
fewer than N grants are younger than the window). A sliding window is the strictest
alignment, so this also satisfies a fixed-window or token-bucket server with the same N.
``margin`` (0.5 s by default) covers network jitter between our grant and the server's count.

The log alone is bursty: N requests at once, then nothing for a whole minute, and under
saturation that pattern repeats forever (each grant frees its slot exactly one window
later). A 60 s stall would wreck the scheduler's "completion noticed within a second". So
grants are also **paced**: while fewer than ``burst`` grants lie in the window they go out
back to back; from then on each grant sets the earliest time of the next one, spreading the
window's free slots evenly over the time until its oldest grant expires (which frees one
more), and never closer than ``window / N``. A quiet session can therefore fire a short
burst (a handful of queue calls); a saturating one slides from the burst into a slightly
slower pace (``window / (N - burst + 1)``) without ever stalling, and once the burst has left
the window it settles into even spacing at the full rate, ``window / N``. In a virtual-time
run of 500 waiters on 120/min the longest gap between grants is 0.60 s (40/min: 1.73 s),
where the bare log stalls for 60.5 s, and the 500th grant comes at the same time.

The default ``burst`` is ``max(1, N // 6)``, ten seconds' worth of requests (6 queue calls at
40 per minute): enough for a batch that arrives together, small enough that the slower pace
after it stays close to the full rate. A burst of 1 (a session's ``retrieve``) **spreads**
every grant, with no floor: what is left of the window is shared evenly until it frees.
No burst ever sits in such a window to leave it at once, so the floor has nothing to
smooth, and it would keep the spread from catching up on room left by a quiet spell. The
spread sits in the rule, not in the poller, so processes sharing a ``RedisBudget`` take
its slots one at a time (each reading the same last grant, they would all take the same).

The effective limit adapts (Venice's rate-limit pages disagree: the real limits are uncertain). This
class is *the* rate rule, written once: ``RedisBudget``'s Lua (:mod:`._rate.redis_scripts`)
mirrors it step for step, and one test drives both through the same script of grants, 429s
and stated limits. Its transitions:

* **stated**: a limit the API states replaces the ceiling, up as well as down, unless the
  user set this limit explicitly (then it only caps it); a pool assumed (not listed by the
  key nor given) only rises to what one of its endpoints states, and is *refuted* (dropped
  for good: each endpoint keeps its own limit) once two of its endpoints state different
  figures (endpoints counting against one pooled window would state the same);
* **429** (a rate limit, not the error budget nor an overloaded model): the limit drops below
  what the last window granted (a fifth; while calm, a fifth of the limit itself; one more
  per further 429 within ``window / 12``; not below an eighth of the ceiling), and the
  window *starts at the 429*: grants before it no longer count (the server's Retry-After,
  a pause kept by the budget, says when it takes more), so the lowered rate spaces the
  grants from then on instead of waiting for past ones to age out. Until the limit is back
  at the ceiling it is *calm*: no bursts;
* **recovery**: every quiet ``window / 4`` the limit climbs a tenth of the ceiling; a learnt
  limit with no ceiling (nothing configured or stated) is dropped;
* **reserve**: a grant may be asked for with grants kept back for others (a pool keeps one
  per ``queue`` call waiting, so queue calls come before polls): the limit and burst are
  that much lower for it (one grant always left).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import anyio

from .._core.config import MINUTE, RateLimit, is_assumed

__all__ = [
    "RECOVERY_STEPS",
    "EndpointRate",
    "LinePlan",
    "Waiter",
    "others_on_key",
    "pool_refuted_message",
    "queue_reserve",
    "reached",
    "token_eta",
]

#: After a 429 an endpoint's limit drops to this share of what its last window granted.
_DECREASE = 0.8
#: 429s within window / this of the last one belong to the same burst: one decrease.
_DECREASE_SPACING = 12
#: After a 429 the limit climbs a tenth of the ceiling per window / this of quiet.
RECOVERY_STEPS = 4
#: Relative tolerance when comparing clock readings (float rounding in sleeps and sums).
_REL_EPS = 1e-12


def queue_reserve(waiting: int, room: int | None) -> int:
    """The pool's grants a poll leaves for ``waiting`` queue calls: as many as the queue's
    own limit still lets through in its window (``room``; ``None``: it has none). Inside a
    pooled limit queue calls come before polls (a lost slot costs a job's start; a late
    poll, a second), but polls keep what the queue cannot use: a large batch being queued
    at 40 a minute must not hold every poll of a 60-a-minute pool until it is all queued."""
    return waiting if room is None else max(0, min(waiting, room))


def others_on_key(stated: int, remaining: int, ours: int) -> int:
    """Requests of other clients on the key inside the API's window: the count an answer
    states (``stated - remaining``, its own request included) beyond ``ours``, the grants
    of this budget in its window (a process with a budget of its own, an outside client).
    Ours still in flight may not be counted yet, so this errs low."""
    return max(0, stated - remaining - ours)


def pool_refuted_message(first: tuple[str, int], second: tuple[str, int], assumed: int) -> str:
    """The one INFO line of an assumed pool refuted: ``first`` and ``second`` are the
    (endpoint, stated figure) pairs that differ, ``assumed`` the pool's assumed figure."""
    return (
        f"the API states {first[1]}/min for {first[0]} and {second[1]}/min for {second[0]}: "
        f"separate limits, not one pool; dropping the assumed {assumed}/min pool"
    )


def reached(deadline: float, now: float) -> bool:
    """``deadline <= now`` up to float rounding."""
    return deadline <= now + _REL_EPS * max(1.0, abs(now))


class Waiter:
    """One task waiting for a token (FIFO; only the head sleeps on the clock).

    ``deadline`` (a ``clock.monotonic()`` reading, ``None``: none) is when it gives up; a
    waiter whose token cannot come by then is not counted ahead of those behind it.
    """

    __slots__ = ("cancelled", "deadline", "event")

    def __init__(self, deadline: float | None = None) -> None:
        self.event = anyio.Event()
        self.cancelled = False
        self.deadline = deadline


class LinePlan:
    """A line of token waiters played forward on copies of the rules, as if nobody else
    took a token: when each would get one.

    ``rates`` are what-if copies (:meth:`EndpointRate.what_if`, changed here) of every rule
    the endpoint follows; ``floor`` the earliest time anything may be granted (pauses). A
    waiter whose token would come after its own deadline gives up and takes none, so it
    pushes nobody back. ``first`` is the first token time the plan was built from: the plan
    holds while the clock has not passed it and nothing was granted or learnt meanwhile.
    """

    __slots__ = ("first", "floor", "rates")

    def __init__(self, rates: Sequence[EndpointRate], floor: float) -> None:
        self.rates = rates
        self.floor = floor
        self.first = self.ready()

    def ready(self) -> float:
        """When the next token would come."""
        t = self.floor
        for _ in range(2):  # each rule only gets easier with time: two passes settle them
            for rate in self.rates:
                t = rate.rate_ready(t)
        return t

    def take(self, t: float) -> None:
        """A waiter gets the token at ``t`` (``ready()``)."""
        for rate in self.rates:
            rate.grant(t)
        self.floor = t

    def play(self, deadline: float | None) -> float:
        """The next waiter in line, giving up at ``deadline``: its token time, or
        ``math.inf`` when it gives up (it takes none)."""
        t = self.ready()
        if deadline is not None and not reached(t, deadline):
            return math.inf
        self.take(t)
        return t


def token_eta(
    rates: Sequence[EndpointRate],
    floor: float,
    ahead: Iterable[float | None],
    stop_at: float,
) -> float:
    """When the token of a caller behind ``ahead`` would come (see :class:`LinePlan`).

    ``ahead`` holds the deadlines of the callers in line before it, first first (``None``:
    waits as long as it takes). Returns ``math.inf`` as soon as the answer is known to lie
    past ``stop_at`` (tokens only come later down the line), which bounds the work by the
    grants that fit before ``stop_at``.
    """
    plan = LinePlan(rates, floor)
    for deadline in ahead:
        if not reached(plan.ready(), stop_at):
            return math.inf
        plan.play(deadline)
    return plan.ready()


class EndpointRate:
    """Per-endpoint state: the grant log, the pacing point, the pause and the FIFO queue.

    The effective ``limit`` adapts: see the module docstring for the transitions.
    ``explicit``: the configured limit is the user's own (a stated one never raises it);
    never for a default figure of :class:`~venice_audio_async.RateLimits`.
    """

    __slots__ = (
        "allowance",
        "allowance_until",
        "burst",
        "burst_setting",
        "calm",
        "configured",
        "explicit",
        "granted",
        "interval",
        "last_429",
        "limit",
        "log",
        "name",
        "next_paced",
        "next_recovery",
        "others",
        "others_until",
        "paused_seconds",
        "paused_until",
        "rate_limited",
        "stated",
        "stated_by",
        "waiters",
        "waiting",
        "window",
    )

    def __init__(self, name: str, rate: RateLimit | None, *, explicit: bool = True) -> None:
        self.name = name
        self.configured = rate.limit if rate is not None else None
        # A default figure (RateLimits' Assumed) is not the user's: a stated limit replaces it.
        self.explicit = explicit and rate is not None and not is_assumed(rate.per_minute)
        self.calm = False
        self.stated: int | None = None
        # A pool's: the figure each of its endpoints last stated (refutes an assumed pool).
        self.stated_by: dict[str, int] = {}
        self.window = rate.window if rate is not None else MINUTE
        # A limit learned for an endpoint configured without one is a bare sliding log.
        self.burst_setting = rate.effective_burst if rate is not None else None
        self.limit: int | None = None
        self.burst = 0
        self.interval = 0.0
        self.allowance: int | None = None
        self.allowance_until = -math.inf
        self.others = 0
        self.others_until = -math.inf
        self.last_429 = -math.inf
        self.next_recovery = math.inf
        self.log: deque[float] = deque()
        self.next_paced = -math.inf
        self.paused_until = -math.inf
        self.waiters: deque[Waiter] = deque()
        self.waiting = 0
        self.granted = 0
        self.rate_limited = 0
        self.paused_seconds = 0.0
        self._set_limit(self.configured)

    def what_if(self) -> EndpointRate:
        """A copy to play grants forward on (:func:`token_eta`); no waiters."""
        copy = EndpointRate.__new__(EndpointRate)
        for name in EndpointRate.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.log = deque(self.log)
        copy.waiters = deque()
        return copy

    @classmethod
    def seeded(
        cls,
        name: str,
        *,
        limit: int | None,
        window: float,
        burst: int,
        grants: Iterable[float],
        calm: bool = False,
    ) -> EndpointRate:
        """A rule known only from outside (a shared store's last reply): its effective
        ``limit`` (``None``: none), ``window``, ``burst``, whether it is ``calm`` and the
        grants in its window."""
        rate = cls(name, None)
        rate.configured = limit
        rate.window = window
        rate.burst_setting = burst
        rate.calm = calm
        rate._set_limit(limit)
        rate.log = deque(grants)
        return rate

    def _set_limit(self, limit: int | None) -> None:
        self.limit = limit
        if limit is None:
            self.burst, self.interval = 0, 0.0
        else:
            # Calm (recovering from a 429): each grant paced, no burst drawn.
            self.burst = 1 if self.calm else min(self.burst_setting or limit, limit)
            self.interval = self.window / limit

    @property
    def ceiling(self) -> int | None:
        """The limit in force before any 429: the configured one, replaced by a limit the
        API stated (only capped by it when the configured one is the user's own)."""
        if self.stated is None:
            return self.configured
        if self.configured is None or not self.explicit:
            return self.stated
        return min(self.configured, self.stated)

    def state_limit(self, stated: int, now: float) -> None:
        """The API stated this endpoint's limit: it holds at once (lower, or higher while
        no 429 is being recovered from; a calm limit climbs to it by recovery)."""
        self.recover(now)
        if stated < 1 or stated == self.stated:
            return
        self.stated = stated
        ceiling = self.ceiling
        if ceiling is None:
            return
        if self.limit is None or ceiling < self.limit or not self.calm:
            self._set_limit(ceiling)

    def state_pool_limit(self, endpoint: str, stated: int, now: float) -> tuple[str, int] | None:
        """``endpoint``, under this pool, stated ``stated``: the pool must allow at least
        that. A pool assumed (the documented default) rises to it, never falls; a pool the
        key listed or the user gave stays (it is at most the lowest figure listed for any
        model in it).

        Returns ``(other endpoint, its figure)`` when another endpoint of an assumed pool
        last stated a different figure: two endpoints counting against one pooled window
        would state the same, so the pool is refuted and the caller drops it for good.
        """
        if self.explicit or stated < 1:
            return None
        self.stated_by[endpoint] = stated
        for other, figure in self.stated_by.items():
            if other != endpoint and figure != stated:
                return other, figure
        ceiling = self.ceiling
        if ceiling is None or stated > ceiling:
            self.state_limit(stated, now)
        return None

    def rate_limited_at(self, now: float) -> None:
        """A rate-limit 429: go below what the last window granted (by a fifth, then by one
        per further 429 of the same burst; not below an eighth of the ceiling: a 429 caused
        by another client on the key must not stall this one for minutes), and start the
        window at the 429, calm."""
        self.recover(now)
        self.prune(now)
        recent = now - self.last_429 < self.window / _DECREASE_SPACING
        self.last_429 = now
        self.next_recovery = now + self.window / RECOVERY_STEPS
        ceiling = self.ceiling
        floor = max(1, ceiling // 8) if ceiling is not None else 1
        limit = self.limit
        if recent:
            # The same burst: each further refusal shows one more grant the server did not
            # count, so the limit goes down by one more.
            if limit is not None and limit > floor:
                limit -= 1
        else:
            granted = int(len(self.log) * _DECREASE)
            if self.calm and limit is not None:
                # The window started at an earlier 429 and holds few grants: a fifth off
                # the limit itself, not a drop to what those few grants were.
                granted = max(granted, int(limit * _DECREASE))
            if limit is None:
                limit = max(floor, granted) if granted else None
            else:
                limit = max(1, min(limit - 1, max(floor, granted)))
        if limit is None:
            return
        # The lowered limit counts from the 429 on: the grants before it are the server's
        # to count (its Retry-After says when it takes more), never a wait here.
        self.log.clear()
        self.next_paced = -math.inf
        self.calm = True
        self._set_limit(limit)

    def recover(self, now: float) -> None:
        """Every quiet ``window / RECOVERY_STEPS`` after a 429: a tenth of the ceiling back."""
        if self.limit is None or now < self.next_recovery:
            return
        ceiling = self.ceiling
        if ceiling is None or self.limit >= ceiling:
            # Back at the ceiling (a learnt limit without one is dropped): calm no more.
            self.calm = False
            self.next_recovery = math.inf
            self._set_limit(ceiling)
            return
        self._set_limit(min(ceiling, self.limit + max(1, ceiling // 10)))
        self.next_recovery = now + self.window / RECOVERY_STEPS

    def allow(self, remaining: int, until: float) -> None:
        """The API said ``remaining`` requests are left until ``until``."""
        self.allowance = max(0, remaining)
        self.allowance_until = until

    def observe_use(
        self, stated: int, remaining: int, now: float, pool: EndpointRate | None = None
    ) -> None:
        """An answer counted ``stated - remaining`` requests in the API's window: keep
        :func:`others_on_key` of them. They leave the window within ``window`` of now at the
        latest; each answer that states a count replaces the figure.

        ``pool``: the pooled limit this endpoint is under. Whether the API's count covers
        this endpoint alone or every endpoint of a model is [UNK]; counting the pool's
        grants as ours too errs low either way (a count over all endpoints would otherwise
        read our own queue calls as another client's polls)."""
        if self.limit is None:
            return  # no log kept: nothing to tell our grants from the others'
        self.prune(now)
        ours = len(self.log)
        if pool is not None and pool.limit is not None:
            pool.prune(now)
            ours = max(ours, len(pool.log))
        self.others = others_on_key(stated, remaining, ours)
        self.others_until = now + self.window

    def others_now(self, now: float) -> int:
        """Other clients' requests in the window as last stated (0 once it is stale)."""
        return self.others if self.others_until > now else 0

    def allowance_left(self, now: float) -> int | None:
        """What the API said remains, while its reset lies ahead (else ``None``)."""
        if self.allowance is None or self.allowance_until <= now:
            return None
        return self.allowance

    def prune(self, now: float) -> None:
        log, window = self.log, self.window
        while log and reached(log[0] + window, now):
            log.popleft()

    def rate_ready(self, t: float, reserve: int = 0) -> float:
        """Earliest time >= ``t`` at which the rate limit allows a grant.

        ``reserve``: grants of the window kept for others (a pool keeps them for the
        ``queue`` calls waiting: they come before polls), so this grant is paced at the
        share left (``window / (limit - reserve)``); one grant is always left.
        """
        self.recover(t)
        if self.allowance_left(t) == 0:
            t = max(t, self.allowance_until)
        if self.limit is None:
            return t
        limit, burst = self.limit, self.burst
        if reserve > 0:
            limit -= min(reserve, limit - 1)
            burst = min(burst, limit)
        log, count = self.log, len(self.log)
        # Paced path: the window has room and the pacing point has passed; with grants kept
        # for others, no closer to the last grant than the share left allows (others first).
        paced = max(t, self.next_paced)
        if reserve > 0 and log:
            paced = max(paced, log[-1] + self.window / limit)
        if count >= limit:
            paced = max(paced, log[count - limit] + self.window)
        if count < burst:
            return t
        # Burst path: enough grants have left the window that pacing no longer applies.
        unpaced = max(t, log[count - burst] + self.window)
        return min(paced, unpaced)

    def tokens(self, now: float) -> int | None:
        if self.limit is None:
            return None
        count = len(self.log)
        if count >= self.limit or self.allowance_left(now) == 0:
            return 0
        if count < self.burst:
            return self.burst - count
        return 1 if reached(self.next_paced, now) else 0

    def grant(self, now: float) -> None:
        self.granted += 1
        if self.allowance is not None and self.allowance > 0:
            self.allowance -= 1
        if self.limit is None:
            return
        self.prune(now)
        log = self.log
        log.append(now)
        # Spread the free slots evenly until the oldest grant leaves the window (which frees
        # one more); with the window evenly filled this is the plain interval. A spread
        # rule (burst 1) has no floor: see the module's docstring.
        free = max(0, self.limit - len(log))
        floor = 0.0 if self.burst_setting == 1 else self.interval
        self.next_paced = now + max(floor, (log[0] + self.window - now) / (free + 1))
