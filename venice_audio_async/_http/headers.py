"""Rate-limit headers read as delays: ``Retry-After`` and the reset headers, as pure functions.

The budget sizes a pause with these, and the failures module reads a 429's ``Retry-After``
into :class:`~venice_audio_async.RateLimitError`. This module does not import aiohttp.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping

__all__ = ["header_int", "parse_reset", "parse_retry_after", "retry_delay_from_headers"]

#: Values below this in a reset header are "seconds until the reset", not an epoch.
_RELATIVE_LIMIT = 1e6
#: Values at or above this in a reset header are Unix epoch milliseconds.
_MILLISECONDS_LIMIT = 1e11


def parse_retry_after(value: str | None, *, now_epoch: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header; ``None`` when absent or unreadable.

    Venice sends delta-seconds. The HTTP-date form is understood when ``now_epoch`` (the
    current Unix time) is given; a date in the past means "now" (0).
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        if now_epoch is None:
            return None
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = max(0.0, when.timestamp() - now_epoch)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


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


def header_int(value: str | None) -> int | None:
    """A count from a rate-limit header (``"12"``, ``"12.0"``); ``None`` if unreadable."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) else None


def _exhausted_reset(
    headers: Mapping[str, str], remaining: str, reset: str, now_epoch: float
) -> float | None:
    """The reset delay of a budget, unless its ``remaining`` header says it has room left."""
    reset_value = headers.get(reset)
    if reset_value is None:
        return None
    left = header_int(headers.get(remaining))
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
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    candidates: list[float] = []
    seconds = parse_retry_after(lowered.get("retry-after"), now_epoch=now_epoch)
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
