"""Tests of the client-side request checks in ``venice_audio_async._validation``."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import venice_audio_async
from venice_audio_async._converters import structure_catalogue
from venice_audio_async._errors import RequestValidationError
from venice_audio_async._models import AudioModel, FieldProblem, QueueRequest, QuoteRequest
from venice_audio_async._validation import (
    check_queue,
    check_quote,
    estimate_cost_usd,
    queue_problems,
    quote_problems,
)

# --------------------------------------------------------------------------- helpers

_CATALOGUE_PATHS = (
    Path(venice_audio_async.__file__).parent / "testing" / "catalogue-2026-04-20.json",
    Path("/work/shared/venice-api/models-music-2026-04-20.json"),
)

PROMPT = "Warm cinematic strings over a soft piano line"
LYRICS = "[Verse]\nWalking down the river road\n[Chorus]\nLa la la"


@lru_cache(maxsize=1)
def _real_catalogue() -> dict[str, AudioModel]:
    """The 2026-04-20 catalogue by id (bundled copy first), or empty when neither exists."""
    for path in _CATALOGUE_PATHS:
        if path.is_file():
            payload = json.loads(path.read_text(encoding="utf-8"))
            return {m.id: m for m in structure_catalogue(payload)}
    return {}


def real_model(model_id: str) -> AudioModel:
    """One model of the real catalogue; skips the test when the file or the row is missing."""
    model = _real_catalogue().get(model_id)
    if model is None:
        pytest.skip(f"{model_id} not in an available 2026-04-20 catalogue")
    return model


def make_model(model_id: str = "test-model", *, type: str = "music", **spec: Any) -> AudioModel:
    """A catalogue row built from an inline ``model_spec`` dict, through the real converter."""
    row = {"id": model_id, "type": type, "object": "model", "model_spec": spec}
    (model,) = structure_catalogue({"object": "list", "data": [row]})
    return model


def fields(problems: tuple[FieldProblem, ...]) -> list[str]:
    """The field names of some problems, in order."""
    return [p.field for p in problems]


def only_problem(problems: tuple[FieldProblem, ...], field: str) -> FieldProblem:
    """The single problem, asserting it is about ``field``."""
    assert len(problems) == 1, problems
    assert problems[0].field == field, problems
    return problems[0]


# Pricing dicts shaped like the real catalogue (float noise included).
ACE_PRICING = {
    "durations": {
        "60": {"usd": 0.03, "diem": 0.03, "min_seconds": 60, "max_seconds": 60},
        "90": {"usd": 0.04, "diem": 0.04, "min_seconds": 61, "max_seconds": 90},
        "120": {"usd": 0.05, "diem": 0.05, "min_seconds": 91, "max_seconds": 120},
    }
}
PER_SECOND = {"per_second": {"usd": 0.0023000000000000004, "diem": 0.0023000000000000004}}
PER_KCHAR = {"per_thousand_characters": {"usd": 0.11500000000000002, "diem": 0.115}}
GENERATION = {"generation": {"usd": 0.24, "diem": 0.24}}

# --------------------------------------------------------------------------- real catalogue

# One valid request per model of the 2026-04-20 catalogue, written by hand.
VALID_BY_HAND: dict[str, QueueRequest] = {
    "ace-step-15": QueueRequest(
        "ace-step-15", PROMPT, lyrics_prompt=LYRICS, duration_seconds=90
    ),
    "elevenlabs-music": QueueRequest(
        "elevenlabs-music", PROMPT, duration_seconds=30, force_instrumental=True
    ),
    "minimax-music-v2": QueueRequest("minimax-music-v2", PROMPT, lyrics_prompt=LYRICS),
    "minimax-music-v25": QueueRequest("minimax-music-v25", PROMPT, lyrics_optimizer=True),
    "minimax-music-v26": QueueRequest("minimax-music-v26", PROMPT, lyrics_prompt=LYRICS),
    "stable-audio-25": QueueRequest("stable-audio-25", PROMPT, duration_seconds=190),
    "elevenlabs-sound-effects-v2": QueueRequest(
        "elevenlabs-sound-effects-v2", "Door creak", duration_seconds=22, loop=True
    ),
    "mmaudio-v2-text-to-audio": QueueRequest(
        "mmaudio-v2-text-to-audio", "Rain", duration_seconds=1
    ),
    "elevenlabs-tts-v3": QueueRequest("elevenlabs-tts-v3", "Hi", voice="Roger"),
    "elevenlabs-tts-multilingual-v2": QueueRequest(
        "elevenlabs-tts-multilingual-v2", "Bonjour", voice="Bill", speed=1.2
    ),
}


@pytest.mark.parametrize("model_id", sorted(VALID_BY_HAND))
def test_hand_written_valid_request_passes_for_real_model(model_id: str) -> None:
    """A hand-written valid request passes for each model of the real catalogue."""
    model = real_model(model_id)
    request = VALID_BY_HAND[model_id]
    assert queue_problems(request, model) == ()
    check_queue(request, model)


def generic_valid_request(model: AudioModel) -> QueueRequest:
    """A valid request for any model, built only from its spec and the documented extras."""
    spec = model.spec
    minimum = spec.min_prompt_length if spec.min_prompt_length is not None else 10
    limit = spec.prompt_character_limit or 10_000
    prompt = (PROMPT * 20)[: max(minimum, min(len(PROMPT), limit))]
    needs_lyrics = spec.lyrics_required is True or model.id in {
        "minimax-music-v2",
        "minimax-music-v25",
        "minimax-music-v26",
    }
    duration: int | None = None
    if spec.duration_options:
        duration = spec.duration_options[-1]
    elif spec.max_duration is not None:
        duration = int(spec.max_duration)
    return QueueRequest(
        model=model.id,
        prompt=prompt,
        lyrics_prompt=LYRICS if needs_lyrics else None,
        duration_seconds=duration,
        voice=spec.voices[0] if spec.voices else None,
        speed=spec.max_speed if spec.supports_speed is True else None,
    )


def test_generic_valid_request_passes_for_every_real_model() -> None:
    """A request generated from each real model's spec has no problem."""
    catalogue = _real_catalogue()
    if not catalogue:
        pytest.skip("no 2026-04-20 catalogue available")
    assert set(VALID_BY_HAND) <= set(catalogue)
    for model in catalogue.values():
        assert queue_problems(generic_valid_request(model), model) == (), model.id


def test_real_catalogue_messages_say_what_is_allowed() -> None:
    """Messages against real rows list the options and the limit with the actual value."""
    ace = real_model("ace-step-15")
    (problem,) = queue_problems(QueueRequest("ace-step-15", PROMPT, duration_seconds=61), ace)
    assert problem == FieldProblem(
        "duration_seconds", "must be one of 60, 90, 120, 150, 180, 210 (got 61)"
    )
    v26 = real_model("minimax-music-v26")
    request = QueueRequest("minimax-music-v26", "x" * 412, force_instrumental=True)
    (problem,) = queue_problems(request, v26)
    assert problem == FieldProblem("prompt", "must be at most 300 characters (got 412)")


# --------------------------------------------------------------------------- each rule

BASE_REQUEST = QueueRequest("test-model", PROMPT[:40])

MUSIC_SPEC: dict[str, Any] = {
    "pricing": GENERATION,
    "supports_lyrics": True,
    "lyrics_required": False,
    "lyrics_character_limit": 100,
    "supports_force_instrumental": True,
    "supports_lyrics_optimizer": True,
    "supports_loop": True,
    "supports_language_code": True,
    "supports_speed": True,
    "min_speed": 0.7,
    "max_speed": 1.2,
    "min_duration": 5,
    "max_duration": 190,
    "default_duration": 30,
    "prompt_character_limit": 50,
    "min_prompt_length": 10,
    "voices": ["Aria", "Roger"],
    "default_voice": "Aria",
}


@pytest.mark.parametrize(
    ("spec_changes", "request_changes", "field"),
    [
        pytest.param({}, {"prompt": "too short"}, "prompt", id="prompt-below-min"),
        pytest.param({}, {"prompt": "x" * 51}, "prompt", id="prompt-above-limit"),
        pytest.param({"min_prompt_length": None}, {"prompt": "123456789"}, "prompt", id="min-10"),
        pytest.param({"supports_lyrics": False}, {"lyrics_prompt": "la"}, "lyrics_prompt"),
        pytest.param({"lyrics_required": True}, {}, "lyrics_prompt", id="lyrics-required"),
        pytest.param({"lyrics_required": True}, {"lyrics_prompt": "  "}, "lyrics_prompt"),
        pytest.param({}, {"lyrics_prompt": "l" * 101}, "lyrics_prompt", id="lyrics-limit"),
        pytest.param(
            {"lyrics_character_limit": None},
            {"lyrics_prompt": "l" * 4097},
            "lyrics_prompt",
            id="lyrics-default-limit",
        ),
        pytest.param(
            {"supports_lyrics_optimizer": False}, {"lyrics_optimizer": False}, "lyrics_optimizer"
        ),
        pytest.param({}, {"lyrics_optimizer": True, "lyrics_prompt": "la"}, "lyrics_optimizer"),
        pytest.param(
            {"supports_force_instrumental": False},
            {"force_instrumental": True},
            "force_instrumental",
        ),
        pytest.param({"supports_loop": False}, {"loop": False}, "loop"),
        pytest.param({"supports_language_code": False}, {"language_code": "en"}, "language_code"),
        pytest.param({"supports_speed": False}, {"speed": 1.0}, "speed", id="speed-unsupported"),
        pytest.param({}, {"speed": 0.5}, "speed", id="speed-below-model-min"),
        pytest.param({}, {"speed": 1.3}, "speed", id="speed-above-model-max"),
        pytest.param({}, {"duration_seconds": 4}, "duration_seconds", id="duration-below"),
        pytest.param({}, {"duration_seconds": 191}, "duration_seconds", id="duration-above"),
        pytest.param(
            {"min_duration": None, "max_duration": None},
            {"duration_seconds": 30},
            "duration_seconds",
            id="duration-no-metadata",
        ),
        pytest.param(
            {"duration_options": [60, 90]},
            {"duration_seconds": 75},
            "duration_seconds",
            id="duration-not-an-option",
        ),
        pytest.param({}, {"voice": "Nobody"}, "voice", id="voice-unknown"),
        pytest.param({"voices": None}, {"voice": "Aria"}, "voice", id="voice-no-voices"),
        pytest.param({"voices": []}, {"voice": "Aria"}, "voice", id="voice-empty-voices"),
        pytest.param(
            {"supports_custom_voice_id": True}, {"voice": "  "}, "voice", id="custom-voice-blank"
        ),
        pytest.param({"voice_changer": True}, {}, "model", id="voice-changer"),
    ],
)
def test_each_rule_violation_is_reported_on_its_field(
    spec_changes: dict[str, Any], request_changes: dict[str, Any], field: str
) -> None:
    """Breaking one per-model rule yields exactly one problem, on that wire field."""
    spec = {k: v for k, v in {**MUSIC_SPEC, **spec_changes}.items() if v is not None}
    request = attrs.evolve(BASE_REQUEST, **request_changes)
    problem = only_problem(queue_problems(request, make_model(**spec)), field)
    assert problem.message
