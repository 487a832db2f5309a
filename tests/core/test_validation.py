"""Tests of the client-side request checks in ``venice_audio_async._core.validation``."""

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
from venice_audio_async._core.converters import structure_catalogue
from venice_audio_async._core.errors import RequestValidationError
from venice_audio_async._core.models import AudioModel, FieldProblem, QueueRequest, QuoteRequest
from venice_audio_async._core.validation import (
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
    "ace-step-15": QueueRequest("ace-step-15", PROMPT, lyrics_prompt=LYRICS, duration_seconds=90),
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


def test_base_request_is_valid_for_the_rule_table_model() -> None:
    """The request the rule table starts from is valid, so each case breaks one rule."""
    model = make_model(**MUSIC_SPEC)
    assert queue_problems(BASE_REQUEST, model) == ()
    full = attrs.evolve(
        BASE_REQUEST,
        lyrics_prompt="la la",
        duration_seconds=190,
        force_instrumental=False,
        loop=True,
        voice="Roger",
        language_code="en",
        speed=0.7,
    )
    assert queue_problems(full, model) == ()


def test_non_music_model_is_refused() -> None:
    """A row whose type is not music is refused on the model field."""
    model = make_model(type="tts", **MUSIC_SPEC)
    problem = only_problem(queue_problems(BASE_REQUEST, model), "model")
    assert "'tts'" in problem.message


def test_voice_changer_message_names_the_right_endpoint() -> None:
    """A voice-changer model is refused with a pointer to /audio/voice-changer."""
    model = make_model(**{**MUSIC_SPEC, "voice_changer": True})
    problem = only_problem(queue_problems(BASE_REQUEST, model), "model")
    assert "/audio/voice-changer" in problem.message


def test_model_id_mismatch_is_reported() -> None:
    """Validating a request against another model's row is reported on model."""
    model = make_model("other-model", **MUSIC_SPEC)
    only_problem(queue_problems(BASE_REQUEST, model), "model")


def test_unknown_voice_message_lists_a_few_voices() -> None:
    """An unknown voice lists some valid voices and how many more there are."""
    voices = [f"V{i}" for i in range(20)]
    model = make_model(**{**MUSIC_SPEC, "voices": voices})
    problem = only_problem(queue_problems(attrs.evolve(BASE_REQUEST, voice="Zed"), model), "voice")
    assert problem.message == "must be one of V0, V1, V2, V3, V4 (and 15 more) (got 'Zed')"


@pytest.mark.parametrize("voices", [None, ["Aria"]])
def test_custom_voice_models_accept_any_non_blank_voice(voices: list[str] | None) -> None:
    """supports_custom_voice_id=true accepts a raw provider voice id."""
    spec = {**MUSIC_SPEC, "supports_custom_voice_id": True, "voices": voices}
    model = make_model(**{k: v for k, v in spec.items() if v is not None})
    request = attrs.evolve(BASE_REQUEST, voice="21m00Tcm4TlvDq8ikWAM")
    assert queue_problems(request, model) == ()


def test_duration_range_with_only_one_bound() -> None:
    """A model with only max_duration enforces the upper bound and nothing below."""
    spec = {k: v for k, v in MUSIC_SPEC.items() if k != "min_duration"}
    model = make_model(**{**spec, "max_duration": 22})
    assert queue_problems(attrs.evolve(BASE_REQUEST, duration_seconds=1), model) == ()
    problem = only_problem(
        queue_problems(attrs.evolve(BASE_REQUEST, duration_seconds=23), model),
        "duration_seconds",
    )
    assert problem.message == "must be at most 22 seconds (got 23)"


# --------------------------------------------------------------------------- all at once


def test_several_violations_are_all_reported_in_one_error() -> None:
    """check_queue raises one RequestValidationError (a ValueError) listing every problem."""
    model = make_model(
        **{**MUSIC_SPEC, "supports_lyrics": False, "supports_force_instrumental": False}
    )
    request = QueueRequest(
        "test-model",
        "short",
        lyrics_prompt="la",
        duration_seconds=500,
        force_instrumental=False,
        voice="Nobody",
        speed=2.0,
    )
    with pytest.raises(ValueError, match="problem") as info:
        check_queue(request, model)
    error = info.value
    assert isinstance(error, RequestValidationError)
    assert error.model == "test-model"
    assert set(fields(error.problems)) == {
        "prompt",
        "lyrics_prompt",
        "force_instrumental",
        "duration_seconds",
        "voice",
        "speed",
    }
    assert "lyrics_prompt:" in str(error)


def test_check_queue_returns_none_when_valid() -> None:
    """check_queue is silent on a valid request."""
    check_queue(BASE_REQUEST, make_model(**MUSIC_SPEC))


# --------------------------------------------------------------------------- unknown vs false

_FLAG_CASES = [
    ("force_instrumental", "supports_force_instrumental", True),
    ("force_instrumental", "supports_force_instrumental", False),
    ("lyrics_optimizer", "supports_lyrics_optimizer", True),
    ("lyrics_optimizer", "supports_lyrics_optimizer", False),
    ("loop", "supports_loop", True),
    ("loop", "supports_loop", False),
    ("language_code", "supports_language_code", "en"),
    ("speed", "supports_speed", 1.0),
]


@pytest.mark.parametrize(("field", "flag", "value"), _FLAG_CASES)
def test_absent_support_flag_is_unknown_and_not_rejected(field: str, flag: str, value: Any) -> None:
    """An option whose support flag the catalogue omits is left to the server."""
    spec = {k: v for k, v in MUSIC_SPEC.items() if k != flag}
    model = make_model(**spec)
    assert getattr(model.spec, flag) is None
    assert queue_problems(attrs.evolve(BASE_REQUEST, **{field: value}), model) == ()


@pytest.mark.parametrize(("field", "flag", "value"), _FLAG_CASES)
def test_explicit_false_support_flag_rejects_any_value(field: str, flag: str, value: Any) -> None:
    """An option whose support flag is explicitly false is rejected, even when set to False."""
    model = make_model(**{**MUSIC_SPEC, flag: False})
    problem = only_problem(
        queue_problems(attrs.evolve(BASE_REQUEST, **{field: value}), model), field
    )
    assert flag in problem.message


def test_force_instrumental_false_rejected_on_real_model_without_support() -> None:
    """force_instrumental=False is refused on stable-audio-25 (its mere presence is a 400)."""
    model = real_model("stable-audio-25")
    request = QueueRequest("stable-audio-25", PROMPT, force_instrumental=False)
    only_problem(queue_problems(request, model), "force_instrumental")


def test_absent_lyrics_support_is_not_rejected() -> None:
    """lyrics_prompt on a model without a supports_lyrics key is accepted (default limit)."""
    spec = {k: v for k, v in MUSIC_SPEC.items() if k not in {"supports_lyrics"}}
    model = make_model(**spec)
    assert queue_problems(attrs.evolve(BASE_REQUEST, lyrics_prompt="la la"), model) == ()


def test_absent_loop_flag_on_real_sound_effects_model_is_accepted() -> None:
    """loop passes on elevenlabs-sound-effects-v2, whose row omits supports_loop or sets it."""
    model = real_model("elevenlabs-sound-effects-v2")
    assert model.spec.supports_loop is not False
    request = QueueRequest("elevenlabs-sound-effects-v2", "Door creak", loop=False)
    assert queue_problems(request, model) == ()


# --------------------------------------------------------------------------- model=None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"speed": "fast"}, "speed", id="string-speed"),
        pytest.param({"speed": True}, "speed", id="bool-speed"),
        pytest.param({"speed": math.nan}, "speed", id="nan-speed"),
        pytest.param({"speed": math.inf}, "speed", id="inf-speed"),
        pytest.param({"speed": 0.2}, "speed", id="speed-below-spec"),
        pytest.param({"speed": 4.5}, "speed", id="speed-above-spec"),
        pytest.param({"duration_seconds": -5}, "duration_seconds", id="negative-duration"),
        pytest.param({"duration_seconds": 0}, "duration_seconds", id="zero-duration"),
        pytest.param({"duration_seconds": True}, "duration_seconds", id="bool-duration"),
        pytest.param({"duration_seconds": 30.0}, "duration_seconds", id="float-duration"),
        pytest.param({"duration_seconds": "30"}, "duration_seconds", id="str-duration"),
        pytest.param({"prompt": ""}, "prompt", id="empty-prompt"),
        pytest.param({"prompt": " \n\t "}, "prompt", id="blank-prompt"),
        pytest.param({"prompt": None}, "prompt", id="none-prompt"),
        pytest.param({"model": ""}, "model", id="empty-model"),
        pytest.param({"model": 7}, "model", id="int-model"),
        pytest.param({"lyrics_prompt": ["la"]}, "lyrics_prompt", id="list-lyrics"),
        pytest.param({"force_instrumental": 1}, "force_instrumental", id="int-flag"),
        pytest.param({"lyrics_optimizer": 0}, "lyrics_optimizer", id="zero-flag"),
        pytest.param({"loop": "true"}, "loop", id="str-flag"),
        pytest.param({"voice": 3}, "voice", id="int-voice"),
        pytest.param({"language_code": "EN"}, "language_code", id="upper-language"),
        pytest.param({"language_code": "eng"}, "language_code", id="three-letter-language"),
        pytest.param({"language_code": 1}, "language_code", id="int-language"),
        pytest.param(
            {"lyrics_optimizer": True, "lyrics_prompt": "la la"},
            "lyrics_optimizer",
            id="optimizer-with-lyrics",
        ),
    ],
)
def test_shape_checks_run_without_a_model(changes: dict[str, Any], field: str) -> None:
    """With model=None the type and shape checks still catch bad values."""
    request = attrs.evolve(BASE_REQUEST, **changes)
    only_problem(queue_problems(request, None), field)


def test_model_none_skips_per_model_rules() -> None:
    """With model=None, values only a catalogue row could refuse pass."""
    request = QueueRequest(
        "brand-new-model",
        "x" * 50_000,
        lyrics_prompt="l" * 10_000,
        duration_seconds=9999,
        force_instrumental=False,
        loop=True,
        voice="anyone",
        language_code="fr",
        speed=4,
    )
    assert queue_problems(request, None) == ()
    check_queue(request, None)
    assert queue_problems(QueueRequest("minimax-music-v2", "x"), None) == ()


def test_model_none_still_raises_for_type_errors() -> None:
    """check_queue with model=None raises for several shape errors at once."""
    bad_speed: Any = "fast"
    request = attrs.evolve(BASE_REQUEST, prompt="", duration_seconds=True, speed=bad_speed)
    with pytest.raises(RequestValidationError) as info:
        check_queue(request, None)
    assert fields(info.value.problems) == ["prompt", "duration_seconds", "speed"]


def test_bad_type_skips_the_value_rules_of_that_field() -> None:
    """A wrongly typed value gets one type problem, not range complaints as well."""
    model = make_model(**MUSIC_SPEC)
    wrong: dict[str, Any] = {"duration_seconds": "999", "speed": "9"}
    request = attrs.evolve(BASE_REQUEST, **wrong)
    assert fields(queue_problems(request, model)) == ["duration_seconds", "speed"]


# --------------------------------------------------------------------------- model extras


def test_minimax_v25_needs_ten_characters_of_lyrics() -> None:
    """minimax-music-v25 refuses short or missing lyrics without instrumental/optimizer."""
    model = real_model("minimax-music-v25")
    for lyrics in (None, "la la", "  la la   "):
        request = QueueRequest("minimax-music-v25", PROMPT, lyrics_prompt=lyrics)
        problem = only_problem(queue_problems(request, model), "lyrics_prompt")
        assert "at least 10 characters" in problem.message
    assert (
        queue_problems(QueueRequest("minimax-music-v25", PROMPT, lyrics_prompt=LYRICS), model) == ()
    )


@pytest.mark.parametrize("waiver", ["force_instrumental", "lyrics_optimizer"])
def test_minimax_v25_lyrics_rule_waived(waiver: str) -> None:
    """minimax-music-v25 needs no lyrics with force_instrumental or lyrics_optimizer true."""
    model = real_model("minimax-music-v25")
    waivers: dict[str, Any] = {waiver: True}
    request = QueueRequest("minimax-music-v25", PROMPT, **waivers)
    assert queue_problems(request, model) == ()


def test_minimax_v25_false_waiver_does_not_waive() -> None:
    """force_instrumental=False does not waive the minimax-music-v25 lyrics rule."""
    model = real_model("minimax-music-v25")
    request = QueueRequest("minimax-music-v25", PROMPT, force_instrumental=False)
    only_problem(queue_problems(request, model), "lyrics_prompt")


def test_minimax_v26_waived_only_by_force_instrumental() -> None:
    """minimax-music-v26 waives the lyrics rule for force_instrumental, not lyrics_optimizer."""
    model = make_model("minimax-music-v26", supports_lyrics=True, supports_lyrics_optimizer=True)
    assert (
        queue_problems(QueueRequest("minimax-music-v26", PROMPT, force_instrumental=True), model)
        == ()
    )
    problem = only_problem(
        queue_problems(QueueRequest("minimax-music-v26", PROMPT, lyrics_optimizer=True), model),
        "lyrics_prompt",
    )
    assert "unless force_instrumental is true" in problem.message
    only_problem(
        queue_problems(QueueRequest("minimax-music-v26", PROMPT, lyrics_prompt="short"), model),
        "lyrics_prompt",
    )


@pytest.mark.parametrize("lyrics", [None, "", "   "])
def test_minimax_v2_needs_non_blank_lyrics(lyrics: str | None) -> None:
    """minimax-music-v2 needs lyrics even when its row does not say lyrics_required."""
    model = make_model("minimax-music-v2", supports_lyrics=True)
    request = QueueRequest("minimax-music-v2", PROMPT, lyrics_prompt=lyrics)
    only_problem(queue_problems(request, model), "lyrics_prompt")
    assert queue_problems(attrs.evolve(request, lyrics_prompt="la"), model) == ()


def test_minimax_v2_missing_lyrics_reported_once_on_real_row() -> None:
    """lyrics_required and the v2 extra do not report the same missing lyrics twice."""
    model = real_model("minimax-music-v2")
    only_problem(queue_problems(QueueRequest("minimax-music-v2", PROMPT), model), "lyrics_prompt")


def test_seed_audio_takes_no_duration_even_with_metadata() -> None:
    """seed-audio-1-0 refuses duration_seconds whatever its row says."""
    model = make_model("seed-audio-1-0", min_duration=1, max_duration=120, voices=["Tim"])
    request = QueueRequest("seed-audio-1-0", "Hello there", voice="Tim")
    assert queue_problems(request, model) == ()
    problem = only_problem(
        queue_problems(attrs.evolve(request, duration_seconds=30), model), "duration_seconds"
    )
    assert problem.message == "this model does not support duration_seconds"
    bare = make_model("seed-audio-1-0")
    only_problem(
        queue_problems(attrs.evolve(request, voice=None, duration_seconds=30), bare),
        "duration_seconds",
    )


# --------------------------------------------------------------------------- quote


def test_quote_valid_requests_pass() -> None:
    """Valid quotes pass: durations in range, character counts for per-character pricing."""
    music = make_model(**MUSIC_SPEC)
    assert quote_problems(QuoteRequest("test-model"), music) == ()
    assert quote_problems(QuoteRequest("test-model", duration_seconds=190), music) == ()
    tts = make_model(pricing=PER_KCHAR, prompt_character_limit=5000)
    assert quote_problems(QuoteRequest("test-model", character_count=5000), tts) == ()
    check_quote(QuoteRequest("test-model", character_count=1), tts)


@pytest.mark.parametrize(
    ("spec", "request_kwargs", "field", "message"),
    [
        pytest.param(
            {"pricing": GENERATION},
            {"duration_seconds": 60},
            "duration_seconds",
            "this model does not support duration_seconds",
            id="no-duration-metadata",
        ),
        pytest.param(
            {"pricing": ACE_PRICING, "duration_options": [60, 90, 120]},
            {"duration_seconds": 100},
            "duration_seconds",
            "must be one of 60, 90, 120 (got 100)",
            id="not-an-option",
        ),
        pytest.param(
            {"pricing": PER_SECOND, "min_duration": 1, "max_duration": 22},
            {"duration_seconds": 30},
            "duration_seconds",
            "must be between 1 and 22 seconds (got 30)",
            id="out-of-range",
        ),
        pytest.param(
            {"pricing": PER_KCHAR, "prompt_character_limit": 5000},
            {},
            "character_count",
            "is required for this model (it is priced per thousand characters)",
            id="character-count-required",
        ),
        pytest.param(
            {"pricing": PER_KCHAR, "prompt_character_limit": 5000},
            {"character_count": 5001},
            "character_count",
            "must be at most 5000 characters (got 5001)",
            id="character-count-over-limit",
        ),
        pytest.param(
            {"pricing": PER_KCHAR},
            {"character_count": 0},
            "character_count",
            "must be greater than 0 (got 0)",
            id="character-count-zero",
        ),
        pytest.param(
            {"pricing": PER_KCHAR},
            {"character_count": True},
            "character_count",
            "must be an integer (got bool True)",
            id="character-count-bool",
        ),
    ],
)
def test_quote_rules(
    spec: dict[str, Any], request_kwargs: dict[str, Any], field: str, message: str
) -> None:
    """Each quote rule is reported on its field with a message saying what is allowed."""
    problems = quote_problems(QuoteRequest("test-model", **request_kwargs), make_model(**spec))
    assert problems == (FieldProblem(field, message),)


def test_quote_model_none_runs_only_shape_checks() -> None:
    """With model=None a quote is only checked for types and positivity."""
    assert quote_problems(QuoteRequest("x", duration_seconds=10_000), None) == ()
    count: Any = "9"
    problems = quote_problems(QuoteRequest("", duration_seconds=-1, character_count=count), None)
    assert fields(problems) == ["model", "duration_seconds", "character_count"]
    with pytest.raises(RequestValidationError) as info:
        check_quote(QuoteRequest("x", duration_seconds=False), None)
    assert fields(info.value.problems) == ["duration_seconds"]


def test_quote_against_real_rows() -> None:
    """Quotes against real rows: ace-step options, TTS needs character_count."""
    ace = real_model("ace-step-15")
    assert quote_problems(QuoteRequest("ace-step-15", duration_seconds=210), ace) == ()
    only_problem(
        quote_problems(QuoteRequest("ace-step-15", duration_seconds=200), ace), "duration_seconds"
    )
    tts = real_model("elevenlabs-tts-v3")
    only_problem(quote_problems(QuoteRequest("elevenlabs-tts-v3"), tts), "character_count")
    v2 = real_model("minimax-music-v2")
    only_problem(
        quote_problems(QuoteRequest("minimax-music-v2", duration_seconds=60), v2),
        "duration_seconds",
    )


# --------------------------------------------------------------------------- cost estimate


def test_estimate_durations_pricing_picks_the_tier() -> None:
    """durations pricing: the tier containing the duration, or the default duration."""
    model = make_model(pricing=ACE_PRICING, duration_options=[60, 90, 120], default_duration=60)
    assert estimate_cost_usd(attrs.evolve(BASE_REQUEST, duration_seconds=90), model) == 0.04
    assert estimate_cost_usd(attrs.evolve(BASE_REQUEST, duration_seconds=91), model) == 0.05
    assert estimate_cost_usd(BASE_REQUEST, model) == 0.03
    assert estimate_cost_usd(attrs.evolve(BASE_REQUEST, duration_seconds=500), model) is None
    no_default = make_model(pricing=ACE_PRICING, duration_options=[60, 90, 120])
    assert estimate_cost_usd(BASE_REQUEST, no_default) is None


def test_estimate_generation_pricing_is_flat() -> None:
    """generation pricing: the flat usd, whatever the duration."""
    model = make_model(pricing=GENERATION, min_duration=5, max_duration=190)
    assert estimate_cost_usd(BASE_REQUEST, model) == 0.24
    assert estimate_cost_usd(attrs.evolve(BASE_REQUEST, duration_seconds=190), model) == 0.24


def test_estimate_per_second_pricing_uses_default_duration() -> None:
    """per_second pricing: usd times the requested or default seconds, rounded to 6 places."""
    model = make_model(pricing=PER_SECOND, min_duration=1, max_duration=22, default_duration=7)
    assert estimate_cost_usd(BASE_REQUEST, model) == 0.0161
    assert estimate_cost_usd(attrs.evolve(BASE_REQUEST, duration_seconds=22), model) == 0.0506
    assert estimate_cost_usd(BASE_REQUEST, make_model(pricing=PER_SECOND)) is None


def test_estimate_per_thousand_characters_uses_prompt_length() -> None:
    """per_thousand_characters pricing: usd times the prompt length over 1000."""
    model = make_model(pricing=PER_KCHAR)
    request = QueueRequest("test-model", "x" * 2000)
    assert estimate_cost_usd(request, model) == 0.23
    assert estimate_cost_usd(QueueRequest("test-model", "Hello"), model) == 0.000575


def test_estimate_unknown_or_missing_pricing_is_none() -> None:
    """An unknown pricing shape, or none at all, cannot be estimated."""
    assert estimate_cost_usd(BASE_REQUEST, make_model(pricing={"per_token": {"usd": 1}})) is None
    assert estimate_cost_usd(BASE_REQUEST, make_model()) is None


def test_estimate_real_catalogue_prices() -> None:
    """Estimates from real rows match their catalogue prices."""
    ace = real_model("ace-step-15")
    assert estimate_cost_usd(VALID_BY_HAND["ace-step-15"], ace) == 0.04
    sfx = real_model("elevenlabs-sound-effects-v2")
    assert estimate_cost_usd(QueueRequest(sfx.id, "Door creak"), sfx) == 0.0161
    music = real_model("elevenlabs-music")
    assert estimate_cost_usd(QueueRequest(music.id, PROMPT), music) == 0.87


# --------------------------------------------------------------------------- properties

PROPERTY_SPEC: dict[str, Any] = {
    "pricing": PER_SECOND,
    "min_prompt_length": 10,
    "prompt_character_limit": 60,
    "min_duration": 5,
    "max_duration": 190,
    "supports_speed": True,
    "min_speed": 0.7,
    "max_speed": 1.2,
    "supports_lyrics": True,
    "lyrics_character_limit": 40,
}
PROPERTY_MODEL = make_model(**PROPERTY_SPEC)
OPTIONS_MODEL = make_model(pricing=ACE_PRICING, duration_options=[60, 90, 120], voices=["A", "B"])


@settings(max_examples=200, deadline=None)
@given(
    prompt_length=st.integers(min_value=0, max_value=80),
    padding=st.sampled_from(["", " ", "\n  "]),
    duration=st.none() | st.integers(min_value=-10, max_value=250),
    speed=st.none() | st.floats(min_value=0.0, max_value=5.0),
    lyrics_length=st.none() | st.integers(min_value=0, max_value=60),
)
def test_problems_appear_exactly_where_a_constraint_breaks(
    prompt_length: int,
    padding: str,
    duration: int | None,
    speed: float | None,
    lyrics_length: int | None,
) -> None:
    """queue_problems reports a field iff that field breaks one of the model's constraints."""
    prompt = padding + "p" * prompt_length + padding
    lyrics = None if lyrics_length is None else "l" * lyrics_length
    request = QueueRequest(
        "test-model", prompt, lyrics_prompt=lyrics, duration_seconds=duration, speed=speed
    )
    expected = set()
    if not 10 <= prompt_length <= 60:
        expected.add("prompt")
    if duration is not None and not 5 <= duration <= 190:
        expected.add("duration_seconds")
    if speed is not None and not 0.7 <= speed <= 1.2:
        expected.add("speed")
    if lyrics_length is not None and lyrics_length > 40:
        expected.add("lyrics_prompt")
    problems = queue_problems(request, PROPERTY_MODEL)
    assert set(fields(problems)) == expected
    assert len(problems) == len(expected)
    if expected:
        with pytest.raises(RequestValidationError):
            check_queue(request, PROPERTY_MODEL)
    else:
        check_queue(request, PROPERTY_MODEL)


@settings(max_examples=100, deadline=None)
@given(duration=st.integers(min_value=-1000, max_value=1000), voice=st.text(max_size=5))
def test_options_model_accepts_exactly_its_options(duration: int, voice: str) -> None:
    """A duration-options model accepts exactly its options and its listed voices."""
    request = QueueRequest("test-model", PROMPT, duration_seconds=duration, voice=voice)
    problems = fields(queue_problems(request, OPTIONS_MODEL))
    assert ("duration_seconds" in problems) == (duration not in (60, 90, 120))
    assert ("voice" in problems) == (voice not in ("A", "B"))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_generated_valid_requests_pass_for_real_models(data: st.DataObject) -> None:
    """Requests drawn inside a real model's constraints never have problems."""
    catalogue = _real_catalogue()
    if not catalogue:
        pytest.skip("no 2026-04-20 catalogue available")
    model = data.draw(st.sampled_from(sorted(catalogue.values(), key=lambda m: m.id)))
    spec = model.spec
    minimum = max(spec.min_prompt_length or 1, 1)
    limit = spec.prompt_character_limit or 1000
    prompt = data.draw(
        st.text(alphabet="abc xyz", min_size=minimum, max_size=limit).filter(
            lambda s: len(s.strip()) >= minimum
        )
    )
    duration: int | None = None
    if spec.duration_options:
        duration = data.draw(st.none() | st.sampled_from(spec.duration_options))
    elif spec.min_duration is not None and spec.max_duration is not None:
        duration = data.draw(
            st.none() | st.integers(int(spec.min_duration), int(spec.max_duration))
        )
    speed: float | None = None
    if spec.supports_speed is True and spec.min_speed is not None and spec.max_speed is not None:
        speed = data.draw(st.none() | st.floats(spec.min_speed, spec.max_speed))
    base = generic_valid_request(model)
    request = attrs.evolve(base, prompt=prompt, duration_seconds=duration, speed=speed)
    assert queue_problems(request, model) == ()
