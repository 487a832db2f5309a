"""``models`` (the catalogue as a table) and ``quote`` (the price of one generation)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._core.models import (
    AudioModel,
    DurationsPricing,
    GenerationPricing,
    PerSecondPricing,
    PerThousandCharactersPricing,
)
from .connect import endpoint, open_session

__all__ = ["cmd_models", "cmd_quote"]


def _price_shape(model: AudioModel) -> str:
    pricing = model.spec.pricing
    if isinstance(pricing, DurationsPricing):
        tiers = sorted(pricing.tiers.values(), key=lambda t: t.usd)
        return f"${tiers[0].usd:g}-${tiers[-1].usd:g} by duration" if tiers else "by duration"
    if isinstance(pricing, GenerationPricing):
        return f"${pricing.usd:g} per job"
    if isinstance(pricing, PerSecondPricing):
        return f"${pricing.usd:.5g} per second"
    if isinstance(pricing, PerThousandCharactersPricing):
        return f"${pricing.usd:.3g} per 1k chars"
    return "unknown"


def _duration(model: AudioModel) -> str:
    spec = model.spec
    if spec.duration_options:
        return ",".join(str(d) for d in spec.duration_options) + " s"
    if spec.min_duration is not None or spec.max_duration is not None:
        return f"{spec.min_duration:g}-{spec.max_duration:g} s"
    return "-"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def cmd_models(args: argparse.Namespace) -> int:
    """``models``: print the audio models with their price, durations and voices."""
    async with endpoint(args) as (url, key, clock), open_session(args, url, key, clock) as session:
        models = await session.models()
    rows = [
        [
            m.id,
            m.name,
            _price_shape(m),
            _duration(m),
            str(len(m.spec.voices)) if m.spec.voices else "-",
        ]
        for m in sorted(models, key=lambda m: m.id)
    ]
    _print_table(["id", "name", "price", "duration", "voices"], rows)
    return 0


async def cmd_quote(args: argparse.Namespace) -> int:
    """``quote``: print the price of one generation."""
    async with endpoint(args) as (url, key, clock), open_session(args, url, key, clock) as session:
        result = await session.quote(
            args.model, duration_seconds=args.duration, character_count=args.characters
        )
    print(f"${result.quote:.4f}")
    return 0
