"""What one process of a :class:`~._rate.redis_budget.RedisBudget` knows of the shared state.

The synchronous views of a budget (``next_available``, ``window``, ``statistics``) must not
wait or do I/O, so they read :class:`SharedMirror`: the pauses, limits and grants the last
round trip to Redis reported (taken in with :meth:`~SharedMirror.absorb`), this process's
own grants and failures, and its counters. While Redis is away the same mirror answers with
this process's share of each limit (``local_share``) and keeps what it did meanwhile for
when Redis is back. Every time here is a ``clock.monotonic()`` reading.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Collection, Mapping, Sequence

import anyio
import attrs

from .._core.config import RateLimit, is_assumed
from .budget import RateWindow, tighter_window
from .endpoint_rate import EndpointRate, Waiter, queue_reserve
from .statistics import BudgetStatistics, EndpointFigures, budget_statistics

__all__ = [
    "EPS",
    "EndpointView",
    "Entity",
    "EntityView",
    "SharedMirror",
    "Snapshot",
]

#: Unlimited endpoints are still watched over a minute (a stated limit may appear).
_MINUTE = 60.0
#: Name of the pooled limit's entity in Redis and in the mirror.
_POOL = "pool"
#: Times this close count as equal (Redis answers in whole microseconds).
EPS = 1e-9


@attrs.frozen
class Entity:
    """One rate rule in Redis: an endpoint's own limit or the pool (windows in clock s)."""

    name: str
    configured: int  # 0: no limit configured (a stated one may still apply)
    window: float
    burst: int
    explicit: bool = True  # the user's own limit: a stated one only caps it


def _entity(name: str, rate: RateLimit | None) -> Entity:
    """The rule ``name`` follows in Redis (``rate`` ``None``: no configured limit)."""
    if rate is None:
        return Entity(name=name, configured=0, window=_MINUTE, burst=0)
    return Entity(
        name=name,
        configured=rate.limit,
        window=rate.window,
        burst=rate.effective_burst,
        explicit=not is_assumed(rate.per_minute),
    )


@attrs.frozen
class Snapshot:
    """What a script reported of the shared state, in clock seconds from its reply.

    ``rows`` holds, for each entity asked about, its limit now (``None``: none), whether it
    is calm (recovering from a 429: no burst) and the ages of the grants inside its window.
    ``pool_refuted``: the assumed pool asked about is refuted (two of its endpoints stated
    different figures): no pool from now on; ``refuted_by``: (the other endpoint, its
    figure) when the answer this reply learnt from refuted it.
    """

    session_pause: float | None
    reason: str
    failure_pause: float | None
    endpoint_pause: float | None
    allowance: int | None
    allowance_for: float
    rows: tuple[tuple[int | None, bool, tuple[float, ...]], ...]
    pool_refuted: bool = False
    refuted_by: tuple[str, int] | None = None


@attrs.define
class EntityView:
    """What the last round trip said of an entity: its limit and grants."""

    limit: int | None
    window: float
    calm: bool = False
    grants: deque[float] = attrs.field(factory=deque)
    own: deque[tuple[float, bool]] = attrs.field(factory=deque)  # (time, made while away)

    def prune(self, now: float) -> None:
        horizon = now - self.window
        while self.grants and self.grants[0] <= horizon:
            self.grants.popleft()
        while self.own and self.own[0][0] <= horizon:
            self.own.popleft()


@attrs.define
class EndpointView:
    """An endpoint's local state: its FIFO lock, the last reply's pauses, counters."""

    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    ready_at: float = -math.inf
    paused_until: float = -math.inf
    paused_seconds: float = 0.0
    allowance: int | None = None
    allowance_until: float = -math.inf
    others: int = 0  # requests of clients outside the budget in the API's window ...
    others_until: float = -math.inf  # ... as the last stated count showed them, until then
    contenders: int = 0  # other clients asking for this endpoint, as of the last reply
    granted: int = 0
    waiting: int = 0
    rate_limited: int = 0
    #: This process's callers waiting for a token, first first (their deadlines).
    line: deque[Waiter] = attrs.field(factory=deque)


class SharedMirror:
    """The shared budget as of the last round trip, plus this process's own doings.

    Args:
        rates: each endpoint's configured limit.
        pool: the pooled limit (``None``: none) over ``pooled`` endpoints.
        failure_window: seconds of the failed-request window.
        share: the share of each limit this process uses while Redis is away.
    """

    def __init__(
        self,
        *,
        rates: Mapping[str, RateLimit],
        pool: RateLimit | None,
        pooled: Collection[str],
        failure_window: float,
        share: float,
    ) -> None:
        self._rates = rates
        self.pool = _entity(_POOL, pool) if pool is not None else None
        self._pooled = pooled
        self.failure_window = failure_window
        self.share = share
        self.entities: dict[str, EntityView] = {}
        self.endpoints: dict[str, EndpointView] = {}
        self.paused_until = -math.inf
        self.pause_reason: str | None = None
        self.paused_seconds = 0.0
        self.failure_paused_until = -math.inf
        self.failure_paused_seconds = 0.0
        self.granted = 0
        self.rate_limited = 0
        self.failures = 0
        self.own_failures: deque[tuple[float, bool]] = deque()  # (time, made while away)
        #: Models whose queue calls are held (an overloaded model's 429), until when.
        self.model_held: dict[str, float] = {}
        #: The longest session pause learnt while Redis was away (until, reason).
        self.pending_pause: tuple[float, str] | None = None

    @property
    def longest_window(self) -> float:
        """The longest window any rule here looks back over (clock s)."""
        windows = [r.window for r in self._rates.values()] + [_MINUTE, self.failure_window]
        if self.pool is not None:
            windows.append(self.pool.window)
        return max(windows)

    # ------------------------------------------------------------------ lookups

    def endpoint(self, name: str) -> EndpointView:
        view = self.endpoints.get(name)
        if view is None:
            view = self.endpoints[name] = EndpointView()
        return view

    def entities_of(self, endpoint: str) -> list[Entity]:
        """The rules ``endpoint`` follows: its own, then the pool's if it is pooled."""
        own = _entity(endpoint, self._rates.get(endpoint))
        if self.pool is not None and endpoint in self._pooled:
            return [own, self.pool]
        return [own]

    def queue_reserve(self, now: float) -> int:
        """The pool's grants a poll of this process leaves for its queue calls waiting
        (:func:`~._rate.endpoint_rate.queue_reserve`, as ``LocalBudget``), the queue's own
        window as of the last round trip."""
        waiting = len(self.endpoint("queue").line)
        if not waiting:
            return 0
        view = self.entity_view(self.entities_of("queue")[0])
        room = None
        if view.limit is not None:
            view.prune(now)
            room = view.limit - len(view.grants)
        return queue_reserve(waiting, room)

    def entity_view(self, rule: Entity) -> EntityView:
        view = self.entities.get(rule.name)
        if view is None:
            limit = rule.configured or None
            view = self.entities[rule.name] = EntityView(limit=limit, window=rule.window)
        return view

    # ------------------------------------------------------------------ taking news in

    def absorb(self, endpoint: str, entities: Sequence[Entity], news: Snapshot, at: float) -> None:
        """Take in what a round trip about ``endpoint`` reported at ``at``."""
        if news.session_pause is not None:
            self.extend_session_pause(at + news.session_pause, at, news.reason)
        if news.failure_pause is not None:
            self.extend_failure_pause(at + news.failure_pause, at)
        view = self.endpoint(endpoint)
        if news.endpoint_pause is not None:
            self.extend_endpoint_pause(view, at + news.endpoint_pause, at)
        if news.allowance is not None:
            view.allowance, view.allowance_until = news.allowance, at + news.allowance_for
        else:
            view.allowance, view.allowance_until = None, -math.inf
        for rule, (limit, calm, ages) in zip(entities, news.rows, strict=True):
            entity_view = self.entity_view(rule)
            entity_view.limit = limit
            entity_view.calm = calm
            entity_view.grants = deque(at - age for age in ages)
        if news.pool_refuted:
            self.drop_pool()

    def absorb_grants(
        self, entities: Sequence[Entity], ages: Sequence[Sequence[float]], at: float
    ) -> None:
        """Take in the grants of ``entities`` (every process's) as a demand trade read them
        at ``at``: the window the poll price reads, fresh without a token taken."""
        for rule, entity_ages in zip(entities, ages, strict=True):
            self.entity_view(rule).grants = deque(at - age for age in entity_ages)

    def drop_pool(self) -> None:
        """Redis says the assumed pool is refuted: each endpoint keeps its own limit from
        now on, as with no pool (a pool the user gave or the key listed is never dropped)."""
        if self.pool is None or self.pool.explicit:
            return
        self.pool = None
        self.entities.pop(_POOL, None)

    def extend_session_pause(self, until: float, now: float, reason: str) -> None:
        if until <= self.paused_until + EPS:
            return
        self.paused_seconds += until - max(self.paused_until, now)
        self.paused_until = until
        self.pause_reason = reason or self.pause_reason

    def extend_failure_pause(self, until: float, now: float) -> None:
        if until > self.failure_paused_until:
            self.failure_paused_seconds += until - max(self.failure_paused_until, now)
            self.failure_paused_until = until

    @staticmethod
    def extend_endpoint_pause(view: EndpointView, until: float, now: float) -> None:
        if until > view.paused_until + EPS:
            view.paused_seconds += until - max(view.paused_until, now)
            view.paused_until = until

    def note_grant(self, endpoint: str, now: float, *, away: bool) -> None:
        """Count a grant this process took (``away``: on its local share)."""
        self.granted += 1
        view = self.endpoint(endpoint)
        view.granted += 1
        if away and view.allowance is not None and view.allowance > 0:
            view.allowance -= 1  # a reply from Redis already counts the grant
        for rule in self.entities_of(endpoint):
            entity_view = self.entity_view(rule)
            if entity_view.limit is None:
                continue
            entity_view.prune(now)
            entity_view.own.append((now, away))
            if away:  # the shared view goes stale while away: keep our own grants in it
                entity_view.grants.append(now)

    # ------------------------------------------------------------------ Redis away and back

    def share_limit(self, view: EntityView) -> int | None:
        if view.limit is None:
            return None
        return max(1, math.floor(view.limit * self.share))

    def local_ready(self, endpoint: str, now: float) -> float:
        """While away: when this process's share allows a grant (evenly spaced)."""
        view = self.endpoint(endpoint)
        t = max(now, self.paused_until, self.failure_paused_until, view.paused_until)
        for rule in self.entities_of(endpoint):
            entity_view = self.entity_view(rule)
            limit = self.share_limit(entity_view)
            if limit is None:
                continue
            entity_view.prune(now)
            own = entity_view.own
            if len(own) >= limit:
                t = max(t, own[len(own) - limit][0] + entity_view.window)
            if own:
                t = max(t, own[-1][0] + entity_view.window / limit)
        return t

    def made_while_away(self, now: float) -> tuple[list[float], dict[str, list[float]]]:
        """The ages of this process's failures and, per entity, grants made while away."""
        failures = [now - t for t, away in self.own_failures if away]
        grants: dict[str, list[float]] = {}
        for name, view in self.entities.items():
            view.prune(now)
            ages = [now - t for t, away in view.own if away]
            if ages:
                grants[name] = ages
        return failures, grants

    def shared_again(self) -> None:
        """Redis has heard of everything done while away: nothing is pending any more."""
        self.pending_pause = None
        self.own_failures = deque((t, False) for t, _ in self.own_failures)
        for view in self.entities.values():
            view.own = deque((t, False) for t, _ in view.own)

    # ------------------------------------------------------------------ views

    def session_paused(self, now: float) -> bool:
        """Whether every request is held now (a shared pause, the failure window)."""
        return self.paused_until > now or self.failure_paused_until > now

    def next_available(self, endpoint: str, now: float, *, away: bool) -> float:
        if away:
            return self.local_ready(endpoint, now)
        view = self.endpoint(endpoint)
        return max(
            now, view.ready_at, view.paused_until, self.paused_until, self.failure_paused_until
        )

    def window(self, endpoint: str, now: float, *, away: bool) -> RateWindow | None:
        """The tighter of the endpoint's and its pool's windows (while away: our share)."""
        view = self.endpoint(endpoint)
        windows: list[RateWindow | None] = []
        for rule in self.entities_of(endpoint):
            entity_view = self.entity_view(rule)
            entity_view.prune(now)
            limit = self.share_limit(entity_view) if away else entity_view.limit
            if limit is None:
                windows.append(None)
                continue
            grants = [t for t, _ in entity_view.own] if away else entity_view.grants
            own = rule is not self.pool
            allowance = view.allowance if own and view.allowance_until > now else None
            windows.append(
                RateWindow(
                    limit=limit,
                    window=entity_view.window,
                    grants=tuple(grants),
                    allowance=allowance,
                    allowance_until=view.allowance_until if allowance is not None else None,
                    others=view.others if own and view.others_until > now else 0,
                )
            )
        pooled = windows[1] if len(windows) > 1 else None
        return tighter_window(windows[0], pooled, now)

    def what_if(self, endpoint: str, now: float, *, away: bool) -> list[EndpointRate]:
        """Copies of the rules ``endpoint`` follows, as of the last round trip (every
        process's grants; while away: this process's share), to play grants forward on."""
        rates: list[EndpointRate] = []
        for rule in self.entities_of(endpoint):
            view = self.entity_view(rule)
            view.prune(now)
            limit = self.share_limit(view) if away else view.limit
            if limit is None:
                continue
            grants = [t for t, _ in view.own] if away else view.grants
            # Away, this process spaces its share evenly (no burst); in Redis a rule with
            # no configured burst is a bare log (as EndpointRate).
            burst = 1 if away else (rule.burst or limit)
            rates.append(
                EndpointRate.seeded(
                    rule.name,
                    limit=limit,
                    window=view.window,
                    burst=burst,
                    grants=grants,
                    calm=view.calm,
                )
            )
        return rates

    def retry_jitter(self, endpoint: str, now: float, jitter: float) -> float:
        """How late to come back for a slot while other processes compete for it.

        A random share of ``jitter`` pacing intervals, plus more for a process that had more
        than its fair part of the window's grants (two shares per fair part in excess, up to
        four): the slot tends to go to one that had less, so shares even out and nobody
        starves. 0 with no competition, and for polls: the shared price decides which
        process's polls are worth the window, not their count (with polls spread, every
        slot is contended, and a process that polled most lately, held back, lost every
        slot for 15 s while its jobs finished).
        """
        contenders = self.endpoint(endpoint).contenders
        if jitter <= 0 or not contenders or endpoint == "retrieve":
            return 0.0
        interval, ahead = 0.0, 0.0
        for rule in self.entities_of(endpoint):
            view = self.entity_view(rule)
            if view.limit is None:
                continue
            interval = max(interval, view.window / view.limit)
            view.prune(now)
            if view.grants:
                fair_parts = len(view.own) / len(view.grants) * (contenders + 1)
                ahead = max(ahead, min(4.0, 2.0 * (fair_parts - 1.0)))
        return (random.random() + ahead) * jitter * interval

    def prune_failures(self, now: float) -> None:
        failures = self.own_failures
        while failures and failures[0][0] + self.failure_window <= now:
            failures.popleft()

    def statistics(self, now: float, *, away: bool) -> BudgetStatistics:
        """This process's counts, the shared pauses and windows."""
        figures: list[EndpointFigures] = []
        for name in sorted(set(self._rates) | set(self.endpoints)):
            view = self.endpoint(name)
            window = self.window(name, now, away=away)
            figures.append(
                EndpointFigures(
                    endpoint=name,
                    tokens=window.free_after(0.0, now) if window is not None else None,
                    used=len(window.grants) if window is not None else 0,
                    limit=window.limit if window is not None else None,
                    granted=view.granted,
                    waiting=view.waiting,
                    rate_limited=view.rate_limited,
                    paused_seconds=view.paused_seconds,
                    paused_until=view.paused_until,
                )
            )
        self.prune_failures(now)
        return budget_statistics(
            now,
            figures,
            granted=self.granted,
            rate_limited=self.rate_limited,
            paused_seconds=self.paused_seconds,
            paused_until=self.paused_until,
            pause_reason=self.pause_reason,
            failures=self.failures,
            failures_in_window=len(self.own_failures),
            failure_paused_until=self.failure_paused_until,
            failure_paused_seconds=self.failure_paused_seconds,
        )
