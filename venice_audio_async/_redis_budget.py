"""A request budget shared by every process on one API key, kept in Redis.

Venice's limits are per key, and a web app under gunicorn or a batch split over machines
runs many processes on one key. :class:`RedisBudget` keeps one budget for all of them in
Redis: each ``acquire`` runs one Lua script (:mod:`._redis_scripts`) that applies the rules of
:class:`~._budget.LocalBudget` to shared state (each endpoint's sliding log in a sorted set
scored by the Redis server's own clock, the session-wide pause, the failed-request window)
and answers "granted" or "wait N ms" with the window's occupancy. The synchronous views
(:meth:`~RedisBudget.window`, :meth:`~RedisBudget.next_available`) answer from that reply,
so the poll policy sees every process's grants without a round trip of its own.

Redis trouble is not an outage: when it cannot be reached, at start or mid-run, the budget
runs on a conservative local share of each limit (``local_share``), logs a warning,
reconnects with backoff and, once back, logs the grants and failures it made meanwhile so
the shared window does not burst.

Install with ``pip install 'venice-audio-async[redis]'``; the package imports without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from ._budget import BudgetStatistics, EndpointStatistics, RateWindow, tighter_window
from ._clock import Clock, ManualClock, SystemClock
from ._config import RateLimit, RateLimits, endpoint_rates, pooled_rate
from ._lessons import Lesson, read_lesson
from ._redis_scripts import ACQUIRE, BACKFILL, LEARN, RELEASE

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBudget", "namespace_for_key"]

log = logging.getLogger("venice_audio_async")

#: Unlimited endpoints are still watched over a minute (a stated limit may appear).
_MINUTE = 60.0
#: Name of the pooled limit's entity in Redis and in the local views.
_POOL = "pool"
_INSTALL_HINT = "RedisBudget needs the redis package: pip install 'venice-audio-async[redis]'"
_EPS = 1e-9
#: What a script argument may be.
_Arg = str | int | float


def _import_redis() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return redis_asyncio


def namespace_for_key(api_key: str) -> str:
    """The Redis namespace for ``api_key``: a hash of it, never the key itself.

    .. versionadded:: 0.1.0
    """
    digest = hashlib.sha256(b"venice-audio-async/budget\x00" + api_key.encode("utf-8"))
    return digest.hexdigest()[:24]


@attrs.frozen
class _Entity:
    """One rate rule in Redis: an endpoint's own limit or the pool (windows in clock s)."""

    name: str
    configured: int  # 0: no limit configured (a stated one may still apply)
    window: float
    burst: int


@attrs.define
class _EntityView:
    """What the last round trip said of an entity: its limit and grants (local clock)."""

    limit: int | None
    window: float
    grants: deque[float] = attrs.field(factory=deque)
    own: deque[tuple[float, bool]] = attrs.field(factory=deque)  # (time, made while away)

    def prune(self, now: float) -> None:
        horizon = now - self.window
        while self.grants and self.grants[0] <= horizon:
            self.grants.popleft()
        while self.own and self.own[0][0] <= horizon:
            self.own.popleft()


@attrs.define
class _EndpointView:
    """An endpoint's local state: its FIFO lock, the last reply's pauses, counters."""

    lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    ready_at: float = -math.inf
    paused_until: float = -math.inf
    paused_seconds: float = 0.0
    allowance: int | None = None
    allowance_until: float = -math.inf
    stated_sent: int | None = None
    contenders: int = 0  # other clients asking for this endpoint, as of the last reply
    granted: int = 0
    waiting: int = 0
    rate_limited: int = 0


class RedisBudget:
    """A :class:`~venice_audio_async.RequestBudget` shared through Redis by many processes.

    Open it once per process, with the same API key (or ``namespace``) everywhere::

        budget = RedisBudget.from_url("redis://localhost:6379/0")
        async with AsyncSession(budget=budget) as session:
            ...

    The rules are :class:`~venice_audio_async.LocalBudget`'s, applied to every process at
    once: at most N grants in any window per endpoint (and per pool), paced after a burst;
    a 429 pauses every process as its headers say and lowers that endpoint's limit below
    what its last window granted (not below an eighth; it recovers slowly); a limit the API
    states caps the configured one at once; failed requests of every process share one
    failure window. Waiters retry at the time Redis names, with a little jitter while other
    processes compete, so none starves. Counts in :meth:`statistics` are this process's;
    pauses and windows are the shared ones as of the last round trip.

    Args:
        redis: a ``redis.asyncio.Redis`` client (keep its timeouts short: a slow Redis
            holds requests up until it times out).
        namespace: prefix of every key; processes with the same one share a budget.
            :func:`namespace_for_key` derives it from an API key (see :meth:`from_url`).
        clock: the session's clock (``SystemClock`` or ``ScaledClock``; Redis keeps real
            time, so a ``ManualClock`` cannot be used).
        rate_limits: the limits (default :class:`~venice_audio_async.RateLimits`).
        max_retry_after: cap, in seconds, on any pause read from response headers.
        failure_margin: stop sending once ``failures_per_window - failure_margin`` failures
            of all processes lie in the failure window.
        local_share: the share of each limit this process uses while Redis cannot be
            reached (e.g. 1 / the number of processes; default 0.25).
        retry_jitter: waiters competing with other processes retry up to this share of a
            pacing interval late, at random (spreads them; 0 disables).
        reconnect_backoff: ``(first, longest)`` real seconds between reconnection attempts
            while Redis is away (doubling).
        round_trip_timeout: real seconds one round trip may take before Redis counts as
            away.
        time_scale: real seconds per clock second (default: ``clock.scale`` or 1).

    Raises:
        ValueError: a bad setting, or a ``ManualClock``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        clock: Clock | None = None,
        rate_limits: RateLimits | None = None,
        max_retry_after: float = 60.0,
        failure_margin: int = 5,
        local_share: float = 0.25,
        retry_jitter: float = 0.25,
        reconnect_backoff: tuple[float, float] = (0.25, 15.0),
        round_trip_timeout: float = 2.0,
        time_scale: float | None = None,
    ) -> None:
        clock = clock or SystemClock()
        if isinstance(clock, ManualClock):
            raise ValueError("RedisBudget keeps real time: use SystemClock or ScaledClock")
        scale = time_scale if time_scale is not None else float(getattr(clock, "scale", 1.0))
        limits = rate_limits or RateLimits()
        _check(0 < local_share <= 1, f"local_share must be in (0, 1], got {local_share!r}")
        _check(retry_jitter >= 0, f"retry_jitter must be >= 0, got {retry_jitter!r}")
        _check(math.isfinite(scale) and scale > 0, f"time_scale must be > 0, got {scale!r}")
        _check(max_retry_after >= 0, f"max_retry_after must be >= 0, got {max_retry_after!r}")
        _check(
            0 < reconnect_backoff[0] <= reconnect_backoff[1],
            f"reconnect_backoff must be (first, longest) with 0 < first <= longest, "
            f"got {reconnect_backoff!r}",
        )
        _check(round_trip_timeout > 0, "round_trip_timeout must be > 0")
        threshold = limits.failures_per_window - failure_margin
        _check(threshold >= 1, "failures_per_window minus failure_margin must be >= 1")
        _check(bool(namespace), "namespace must not be empty")
        self._redis = redis
        self._clock = clock
        self._scale = scale
        self._max_retry_after = float(max_retry_after)
        self._failure_threshold = threshold
        self._failure_window = limits.failure_window
        self._share = float(local_share)
        self._jitter = float(retry_jitter)
        self._backoff = (float(reconnect_backoff[0]), float(reconnect_backoff[1]))
        self._timeout = float(round_trip_timeout)
        self._prefix = f"venice-audio:{{{namespace}}}:"
        self.namespace = namespace
        self._rates = endpoint_rates(limits)
        pool = pooled_rate(limits)
        self._pool = _entity(_POOL, pool) if pool is not None else None
        self._pooled = limits.pooled_endpoints
        windows = [r.window for r in self._rates.values()] + [_MINUTE, self._failure_window]
        if pool is not None:
            windows.append(pool.window)
        longest = max(*windows, self._max_retry_after)
        self._ttl_ms = math.ceil(longest * 2 * scale * 1000) + 1000
        self._scripts = {
            name: redis.register_script(source)
            for name, source in (
                ("acquire", ACQUIRE),
                ("learn", LEARN),
                ("backfill", BACKFILL),
                ("release", RELEASE),
            )
        }
        self._client_id = secrets.token_hex(6)
        self._sequence = itertools.count(1)
        self._entities: dict[str, _EntityView] = {}
        self._endpoints: dict[str, _EndpointView] = {}
        self._paused_until = -math.inf
        self._pause_reason: str | None = None
        self._paused_seconds = 0.0
        self._failure_paused_until = -math.inf
        self._failure_paused_seconds = 0.0
        self._granted = 0
        self._rate_limited = 0
        self._consecutive_429 = 0
        self._failures = 0
        self._own_failures: deque[tuple[float, bool]] = deque()  # (time, made while away)
        self._pending_pause: tuple[float, str] | None = None
        self._round_trips = 0
        self._degraded = False
        self._reconnect_delay = self._backoff[0]
        self._reconnect_at = 0.0  # time.monotonic() of the next attempt while away
        self._errors = _redis_errors()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        namespace: str | None = None,
        clock: Clock | None = None,
        rate_limits: RateLimits | None = None,
        socket_timeout: float = 1.0,
        **options: Any,
    ) -> RedisBudget:
        """A budget on the Redis server at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Keys are namespaced by a hash of ``api_key`` (default ``VENICE_API_KEY``), so
        processes on the same key share one budget; ``namespace`` overrides that. Nothing is
        sent until the first request: an unreachable server only means the local share.
        ``options`` go to :class:`RedisBudget`.

        Raises:
            ImportError: the ``redis`` package is missing (install the ``redis`` extra).
            ValueError: neither a key nor a namespace, or a bad setting.
        """
        redis_asyncio = _import_redis()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if namespace is None:
            key = api_key if api_key is not None else os.environ.get("VENICE_API_KEY")
            if not key:
                raise ValueError(
                    "RedisBudget.from_url needs the API key (api_key= or VENICE_API_KEY) "
                    "or a namespace= to name the shared keys"
                )
            namespace = namespace_for_key(key)
        client = redis_asyncio.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # One quick retry, then the local share: a budget must not hang on Redis.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, namespace=namespace, clock=clock, rate_limits=rate_limits, **options)

    def __repr__(self) -> str:
        state = "away" if self._degraded else "shared"
        return f"RedisBudget(namespace={self.namespace!r}, {state})"

    async def __aenter__(self) -> RedisBudget:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to Redis (reopened if the budget is used again)."""
        with anyio.CancelScope(shield=True):
            await self._redis.connection_pool.disconnect()

    # ------------------------------------------------------------------ public state

    @property
    def round_trips(self) -> int:
        """Round trips to Redis so far (successful or not)."""
        return self._round_trips

    @property
    def degraded(self) -> bool:
        """Whether Redis is away and this process runs on its local share."""
        return self._degraded

    # ------------------------------------------------------------------ plumbing

    def _key(self, suffix: str) -> str:
        return self._prefix + suffix

    def _endpoint(self, name: str) -> _EndpointView:
        view = self._endpoints.get(name)
        if view is None:
            view = self._endpoints[name] = _EndpointView()
        return view

    def _entities_of(self, endpoint: str) -> list[_Entity]:
        own = _entity(endpoint, self._rates.get(endpoint))
        if self._pool is not None and endpoint in self._pooled:
            return [own, self._pool]
        return [own]

    def _entity_view(self, entity: _Entity) -> _EntityView:
        view = self._entities.get(entity.name)
        if view is None:
            limit = entity.configured or None
            view = self._entities[entity.name] = _EntityView(limit=limit, window=entity.window)
        return view

    def _ms(self, seconds: float) -> float:
        """Clock seconds as real milliseconds (what the scripts take)."""
        return seconds * self._scale * 1000.0

    def _from_us(self, microseconds: float) -> float:
        """Real microseconds (what the scripts answer) as clock seconds."""
        return microseconds / 1e6 / self._scale

    def _entity_args(self, entities: Sequence[_Entity]) -> tuple[list[str], list[_Arg]]:
        keys: list[str] = []
        args: list[_Arg] = []
        for entity in entities:
            keys += [self._key(f"ep:{entity.name}"), self._key(f"log:{entity.name}")]
            args += [entity.configured, self._ms(entity.window), entity.burst]
        return keys, args

    async def _round_trip(self, script: str, keys: list[str], args: list[_Arg]) -> Any:
        """One script call; raises one of ``self._errors`` when Redis is away."""
        self._round_trips += 1
        with anyio.CancelScope(shield=True), anyio.fail_after(self._timeout):
            return await self._scripts[script](keys=keys, args=args)

    def _absorb(self, endpoint: str, entities: Sequence[_Entity], snapshot: Sequence[Any]) -> float:
        """Take in a script's snapshot; returns the local time it stands for."""
        at = self._clock.monotonic()
        _, session_us, reason, failure_us, endpoint_us, allowance, allowance_us = snapshot[:7]
        if session_us > 0:
            self._extend_session_pause(at + self._from_us(session_us), at, _text(reason))
        if failure_us > 0:
            until = at + self._from_us(failure_us)
            if until > self._failure_paused_until:
                self._failure_paused_seconds += until - max(self._failure_paused_until, at)
                self._failure_paused_until = until
        view = self._endpoint(endpoint)
        if endpoint_us > 0:
            self._extend_endpoint_pause(view, at + self._from_us(endpoint_us), at)
        if allowance >= 0:
            view.allowance, view.allowance_until = int(allowance), at + self._from_us(allowance_us)
        else:
            view.allowance, view.allowance_until = None, -math.inf
        for entity, row in zip(entities, snapshot[7:], strict=True):
            entity_view = self._entity_view(entity)
            entity_view.limit = int(row[0]) or None
            entity_view.grants = deque(at - self._from_us(age) for age in row[1:])
        return at

    def _extend_session_pause(self, until: float, now: float, reason: str) -> None:
        if until <= self._paused_until + _EPS:
            return
        self._paused_seconds += until - max(self._paused_until, now)
        self._paused_until = until
        self._pause_reason = reason or self._pause_reason

    @staticmethod
    def _extend_endpoint_pause(view: _EndpointView, until: float, now: float) -> None:
        if until > view.paused_until + _EPS:
            view.paused_seconds += until - max(view.paused_until, now)
            view.paused_until = until

    def _note_grant(self, endpoint: str, now: float, *, away: bool) -> None:
        self._granted += 1
        view = self._endpoint(endpoint)
        view.granted += 1
        if away and view.allowance is not None and view.allowance > 0:
            view.allowance -= 1  # a reply from Redis already counts the grant
        for entity in self._entities_of(endpoint):
            entity_view = self._entity_view(entity)
            if entity_view.limit is None:
                continue
            entity_view.prune(now)
            entity_view.own.append((now, away))
            if away:  # the shared view goes stale while away: keep our own grants in it
                entity_view.grants.append(now)

    # ------------------------------------------------------------------ Redis away

    def _go_away(self, error: BaseException) -> None:
        if self._degraded:
            self._reconnect_delay = min(self._backoff[1], self._reconnect_delay * 2)
        else:
            self._degraded = True
            self._reconnect_delay = self._backoff[0]
            for view in self._endpoints.values():
                view.stated_sent = None  # tell Redis again once it is back
            log.warning(
                "Redis is unreachable (%s: %s): this process now sends at most %.0f%% of each "
                "rate limit on its own until Redis is back; reconnecting with backoff",
                type(error).__name__,
                error,
                self._share * 100,
            )
        spread = 0.5 + random.random()
        self._reconnect_at = time.monotonic() + self._reconnect_delay * spread

    def _reconnect_wait(self) -> float:
        """Clock seconds until the next reconnection attempt."""
        return max(0.0, self._reconnect_at - time.monotonic()) / self._scale

    async def _reconnect(self) -> None:
        """Try Redis again; once back, log there what was done meanwhile."""
        now = self._clock.monotonic()
        keys = [self._key("session"), self._key("failures")]
        failures = [now - t for t, away in self._own_failures if away]
        args: list[_Arg] = [
            f"{self._client_id}:b{next(self._sequence)}",
            self._ttl_ms,
        ]
        pause_ms = -1.0
        reason = ""
        if self._pending_pause is not None and self._pending_pause[0] > now:
            pause_ms, reason = self._ms(self._pending_pause[0] - now), self._pending_pause[1]
        args += [pause_ms, reason, self._failure_threshold, self._ms(self._failure_window)]
        args += [len(failures), *(self._ms(age) * 1000 for age in failures)]
        added = 0
        for name, view in self._entities.items():
            view.prune(now)
            ages = [now - t for t, away in view.own if away]
            if not ages:
                continue
            keys.append(self._key(f"log:{name}"))
            args += [len(ages), *(self._ms(age) * 1000 for age in ages)]
            added += len(ages)
        try:
            await self._round_trip("backfill", keys, args)
        except self._errors as error:
            self._go_away(error)
            return
        self._degraded = False
        self._pending_pause = None
        self._own_failures = deque((t, False) for t, _ in self._own_failures)
        for view in self._entities.values():
            view.own = deque((t, False) for t, _ in view.own)
        log.warning(
            "Redis is back: recorded the %d grant(s) and %d failure(s) made meanwhile; "
            "sharing the budget again",
            added,
            len(failures),
        )

    def _share_limit(self, view: _EntityView) -> int | None:
        if view.limit is None:
            return None
        return max(1, math.floor(view.limit * self._share))

    def _local_ready(self, endpoint: str, now: float) -> float:
        """While away: when this process's share allows a grant (evenly spaced)."""
        view = self._endpoint(endpoint)
        t = max(now, self._paused_until, self._failure_paused_until, view.paused_until)
        for entity in self._entities_of(endpoint):
            entity_view = self._entity_view(entity)
            limit = self._share_limit(entity_view)
            if limit is None:
                continue
            entity_view.prune(now)
            own = entity_view.own
            if len(own) >= limit:
                t = max(t, own[len(own) - limit][0] + entity_view.window)
            if own:
                t = max(t, own[-1][0] + entity_view.window / limit)
        return t

    # ------------------------------------------------------------------ taking tokens

    async def acquire(self, endpoint: str, *, deadline: float | None = None) -> bool:
        """Wait until one request to ``endpoint`` may be sent, then take the token.

        This process's waiters go first come, first served (one at a time asks Redis).
        ``deadline`` is a ``clock.monotonic()`` reading: when no token can be had by then,
        returns False (at once when the last reply already says so) without taking one.
        Cancelling a waiter takes no token (a grant Redis made as it was cancelled is
        given back).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        clock = self._clock
        if deadline is not None and self.next_available(endpoint) > deadline + _EPS:
            return False
        view = self._endpoint(endpoint)
        view.waiting += 1
        try:
            if deadline is None:
                async with view.lock:
                    return await self._take(endpoint, None)
            with anyio.move_on_after(max(0.0, deadline - clock.monotonic()) * self._scale):
                async with view.lock:
                    return await self._take(endpoint, deadline)
            return False
        finally:
            view.waiting -= 1

    async def _take(self, endpoint: str, deadline: float | None) -> bool:
        clock = self._clock
        while True:
            if self._degraded and self._reconnect_wait() <= 0:
                await self._reconnect()
            if self._degraded:
                now = clock.monotonic()
                ready = self._local_ready(endpoint, now)
                if ready <= now + _EPS:
                    self._note_grant(endpoint, now, away=True)
                    return True
                wake = min(ready, now + self._reconnect_wait())
            else:
                ready = self.next_available(endpoint)
                if ready <= clock.monotonic() + _EPS:
                    # The last reply says a token may be free: ask Redis (one round trip).
                    outcome = await self._ask(endpoint)
                    if outcome is True:
                        return True
                    if outcome is None:
                        continue  # Redis went away: the local share decides
                    ready = outcome
                # Every process competing for the slot (the last winner too) comes back a
                # random moment after it frees: which one gets it is left to chance.
                wake = ready + self._retry_jitter(endpoint, clock.monotonic())
            if deadline is not None and ready > deadline + _EPS:
                return False
            await clock.sleep(wake - clock.monotonic())

    async def _ask(self, endpoint: str) -> float | bool | None:
        """One ACQUIRE: True (granted), the time to retry at, or None (Redis is away)."""
        entities = self._entities_of(endpoint)
        member = f"{self._client_id}:{next(self._sequence)}"
        keys, args = self._entity_args(entities)
        keys = [self._key("session"), *keys]
        try:
            reply = await self._round_trip(
                "acquire", keys, [member, self._client_id, self._ttl_ms, *args]
            )
        except self._errors as error:
            self._go_away(error)
            return None
        granted, wait_us = int(reply[0]), reply[1]
        at = self._absorb(endpoint, entities, reply[3:])
        view = self._endpoint(endpoint)
        view.contenders = int(reply[2])
        view.ready_at = math.inf if wait_us < 0 else at + self._from_us(wait_us)
        if not granted:
            return view.ready_at
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            # Cancelled while Redis granted: give the grant back, take no token.
            logs = [k for k in keys if ":log:" in k]
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(*self._errors):  # else it leaves the window in time
                    await self._round_trip("release", logs, [member])
            raise
        self._note_grant(endpoint, at, away=False)
        return True

    def _retry_jitter(self, endpoint: str, now: float) -> float:
        """How late to come back for a slot while other processes compete for it.

        A random share of ``retry_jitter`` pacing intervals, plus more for a process that
        had more than its fair part of the window's grants (two shares per fair part in
        excess, up to four): the slot tends to go to one that had less, so shares even out
        and nobody starves. 0 with no competition.
        """
        contenders = self._endpoint(endpoint).contenders
        if self._jitter <= 0 or self._degraded or not contenders:
            return 0.0
        interval, ahead = 0.0, 0.0
        for entity in self._entities_of(endpoint):
            view = self._entity_view(entity)
            if view.limit is None:
                continue
            interval = max(interval, view.window / view.limit)
            view.prune(now)
            if view.grants:
                fair_parts = len(view.own) / len(view.grants) * (contenders + 1)
                ahead = max(ahead, min(4.0, 2.0 * (fair_parts - 1.0)))
        return (random.random() + ahead) * self._jitter * interval

    def next_available(self, endpoint: str) -> float:
        """When a token for ``endpoint`` is next free, as of the last round trip (or now).

        Served from the last reply (or, while Redis is away, the local share); no I/O.
        """
        now = self._clock.monotonic()
        if self._degraded:
            return self._local_ready(endpoint, now)
        view = self._endpoint(endpoint)
        return max(
            now, view.ready_at, view.paused_until, self._paused_until, self._failure_paused_until
        )

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window (every process's grants) as of the last round trip.

        For an endpoint under the pooled limit too, the one with fewer free grants now;
        ``None`` when neither has a limit. While Redis is away: this process's share.
        """
        now = self._clock.monotonic()
        view = self._endpoint(endpoint)
        windows: list[RateWindow | None] = []
        for entity in self._entities_of(endpoint):
            entity_view = self._entity_view(entity)
            entity_view.prune(now)
            limit = self._share_limit(entity_view) if self._degraded else entity_view.limit
            if limit is None:
                windows.append(None)
                continue
            grants = [t for t, _ in entity_view.own] if self._degraded else entity_view.grants
            own = entity is not self._pool
            allowance = view.allowance if own and view.allowance_until > now else None
            windows.append(
                RateWindow(
                    limit=limit,
                    window=entity_view.window,
                    grants=tuple(grants),
                    allowance=allowance,
                    allowance_until=view.allowance_until if allowance is not None else None,
                )
            )
        own_window = windows[0]
        pooled = windows[1] if len(windows) > 1 else None
        return tighter_window(own_window, pooled, now)

    # ------------------------------------------------------------------ learning

    async def record_response(self, endpoint: str, status: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer to ``endpoint`` (``status=0``: a transport failure).

        The rules of ``LocalBudget.record_response``; what concerns every process (a 429,
        a failure, a pause, a stated limit, an allowance below the window's room) is written
        to Redis before this returns, anything else costs no round trip.
        """
        now = self._clock.monotonic()
        view = self._endpoint(endpoint)
        if 200 <= status < 300:
            self._consecutive_429 = 0
        if status == 429:
            self._rate_limited += 1
            view.rate_limited += 1
            self._consecutive_429 += 1
        window = self.window(endpoint)
        own_view = self._entities.get(endpoint)
        limit = own_view.limit if own_view is not None else None
        lesson = read_lesson(
            endpoint,
            status,
            headers,
            now_epoch=self._clock.time(),
            cap=self._max_retry_after,
            consecutive_429=self._consecutive_429,
            interval=own_view.window / limit if own_view is not None and limit else None,
        )
        if lesson.failure:
            self._failures += 1
        room = window.free_after(0.0, now) if window is not None else math.inf
        if not lesson.worth_sharing(stated_sent=view.stated_sent, room=room):
            return
        if not self._degraded:
            entities = self._entities_of(endpoint)
            member = f"{self._client_id}:{next(self._sequence)}"
            keys, args = self._learn_call(entities, member, lesson)
            try:
                snapshot = await self._round_trip("learn", keys, args)
            except self._errors as error:
                self._go_away(error)
            else:
                if lesson.stated is not None:
                    view.stated_sent = lesson.stated
                if lesson.failure:
                    self._own_failures.append((now, False))
                self._absorb(endpoint, entities, snapshot)
                return
        self._learn_locally(endpoint, lesson, self._clock.monotonic())

    def _learn_call(
        self, entities: Sequence[_Entity], member: str, lesson: Lesson
    ) -> tuple[list[str], list[_Arg]]:
        entity_keys, entity_args = self._entity_args(entities)
        if len(entities) == 1:
            entity_args += ["", "", ""]
        keys = [self._key("session"), self._key("failures"), *entity_keys]
        pause = lesson.pause
        allowance = lesson.allowance
        args: list[_Arg] = [
            member,
            self._ttl_ms,
            *entity_args,
            int(lesson.rate_limited),
            self._ms(pause[0]) if pause is not None else -1,
            pause[1] if pause is not None else "",
            lesson.stated or 0,
            allowance[0] if allowance is not None else -1,
            self._ms(allowance[1]) if allowance is not None else 0,
            self._ms(lesson.endpoint_pause) if lesson.endpoint_pause is not None else -1,
            int(lesson.failure),
            self._failure_threshold,
            self._ms(self._failure_window),
        ]
        return keys, args

    def _learn_locally(self, endpoint: str, lesson: Lesson, now: float) -> None:
        """While Redis is away: apply ``lesson`` here, and keep it for when Redis is back."""
        view = self._endpoint(endpoint)
        if lesson.pause is not None:
            until = now + lesson.pause[0]
            self._extend_session_pause(until, now, lesson.pause[1])
            if self._pending_pause is None or until > self._pending_pause[0]:
                self._pending_pause = (until, lesson.pause[1])
        if lesson.stated is not None:
            entity_view = self._entity_view(self._entities_of(endpoint)[0])
            if entity_view.limit is None or lesson.stated < entity_view.limit:
                entity_view.limit = lesson.stated
        if lesson.allowance is not None:
            view.allowance, view.allowance_until = lesson.allowance[0], now + lesson.allowance[1]
        if lesson.endpoint_pause is not None:
            self._extend_endpoint_pause(view, now + lesson.endpoint_pause, now)
        if lesson.failure:
            self._own_failures.append((now, True))
            self._local_failure_pause(now)

    def _local_failure_pause(self, now: float) -> None:
        failures, window = self._own_failures, self._failure_window
        while failures and failures[0][0] + window <= now:
            failures.popleft()
        threshold = max(1, math.floor(self._failure_threshold * self._share))
        if len(failures) >= threshold:
            until = failures[len(failures) - threshold][0] + window
            if until > self._failure_paused_until:
                self._failure_paused_seconds += until - max(self._failure_paused_until, now)
                self._failure_paused_until = until

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot: this process's counts, the shared pauses and windows."""
        now = self._clock.monotonic()
        paused = self._paused_until > now
        failure_paused = self._failure_paused_until > now
        names = sorted(set(self._rates) | set(self._endpoints))
        endpoints: dict[str, EndpointStatistics] = {}
        for name in names:
            view = self._endpoint(name)
            window = self.window(name)
            endpoint_paused = view.paused_until > now
            tokens: int | None = None
            utilisation = 0.0
            if window is not None:
                tokens = window.free_after(0.0, now)
                utilisation = len(window.grants) / window.limit
                if paused or failure_paused or endpoint_paused:
                    tokens = 0
            endpoints[name] = EndpointStatistics(
                endpoint=name,
                tokens_available=tokens,
                utilisation=utilisation,
                granted=view.granted,
                waiting=view.waiting,
                rate_limited=view.rate_limited,
                paused_seconds=view.paused_seconds,
                paused_until=view.paused_until if endpoint_paused else None,
            )
        failures = self._own_failures
        while failures and failures[0][0] + self._failure_window <= now:
            failures.popleft()
        return BudgetStatistics(
            endpoints=endpoints,
            granted=self._granted,
            rate_limited=self._rate_limited,
            paused_seconds=self._paused_seconds,
            paused_until=self._paused_until if paused else None,
            pause_reason=self._pause_reason if paused else None,
            failures=self._failures,
            failures_in_window=len(failures),
            failure_paused_until=self._failure_paused_until if failure_paused else None,
            failure_paused_seconds=self._failure_paused_seconds,
        )


def _entity(name: str, rate: RateLimit | None) -> _Entity:
    if rate is None:
        return _Entity(name=name, configured=0, window=_MINUTE, burst=0)
    return _Entity(name=name, configured=rate.limit, window=rate.window, burst=rate.effective_burst)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What a round trip raises when Redis is away, slow or refuses the script."""
    errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return errors
    return (RedisError, *errors)
