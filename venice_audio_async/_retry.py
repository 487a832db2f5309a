"""Retrying requests that are safe to repeat (``models``, ``quote``, ``complete``).

``queue`` is never retried here: it bills. ``retrieve`` is retried by the scheduler, which
reschedules the job instead of holding a task. A 429 costs no attempt: the request budget
has already paused the whole session for ``Retry-After``, so the retry simply waits for it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._budget import RequestBudget
from ._clock import Clock
from ._config import RetryPolicy
from ._errors import (
    RateLimitError,
    ResponseTooLarge,
    ServerError,
    TransportError,
    VeniceError,
)
from ._limiter import RequestLimiter
from ._logging import attempt_context, log

__all__ = ["call_idempotent", "is_transient"]

T = TypeVar("T")

#: A 429 storm would otherwise loop forever; past this many the error is raised.
_MAX_RATE_LIMITED = 20


def is_transient(error: VeniceError) -> bool:
    """Whether repeating the same request may succeed (5xx, 429, transport failures).

    An oversized body is a transport error that a retry would only download again.
    """
    if isinstance(error, ResponseTooLarge):
        return False
    return isinstance(error, (ServerError, RateLimitError, TransportError))


async def call_idempotent(
    endpoint: str,
    send: Callable[[], Awaitable[T]],
    *,
    budget: RequestBudget,
    limiter: RequestLimiter,
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random | None = None,
) -> T:
    """Send ``send()`` within the budget, retrying transient failures per ``policy``.

    Raises:
        VeniceError: the last error once attempts are exhausted, or any permanent one.
    """
    rng = rng or random.Random()
    failures = rate_limited = 0
    while True:
        asked = clock.monotonic()
        await budget.acquire(endpoint)
        attempt = failures + rate_limited + 1
        try:
            with attempt_context(attempt, wait=clock.monotonic() - asked):
                async with limiter:
                    return await send()
        except RateLimitError as error:
            rate_limited += 1
            if rate_limited >= _MAX_RATE_LIMITED:
                _give_up(endpoint, attempt, error)
                raise
            log.info(
                "%s rate limited (429 number %d); sending again once the session's pause ends",
                endpoint,
                rate_limited,
                extra=_fields(endpoint, attempt, error, None),
            )
        except VeniceError as error:
            if not is_transient(error):
                raise
            failures += 1
            if failures >= policy.attempts:
                _give_up(endpoint, attempt, error)
                raise
            delay = policy.backoff(failures, rng.random())
            log.info(
                "%s failed (%s); retry %d of %d in %.2f s",
                endpoint,
                type(error).__name__,
                failures,
                policy.attempts - 1,
                delay,
                extra=_fields(endpoint, attempt, error, delay),
            )
            await clock.sleep(delay)


def _fields(
    endpoint: str, attempt: int, error: VeniceError, delay: float | None
) -> dict[str, object]:
    return {
        "endpoint": endpoint,
        "attempt": attempt,
        "status": getattr(error, "status_code", 0),
        "error": type(error).__name__,
        "retry_in": delay,
    }


def _give_up(endpoint: str, attempt: int, error: VeniceError) -> None:
    log.warning(
        "%s failed %d time(s), giving up: %s",
        endpoint,
        attempt,
        error,
        extra=_fields(endpoint, attempt, error, None),
    )
