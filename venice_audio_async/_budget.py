"""Request budgets: when may the next request to an endpoint be sent.

Everything that limits the request rate sits behind one small interface,
:class:`RequestBudget`, so that several processes sharing one API key can later share one
budget through an external store (Redis) instead of each spending the whole limit.
:class:`LocalBudget` is the in-process implementation.

A request to ``endpoint`` may be sent when all of these hold:

1. **The endpoint's rate limit** (:class:`RateLimit`) has room: see below; and so does the
   **pooled limit** over several endpoints together, for the endpoints it covers.
2. **The session is not paused.** A 429 pauses every endpoint until ``Retry-After`` or the
   reset header (capped by ``max_retry_after``); an exhausted error budget
   (``x-ratelimit-remaining: 0``) pauses until ``x-ratelimit-resets``; :meth:`~LocalBudget.pause`
   pauses on request.
3. **The endpoint is not paused.** ``x-ratelimit-remaining-requests: 0`` pauses that endpoint
   until ``x-ratelimit-reset-requests``.
4. **The failure window is not full.** Venice locks a key for 30 s after more than 20 failed
   (non-2xx) requests in 30 s. Every failure (status >= 400, or a transport failure) is
   logged; once ``limit - margin`` failures (default 20 - 5 = 15) lie within the last
   ``window`` seconds, new requests wait until the oldest of them leaves the window. The
   margin absorbs requests already in flight, so a burst of errors slows the session down
   instead of tripping the lockout.

Rate limit: a sliding-window log, plus pacing
---------------------------------------------
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
burst (a handful of polls that come due together); a saturating one slides from the burst
into a slightly slower pace (``window / (N - burst + 1)``) without ever stalling, and once the
burst has left the window it settles into even spacing at the full rate, ``window / N``. In a
virtual-time run of 500 waiters on 120/min the longest gap between grants is 0.60 s (40/min:
1.73 s), where the bare log stalls for 60.5 s, and the 500th grant comes at the same time.

The default ``burst`` is ``max(1, N // 6)``, ten seconds' worth of requests (6 queue / 20
retrieve at 40 / 120 per minute): enough for a batch of polls that come due together, small
enough that the slower pace after it stays close to the full rate.

All waiting goes through the injected :class:`~venice_audio_async._clock.Clock`. Waiters on an
endpoint form a FIFO queue; only its head sleeps on the clock, the rest wait on an event until
promoted, so each grant costs O(1) amortised whatever the number of waiters. A cancelled waiter
leaves the queue without taking a token and hands the head position on.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Awaitable, Collection, Mapping
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from ._clock import Clock
from ._config import AUDIO_ENDPOINTS
from ._errors import parse_retry_after

__all__ = [
    "BudgetStatistics",
    "EndpointStatistics",
    "LocalBudget",
    "RateLimit",
    "RateWindow",
    "RequestBudget",
    "parse_reset",
    "retry_delay_from_headers",
    "tighter_window",
]

#: Venice's per-minute limits are counted over this many seconds.
_MINUTE = 60.0
#: Values below this in a reset header are "seconds until the reset", not an epoch.
_RELATIVE_LIMIT = 1e6
#: Values at or above this in a reset header are Unix epoch milliseconds.
_MILLISECONDS_LIMIT = 1e11
#: First pause after a 429 that carries no usable header; doubles with each consecutive one.
_DEFAULT_429_PAUSE = 5.0
#: Venice's lockout after too many failed requests.
_ERROR_BUDGET_LOCKOUT = 30.0
#: Pause for an endpoint reporting ``remaining == 0`` without a reset time (unlimited endpoints).
_UNKNOWN_RESET_PAUSE = 1.0
#: After a 429 an endpoint's limit drops to this share of what its last window granted.
_DECREASE = 0.8
#: 429s within window / this of the last one belong to the same burst: one decrease.
_DECREASE_SPACING = 12
#: Relative tolerance when comparing clock readings (float rounding in sleeps and sums).
_REL_EPS = 1e-12


def _reached(deadline: float, now: float) -> bool:
    """``deadline <= now`` up to float rounding."""
    return deadline <= now + _REL_EPS * max(1.0, abs(now))


@attrs.frozen
class RateLimit:
    """The request rate allowed on one endpoint.

    Args:
        per_minute: at most ``floor(per_minute)`` grants in any window of ``60 + margin``
            seconds (the hard limit; at least 1).
        burst: how many grants may go out back to back after a quiet spell; beyond that,
            grants are paced, at least ``(60 + margin) / floor(per_minute)`` seconds apart.
            ``None`` means ``max(1, floor(per_minute) // 6)``, ten seconds' worth. Capped
            at the limit (``burst == limit`` gives the bare sliding-window log).
        margin: seconds added to the 60 s window to absorb network jitter.

    Raises:
        ValueError: ``per_minute < 1``, ``burst < 1`` or a negative ``margin``.

    .. versionadded:: 0.1.0
    """

    per_minute: float = attrs.field()
    burst: int | None = attrs.field(default=None)
    margin: float = attrs.field(default=0.5)

    @per_minute.validator
    def _check_per_minute(self, _: attrs.Attribute[float], value: float) -> None:
        if not (math.isfinite(value) and value >= 1):
            raise ValueError(f"per_minute must be a finite number >= 1, got {value!r}")

    @burst.validator
    def _check_burst(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"burst must be >= 1, got {value!r}")

    @margin.validator
    def _check_margin(self, _: attrs.Attribute[float], value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {value!r}")

    @property
    def limit(self) -> int:
        """The hard cap: grants allowed in any :attr:`window`."""
        return int(self.per_minute)

    @property
    def window(self) -> float:
        """Length of the sliding window in seconds (``60 + margin``)."""
        return _MINUTE + self.margin

    @property
    def effective_burst(self) -> int:
        """The burst actually used (the default filled in, capped at :attr:`limit`)."""
        burst = self.burst if self.burst is not None else max(1, self.limit // 6)
        return min(burst, self.limit)

    @property
    def interval(self) -> float:
        """The closest spacing of paced grants: ``window / limit``."""
        return self.window / self.limit


@attrs.frozen
class EndpointStatistics:
    """A snapshot of one endpoint's budget.

    ``tokens_available`` is how many requests could be granted right now without waiting
    (``None`` for an endpoint without a rate limit, 0 while paused); ``utilisation`` is the
    share of the rate limit used in the current window (0 without a limit).

    .. versionadded:: 0.1.0
    """

    endpoint: str
    tokens_available: int | None
    utilisation: float
    granted: int
    waiting: int
    rate_limited: int
    paused_seconds: float
    paused_until: float | None


@attrs.frozen
class BudgetStatistics:
    """A snapshot of a :class:`LocalBudget`.

    Times are ``clock.monotonic()`` readings. ``rate_limited`` counts 429 answers;
    ``paused_seconds`` is the total length of session-wide pauses (429s, exhausted error
    budget, :meth:`~LocalBudget.pause`), overlapping pauses counted once;
    ``failure_paused_seconds`` the same for pauses imposed by the failure window.

    .. versionadded:: 0.1.0
    """

    endpoints: Mapping[str, EndpointStatistics]
    granted: int
    rate_limited: int
    paused_seconds: float
    paused_until: float | None
    pause_reason: str | None
    failures: int
    failures_in_window: int
    failure_paused_until: float | None
    failure_paused_seconds: float


@attrs.frozen
class RateWindow:
    """What the poll policy reads of one endpoint's rate limit, without taking a token.

    ``limit`` is the effective limit now (the configured one, capped by a limit the API
    stated and lowered after 429s); ``grants`` the times (``clock.monotonic()``, oldest
    first) of the grants still inside the sliding ``window``. ``allowance`` is what the
    API last said remains (``x-ratelimit-remaining-requests``) until ``allowance_until``,
    minus what was granted since; ``None`` when it said nothing.

    .. versionadded:: 0.1.0
    """

    limit: int
    window: float
    grants: tuple[float, ...]
    allowance: int | None = None
    allowance_until: float | None = None

    def free_after(self, seconds: float, now: float) -> int:
        """Grants the window will allow ``seconds`` from now, if none were made meanwhile."""
        horizon = now + seconds - self.window
        still_inside = len(self.grants) - bisect.bisect_right(self.grants, horizon)
        free = self.limit - still_inside
        if (
            self.allowance is not None
            and self.allowance_until is not None
            and now + seconds < self.allowance_until
        ):
            free = min(free, self.allowance)
        return max(0, free)


@runtime_checkable
class RequestBudget(Protocol):
    """Decides when a request to an endpoint may be sent, and learns from every answer.

    Endpoints are plain names chosen by the caller (``"queue"``, ``"retrieve"``, ...).
    :class:`LocalBudget` serves one process; ``RedisBudget`` shares one budget between
    processes. ``record_response`` may be a coroutine function (a shared store writes the
    answer's lessons before the next request goes out); the session awaits what it returns.

    .. versionadded:: 0.1.0
    """

    async def acquire(self, endpoint: str, /) -> object:
        """Wait until one request to ``endpoint`` may be sent, then take the token (FIFO)."""
        ...

    def next_available(self, endpoint: str) -> float:
        """The ``clock.monotonic()`` time at which a token for ``endpoint`` is next free."""
        ...

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window now (``None``: not rate limited). Takes no token."""
        ...

    def record_response(
        self, endpoint: str, status: int, headers: Mapping[str, str]
    ) -> Awaitable[None] | None:
        """Learn from an answer (any status); ``status=0`` records a transport failure."""
        ...

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot of the budget."""
        ...


# --------------------------------------------------------------------------- header parsing


def parse_reset(value: str, now_epoch: float) -> float | None:
    """Seconds from now until the reset time in a rate-limit reset header.

    Venice documents these headers as Unix timestamps, and they have been seen live as Unix
    **milliseconds**; another page calls one "seconds until reset". The value's magnitude
    decides, since the three ranges cannot be confused for any date after 1970-01-12:

    * ``>= 1e11``: epoch milliseconds (1e11 ms is March 1973; 1e11 s would be year 5138);
    * ``>= 1e6``: epoch seconds;
    * ``< 1e6``: seconds from now (1e6 s is 11.6 days; no epoch is that small).

    A reset in the past gives ``0.0``. Returns ``None`` for a value that is not a finite,
    non-negative number.

    .. versionadded:: 0.1.0
    """
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    if number >= _MILLISECONDS_LIMIT:
        delay = number / 1000.0 - now_epoch
    elif number >= _RELATIVE_LIMIT:
        delay = number - now_epoch
    else:
        delay = number
    return max(0.0, delay)


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) else None


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _exhausted_reset(
    headers: Mapping[str, str], remaining: str, reset: str, now_epoch: float
) -> float | None:
    """The reset delay of a budget, unless its ``remaining`` header says it has room left."""
    reset_value = headers.get(reset)
    if reset_value is None:
        return None
    left = _parse_int(headers.get(remaining))
    if left is not None and left > 0:
        return None
    return parse_reset(reset_value, now_epoch)


def retry_delay_from_headers(
    headers: Mapping[str, str], now_epoch: float, cap: float
) -> float | None:
    """Seconds to wait after a 429, read from its headers; ``None`` when none says.

    Candidates, of which the longest wins (each is a "not before"):

    * ``Retry-After`` (delta-seconds or HTTP date);
    * ``x-ratelimit-reset-requests``, unless ``x-ratelimit-remaining-requests`` is above 0;
    * ``x-ratelimit-resets`` (the failed-request budget), unless ``x-ratelimit-remaining``
      is above 0.

    Reset values are read by :func:`parse_reset`. The result is capped at ``cap`` so a
    wrong or far-off header cannot stall the session for long; if the limit still holds
    then, the next 429 says so again. Header names are matched case-insensitively.

    .. versionadded:: 0.1.0
    """
    lowered = _lowered(headers)
    candidates: list[float] = []
    retry_after = lowered.get("retry-after")
    if retry_after is not None:
        seconds = parse_retry_after(retry_after, now_epoch=now_epoch)
        if seconds is not None:
            candidates.append(seconds)
    for remaining, reset in (
        ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
        ("x-ratelimit-remaining", "x-ratelimit-resets"),
    ):
        seconds = _exhausted_reset(lowered, remaining, reset, now_epoch)
        if seconds is not None:
            candidates.append(seconds)
    if not candidates:
        return None
    return min(max(candidates), cap)


# --------------------------------------------------------------------------- local budget


class _Waiter:
    __slots__ = ("cancelled", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.cancelled = False


class _Endpoint:
    """Per-endpoint state: the grant log, the pacing point, the pause and the FIFO queue.

    The effective ``limit`` adapts (AUDIO_API.md section 9: the real limits are uncertain):
    a limit the API states caps the configured one at once; a 429 lowers it below what was
    granted in the last window (multiplicative decrease); after a quiet window it climbs
    back a tenth of the ceiling per quarter window.
    """

    __slots__ = (
        "allowance",
        "allowance_until",
        "burst",
        "burst_setting",
        "configured",
        "granted",
        "interval",
        "last_429",
        "limit",
        "log",
        "name",
        "next_paced",
        "next_recovery",
        "paused_seconds",
        "paused_until",
        "pool",
        "rate_limited",
        "stated",
        "waiters",
        "waiting",
        "window",
    )

    def __init__(self, name: str, rate: RateLimit | None) -> None:
        self.name = name
        self.configured = rate.limit if rate is not None else None
        self.stated: int | None = None
        self.window = rate.window if rate is not None else _MINUTE
        self.burst_setting = rate.effective_burst if rate is not None else 0
        self.limit: int | None = None
        self.burst = 0
        self.interval = 0.0
        self.allowance: int | None = None
        self.allowance_until = -math.inf
        self.last_429 = -math.inf
        self.next_recovery = math.inf
        self.log: deque[float] = deque()
        self.next_paced = -math.inf
        self.paused_until = -math.inf
        self.waiters: deque[_Waiter] = deque()
        self.waiting = 0
        self.granted = 0
        self.rate_limited = 0
        self.paused_seconds = 0.0
        #: The pooled limit this endpoint also counts against, if any.
        self.pool: _Endpoint | None = None
        self._set_limit(self.configured)

    def _set_limit(self, limit: int | None) -> None:
        self.limit = limit
        if limit is None:
            self.burst, self.interval = 0, 0.0
        else:
            # No configured rate (a limit stated or learned later): the default burst.
            setting = self.burst_setting or max(1, limit // 6)
            self.burst = min(setting, limit)
            self.interval = self.window / limit

    @property
    def ceiling(self) -> int | None:
        """The configured limit, capped by the one the API stated."""
        if self.stated is None:
            return self.configured
        if self.configured is None:
            return self.stated
        return min(self.configured, self.stated)

    def state_limit(self, stated: int) -> None:
        """The API stated this endpoint's limit: the lower of it and ours holds at once."""
        if stated < 1 or stated == self.stated:
            return
        self.stated = stated
        ceiling = self.ceiling
        if self.limit is None or (ceiling is not None and ceiling < self.limit):
            self._set_limit(ceiling)

    def rate_limited_at(self, now: float) -> None:
        """A 429: go below what the last window granted (once per burst of 429s, and not
        below an eighth of the ceiling: a 429 caused by another client on the key must not
        stall this one for minutes)."""
        self.prune(now)
        recent = now - self.last_429 < self.window / _DECREASE_SPACING
        self.last_429 = now
        self.next_recovery = now + self.window
        if recent:
            return
        granted = int(len(self.log) * _DECREASE)
        ceiling = self.ceiling
        floor = max(1, ceiling // 8) if ceiling is not None else 1
        if self.limit is None:
            if granted:
                self._set_limit(max(floor, granted))
        else:
            self._set_limit(max(1, min(self.limit - 1, max(floor, granted))))

    def recover(self, now: float) -> None:
        ceiling = self.ceiling
        if self.limit is None or now < self.next_recovery:
            return
        if ceiling is None:
            # Nothing configured or stated: a learned limit is dropped after a quiet window.
            self._set_limit(None)
            self.next_recovery = math.inf
            return
        if self.limit >= ceiling:
            self.next_recovery = math.inf
            return
        self._set_limit(min(ceiling, self.limit + max(1, ceiling // 10)))
        self.next_recovery = now + self.window / 4

    def allow(self, remaining: int, until: float) -> None:
        """The API said ``remaining`` requests are left until ``until``."""
        self.allowance = max(0, remaining)
        self.allowance_until = until

    def _allowance_left(self, now: float) -> int | None:
        if self.allowance is None or self.allowance_until <= now:
            return None
        return self.allowance

    def prune(self, now: float) -> None:
        log, window = self.log, self.window
        while log and _reached(log[0] + window, now):
            log.popleft()

    def rate_ready(self, t: float) -> float:
        """Earliest time >= ``t`` at which the rate limit allows a grant."""
        self.recover(t)
        if self._allowance_left(t) == 0:
            t = max(t, self.allowance_until)
        if self.limit is None:
            return t
        log, count = self.log, len(self.log)
        # Paced path: the window has room and the pacing point has passed.
        paced = max(t, self.next_paced)
        if count >= self.limit:
            paced = max(paced, log[count - self.limit] + self.window)
        if count < self.burst:
            return t
        # Burst path: enough grants have left the window that pacing no longer applies.
        unpaced = max(t, log[count - self.burst] + self.window)
        return min(paced, unpaced)

    def tokens(self, now: float) -> int | None:
        if self.limit is None:
            return None
        count = len(self.log)
        if count >= self.limit or self._allowance_left(now) == 0:
            return 0
        if count < self.burst:
            return self.burst - count
        return 1 if _reached(self.next_paced, now) else 0

    def view(self, now: float) -> RateWindow | None:
        self.recover(now)
        if self.limit is None:
            return None
        self.prune(now)
        left = self._allowance_left(now)
        return RateWindow(
            limit=self.limit,
            window=self.window,
            grants=tuple(self.log),
            allowance=left,
            allowance_until=self.allowance_until if left is not None else None,
        )

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
        # one more); with the window evenly filled this is the plain interval.
        free = max(0, self.limit - len(log))
        self.next_paced = now + max(self.interval, (log[0] + self.window - now) / (free + 1))


def tighter_window(
    own: RateWindow | None, pooled: RateWindow | None, now: float
) -> RateWindow | None:
    """Of an endpoint's own window and its pool's, the one with fewer free grants now."""
    if own is None or pooled is None:
        return own if pooled is None else pooled
    return pooled if pooled.free_after(0.0, now) < own.free_after(0.0, now) else own


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class LocalBudget:
    """The in-process :class:`RequestBudget`: per-endpoint rate limits, pauses, failure window.

    Args:
        clock: where time is read and how waiting is done.
        rates: the rate limit of each endpoint; other endpoints are unlimited (but still
            subject to pauses and the failure window).
        max_retry_after: cap, in seconds, on any pause read from response headers.
        failure_window: ``(limit, seconds)``: the server's error budget (over ``limit``
            failed requests in ``seconds`` locks the key).
        failure_margin: stop sending once ``limit - failure_margin`` failures lie in the
            window, leaving room for requests already in flight.
        pool: one more limit over ``pooled_endpoints`` together (same rules: sliding log,
            lowered by their 429s); ``None``: none.
        pooled_endpoints: the endpoints ``pool`` covers.

    Raises:
        ValueError: a non-positive ``max_retry_after`` or window, or
            ``limit - failure_margin < 1``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        clock: Clock,
        rates: Mapping[str, RateLimit],
        max_retry_after: float = 60.0,
        failure_window: tuple[int, float] = (20, 30.0),
        failure_margin: int = 5,
        pool: RateLimit | None = None,
        pooled_endpoints: Collection[str] = AUDIO_ENDPOINTS,
    ) -> None:
        limit, window = failure_window
        if not (math.isfinite(max_retry_after) and max_retry_after >= 0):
            # 0 is allowed: RetryPolicy.testing() never waits, not even for Retry-After.
            raise ValueError(
                f"max_retry_after must be a finite number >= 0, got {max_retry_after!r}"
            )
        _check_positive("failure window seconds", window)
        if limit - failure_margin < 1:
            raise ValueError(
                f"failure_window limit minus failure_margin must be >= 1, "
                f"got {limit} - {failure_margin}"
            )
        self._clock = clock
        self._max_retry_after = float(max_retry_after)
        self._failure_threshold = limit - failure_margin
        self._failure_window = float(window)
        self._pool = _Endpoint("pool", pool) if pool is not None else None
        self._pooled = frozenset(pooled_endpoints)
        self._endpoints: dict[str, _Endpoint] = {}
        for name, rate in rates.items():
            self._add_endpoint(name, rate)
        self._paused_until = -math.inf
        self._pause_reason: str | None = None
        self._paused_seconds = 0.0
        self._failures: deque[float] = deque()
        self._failure_count = 0
        self._failure_paused_until = -math.inf
        self._failure_paused_seconds = 0.0
        self._granted = 0
        self._rate_limited = 0
        self._consecutive_429 = 0

    def __repr__(self) -> str:
        return f"LocalBudget(endpoints={sorted(self._endpoints)!r})"

    def _add_endpoint(self, name: str, rate: RateLimit | None) -> _Endpoint:
        state = self._endpoints[name] = _Endpoint(name, rate)
        if name in self._pooled:
            state.pool = self._pool
        return state

    def _endpoint(self, name: str) -> _Endpoint:
        state = self._endpoints.get(name)
        if state is None:
            state = self._add_endpoint(name, None)
        return state

    def _ready_at(self, state: _Endpoint, now: float) -> float:
        t = max(now, self._paused_until, self._failure_paused_until, state.paused_until)
        t = state.rate_ready(t)
        if state.pool is not None:
            # Each rule only gets easier as time passes, so one more pass settles both.
            t = state.rate_ready(state.pool.rate_ready(t))
        return t

    def _grant(self, state: _Endpoint, now: float) -> None:
        state.grant(now)
        if state.pool is not None:
            state.pool.grant(now)
        self._granted += 1

    @staticmethod
    def _promote(state: _Endpoint) -> None:
        waiters = state.waiters
        while waiters and waiters[0].cancelled:
            waiters.popleft()
        if waiters:
            waiters[0].event.set()

    # ------------------------------------------------------------------ taking tokens

    async def acquire(self, endpoint: str) -> None:
        """Wait until one request to ``endpoint`` may be sent, then take the token.

        Waiters are served first come, first served. Cancelling a waiter takes no token and
        lets the next one move up.
        """
        state = self._endpoint(endpoint)
        clock = self._clock
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not state.waiters:
            now = clock.monotonic()
            if _reached(self._ready_at(state, now), now):
                self._grant(state, now)
                return
        waiter = _Waiter()
        state.waiters.append(waiter)
        state.waiting += 1
        granted = False
        try:
            if state.waiters[0] is not waiter:
                await waiter.event.wait()
            while True:
                now = clock.monotonic()
                ready = self._ready_at(state, now)
                if _reached(ready, now):
                    break
                await clock.sleep(ready - now)
            self._grant(state, now)
            granted = True
        finally:
            state.waiting -= 1
            if state.waiters and state.waiters[0] is waiter:
                state.waiters.popleft()
                self._promote(state)
            elif not granted:
                waiter.cancelled = True

    def try_acquire(self, endpoint: str) -> bool:
        """Take a token for ``endpoint`` if one is free now and nobody is waiting for one."""
        state = self._endpoint(endpoint)
        if state.waiters:
            return False
        now = self._clock.monotonic()
        if not _reached(self._ready_at(state, now), now):
            return False
        self._grant(state, now)
        return True

    def next_available(self, endpoint: str) -> float:
        """The ``clock.monotonic()`` time at which the next token for ``endpoint`` is free.

        That is ``now`` when one is free. Tasks already waiting take it first (see
        ``statistics().endpoints[endpoint].waiting``).
        """
        state = self._endpoint(endpoint)
        now = self._clock.monotonic()
        return max(now, self._ready_at(state, now))

    def window(self, endpoint: str) -> RateWindow | None:
        """The endpoint's rate window now; ``None`` for an endpoint without a limit.

        For an endpoint under the pooled limit too, the one with fewer free grants now.
        """
        state = self._endpoint(endpoint)
        now = self._clock.monotonic()
        own = state.view(now)
        pooled = state.pool.view(now) if state.pool is not None else None
        return tighter_window(own, pooled, now)

    # ------------------------------------------------------------------ learning

    def _pause_session_until(self, until: float, now: float, reason: str) -> None:
        if until <= self._paused_until:
            return
        self._paused_seconds += until - max(self._paused_until, now)
        self._paused_until = until
        self._pause_reason = reason

    def record_response(self, endpoint: str, status: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer to a request to ``endpoint``.

        * 2xx: resets the count of consecutive 429s.
        * 429: pauses every endpoint for :func:`retry_delay_from_headers` seconds (capped
          at ``max_retry_after``); without a usable header, 5 s doubling with each
          consecutive 429, up to the cap.
        * 429 also lowers ``endpoint``'s effective limit below what its last window granted
          (it recovers slowly after a quiet window).
        * ``x-ratelimit-limit-requests`` (any status): caps ``endpoint``'s limit at once.
        * ``x-ratelimit-remaining-requests`` with ``x-ratelimit-reset-requests``: no more
          than that many grants until the reset; at 0 (any status) ``endpoint`` pauses until
          the reset (capped), or one pacing interval without it.
        * ``x-ratelimit-remaining`` of 0 (the failed-request budget): pauses every endpoint
          until ``x-ratelimit-resets`` (capped), or 30 s without it.
        * status >= 400, or below 100 (0 stands for a transport failure): one failure in
          the sliding failure window.
        """
        state = self._endpoint(endpoint)
        now = self._clock.monotonic()
        now_epoch = self._clock.time()
        cap = self._max_retry_after
        lowered = _lowered(headers)
        if 200 <= status < 300:
            self._consecutive_429 = 0
        if status == 429:
            self._rate_limited += 1
            state.rate_limited += 1
            self._consecutive_429 += 1
            delay = retry_delay_from_headers(lowered, now_epoch, cap)
            if delay is None:
                delay = min(cap, _DEFAULT_429_PAUSE * 2.0 ** (self._consecutive_429 - 1))
            self._pause_session_until(now + delay, now, f"429 from {endpoint}")
            state.rate_limited_at(now)
            if state.pool is not None:
                state.pool.rate_limited_at(now)

        stated = _parse_int(lowered.get("x-ratelimit-limit-requests"))
        if stated is not None:
            state.state_limit(stated)
        left = _parse_int(lowered.get("x-ratelimit-remaining-requests"))
        reset = lowered.get("x-ratelimit-reset-requests")
        delay_or_none = parse_reset(reset, now_epoch) if reset is not None else None
        if left is not None and left > 0 and delay_or_none is not None:
            state.allow(left, now + min(delay_or_none, cap))
        if left is not None and left <= 0:
            if delay_or_none is None:
                delay = state.interval if state.limit is not None else _UNKNOWN_RESET_PAUSE
            else:
                delay = min(delay_or_none, cap)
            until = now + delay
            if until > state.paused_until:
                state.paused_seconds += until - max(state.paused_until, now)
                state.paused_until = until

        left = _parse_int(lowered.get("x-ratelimit-remaining"))
        if left is not None and left <= 0:
            reset = lowered.get("x-ratelimit-resets")
            delay_or_none = parse_reset(reset, now_epoch) if reset is not None else None
            delay = min(cap, _ERROR_BUDGET_LOCKOUT if delay_or_none is None else delay_or_none)
            self._pause_session_until(now + delay, now, "failed-request budget exhausted")

        if status >= 400 or status < 100:
            self._add_failure(now)

    def record_failure(self, endpoint: str) -> None:
        """Record a transport failure on ``endpoint`` (same as ``record_response(.., 0, {})``)."""
        self.record_response(endpoint, 0, {})

    def _prune_failures(self, now: float) -> None:
        failures, window = self._failures, self._failure_window
        while failures and _reached(failures[0] + window, now):
            failures.popleft()

    def _add_failure(self, now: float) -> None:
        self._failure_count += 1
        self._prune_failures(now)
        self._failures.append(now)
        threshold = self._failure_threshold
        if len(self._failures) >= threshold:
            # Wait until the window holds threshold - 1 failures again.
            until = self._failures[-threshold] + self._failure_window
            if until > self._failure_paused_until:
                self._failure_paused_seconds += until - max(self._failure_paused_until, now)
                self._failure_paused_until = until

    def pause(self, seconds: float, *, reason: str) -> None:
        """Pause every endpoint for ``seconds`` (extends, never shortens, a current pause).

        Raises:
            ValueError: ``seconds`` is not a number.
        """
        if math.isnan(seconds):
            raise ValueError("seconds must be a number")
        if seconds <= 0:
            return
        now = self._clock.monotonic()
        self._pause_session_until(now + seconds, now, reason)

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot: tokens, grants, waiters, 429s, pauses and failures."""
        now = self._clock.monotonic()
        paused = self._paused_until > now
        session_paused = paused or self._failure_paused_until > now
        endpoints: dict[str, EndpointStatistics] = {}
        for name, state in self._endpoints.items():
            state.prune(now)
            endpoint_paused = state.paused_until > now
            tokens = state.tokens(now)
            if state.pool is not None:
                state.pool.prune(now)
                pooled = state.pool.tokens(now)
                if pooled is not None:
                    tokens = pooled if tokens is None else min(tokens, pooled)
            if tokens is not None and (session_paused or endpoint_paused):
                tokens = 0
            endpoints[name] = EndpointStatistics(
                endpoint=name,
                tokens_available=tokens,
                utilisation=len(state.log) / state.limit if state.limit else 0.0,
                granted=state.granted,
                waiting=state.waiting,
                rate_limited=state.rate_limited,
                paused_seconds=state.paused_seconds,
                paused_until=state.paused_until if endpoint_paused else None,
            )
        self._prune_failures(now)
        return BudgetStatistics(
            endpoints=endpoints,
            granted=self._granted,
            rate_limited=self._rate_limited,
            paused_seconds=self._paused_seconds,
            paused_until=self._paused_until if paused else None,
            pause_reason=self._pause_reason if paused else None,
            failures=self._failure_count,
            failures_in_window=len(self._failures),
            failure_paused_until=(
                self._failure_paused_until if self._failure_paused_until > now else None
            ),
            failure_paused_seconds=self._failure_paused_seconds,
        )
