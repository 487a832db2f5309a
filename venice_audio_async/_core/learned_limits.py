"""Limits learned from the API: ``GET /api_keys/rate_limits`` read as a pooled audio limit.

Venice's documented limits disagree (AUDIO_API.md section 9: "Audio 60/min" on one page,
40 queue / 120 retrieve elsewhere). The key's own answer lists limits per model; the
smallest requests-per-minute figure among the audio models becomes one pooled limit over
the audio endpoints, the safe reading whichever way Venice counts. Per-day figures are
reported, not enforced (a day is longer than any batch this library paces).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    # Types only: RateLimits.from_api imports this module when called (no import cycle).
    from .._client import VeniceClient
    from .config import RateLimits

__all__ = ["LearnedRateLimits", "learn_rate_limits"]

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
    client: VeniceClient, *, base: RateLimits, models: Iterable[str] | None = None
) -> LearnedRateLimits:
    """Read the key's limits and pool the smallest audio RPM (see the module docstring).

    Raises:
        APIStatusError: the API refused a request.
        TransportError: no usable answer.
    """
    audio = set(models) if models is not None else {m.id for m in await client.models()}
    answer = await client.key_rate_limits()
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
    if base.pooled_per_minute is not None:
        pooled = min(pooled, int(base.pooled_per_minute))
    message = (
        f"the API states {rpm:g} requests/min for {model} (the lowest of {len(per_minute)} "
        f"audio model(s)): pooling the audio endpoints at {pooled}/min"
    )
    if per_day:
        lowest_day = min(per_day.values())
        message += f"; per-day limits reported, not enforced (lowest {lowest_day:g}/day)"
    log.info("%s", message)
    return LearnedRateLimits(
        rate_limits=attrs.evolve(base, pooled_per_minute=pooled),
        pooled_per_minute=pooled,
        model=model,
        per_day=per_day,
        audio_models=names,
        message=message,
    )
