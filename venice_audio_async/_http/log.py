"""The one DEBUG record each request's outcome leaves (fields listed in ``_logging``).

The transport opens :func:`logged` around a request and fills in the
:class:`RequestOutcome` as it learns the status, the job's id and what came back; the
record is written once the request ends, with the attempt and token wait the retry layer
set (``_logging.current_attempt``). No header and no body is ever logged.

This module does not import aiohttp.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Mapping
from typing import Any

import attrs

from .._core.errors import VeniceError
from .._core.logging import RequestAttempt, current_attempt, log

__all__ = ["RequestOutcome", "logged", "queue_id_in"]


@attrs.define
class RequestOutcome:
    """What one request's log record says; filled in as the request goes."""

    endpoint: str
    queue_id: str | None = None
    status: int = 0
    detail: str = ""


def queue_id_in(body: Mapping[str, Any] | None) -> str | None:
    """The ``queue_id`` a request or answer body names, if any."""
    value = body.get("queue_id") if body is not None else None
    return value if isinstance(value, str) else None


class logged:
    """Log the request made inside once it has an outcome (not when it is cancelled).

    A class rather than a generator: it wraps every request, and costs a third as much."""

    __slots__ = ("_attempt", "_outcome", "_started")

    def __init__(self, outcome: RequestOutcome) -> None:
        self._outcome = outcome

    def __enter__(self) -> RequestOutcome:
        self._attempt = current_attempt()
        self._started = time.monotonic()
        return self._outcome

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, VeniceError):
            elapsed = time.monotonic() - self._started
            _log_outcome(self._outcome, self._attempt, elapsed, exc)


def _log_outcome(
    outcome: RequestOutcome,
    attempt: RequestAttempt | None,
    elapsed: float,
    error: BaseException | None,
) -> None:
    """One DEBUG record per request outcome: a readable line plus structured ``extra``."""
    if not log.isEnabledFor(logging.DEBUG):
        return  # the common case: nothing is built
    where = []
    if outcome.queue_id is not None:
        where.append(f"job {outcome.queue_id}")
    if attempt is not None:
        where.append(f"attempt {attempt.attempt}")
        if attempt.wait is not None and attempt.wait >= 0.01:  # else not worth a mention
            where.append(f"waited {attempt.wait:.3g} s for a token")
    status = str(outcome.status) if outcome.status else "no answer"
    what = type(error).__name__ if error is not None else outcome.detail
    log.debug(
        "%s %s%s%s in %.3f s",
        outcome.endpoint,
        status,
        f" ({', '.join(where)})" if where else "",
        f": {what}" if what else "",
        elapsed,
        extra={
            "endpoint": outcome.endpoint,
            "status": outcome.status,
            "queue_id": outcome.queue_id,
            "attempt": attempt.attempt if attempt is not None else None,
            "wait": attempt.wait if attempt is not None else None,
            "elapsed": elapsed,
            "error": type(error).__name__ if error is not None else None,
        },
    )
