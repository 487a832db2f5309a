"""A request budget shared by every process on one API key, kept in Redis.

Venice's limits are per key, and a web app under gunicorn or a batch split over machines
runs many processes on one key. :class:`RedisBudget` keeps one budget for all of them in
Redis: each ``acquire`` runs one Lua script (:mod:`._rate.redis_scripts`) that applies the rules of
:class:`~._rate.budget.LocalBudget` to shared state (each endpoint's sliding log in a sorted set
scored by the Redis server's own clock, the session-wide pause, the failed-request window)
and answers "granted" or "wait N ms" with the window's occupancy. The synchronous views
(:meth:`~RedisBudget.window`, :meth:`~RedisBudget.next_available`) answer from that reply,
so the poll policy sees every process's grants without a round trip of its own.

Redis trouble is not an outage: when it cannot be reached, at start or mid-run, the budget
runs on a conservative local share of each limit (``local_share``), logs a warning,
reconnects with backoff and, once back, logs the grants and failures it made meanwhile so
the shared window does not burst.

The parts: :mod:`._rate.redis_link` (the wire and Redis away), :mod:`._rate.redis_mirror` (what the
synchronous views read), :mod:`._rate.redis_learning` (learning from answers); this module
takes tokens and puts the parts together.

Install with ``pip install 'venice-audio-async[redis]'``; the package imports without it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._core.clock import Clock, ManualClock, SystemClock
from .._core.config import RateLimits, endpoint_rates, pooled_rate
from .._core.environment import api_key_from_env
from .budget import RateWindow, RequestBudget, RunTime, log_too_late, wait_out_model_hold
from .endpoint_rate import Waiter, token_eta
from .redis_learning import ResponseLearner
from .redis_link import RedisLink
from .redis_mirror import EPS, SharedMirror
from .redis_scripts import RUNS_KEPT
from .statistics import BudgetStatistics

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBudget", "namespace_for_key"]

#: Another process's demand for tokens counts this long after it last published it (clock s):
#: a process that stopped polling (done, or gone) stops raising the others' price.
DEMAND_STALE = 3.0
#: A process publishes its demand and reads the others' at most this often (clock seconds),
#: on the round trip of a token of that endpoint.
DEMAND_EVERY = 0.25
#: Run times of finished jobs are traded with the demand, at most this often (clock seconds)
#: unless this process has some to tell.
RUNS_EVERY = 1.0

_INSTALL_HINT = "RedisBudget needs the redis package: pip install 'venice-audio-async[redis]'"


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


class RedisBudget(RequestBudget):
    """A :class:`~venice_audio_async.budget.RequestBudget` shared through Redis by many processes.

    Open it once per process, with the same API key (or ``namespace``) everywhere::

        budget = RedisBudget.from_url("redis://localhost:6379/0")
        async with AsyncSession(budget=budget) as session:
            ...

    The rules are :class:`~venice_audio_async.budget.LocalBudget`'s, applied to every process at
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
            pacing interval late, at random (spreads them; 0 disables). Polls come back
            at once: the shared price, not chance or counts, says whose are worth it.
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
        self.namespace = namespace
        self._clock = clock
        self._scale = scale
        self._jitter = float(retry_jitter)
        self._mirror = SharedMirror(
            rates=endpoint_rates(limits),
            pool=pooled_rate(limits),
            pooled=limits.pooled_endpoints,
            failure_window=limits.failure_window,
            share=float(local_share),
        )
        # A key nobody touches outlives every window and pause twice over, then expires.
        longest = max(self._mirror.longest_window, float(max_retry_after))
        self._link = RedisLink(
            redis,
            namespace=namespace,
            scale=scale,
            timeout=float(round_trip_timeout),
            backoff=(float(reconnect_backoff[0]), float(reconnect_backoff[1])),
            ttl_ms=math.ceil(longest * 2 * scale * 1000) + 1000,
            failure_threshold=threshold,
            failure_window=limits.failure_window,
            share=float(local_share),
        )
        self._learner = ResponseLearner(
            clock=clock,
            mirror=self._mirror,
            link=self._link,
            max_retry_after=float(max_retry_after),
            failure_threshold=threshold,
        )
        # The poll policy's demand: this process's, to publish; the others', as last heard.
        self._demand_out: dict[str, tuple[float, ...]] = {}
        self._demand_in: dict[str, tuple[float, tuple[float, ...]]] = {}
        self._demand_sent_at: dict[str, float] = {}
        # Finished jobs' run times: this process's, to publish; the others', heard since
        # the poll scheduler last asked; the number of the last one heard (0: none yet, so
        # a process joining late learns from the jobs the others finished before).
        self._runs_out: list[RunTime] = []
        self._runs_in: list[RunTime] = []
        self._runs_cursor = 0
        self._runs_sent_at = -math.inf

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
            key = api_key_from_env(api_key)
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
        state = "away" if self._link.away else "shared"
        return f"RedisBudget(namespace={self.namespace!r}, {state})"

    async def __aenter__(self) -> RedisBudget:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections to Redis (reopened if the budget is used again)."""
        await self._link.aclose()

    @property
    def round_trips(self) -> int:
        """Round trips to Redis so far (successful or not)."""
        return self._link.round_trips

    @property
    def degraded(self) -> bool:
        """Whether Redis is away and this process runs on its local share."""
        return self._link.away

    # ------------------------------------------------------------------ taking tokens

    async def acquire(
        self, endpoint: str, *, deadline_at: float | None = None, model: str | None = None
    ) -> bool:
        """Wait until one request to ``endpoint`` may be sent, then take the token.

        A ``queue`` call for ``model`` waits out that model's hold (an overloaded model's
        429, shared by every process) too.

        This process's waiters go first come, first served (one at a time asks Redis).
        ``deadline_at`` is a ``clock.monotonic()`` reading: when no token can be had by then,
        returns False without taking one: at once when the caller's place in line says so
        (the shared window as of the last round trip, played forward over this process's
        waiters ahead of it that can make their own deadlines; other processes' grants
        still to come cannot be foreseen), else when the deadline passes while waiting.
        Cancelling a waiter takes no token (a grant Redis made as it was cancelled is
        given back).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        clock = self._clock
        held = model if endpoint == "queue" else None
        if (
            held is not None
            and self._mirror.model_held
            and not await wait_out_model_hold(self._mirror.model_held, held, clock, deadline_at)
        ):
            return False
        view = self._mirror.endpoint(endpoint)
        if deadline_at is not None and not self._in_time(endpoint, view.line, deadline_at):
            return False
        waiter = Waiter(deadline_at)
        view.line.append(waiter)
        view.waiting += 1
        try:
            if deadline_at is None:
                async with view.lock:
                    return await self._take(endpoint, None, held)
            with anyio.move_on_after(max(0.0, deadline_at - clock.monotonic()) * self._scale):
                async with view.lock:
                    return await self._take(endpoint, deadline_at, held)
            return False
        finally:
            view.waiting -= 1
            view.line.remove(waiter)

    def _in_time(self, endpoint: str, line: Sequence[Waiter], deadline: float) -> bool:
        """Whether a caller joining ``line`` can expect a token by ``deadline``."""
        now, away = self._clock.monotonic(), self._link.away
        floor = self._mirror.next_available(endpoint, now, away=away)
        expected = floor
        if floor <= deadline + EPS:
            rates = self._mirror.what_if(endpoint, now, away=away)
            ahead = [waiter.deadline for waiter in line]
            expected = token_eta(rates, floor, ahead, deadline + EPS)
            if expected <= deadline + EPS:
                return True
        log_too_late(endpoint, expected - now, deadline - now, len(line))
        return False

    async def _take(self, endpoint: str, deadline: float | None, model: str | None) -> bool:
        clock, link = self._clock, self._link
        while True:
            if link.away and link.reconnect_wait() <= 0:
                await self._reconnect()
            if link.away:
                now = clock.monotonic()
                ready = self._mirror.local_ready(endpoint, now)
                if ready <= now + EPS:
                    self._mirror.note_grant(endpoint, now, away=True)
                    return True
                wake = min(ready, now + link.reconnect_wait())
            else:
                ready = self.next_available(endpoint)
                if ready <= clock.monotonic() + EPS:
                    # The last reply says a token may be free: ask Redis (one round trip).
                    outcome = await self._ask(endpoint, model)
                    if outcome is True:
                        return True
                    if outcome is None:
                        continue  # Redis went away: the local share decides
                    ready = outcome
                # Every process competing for the slot (the last winner too) comes back a
                # random moment after it frees: which one gets it is left to chance.
                wake = ready + self._mirror.retry_jitter(endpoint, clock.monotonic(), self._jitter)
            if deadline is not None and ready > deadline + EPS:
                return False
            await clock.sleep(wake - clock.monotonic())

    async def _ask(self, endpoint: str, model: str | None) -> float | bool | None:
        """One ACQUIRE: True (granted), the time to retry at, or None (Redis is away)."""
        mirror = self._mirror
        entities = mirror.entities_of(endpoint)
        member = self._link.member()
        # Inside the pool this process's queue calls come before its polls (as LocalBudget).
        reserve = 0 if endpoint == "queue" else mirror.queue_reserve(self._clock.monotonic())
        answer = await self._link.acquire(entities, member, model, reserve)
        if answer is None:
            return None
        await self._exchange_demand(endpoint)
        at = self._clock.monotonic()
        mirror.absorb(endpoint, entities, answer.snapshot, at)
        view = mirror.endpoint(endpoint)
        view.contenders = answer.contenders
        view.ready_at = at + answer.wait
        if not answer.granted:
            return view.ready_at
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except anyio.get_cancelled_exc_class():
            await self._link.release(entities, member)  # cancelled as Redis granted
            raise
        mirror.note_grant(endpoint, at, away=False)
        return True

    async def _exchange_demand(self, endpoint: str) -> None:
        """Publish this process's demand for ``endpoint`` and read the others' (at most every
        :data:`DEMAND_EVERY`, and only once the poll policy said what it wants)."""
        demand = self._demand_out.get(endpoint)
        now = self._clock.monotonic()
        if demand is None or now - self._demand_sent_at.get(endpoint, -math.inf) < DEMAND_EVERY:
            return
        self._demand_sent_at[endpoint] = now
        # The window's grants come back too: the price reads them with the others' demand.
        entities = self._mirror.entities_of(endpoint)
        heard = await self._link.demand(endpoint, demand, DEMAND_STALE, entities)
        if heard is None:
            return
        at = self._clock.monotonic()
        self._demand_in[endpoint] = (at, heard[1])
        self._mirror.absorb_grants(entities, heard[2], at)
        if self._runs_out or now - self._runs_sent_at >= RUNS_EVERY:
            await self._exchange_runs(now)

    async def _exchange_runs(self, now: float) -> None:
        """Publish this process's finished jobs' run times and hear the others' (RUNS)."""
        finished, self._runs_out = self._runs_out, []
        self._runs_sent_at = now
        heard = await self._link.runs(finished, self._runs_cursor)
        if heard is None:
            return  # Redis is away: these run times stay this process's own
        self._runs_cursor = heard[0]
        self._runs_in.extend(heard[1])

    async def exchange_demand(self, endpoint: str) -> None:
        """Publish this process's demand for ``endpoint`` and read the others' now, without
        taking a token (at most every :data:`DEMAND_EVERY`; nothing while Redis is away or
        before :meth:`share_demand` was told a demand).

        The poll scheduler calls it while its polls wait: a process whose polls the shared
        price holds back takes no token, so its grants alone would leave the others without
        its demand and it without theirs (both age out after :data:`DEMAND_STALE`); it would
        then price its next poll alone, far too low, and spend the shared window early.
        """
        if not self._link.away:
            await self._exchange_demand(endpoint)

    def share_demand(self, endpoint: str, demand: Sequence[float]) -> tuple[float, ...] | None:
        """Tell the budget what this process's polls want of ``endpoint``; what the other
        processes want, as last heard.

        ``demand``: the tokens this process's jobs would take at the poll policy's
        look-ahead horizons (:data:`~._polling.policy.LOOK_AHEAD`). It is published with
        the next round trip for that endpoint; the answer is the others' demand summed over
        the same horizons, as of the last exchange (``None``: none heard lately, or Redis is
        away). Adding it to its own demand, every process prices its polls against the
        shared window at one price, so none spends shared tokens on polls worth less than
        another's. No I/O.
        """
        values = tuple(demand)
        self._demand_out[endpoint] = values
        heard = self._demand_in.get(endpoint)
        if heard is None or self._link.away:
            return None
        at, others = heard
        if self._clock.monotonic() - at > DEMAND_STALE or len(others) != len(values):
            return None
        return others

    def share_run_times(self, finished: Sequence[RunTime]) -> tuple[RunTime, ...]:
        """Tell the budget how long jobs this process saw finish ran; how long the jobs
        the other processes saw finish ran, heard since the last call.

        Published with the next demand exchange (:meth:`exchange_demand`, at most every
        :data:`RUNS_EVERY` unless there is something to tell); the answer is what the last
        exchanges heard. A process that starts late first hears the last
        :data:`~._rate.redis_scripts.RUNS_KEPT` run times the others published. No I/O.
        """
        self._runs_out.extend(finished)
        del self._runs_out[:-RUNS_KEPT]  # Redis away for long: only the last are worth telling
        heard, self._runs_in = tuple(self._runs_in), []
        return heard

    async def _reconnect(self) -> None:
        """Try Redis again; once back, log there what was done meanwhile."""
        mirror = self._mirror
        now = self._clock.monotonic()
        pending = mirror.pending_pause
        pause = (pending[0] - now, pending[1]) if pending is not None and pending[0] > now else None
        failure_ages, grant_ages = mirror.made_while_away(now)
        if await self._link.backfill(pause, failure_ages, grant_ages):
            mirror.shared_again()

    # ------------------------------------------------------------------ views and learning

    def next_available(self, endpoint: str) -> float:
        """When a token for ``endpoint`` is next free, as of the last round trip (or now).

        Served from the last reply (or, while Redis is away, the local share); no I/O.
        """
        now = self._clock.monotonic()
        return self._mirror.next_available(endpoint, now, away=self._link.away)

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window (every process's grants) as of the last round trip.

        For an endpoint under the pooled limit too, the one with fewer free grants now;
        ``None`` when neither has a limit. While Redis is away: this process's share.
        """
        return self._mirror.window(endpoint, self._clock.monotonic(), away=self._link.away)

    async def record_response(
        self,
        endpoint: str,
        status: int,
        headers: Mapping[str, str],
        *,
        message: str | None = None,
        model: str | None = None,
    ) -> None:
        """Learn from an answer to ``endpoint`` (``status=0``: a transport failure).

        The rules of ``LocalBudget.record_response``; what concerns every process (a 429,
        a failure, a pause, a stated limit, an allowance below the window's room) is written
        to Redis before this returns, anything else costs no round trip.
        """
        await self._learner.record(endpoint, status, headers, message=message, model=model)

    def session_paused(self) -> bool:
        """Whether every request is held (the shared pauses as of the last round trip)."""
        return self._mirror.session_paused(self._clock.monotonic())

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot: this process's counts, the shared pauses and windows."""
        return self._mirror.statistics(self._clock.monotonic(), away=self._link.away)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
