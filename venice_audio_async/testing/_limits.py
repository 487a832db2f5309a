"""The fake server's accounting: rate windows, the failed-request lockout, the balance.

Each class is a small state machine in virtual seconds with no HTTP in it; the server asks
it for a verdict and turns the verdict into headers and statuses.

* :class:`SlidingWindow` / :class:`RequestLimits`: at most N requests in any 60 s, per
  endpoint and/or pooled over the audio endpoints; a refused request uses up no window.
* :class:`KeyRateLimits`: the per-model limits ``GET /api_keys/rate_limits`` lists.
* :class:`ErrorBudget`: more than N failed answers within a window lock every endpoint for
  that window.
* :class:`Overloads`: models whose ``queue`` answers "overloaded" 429s, for a while.
* :class:`Balance`: ``queue`` debits a job's price, a failed job is refunded when it fails.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from ._types import AUDIO_ENDPOINTS, ENDPOINTS, FakeJob

__all__ = [
    "RATE_WINDOW",
    "Balance",
    "LIMIT_TYPES",
    "ErrorBudget",
    "KeyRateLimits",
    "Overloads",
    "RateVerdict",
    "RequestLimits",
    "SlidingWindow",
    "StatedLimit",
]

#: Length of a rate-limit window, in virtual seconds.
RATE_WINDOW = 60.0


class SlidingWindow:
    """At most ``limit`` admissions in any ``span`` seconds (a sliding log of their times)."""

    def __init__(self, limit: int, span: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.span = span
        self._times: deque[float] = deque()

    def wait(self, now: float) -> float:
        """Seconds until a request would be admitted (0.0: now)."""
        self._forget(now)
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.span - now

    def admit(self, now: float) -> None:
        """Count a request admitted at ``now``."""
        self._times.append(now)

    @property
    def remaining(self) -> int:
        """Admissions left in the window as of the last :meth:`wait`."""
        return self.limit - len(self._times)

    def reset_in(self, now: float) -> float:
        """Seconds until the oldest admission leaves the window (one more becomes free)."""
        return self._times[0] + self.span - now if self._times else 0.0

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.span:
            self._times.popleft()


@attrs.frozen
class StatedLimit:
    """What an answer states about an endpoint's limit (``x-ratelimit-*-requests``)."""

    limit: int
    remaining: int
    reset_in: float  # virtual seconds until one more request is free


@attrs.frozen
class RateVerdict:
    """The limits' answer to one request.

    Attributes:
        refused_by: labels of the limits that refuse it (empty: admitted and counted).
        retry_after: virtual seconds until every refusing limit admits again.
        stated: the endpoint's limit to state in headers, or ``None`` to state none.
    """

    refused_by: tuple[str, ...] = ()
    retry_after: float = 0.0
    stated: StatedLimit | None = None


class RequestLimits:
    """Request limits over sliding windows of :data:`RATE_WINDOW` seconds.

    Two kinds, both enforced when both are set: a limit per endpoint (``per_endpoint``), and
    one ``pooled`` limit over every audio endpoint together (:data:`AUDIO_ENDPOINTS`). A
    request refused by either is counted by neither. Only the per-endpoint limits are ever
    stated in headers, and only with ``state``: the pooled one reproduces a limit the API
    enforces without saying so.

    Raises:
        ValueError: an unknown endpoint or a limit below 1.
    """

    def __init__(
        self,
        per_endpoint: Mapping[str, int] | None,
        *,
        pooled: int | None = None,
        state: bool | Collection[str] = True,
    ) -> None:
        self.per_endpoint: dict[str, int] = {}
        for endpoint, limit in (per_endpoint or {}).items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"unknown endpoint {endpoint!r} in rate_limits")
            if limit < 1:
                raise ValueError(f"rate limit for {endpoint!r} must be >= 1, got {limit!r}")
            self.per_endpoint[endpoint] = limit
        if pooled is not None and pooled < 1:
            raise ValueError(f"pooled_rate_limit must be >= 1, got {pooled!r}")
        self.pooled = pooled
        if isinstance(state, bool):
            self.stating: frozenset[str] = frozenset(ENDPOINTS) if state else frozenset()
        else:
            unknown = sorted(set(state) - set(ENDPOINTS))
            if isinstance(state, str) or unknown:
                raise ValueError(
                    f"state_limits must be a bool or endpoint names from {ENDPOINTS}, got {state!r}"
                )
            self.stating = frozenset(state)
        self._windows = {
            endpoint: SlidingWindow(limit) for endpoint, limit in self.per_endpoint.items()
        }
        self._pool = SlidingWindow(pooled) if pooled is not None else None

    def check(self, endpoint: str, now: float) -> RateVerdict:
        """Admit (and count) a request to ``endpoint`` at ``now``, or say why not."""
        own = self._windows.get(endpoint)
        pool = self._pool if endpoint in AUDIO_ENDPOINTS else None
        own_wait = own.wait(now) if own is not None else 0.0
        pool_wait = pool.wait(now) if pool is not None else 0.0
        if own_wait > 0 or pool_wait > 0:
            refused_by = (("rate_limit",) if own_wait > 0 else ()) + (
                ("pooled_rate_limit",) if pool_wait > 0 else ()
            )
            stated = None
            if own is not None and own_wait > 0 and self.states(endpoint):
                stated = StatedLimit(own.limit, 0, own_wait)
            return RateVerdict(refused_by, max(own_wait, pool_wait), stated)
        if pool is not None:
            pool.admit(now)
        if own is None:
            return RateVerdict()
        own.admit(now)
        if not self.states(endpoint):
            return RateVerdict()
        return RateVerdict(stated=StatedLimit(own.limit, own.remaining, own.reset_in(now)))

    def states(self, endpoint: str) -> bool:
        """Whether answers of ``endpoint`` may carry ``x-ratelimit-*-requests`` headers."""
        return endpoint in self.stating

    def stated_limit(self, endpoint: str) -> int | None:
        """The limit an answer of ``endpoint`` may state (``None``: state none)."""
        return self.per_endpoint.get(endpoint) if self.states(endpoint) else None


#: The limit types ``GET /api_keys/rate_limits`` lists: requests per minute and per day,
#: tokens per minute.
LIMIT_TYPES = ("RPM", "RPD", "TPM")


class KeyRateLimits:
    """The limits per model that ``GET /api_keys/rate_limits`` lists (served, not enforced).

    ``per_model`` maps a model id to its limits by type, e.g.
    ``{"elevenlabs-music": {"RPM": 60, "RPD": 2000}}``; models and types are listed in the
    order given.

    Raises:
        ValueError: an empty model id, a type outside :data:`LIMIT_TYPES` or an amount that
            is not an integer >= 1.
    """

    def __init__(self, per_model: Mapping[str, Mapping[str, int]]) -> None:
        self.per_model: dict[str, dict[str, int]] = {}
        for model, limits in per_model.items():
            if not model:
                raise ValueError(f"key_rate_limits: model ids must be non-empty, got {model!r}")
            for kind, amount in limits.items():
                given: object = amount  # checked at run time: callers may not be typed
                if kind not in LIMIT_TYPES:
                    raise ValueError(
                        f"key_rate_limits[{model!r}]: type must be one of {LIMIT_TYPES}, "
                        f"got {kind!r}"
                    )
                if isinstance(given, bool) or not isinstance(given, int) or given < 1:
                    raise ValueError(
                        f"key_rate_limits[{model!r}][{kind!r}] must be an integer >= 1, "
                        f"got {amount!r}"
                    )
            self.per_model[model] = dict(limits)

    @classmethod
    def derived(cls, models: Iterable[str], pooled: int | None) -> KeyRateLimits:
        """Each of ``models`` at ``pooled`` RPM; none listed without a pooled limit.

        The per-endpoint limits have no per-model reading (a model's RPM covers all of its
        endpoints), so they are not listed.
        """
        if pooled is None:
            return cls({})
        return cls({model: {"RPM": pooled} for model in models})

    def entries(self) -> list[dict[str, Any]]:
        """The ``data.rateLimits`` list of the answer."""
        return [
            {
                "apiModelId": model,
                "rateLimits": [{"amount": amount, "type": kind} for kind, amount in limits.items()],
            }
            for model, limits in self.per_model.items()
        ]


class Overloads:
    """Models that are "currently overloaded": their ``queue`` calls answer 429 for a while.

    Each overload is a window of virtual monotonic time with the ``Retry-After`` its 429s
    carry; other models and other endpoints are unaffected.
    """

    def __init__(self) -> None:
        self._windows: dict[str, list[tuple[float, float, float]]] = {}

    def add(self, model: str, *, start: float, end: float, retry_after: float) -> None:
        """Overload ``model`` from ``start`` until ``end`` (virtual monotonic seconds).

        Raises:
            ValueError: ``retry_after`` negative or not finite, or ``end`` not after ``start``.
        """
        if not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after!r}")
        if not end > start:
            raise ValueError(f"an overload must last more than 0 s, got {end - start!r}")
        self._windows.setdefault(model, []).append((start, end, retry_after))

    def clear(self, model: str) -> None:
        """End every overload of ``model`` now (scheduled ones are dropped too)."""
        self._windows.pop(model, None)

    def retry_after(self, model: str, now: float) -> float | None:
        """The ``Retry-After`` of ``model``'s overload at ``now``, or ``None`` if it is not."""
        windows = self._windows.get(model, [])
        windows[:] = [window for window in windows if now < window[1]]
        for start, _, retry_after in windows:
            if start <= now:
                return retry_after
        return None


class ErrorBudget:
    """More than ``failures`` failed answers within ``window`` seconds lock for ``window``.

    A failure is an answer that is not 2xx; dropped connections never count, nor do the
    lockout's own 429s (counting them would extend the lockout forever). Other 429s (rate
    limits, injected 429s) count only with ``counts_429``: sources disagree (the API's
    rate-limit page counts every non-success status, its usage notes leave 429s out).

    Raises:
        ValueError: ``failures`` below 0 or ``window`` not above 0.
    """

    def __init__(self, failures: int, window: float, *, counts_429: bool = False) -> None:
        if failures < 0 or not window > 0:
            raise ValueError(
                f"error_budget must be (failures >= 0, window > 0): {(failures, window)!r}"
            )
        self.failures = failures
        self.window = window
        self.counts_429 = counts_429
        self.locked_until = -math.inf
        #: Every lockout so far, ``(start, until)`` in virtual seconds (for benchmarks).
        self.lockouts: list[tuple[float, float]] = []
        self._times: deque[float] = deque()

    def locked(self, now: float) -> bool:
        """Whether every request is refused at ``now``."""
        return now < self.locked_until

    def record(self, status: int, now: float, *, lockout: bool = False) -> None:
        """Count an answer (``lockout``: the lockout's own); a failure past the budget locks."""
        if lockout or not self.counts(status):
            return
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) > self.failures:
            self.locked_until = now + self.window
            self.lockouts.append((now, self.locked_until))
            self._times.clear()

    def counts(self, status: int) -> bool:
        """Whether an answer with ``status`` is a failure (0: no answer was sent)."""
        if status == 429:
            return self.counts_429
        return status != 0 and not 200 <= status < 300


class Balance:
    """The account's USD balance (``None``: unlimited) with refunds of failing jobs.

    Raises:
        ValueError: a negative starting balance.
    """

    def __init__(self, usd: float | None) -> None:
        if usd is not None and not usd >= 0:
            raise ValueError(f"balance_usd must be >= 0, got {usd!r}")
        self._usd = usd
        self._refunds: list[tuple[float, int, FakeJob]] = []  # heap by failure time
        self._sequence = itertools.count()

    @property
    def usd(self) -> float | None:
        """The balance as of the last :meth:`settle`, ``None`` if unlimited."""
        return self._usd

    def debit(self, price: float) -> bool:
        """Take ``price``; ``False`` (nothing taken) when the balance is short."""
        if self._usd is None:
            return True
        if self._usd + 1e-9 < price:
            return False
        self._usd -= price
        return True

    def refund_when_failed(self, job: FakeJob) -> None:
        """Give ``job``'s charge back at its failure time, if its script fails."""
        if self._usd is not None and job.failed:
            heapq.heappush(self._refunds, (job.finishes_at, next(self._sequence), job))

    def settle(self, now: float) -> None:
        """Refund every failing job whose failure time has passed (O(log n) each)."""
        while self._refunds and self._refunds[0][0] <= now:
            _, _, job = heapq.heappop(self._refunds)
            if not job.refunded and self._usd is not None:
                self._usd += job.cost_usd
                job.refunded = True

    def header(self) -> str | None:
        """The ``X-Balance-Remaining`` value, or ``None`` when unlimited."""
        return None if self._usd is None else f"{max(0.0, self._usd):.6f}"
