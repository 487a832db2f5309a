"""The snapshot a request budget gives of itself (:meth:`~._rate.budget.RequestBudget.statistics`).

Both budgets (:class:`~._rate.budget.LocalBudget`, :class:`~._rate.redis_budget.RedisBudget`) keep
their own figures per endpoint; :func:`budget_statistics` turns them into the frozen
snapshot by one set of rules, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

__all__ = ["BudgetStatistics", "EndpointFigures", "EndpointStatistics", "budget_statistics"]


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
    """A snapshot of a request budget (:meth:`~venice_audio_async.budget.RequestBudget.statistics`).

    Times are ``clock.monotonic()`` readings. ``rate_limited`` counts 429 answers;
    ``paused_seconds`` is the total length of session-wide pauses (429s, exhausted error
    budget, :meth:`~venice_audio_async.budget.LocalBudget.pause`), overlapping pauses counted once;
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


@attrs.frozen(kw_only=True)
class EndpointFigures:
    """One endpoint's figures as a budget keeps them, for :func:`budget_statistics`.

    ``tokens``: grants free in its window now (``None``: no limit); ``used``: grants
    inside the window; ``paused_until``: the end of its last pause, past or not.
    """

    endpoint: str
    tokens: int | None
    used: int
    limit: int | None
    granted: int
    waiting: int
    rate_limited: int
    paused_seconds: float
    paused_until: float


def budget_statistics(
    now: float,
    endpoints: Iterable[EndpointFigures],
    *,
    granted: int,
    rate_limited: int,
    paused_seconds: float,
    paused_until: float,
    pause_reason: str | None,
    failures: int,
    failures_in_window: int,
    failure_paused_until: float,
    failure_paused_seconds: float,
) -> BudgetStatistics:
    """The snapshot of a budget's figures at ``now``, by the rules every budget follows.

    No tokens are free while the session, the failure window or the endpoint holds
    requests; pauses that ended before ``now`` (and their reason) are left out.
    """
    paused = paused_until > now
    failure_paused = failure_paused_until > now
    snapshots: dict[str, EndpointStatistics] = {}
    for figures in endpoints:
        endpoint_paused = figures.paused_until > now
        tokens = figures.tokens
        if tokens is not None and (paused or failure_paused or endpoint_paused):
            tokens = 0
        snapshots[figures.endpoint] = EndpointStatistics(
            endpoint=figures.endpoint,
            tokens_available=tokens,
            utilisation=figures.used / figures.limit if figures.limit else 0.0,
            granted=figures.granted,
            waiting=figures.waiting,
            rate_limited=figures.rate_limited,
            paused_seconds=figures.paused_seconds,
            paused_until=figures.paused_until if endpoint_paused else None,
        )
    return BudgetStatistics(
        endpoints=snapshots,
        granted=granted,
        rate_limited=rate_limited,
        paused_seconds=paused_seconds,
        paused_until=paused_until if paused else None,
        pause_reason=pause_reason if paused else None,
        failures=failures,
        failures_in_window=failures_in_window,
        failure_paused_until=failure_paused_until if failure_paused else None,
        failure_paused_seconds=failure_paused_seconds,
    )
