"""What one answer tells a budget (:class:`AnswerSignals`), read from its status, headers and,
for a 429, its message (the three 429s carry no code: Venice's error-code reference).

One reading for every budget, as data: :class:`~._rate.budget.LocalBudget` applies it to its own
state, ``RedisBudget`` sends it to Redis (or applies it locally while Redis is away), so
both follow the same rules (see ``LocalBudget.record_response``).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .._http.headers import header_int, parse_reset, retry_delay_from_headers

__all__ = [
    "ERROR_BUDGET",
    "OVERLOADED",
    "RATE_LIMIT",
    "AnswerSignals",
    "kind_of_429",
    "read_signals",
    "teaches_nothing",
]

#: The three kinds of 429 (told apart by message; see :func:`kind_of_429`).
RATE_LIMIT = "rate_limit"
OVERLOADED = "overloaded"
ERROR_BUDGET = "error_budget"

#: The reason of the pause after the failed-request budget ran out.
_BUDGET_EXHAUSTED = "failed-request budget exhausted"

#: First pause after a 429 that carries no usable header; doubles with each consecutive one.
_DEFAULT_429_PAUSE = 5.0
#: Venice's lockout after too many failed requests.
_ERROR_BUDGET_LOCKOUT = 30.0
#: Pause for an endpoint reporting ``remaining == 0`` without a reset time (unlimited endpoints).
_UNKNOWN_RESET_PAUSE = 1.0


def kind_of_429(message: str | None, headers: Mapping[str, str]) -> str:
    """Which 429 this is: an overloaded model, the failed-request budget, or (any other
    text, including none) a rate limit. ``headers`` lower-cased.

    The texts are the ones Venice documents ("The model is currently overloaded. ...",
    "Too many failed attempts ..."); matched loosely, as the exact wording is [UNK].
    """
    text = (message or "").lower()
    if "overloaded" in text:
        return OVERLOADED
    if "too many failed" in text or header_int(headers.get("x-ratelimit-remaining")) == 0:
        return ERROR_BUDGET
    return RATE_LIMIT


@attrs.frozen(kw_only=True)
class AnswerSignals:
    """What an answer said to a budget, with every delay in clock seconds (capped).

    ``rate_limited``: a rate-limit 429 (lowers the rate; not an overloaded model's nor the
    error budget's); ``pause``: pause every endpoint this long, with the reason (a 429 other
    than an overloaded model's, an exhausted error budget); ``model_pause``: hold ``model``'s
    queue calls this long (an overloaded model); ``stated``: the endpoint's limit as the
    API states it; ``remaining``: what it says is left of it (with ``stated``, how many
    requests it counts); ``allowance``: ``(remaining, seconds until the reset)``;
    ``endpoint_pause``: pause this endpoint (``remaining == 0``); ``failure``: one failed
    request.
    """

    rate_limited: bool = False
    pause: tuple[float, str] | None = None
    model_pause: tuple[float, str] | None = None
    stated: int | None = None
    remaining: int | None = None
    allowance: tuple[int, float] | None = None
    endpoint_pause: float | None = None
    failure: bool = False

    @property
    def locked_out(self) -> bool:
        """Whether the pause is for an exhausted failed-request budget (not a 429)."""
        return self.pause is not None and self.pause[1] == _BUDGET_EXHAUSTED

    def worth_sharing(self, *, stated_sent: int | None, room: float) -> bool:
        """Whether other processes need to hear of it (``room``: free grants in view)."""
        return (
            self.rate_limited
            or self.failure
            or self.pause is not None
            or self.model_pause is not None
            or self.endpoint_pause is not None
            or (self.stated is not None and self.stated != stated_sent)
            or (self.allowance is not None and self.allowance[0] < room)
        )


def teaches_nothing(status: int, headers: Mapping[str, str]) -> bool:
    """Whether :func:`read_signals` would find nothing to learn but a success: a 2xx
    answer that states no ``x-ratelimit-*`` header (``Retry-After`` is read on 429s only).

    The common answer, told apart without reading any header's value."""
    if not 200 <= status < 300:
        return False
    # One search over all the names at once (a name merely containing it reads in full).
    return "x-ratelimit-" not in "\n".join(headers).lower()


def read_signals(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    *,
    message: str | None = None,
    model: str | None = None,
    now_epoch: float,
    cap: float,
    consecutive_429: int,
    interval: float | None,
) -> AnswerSignals:
    """Read an answer of ``endpoint``.

    ``message`` and ``model``: the error's text and the request's model (which 429 it is;
    an overloaded model without a ``model`` is held as a rate limit would be).
    ``consecutive_429`` counts this one if it is a 429 (the default pause doubles with
    each); ``interval`` is the endpoint's pacing interval (``None``: no limit), the pause
    after ``remaining == 0`` without a reset time.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    pauses: list[tuple[float, str]] = []
    kind = kind_of_429(message, lowered) if status == 429 else None
    model_pause = None
    if status == 429:
        delay = retry_delay_from_headers(lowered, now_epoch, cap)
        if delay is None:
            delay = min(cap, _DEFAULT_429_PAUSE * 2.0 ** (consecutive_429 - 1))
        if kind == OVERLOADED and model:
            model_pause = (delay, model)  # that model's queue calls only
        elif kind == ERROR_BUDGET:
            pauses.append((delay, _BUDGET_EXHAUSTED))
        else:
            pauses.append((delay, f"429 from {endpoint}"))
    stated = header_int(lowered.get("x-ratelimit-limit-requests"))
    left = header_int(lowered.get("x-ratelimit-remaining-requests"))
    reset = lowered.get("x-ratelimit-reset-requests")
    reset_delay = parse_reset(reset, now_epoch) if reset is not None else None
    allowance = None
    if left is not None and left > 0 and reset_delay is not None:
        allowance = (left, min(reset_delay, cap))
    endpoint_pause = None
    if left is not None and left <= 0:
        if reset_delay is None:
            endpoint_pause = interval if interval is not None else _UNKNOWN_RESET_PAUSE
        else:
            endpoint_pause = min(reset_delay, cap)
    budget_left = header_int(lowered.get("x-ratelimit-remaining"))
    if budget_left is not None and budget_left <= 0:
        resets = lowered.get("x-ratelimit-resets")
        delay_or_none = parse_reset(resets, now_epoch) if resets is not None else None
        delay = min(cap, _ERROR_BUDGET_LOCKOUT if delay_or_none is None else delay_or_none)
        pauses.append((delay, _BUDGET_EXHAUSTED))
    pause = None
    for candidate in pauses:  # the longest wins; on a tie the first (as LocalBudget)
        if pause is None or candidate[0] > pause[0]:
            pause = candidate
    return AnswerSignals(
        rate_limited=kind == RATE_LIMIT or (kind == OVERLOADED and not model),
        pause=pause if pause is not None and pause[0] > 0 else None,
        model_pause=model_pause if model_pause is not None and model_pause[0] > 0 else None,
        stated=stated if stated is not None and stated >= 1 else None,
        remaining=max(0, left) if left is not None else None,
        allowance=allowance,
        endpoint_pause=endpoint_pause if endpoint_pause and endpoint_pause > 0 else None,
        failure=status >= 400 or status < 100,
    )
