"""The fake server's accounting: rate windows, the failed-request lockout, the balance.

Each class is a small state machine in virtual seconds with no HTTP in it; the server asks
it for a verdict and turns the verdict into headers and statuses.

* :class:`SlidingWindow` / :class:`RequestLimits`: at most N requests in any 60 s, per
  endpoint; a refused request does not use up the window.
* :class:`ErrorBudget`: more than N failed answers within a window lock every endpoint for
  that window.
* :class:`Balance`: ``queue`` debits a job's price, a failed job is refunded when it fails.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping

import attrs

from ._types import ENDPOINTS, FakeJob

__all__ = [
    "RATE_WINDOW",
    "Balance",
    "ErrorBudget",
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
    """Per-endpoint request limits over sliding windows of :data:`RATE_WINDOW` seconds.

    Raises:
        ValueError: an unknown endpoint or a limit below 1.
    """

    def __init__(self, per_endpoint: Mapping[str, int] | None) -> None:
        self.per_endpoint: dict[str, int] = {}
        for endpoint, limit in (per_endpoint or {}).items():
            if endpoint not in ENDPOINTS:
                raise ValueError(f"unknown endpoint {endpoint!r} in rate_limits")
            if limit < 1:
                raise ValueError(f"rate limit for {endpoint!r} must be >= 1, got {limit!r}")
            self.per_endpoint[endpoint] = limit
        self._windows = {
            endpoint: SlidingWindow(limit) for endpoint, limit in self.per_endpoint.items()
        }

    def check(self, endpoint: str, now: float) -> RateVerdict:
        """Admit (and count) a request to ``endpoint`` at ``now``, or say why not."""
        window = self._windows.get(endpoint)
        if window is None:
            return RateVerdict()
        wait = window.wait(now)
        if wait > 0:
            return RateVerdict(
                refused_by=("rate_limit",),
                retry_after=wait,
                stated=StatedLimit(window.limit, 0, wait),
            )
        window.admit(now)
        return RateVerdict(stated=StatedLimit(window.limit, window.remaining, window.reset_in(now)))


class ErrorBudget:
    """More than ``failures`` failed answers within ``window`` seconds lock for ``window``.

    Raises:
        ValueError: ``failures`` below 0 or ``window`` not above 0.
    """

    def __init__(self, failures: int, window: float) -> None:
        if failures < 0 or not window > 0:
            raise ValueError(
                f"error_budget must be (failures >= 0, window > 0): {(failures, window)!r}"
            )
        self.failures = failures
        self.window = window
        self.locked_until = -math.inf
        self._times: deque[float] = deque()

    def locked(self, now: float) -> bool:
        """Whether every request is refused at ``now``."""
        return now < self.locked_until

    def record(self, status: int, now: float) -> None:
        """Count an answer; a failure past the budget starts the lockout."""
        if not self.counts(status):
            return
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) > self.failures:
            self.locked_until = now + self.window
            self._times.clear()

    @staticmethod
    def counts(status: int) -> bool:
        """Whether an answer with ``status`` is a failure (0: no answer was sent).

        429s are left out: counting the lockout's own answers would extend it forever.
        """
        return status != 0 and status != 429 and not 200 <= status < 300


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
