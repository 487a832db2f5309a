"""Configuration: frozen, keyword-only objects with safe defaults.

Rate limits: a session learns the key's own at open (``GET /api_keys/rate_limits``, read as
one limit pooled over the audio endpoints); when that fails or lists none for audio, Venice's
documented audio limit applies, 60 requests per minute over the audio endpoints together
(:data:`DOCUMENTED_AUDIO_PER_MINUTE`). ``queue`` 40 and ``retrieve`` 120 a minute are assumed
on top, per endpoint, until the API states its own in ``x-ratelimit-*`` headers. A lockout
follows more than 20 failed requests in 30 s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from .models import ApiKeyRateLimits, AudioModel

__all__ = [
    "AUDIO_ENDPOINTS",
    "Assumed",
    "DEFAULT_BASE_URL",
    "LearnedRateLimits",
    "Limits",
    "RateLimit",
    "RateLimitSource",
    "RateLimits",
    "RetryPolicy",
    "Timeouts",
    "check_number",
    "endpoint_rates",
    "is_assumed",
    "learn_rate_limits",
    "limits_in_force",
    "pooled_rate",
]

DEFAULT_BASE_URL = "https://api.venice.ai/api/v1"

#: Venice's per-minute limits are counted over this many seconds.
MINUTE = 60.0


def check_number(name: str, value: float, *, minimum: float = 0.0, inclusive: bool = False) -> None:
    """The one check for a setting that must be a finite number above ``minimum`` (or at
    least ``minimum`` when ``inclusive``).

    Raises:
        ValueError: naming the setting and the value.
    """
    if not (math.isfinite(value) and (value >= minimum if inclusive else value > minimum)):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


def _field(setting: object, name: str) -> str:
    """How a type error names a setting's field: ``RetryPolicy(attempts=...)``."""
    return f"{type(setting).__name__}({name}=...)"


def _require_number(setting: object, name: str, value: object) -> None:
    """A setting's field must be a number: else a TypeError naming the public class."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{_field(setting, name)} must be a number, got {value!r}")


class Assumed(float):
    """A default figure of :class:`RateLimits` (a ``float``): one the library assumed, not
    one the user gave. A limit the API states replaces an assumed figure, up or down; a
    figure the user gave is never raised by one (a lower stated limit still caps it)."""

    def __repr__(self) -> str:
        return float.__repr__(self)


def _assumed(value: float) -> float | None:
    """A default per-minute figure (typed as the field it fills)."""
    return Assumed(value)


def is_assumed(value: float | None) -> bool:
    """Whether ``value`` is a default :class:`RateLimits` filled in (not the user's own)."""
    return isinstance(value, Assumed)


def _whole(setting: object, attribute: attrs.Attribute[int], value: object) -> None:
    """A count: an ``int`` (not a bool, nor a float that would be truncated somewhere)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_field(setting, attribute.name)} must be a whole number, got {value!r}")


def _flag(setting: object, attribute: attrs.Attribute[bool], value: object) -> None:
    """A switch: ``True`` or ``False`` only (a string such as ``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{_field(setting, attribute.name)} must be True or False, got {value!r}")


def _positive(setting: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    if value is not None:
        _require_number(setting, attribute.name, value)
        check_number(attribute.name, value)


def _non_negative(setting: object, attribute: attrs.Attribute[float], value: float) -> None:
    _require_number(setting, attribute.name, value)
    check_number(attribute.name, value, inclusive=True)


@attrs.frozen(kw_only=True)
class Timeouts:
    """HTTP timeouts, in real seconds.

    ``connect``: opening a connection. ``read``: the longest silence while waiting for or
    reading an answer. ``request``: the whole of a JSON request (``None``: no limit).
    ``status``: the whole of a poll that answers with a job's status (``retrieve`` of a job
    still running: headers and JSON body), so a server that drips its answer is given up on
    and polled again later instead of being waited on for ``request`` (``None``: no limit).
    ``download``: the whole of an audio download (``None``: no limit).

    An audio download must also keep a minimum pace: at least ``min_download_rate`` bytes
    per second on average over every ``stall_window`` seconds spent waiting for the network
    (``None``: no such rule, ``read`` still applies). A drip fails with
    :class:`~venice_audio_async.RequestTimeout` and is retried later (the media stays on the
    server); a slow but steady download completes.

    .. versionadded:: 0.1.0
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    read: float = attrs.field(default=60.0, validator=_positive)
    request: float | None = attrs.field(default=120.0, validator=_positive)
    download: float | None = attrs.field(default=None, validator=_positive)
    status: float | None = attrs.field(default=10.0, validator=_positive)
    min_download_rate: float | None = attrs.field(default=1024.0, validator=_positive)
    stall_window: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed requests are retried (never ``queue`` after the request may have been sent).

    A 429 is not a failed attempt on any endpoint: the session waits for the pause its
    headers ask for (capped by ``max_retry_after``) and sends the request again (the rules
    are in ``_retry.decide``). Waits grow exponentially from ``initial_backoff`` to
    ``max_backoff`` with ``jitter`` (a fraction of each wait, randomised). A server's
    ``Retry-After`` is honoured up to ``max_retry_after``. ``attempts`` counts the first
    try. :meth:`testing` gives a policy that never waits, for tests.

    Polls are not given up after ``attempts``: a poll that fails in transit (dropped,
    timed out, a gateway's 502 / 504, an HTML or empty body) is not the API's word on the
    job, so the job is polled again with backoff (up to ``max_backoff`` apart) until it has
    had no verdict from the API for ``unreachable_after`` seconds (and ``attempts`` polls
    at least); it then ends as :class:`~venice_audio_async.JobUnreachable`, still paid for
    and resumable. The default, 15 minutes, outlasts the network blips and gateway restarts
    seen in practice (seconds to minutes) while a real outage still ends ``results()`` in
    bounded time; how long Venice keeps finished media is not documented, and nothing is
    lost by giving up, since the job can be fetched later (``resume``, ``attach``). Only
    the API's own verdicts end a job as failed: a JSON error body with 400, 404 or 422 at
    once, and 500 / 503 after ``attempts`` identical answers in a row. ``unreachable_after=0``
    gives a job up as soon as ``attempts`` polls in a row failed (as :meth:`testing` does).

    .. versionadded:: 0.1.0
    """

    attempts: int = attrs.field(default=5, validator=_whole)
    initial_backoff: float = attrs.field(default=0.5, validator=_non_negative)
    max_backoff: float = attrs.field(default=30.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    jitter: float = attrs.field(default=0.5, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
    # Opting in risks a double charge: a truthy string must not do it by accident.
    retry_queue_on_ambiguous_failure: bool = attrs.field(default=False, validator=_flag)
    unreachable_after: float = attrs.field(default=900.0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts!r}")

    @classmethod
    def testing(cls, *, attempts: int = 5) -> RetryPolicy:
        """A policy with the same decisions but no waits (for tests): a job whose polls
        fail ``attempts`` times in a row is unreachable at once (polls that never wait
        would otherwise go on for as long as ``unreachable_after``, or forever on a clock
        that only moves when told)."""
        return cls(
            attempts=attempts,
            initial_backoff=0.0,
            max_backoff=0.0,
            jitter=0.0,
            max_retry_after=0.0,
            unreachable_after=0.0,
        )

    def backoff(self, retry: int, random_fraction: float) -> float:
        """The wait before retry number ``retry`` (1-based); ``random_fraction`` in [0, 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, retry - 1))
        return max(0.0, base * (1.0 - self.jitter / 2 + self.jitter * random_fraction))


@attrs.frozen
class RateLimit:
    """The request rate allowed on one endpoint.

    Args:
        per_minute: at most ``floor(per_minute)`` grants in any window of ``60 + margin``
            seconds (the hard limit; at least 1).
        burst: how many grants may go out back to back after a quiet spell; beyond that,
            grants are paced, at least ``(60 + margin) / floor(per_minute)`` seconds apart.
            ``None`` means ``max(1, floor(per_minute) // 6)``, ten seconds' worth. Capped
            at the limit (``burst == limit`` gives the bare sliding-window log). ``1``
            spreads every grant: what is left of the window is shared evenly until it
            frees, with no floor on the spacing (no burst ever leaves the window at once).
        margin: seconds added to the 60 s window to absorb network jitter.

    Raises:
        ValueError: ``per_minute < 1``, ``burst < 1`` or a negative ``margin``.

    .. versionadded:: 0.1.0
    """

    per_minute: float = attrs.field()
    burst: int | None = attrs.field(default=None)
    margin: float = attrs.field(default=0.5, validator=_non_negative)

    @per_minute.validator
    def _check_per_minute(self, attribute: attrs.Attribute[float], value: float) -> None:
        check_number(attribute.name, value, minimum=1, inclusive=True)

    @burst.validator
    def _check_burst(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"burst must be >= 1, got {value!r}")

    @property
    def limit(self) -> int:
        """The hard cap: grants allowed in any :attr:`window`."""
        return int(self.per_minute)

    @property
    def window(self) -> float:
        """Length of the sliding window in seconds (``60 + margin``)."""
        return MINUTE + self.margin

    @property
    def effective_burst(self) -> int:
        """The burst actually used (the default filled in, capped at :attr:`limit`)."""
        burst = self.burst if self.burst is not None else max(1, self.limit // 6)
        return min(burst, self.limit)

    @property
    def interval(self) -> float:
        """The closest spacing of paced grants: ``window / limit``."""
        return self.window / self.limit


#: The endpoints a pooled limit covers unless told otherwise: every audio endpoint.
AUDIO_ENDPOINTS = frozenset({"quote", "queue", "retrieve", "complete"})

#: Venice's rate-limit page: "Audio: 60 requests/min" (over every audio endpoint together),
#: the pooled limit when the key's own cannot be read.
DOCUMENTED_AUDIO_PER_MINUTE = 60.0


@attrs.frozen(kw_only=True)
class RateLimits:
    """Client-side request budgets, per minute, shared by everything a session does.

    ``None`` disables the limiter for that endpoint (the server may still answer 429, which
    is honoured). ``failures_per_window`` / ``failure_window`` mirror the API's error budget.

    ``pooled_per_minute`` puts ``pooled_endpoints`` (by default every audio endpoint) under
    one more limit together. Left to its default, a session learns it at open with one
    ``GET /api_keys/rate_limits`` (the lowest requests-per-minute figure listed for an
    audio model); if that fails or lists none for audio, Venice's documented audio limit
    holds, 60 requests/min over the audio endpoints together. The limits in force are
    logged once at INFO. Give ``pooled_per_minute`` yourself (a number, or ``None`` for no
    pooled limit), or a ``budget=``, and no request is sent at open.

    The per-endpoint defaults (``queue`` 40, ``retrieve`` 120 a minute) are assumptions on
    top of the pool: a limit the API states in its ``x-ratelimit-limit-requests`` header
    replaces them within one answer, up as well as down. A figure you set yourself is never
    raised by a stated one (a lower stated limit still holds: the API enforces it); each
    field is tracked on its own. A stated limit never raises a pool the key listed or you
    gave: it stays at most the lowest figure listed for any model in it. The documented
    pool rises to a stated figure, and is dropped (each endpoint keeps its own limit) once
    two of its endpoints state different figures. Inside the pool, ``queue`` calls come
    before polls. :meth:`from_api` reads the key's own limits from the API.

    .. versionadded:: 0.1.0
    """

    queue_per_minute: float | None = attrs.field(default=_assumed(40.0), validator=_positive)
    retrieve_per_minute: float | None = attrs.field(default=_assumed(120.0), validator=_positive)
    quote_per_minute: float | None = attrs.field(default=None, validator=_positive)
    complete_per_minute: float | None = attrs.field(default=None, validator=_positive)
    failures_per_window: int = 20
    failure_window: float = attrs.field(default=30.0, validator=_positive)
    pooled_per_minute: float | None = attrs.field(
        default=_assumed(DOCUMENTED_AUDIO_PER_MINUTE), validator=_positive
    )
    pooled_endpoints: frozenset[str] = attrs.field(default=AUDIO_ENDPOINTS, converter=frozenset)

    @classmethod
    async def from_api(
        cls,
        client: RateLimitSource,
        *,
        base: RateLimits | None = None,
        models: Iterable[str] | None = None,
    ) -> LearnedRateLimits:
        """Read the key's limits (``GET /api_keys/rate_limits``) and pool the audio ones.

        ``client`` is a :class:`~venice_audio_async.VeniceClient` (or anything with its
        ``models()`` and ``key_rate_limits()``).

        The smallest requests-per-minute figure among the audio models (``models``, or the
        audio catalogue ``client.models()`` lists) becomes ``pooled_per_minute`` of ``base``
        (default :class:`RateLimits`); per-day figures are reported, not enforced. When the
        answer lists no per-minute figure for an audio model, ``base`` is kept and the
        result (and a log line) says so.

        Raises:
            APIStatusError: the API refused a request (401: bad key).
            TransportError: no usable answer.

        .. versionadded:: 0.1.0
        """
        return await learn_rate_limits(client, base=base or cls(), models=models)


@attrs.frozen(kw_only=True)
class Limits:
    """Connection, concurrency and size limits.

    ``max_connections``: the size of the one connection pool. ``max_concurrent_requests``:
    requests in flight at once across the session. ``max_concurrent_polls``: how many of
    those may be polls (``retrieve``, downloads included); the rest stay free for
    ``queue``, ``quote``, ``models`` and ``complete``, so slow polls cannot hold them up.
    ``None`` (the default) reserves a quarter of the requests (at least one, when there are
    two or more; see :attr:`concurrent_polls`).

    Answers are capped while they stream, before they are kept or parsed:
    ``max_json_bytes`` for a JSON answer, ``max_audio_file_bytes`` for an audio file (500 MiB,
    as Venice's own CLI), and ``max_audio_bytes_in_memory`` for audio kept in memory (stream
    larger ones to a file). ``max_untaken_bytes`` caps the in-memory audio of finished jobs
    nobody has taken yet, all together: over it the oldest ones drop their bytes (their
    media stays on the server) and are downloaded again when taken; under
    ``release_media="delete_on_retrieve"``, where that is impossible, no further poll is
    sent until results are taken.

    A ``Content-Length`` over a cap is refused before the body is read; no more than the
    cap plus one byte is ever read. Over a cap the request fails with
    :class:`~venice_audio_async.ResponseTooLarge`, which is not retried: a job fails,
    nothing partial is kept, and its media stays on the server.

    .. versionadded:: 0.1.0
    """

    max_connections: int = 16
    max_concurrent_requests: int = 16
    max_concurrent_polls: int | None = None
    max_audio_bytes_in_memory: int = 100 * 1024 * 1024
    max_audio_file_bytes: int = 500 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    max_untaken_bytes: int = 256 * 1024 * 1024

    def __attrs_post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_concurrent_requests",
            "max_concurrent_polls",
            "max_audio_bytes_in_memory",
            "max_audio_file_bytes",
            "max_json_bytes",
            "max_untaken_bytes",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def concurrent_polls(self) -> int:
        """The request slots polls may hold at once.

        ``max_concurrent_polls`` if set (at most ``max_concurrent_requests``), else three
        quarters of the requests the pool can carry (``min(max_connections,
        max_concurrent_requests)``), leaving at least one slot and one connection to the
        other endpoints whenever there are two or more.
        """
        if self.max_concurrent_polls is not None:
            return min(self.max_concurrent_polls, self.max_concurrent_requests)
        carried = min(self.max_connections, self.max_concurrent_requests)
        return max(1, carried - max(1, carried // 4))


def endpoint_rates(limits: RateLimits) -> dict[str, RateLimit]:
    """The :class:`RateLimit` of each endpoint ``limits`` limits (a budget's ``rates``)."""
    pairs = {
        "queue": limits.queue_per_minute,
        "retrieve": limits.retrieve_per_minute,
        "quote": limits.quote_per_minute,
        "complete": limits.complete_per_minute,
    }
    # Retrieves are spread (burst 1): the poll policy's price says which polls are worth a
    # token, the spread when the next token comes. Unspread, every job due together drew
    # the window's tokens in seconds, and jobs finishing later waited for them to age out;
    # spread in the budget, processes sharing a RedisBudget cannot all take the same slot.
    return {
        endpoint: RateLimit(per_minute=rate, burst=1 if endpoint == "retrieve" else None)
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


# ------------------------------------------------------------------ limits learned from the API
# Limits learned from the API: ``GET /api_keys/rate_limits`` read as a pooled audio limit.
#
# Venice documents "Audio: 60 requests/min" (40 queue / 120 retrieve are its video figures).
# The key's own answer lists limits per model; the smallest requests-per-minute figure
# among the audio models becomes one pooled limit over the audio endpoints, the safe
# reading whichever way Venice counts. Per-day figures are
# reported, not enforced (a day is longer than any batch this library paces).


class RateLimitSource(Protocol):
    """What :meth:`RateLimits.from_api` reads: the two calls of
    :class:`~venice_audio_async.VeniceClient` it needs (the settings do not import the
    client, which sits above them)."""

    async def models(self) -> Sequence[AudioModel]:
        """The audio catalogue."""
        ...

    async def key_rate_limits(self) -> ApiKeyRateLimits:
        """``GET /api_keys/rate_limits``: the key's limits per model."""
        ...


log = logging.getLogger("venice_audio_async")


@attrs.frozen(kw_only=True)
class LearnedRateLimits:
    """What :meth:`RateLimits.from_api <venice_audio_async.RateLimits.from_api>` found.

    ``rate_limits``: the limits to use (``base`` with ``pooled_per_minute`` set when one was
    found, else ``base`` as it was). ``pooled_per_minute`` and ``model``: the smallest
    requests-per-minute figure among the audio models and whose it is (``None``: none
    found). ``per_day``: requests per day by audio model, reported only. ``audio_models``:
    the audio models the answer listed. ``message``: one line saying what was found.

    .. versionadded:: 0.1.0
    """

    rate_limits: RateLimits
    pooled_per_minute: int | None
    model: str | None
    per_day: Mapping[str, float]
    audio_models: tuple[str, ...]
    message: str

    @property
    def found(self) -> bool:
        """Whether the API stated a per-minute limit for an audio model."""
        return self.pooled_per_minute is not None


async def learn_rate_limits(
    client: RateLimitSource,
    *,
    base: RateLimits,
    models: Iterable[str] | None = None,
    announce: bool = True,
) -> LearnedRateLimits:
    """Read the key's limits and pool the smallest audio RPM (see the module docstring).

    A pooled figure the user set in ``base`` caps the learnt one; a default one is replaced.
    ``announce``: log what was found (a session logs the limits in force instead).

    Raises:
        APIStatusError: the API refused a request.
        TransportError: no usable answer.
    """
    answer = await client.key_rate_limits()
    if models is not None:
        audio = set(models)
    elif any(m.per_minute for m in answer.models):
        audio = {m.id for m in await client.models()}
    else:  # nothing to pool: no need for the catalogue
        audio = set()
    listed = [m for m in answer.models if m.model in audio]
    per_minute = [(m.per_minute, m.model) for m in listed if m.per_minute and m.per_minute >= 1]
    per_day = {m.model: m.per_day for m in listed if m.per_day is not None}
    names = tuple(m.model for m in listed)
    if not per_minute:
        message = (
            "GET /api_keys/rate_limits lists no requests-per-minute limit for an audio model "
            f"({len(answer.models)} model(s) listed, {len(names)} of them audio); keeping the "
            "configured limits"
        )
        if announce:
            log.warning("%s", message)
        return LearnedRateLimits(
            rate_limits=base,
            pooled_per_minute=None,
            model=None,
            per_day=per_day,
            audio_models=names,
            message=message,
        )
    rpm, model = min(per_minute)
    pooled = int(rpm)
    if base.pooled_per_minute is not None and not is_assumed(base.pooled_per_minute):
        pooled = min(pooled, int(base.pooled_per_minute))
    message = (
        f"the API states {rpm:g} requests/min for {model} (the lowest of {len(per_minute)} "
        f"audio model(s)): pooling the audio endpoints at {pooled}/min"
    )
    if per_day:
        lowest_day = min(per_day.values())
        message += f"; per-day limits reported, not enforced (lowest {lowest_day:g}/day)"
    if announce:
        log.info("%s", message)
    return LearnedRateLimits(
        rate_limits=attrs.evolve(base, pooled_per_minute=pooled),
        pooled_per_minute=pooled,
        model=model,
        per_day=per_day,
        audio_models=names,
        message=message,
    )


def limits_in_force(limits: RateLimits, source: str) -> str:
    """One line naming the request limits ``limits`` sets and where they come from."""
    parts: list[str] = []
    if limits.pooled_per_minute:
        endpoints = ", ".join(sorted(limits.pooled_endpoints))
        parts.append(f"{limits.pooled_per_minute:g} requests/min pooled over {endpoints}")
    for endpoint in ("queue", "retrieve", "quote", "complete"):
        figure = getattr(limits, f"{endpoint}_per_minute")
        if figure:
            assumed = " (assumed until the API states one)" if is_assumed(figure) else ""
            parts.append(f"{endpoint} {figure:g}/min{assumed}")
    return f"limits in force: {'; '.join(parts) or 'none'} ({source})"
