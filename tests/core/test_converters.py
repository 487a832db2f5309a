"""The converter: request bodies omit unset fields; responses tolerate extra keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import venice_audio_async as v
from venice_audio_async._core.converters import (
    structure_catalogue,
    structure_complete,
    structure_processing,
    structure_queued,
    structure_quote,
    unstructure_request,
)
from venice_audio_async.types import (
    CompleteRequest,
    DurationsPricing,
    GenerationPricing,
    PerSecondPricing,
    PerThousandCharactersPricing,
    QuoteRequest,
    RetrieveRequest,
    UnknownPricing,
)

CATALOGUE = Path(v.__file__).parent / "testing" / "catalogue-2026-04-20.json"


def test_unset_fields_are_omitted() -> None:
    """A request with only required fields has only those keys."""
    body = unstructure_request(v.QueueRequest(model="m", prompt="p"))
    assert body == {"model": "m", "prompt": "p"}


def test_explicit_false_is_sent() -> None:
    """An explicit False is a value the caller chose, so it is sent (never null)."""
    body = unstructure_request(v.QueueRequest(model="m", prompt="p", force_instrumental=False))
    assert body == {"model": "m", "prompt": "p", "force_instrumental": False}
    assert None not in body.values()


def test_every_queue_field_including_loop() -> None:
    """All queue fields reach the body under their wire names."""
    request = v.QueueRequest(
        model="m",
        prompt="p",
        lyrics_prompt="l",
        duration_seconds=30,
        force_instrumental=True,
        lyrics_optimizer=False,
        loop=True,
        voice="Aria",
        language_code="en",
        speed=1.1,
    )
    assert unstructure_request(request) == {
        "model": "m",
        "prompt": "p",
        "lyrics_prompt": "l",
        "duration_seconds": 30,
        "force_instrumental": True,
        "lyrics_optimizer": False,
        "loop": True,
        "voice": "Aria",
        "language_code": "en",
        "speed": 1.1,
    }


def test_retrieve_complete_quote_bodies() -> None:
    """Retrieve, complete and quote bodies carry exactly their set fields."""
    assert unstructure_request(RetrieveRequest(model="m", queue_id="q")) == {
        "model": "m",
        "queue_id": "q",
    }
    assert unstructure_request(
        RetrieveRequest(model="m", queue_id="q", delete_media_on_completion=True)
    ) == {"model": "m", "queue_id": "q", "delete_media_on_completion": True}
    assert unstructure_request(CompleteRequest(model="m", queue_id="q")) == {
        "model": "m",
        "queue_id": "q",
    }
    assert unstructure_request(QuoteRequest(model="m", character_count=10)) == {
        "model": "m",
        "character_count": 10,
    }


optional_text = st.none() | st.text(min_size=1, max_size=20)
optional_bool = st.none() | st.booleans()


@given(
    lyrics=optional_text,
    duration=st.none() | st.integers(min_value=1, max_value=600),
    instrumental=optional_bool,
    optimizer=optional_bool,
    loop=optional_bool,
    voice=optional_text,
    speed=st.none() | st.floats(min_value=0.25, max_value=4),
)
def test_queue_body_roundtrip(
    lyrics: str | None,
    duration: int | None,
    instrumental: bool | None,
    optimizer: bool | None,
    loop: bool | None,
    voice: str | None,
    speed: float | None,
) -> None:
    """Any request survives body -> request, and the body never holds None."""
    request = v.QueueRequest(
        model="m",
        prompt="a prompt",
        lyrics_prompt=lyrics,
        duration_seconds=duration,
        force_instrumental=instrumental,
        lyrics_optimizer=optimizer,
        loop=loop,
        voice=voice,
        speed=speed,
    )
    body = unstructure_request(request)
    assert None not in body.values()
    assert v.QueueRequest(**body) == request
    assert json.loads(json.dumps(body)) == body


def _catalogue() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CATALOGUE.read_text())
    return data


def test_catalogue_parses_every_model() -> None:
    """The shipped catalogue becomes ten typed models with their pricing shapes."""
    models = {m.id: m for m in structure_catalogue(_catalogue())}
    assert len(models) == 10
    assert isinstance(models["ace-step-15"].spec.pricing, DurationsPricing)
    assert models["ace-step-15"].spec.duration_options == (60, 90, 120, 150, 180, 210)
    assert isinstance(models["minimax-music-v2"].spec.pricing, GenerationPricing)
    assert isinstance(models["mmaudio-v2-text-to-audio"].spec.pricing, PerSecondPricing)
    tts = models["elevenlabs-tts-multilingual-v2"]
    assert isinstance(tts.spec.pricing, PerThousandCharactersPricing)
    assert tts.spec.voices is not None
    assert "Aria" in tts.spec.voices
    assert tts.spec.default_voice == "Aria"
    assert (tts.spec.min_speed, tts.spec.max_speed) == (0.7, 1.2)
    assert models["elevenlabs-music"].spec.model_source == ""
    assert models["elevenlabs-music"].owned_by == "venice.ai"


def test_absent_flags_stay_unknown() -> None:
    """A key the catalogue omits is None (unknown), not False."""
    row = {"id": "x", "type": "music", "model_spec": {"name": "X"}}
    (model,) = structure_catalogue({"data": [row]})
    assert model.spec.supports_loop is None
    assert model.spec.supports_force_instrumental is None
    assert model.spec.voices is None
    assert model.spec.pricing is None
    assert not model.spec.has_duration_metadata


def test_unknown_keys_are_kept_not_fatal() -> None:
    """Extra model_spec keys land in extra; extra row keys are ignored."""
    row = {
        "id": "x",
        "type": "music",
        "brand_new_top_level": 1,
        "model_spec": {"name": "X", "supports_time_travel": True, "betaModel": True},
    }
    (model,) = structure_catalogue({"object": "list", "data": [row], "more": 1})
    assert model.spec.extra == {"supports_time_travel": True}
    assert model.spec.beta_model is True


def test_unknown_pricing_shape_is_kept() -> None:
    """A pricing shape this version does not know is kept raw."""
    row = {"id": "x", "type": "music", "model_spec": {"pricing": {"per_token": {"usd": 1}}}}
    (model,) = structure_catalogue({"data": [row]})
    assert model.spec.pricing == UnknownPricing(raw={"per_token": {"usd": 1}})


def test_duration_tier_lookup() -> None:
    """The tier whose inclusive range holds the seconds is found."""
    models = {m.id: m for m in structure_catalogue(_catalogue())}
    pricing = models["elevenlabs-music"].spec.pricing
    assert isinstance(pricing, DurationsPricing)
    tier = pricing.tier_for(60)
    assert tier is not None
    assert tier.max_seconds == 60
    assert pricing.tier_for(61) is not None
    assert pricing.tier_for(10_000) is None


def test_responses_tolerate_extra_keys() -> None:
    """Queue, processing, quote and complete answers ignore unknown keys."""
    job = structure_queued({"model": "m", "queue_id": "q", "status": "QUEUED", "new": 1})
    assert (job.model, job.queue_id) == ("m", "q")
    running = structure_processing(
        {
            "status": "PROCESSING",
            "average_execution_time": 20000,
            "execution_duration": 5200,
            "x": 1,
        }
    )
    assert running.average_execution_time == 20.0
    assert running.execution_duration == 5.2
    assert structure_quote({"quote": 1, "currency": "USD"}).quote == 1.0
    assert structure_complete({"success": True, "x": 2}).success is True


def test_processing_tolerates_missing_times_and_queued_status() -> None:
    """A QUEUED status or missing times still mean "not finished" ([UNK] in the spec)."""
    status = structure_processing({"status": "QUEUED"})
    assert status.status == "QUEUED"
    assert status.average_execution_time is None


@pytest.mark.parametrize(
    ("fn", "payload"),
    [
        (structure_queued, {"model": "m"}),
        (structure_queued, ["not", "an", "object"]),
        (structure_quote, {"quote": "cheap"}),
        (structure_quote, {"quote": True}),
        (structure_complete, {"success": "yes"}),
        (structure_processing, {"average_execution_time": 1}),
        (structure_catalogue, {"nodata": []}),
        (structure_catalogue, {"data": [{"type": "music"}]}),
    ],
)
def test_malformed_answers_raise_our_error(fn: Any, payload: Any) -> None:
    """Answers that do not fit raise MalformedResponse, never a cattrs error."""
    with pytest.raises(v.MalformedResponse):
        fn(payload)
