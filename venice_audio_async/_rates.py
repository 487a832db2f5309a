"""From :class:`~._config.RateLimits` (what users configure) to the budgets' rate limits.

One place decides how a session's per-minute settings become :class:`~._budget.RateLimit`
objects, so the local and the shared (Redis) budget apply the same ones.
"""

from __future__ import annotations

from ._budget import RateLimit
from ._config import RateLimits

__all__ = ["endpoint_rates", "pooled_rate"]


def endpoint_rates(limits: RateLimits) -> dict[str, RateLimit]:
    """The rate limit of each endpoint that has one."""
    pairs = {
        "queue": limits.queue_per_minute,
        "retrieve": limits.retrieve_per_minute,
        "quote": limits.quote_per_minute,
        "complete": limits.complete_per_minute,
    }
    # Retrieves are not paced by the budget: the poll policy's price spreads them over the
    # window (a burst of due jobs may use the whole window; the price keeps back for later).
    return {
        endpoint: RateLimit(per_minute=rate, burst=int(rate) if endpoint == "retrieve" else None)
        for endpoint, rate in pairs.items()
        if rate
    }


def pooled_rate(limits: RateLimits) -> RateLimit | None:
    """The one limit over ``limits.pooled_endpoints`` together, if set.

    Not paced (a bare sliding-window log), like ``retrieve``: the endpoints' own limits pace
    ``queue``, and the poll policy spreads polls over what the pool leaves.
    """
    rate = limits.pooled_per_minute
    if not rate:
        return None
    return RateLimit(per_minute=rate, burst=int(rate))
