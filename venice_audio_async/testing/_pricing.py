"""What the fake server charges: the quote of a request from its model's catalogue pricing.

The four pricing shapes of the model catalogue (``durations`` tiers, a flat
``generation`` price, ``per_second`` and ``per_thousand_characters``), computed from the raw
catalogue row as the server sees it, independently of the client's model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._rules import default_duration, is_finite_number, js_length, model_spec, parse_duration

__all__ = ["UNMETERED_PER_SECOND_SECONDS", "compute_quote", "queue_price"]

#: Seconds a ``per_second`` model without duration metadata is priced at (Seed Audio reserves
#: a 120 s cap at queue time).
UNMETERED_PER_SECOND_SECONDS = 120


def _usd(entry: Any) -> float:
    if isinstance(entry, Mapping) and is_finite_number(entry.get("usd")):
        return float(entry["usd"])
    raise ValueError(f"pricing entry without a usd price: {entry!r}")


def compute_quote(
    row: Mapping[str, Any],
    *,
    duration_seconds: int | None = None,
    character_count: int | None = None,
) -> float:
    """The USD price of one job, rounded to 6 decimals to drop float noise.

    * ``durations``: the ``usd`` of the tier whose ``[min_seconds, max_seconds]`` holds the
      duration (requested, else :func:`default_duration`); a duration outside every tier is
      priced at the nearest tier above it, or the top tier.
    * ``generation``: the flat ``usd``.
    * ``per_second``: ``usd`` x seconds (requested, else the default, else 120 s for models
      without duration metadata).
    * ``per_thousand_characters``: ``usd`` x ``character_count`` / 1000.

    Raises:
        ValueError: the row has no pricing shape this function knows.
    """
    pricing = model_spec(row).get("pricing")
    if not isinstance(pricing, Mapping):
        raise ValueError(f"model {row.get('id')!r} has no pricing")
    seconds = duration_seconds if duration_seconds is not None else default_duration(row)
    if "durations" in pricing and isinstance(pricing["durations"], Mapping):
        tiers = sorted(
            (tier for tier in pricing["durations"].values() if isinstance(tier, Mapping)),
            key=lambda tier: float(tier.get("max_seconds", 0)),
        )
        if not tiers:
            raise ValueError(f"model {row.get('id')!r} has no duration tiers")
        if seconds is None:
            return round(_usd(tiers[0]), 6)
        for tier in tiers:
            if float(tier.get("min_seconds", 0)) <= seconds <= float(tier.get("max_seconds", 0)):
                return round(_usd(tier), 6)
        above = [tier for tier in tiers if seconds <= float(tier.get("max_seconds", 0))]
        return round(_usd(above[0] if above else tiers[-1]), 6)
    if "generation" in pricing:
        return round(_usd(pricing["generation"]), 6)
    if "per_second" in pricing:
        billed = seconds if seconds is not None else UNMETERED_PER_SECOND_SECONDS
        return round(_usd(pricing["per_second"]) * billed, 6)
    if "per_thousand_characters" in pricing:
        return round(_usd(pricing["per_thousand_characters"]) * (character_count or 0) / 1000, 6)
    raise ValueError(f"model {row.get('id')!r} has an unknown pricing shape: {sorted(pricing)}")


def queue_price(body: Mapping[str, Any], row: Mapping[str, Any]) -> float:
    """What a valid ``queue`` body costs: its duration (or the default) and prompt length.

    Raises:
        ValueError: the row has no pricing shape :func:`compute_quote` knows.
    """
    prompt = body.get("prompt")
    return compute_quote(
        row,
        duration_seconds=parse_duration(body.get("duration_seconds")),
        character_count=js_length(prompt) if isinstance(prompt, str) else None,
    )
