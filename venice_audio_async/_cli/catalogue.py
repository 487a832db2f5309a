"""``models`` (the catalogue as a table, or a model's voices) and ``quote`` (one price)."""

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
from .console import say
from .exits import ExitCode
from .output import emit, json_mode

__all__ = ["cmd_models", "cmd_quote"]


def _pricing_kind(model: AudioModel) -> str | None:
    """The catalogue's pricing kind, as ``--json`` names it."""
    kinds = {
        DurationsPricing: "durations",
        GenerationPricing: "generation",
        PerSecondPricing: "per_second",
        PerThousandCharactersPricing: "per_thousand_characters",
    }
    pricing = model.spec.pricing
    return None if pricing is None else kinds.get(type(pricing), "unknown")


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


def _model_line(model: AudioModel) -> None:
    spec = model.spec
    emit(
        "model",
        id=model.id,
        name=model.name,
        type=model.type,
        pricing=_pricing_kind(model),
        price=_price_shape(model),
        durations=list(spec.duration_options) if spec.duration_options else None,
        min_duration=spec.min_duration,
        max_duration=spec.max_duration,
        default_duration=spec.default_duration,
        voices=len(spec.voices) if spec.voices else None,
    )


def _voices(args: argparse.Namespace, models: Sequence[AudioModel]) -> int:
    """``models --voices MODEL``: one voice per line (or a ``voice`` object each)."""
    model = next((m for m in models if m.id == args.voices), None)
    if model is None:
        known = ", ".join(sorted(m.id for m in models))
        say(f"--voices {args.voices}: no such audio model (the models are: {known})")
        return ExitCode.INVALID_INPUT
    if not model.spec.voices:
        say(f"{model.id} takes no voice (it has no voices in the catalogue)")
        return ExitCode.INVALID_INPUT
    for voice in model.spec.voices:
        if json_mode(args):
            emit("voice", model=model.id, voice=voice, default=voice == model.spec.default_voice)
        else:
            print(voice + ("  (default)" if voice == model.spec.default_voice else ""))
    return ExitCode.OK


async def cmd_models(args: argparse.Namespace) -> int:
    """``models``: print the audio models with their price, durations and voices."""
    async with endpoint(args) as (url, key, clock), open_session(args, url, key, clock) as session:
        models = await session.models()
    if args.voices is not None:
        return _voices(args, models)
    if json_mode(args):
        for model in sorted(models, key=lambda m: m.id):
            _model_line(model)
        return ExitCode.OK
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
    return ExitCode.OK


async def cmd_quote(args: argparse.Namespace) -> int:
    """``quote``: print the price of one generation."""
    async with endpoint(args) as (url, key, clock), open_session(args, url, key, clock) as session:
        result = await session.quote(
            args.model, duration_seconds=args.duration, character_count=args.characters
        )
    if json_mode(args):
        emit(
            "quote",
            model=args.model,
            duration_seconds=args.duration,
            character_count=args.characters,
            usd=result.quote,
        )
    else:
        print(f"${result.quote:.4f}")
    return ExitCode.OK
