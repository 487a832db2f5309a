"""Tests of the shipped test double, ``venice_audio_async.testing``, over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import anyio
import pytest
from multidict import CIMultiDict

import venice_audio_async.testing as testing
from venice_audio_async._core.clock import ManualClock
from venice_audio_async.testing import (
    FakeServer,
    Fault,
    JobScript,
    audio_bytes,
    check_queue_body,
    check_quote_body,
    compute_quote,
    load_default_catalogue,
    sniff_audio_format,
)
from venice_audio_async.testing._audio import iter_audio, min_audio_size
from venice_audio_async.testing._rules import js_length, js_trim

AUTH = {"Authorization": "Bearer test-key"}
PACKAGE_ROOT = Path(testing.__file__).resolve().parents[2]  # holds venice_audio_async/
SCALE = 0.001  # a virtual second lasts a real millisecond
PROMPT = "Warm cinematic strings over a soft piano line"

# One body per bundled model that the server must accept.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "ace-step-15": {"prompt": PROMPT, "lyrics_prompt": "[verse] la la la", "duration_seconds": 90},
    "elevenlabs-music": {"prompt": PROMPT, "duration_seconds": 30, "force_instrumental": True},
    "minimax-music-v2": {"prompt": PROMPT, "lyrics_prompt": "[Verse]\nHello world, hello"},
    "minimax-music-v25": {"prompt": PROMPT, "lyrics_optimizer": True},
    "minimax-music-v26": {"prompt": PROMPT, "force_instrumental": True},
    "stable-audio-25": {"prompt": PROMPT, "duration_seconds": "45"},
    "elevenlabs-sound-effects-v2": {"prompt": "door creak", "duration_seconds": 5, "loop": True},
    "mmaudio-v2-text-to-audio": {"prompt": "rain on a tin roof", "duration_seconds": 10},
    "elevenlabs-tts-v3": {"prompt": "Hello there.", "voice": "Roger"},
    "elevenlabs-tts-multilingual-v2": {"prompt": "Bonjour", "voice": "Aria", "speed": 1.1},
}


class Reply(NamedTuple):
    status: int
    headers: CIMultiDict[str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
async def server(clock: ManualClock) -> AsyncIterator[FakeServer]:
    """A fake server on a manual clock: jobs finish only when the test advances time."""
    async with FakeServer(clock=clock) as fake:
        yield fake


async def call(
    http_session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = AUTH,
    method: str = "POST",
    data: bytes | io.BytesIO | None = None,
) -> Reply:
    kwargs: dict[str, Any] = {"headers": dict(headers or {})}
    if data is not None:
        kwargs["data"] = data
    elif body is not None:
        kwargs["json"] = body
    async with http_session.request(method, url, **kwargs) as response:
        return Reply(response.status, response.headers.copy(), await response.read())


async def queue(
    http_session: aiohttp.ClientSession,
    server: FakeServer,
    model: str = "elevenlabs-music",
    **extra: Any,
) -> str:
    body = {"model": model, **(VALID_BODIES[model] if not extra else {"prompt": PROMPT}), **extra}
    reply = await call(http_session, f"{server.url}/audio/queue", body)
    assert reply.status == 200, reply.data
    queue_id: str = reply.json()["queue_id"]
    return queue_id


async def retrieve(
    http_session: aiohttp.ClientSession,
    server: FakeServer,
    queue_id: str,
    model: str = "elevenlabs-music",
    **extra: Any,
) -> Reply:
    body = {"model": model, "queue_id": queue_id, **extra}
    return await call(http_session, f"{server.url}/audio/retrieve", body)


async def complete(
    http_session: aiohttp.ClientSession,
    server: FakeServer,
    queue_id: str,
    model: str = "elevenlabs-music",
) -> Reply:
    return await call(
        http_session, f"{server.url}/audio/complete", {"model": model, "queue_id": queue_id}
    )


def row(model_id: str) -> dict[str, Any]:
    return next(r for r in load_default_catalogue() if r["id"] == model_id)


# --- package and catalogue ---------------------------------------------------------------


def test_public_api_sorted_and_importable() -> None:
    """``__all__`` is sorted and every name in it exists."""
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert hasattr(testing, name)
    assert FakeServer.__test__ is False


def test_bundled_catalogue_facts() -> None:
    """The bundled catalogue has the ten April rows, their facts and our own descriptions."""
    rows = load_default_catalogue()
    assert [r["id"] for r in rows] == list(VALID_BODIES)
    by_id = {r["id"]: r for r in rows}
    assert by_id["elevenlabs-music"]["model_spec"]["pricing"]["durations"]["60"]["usd"] == 0.87
    assert by_id["ace-step-15"]["model_spec"]["duration_options"] == [60, 90, 120, 150, 180, 210]
    assert by_id["elevenlabs-tts-v3"]["model_spec"]["voices"][:2] == ["Aria", "Roger"]
    looping = [r["id"] for r in rows if r["model_spec"].get("supports_loop")]
    assert looping == ["elevenlabs-sound-effects-v2"]
    venice_phrases = (
        "Ideal for films",
        "High-quality instrumental music generation",
        "29 languages",
    )
    for r in rows:
        assert r["object"] == "model"
        assert r["owned_by"] == "venice.ai"
        assert r["type"] == "music"
        description = r["model_spec"]["description"]
        assert description
        assert not any(p in description for p in venice_phrases)
    rows[0]["id"] = "mutated"
    assert load_default_catalogue()[0]["id"] == "ace-step-15"  # a fresh copy each call


@pytest.mark.anyio
async def test_models_endpoint(server: FakeServer, http_session: aiohttp.ClientSession) -> None:
    """GET /models serves the rows for type=music/all, none for text, 400 for a bad type."""
    reply = await call(http_session, f"{server.url}/models?type=music", method="GET", headers=None)
    assert reply.status == 200
    envelope = reply.json()
    assert envelope["object"] == "list"
    assert envelope["type"] == "music"
    assert len(envelope["data"]) == 10
    for model in envelope["data"]:
        assert {"id", "object", "owned_by", "created", "type", "model_spec"} <= model.keys()
        spec = model["model_spec"]
        assert {"name", "pricing", "default_format", "description", "privacy"} <= spec.keys()
    assert reply.headers["x-venice-version"]
    everything = await call(http_session, f"{server.url}/models?type=all", method="GET")
    assert len(everything.json()["data"]) == 10
    text = await call(http_session, f"{server.url}/models?type=text", method="GET")
    assert text.status == 200
    assert text.json()["data"] == []
    bad = await call(http_session, f"{server.url}/models?type=bogus", method="GET")
    assert bad.status == 400
    assert bad.json()["details"]["type"]["_errors"]
    assert bad.json()["issues"][0]["path"] == ["type"]


# --- request basics ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_content_type_json_size_and_routes(
    server: FakeServer, http_session: aiohttp.ClientSession
) -> None:
    """Non-JSON content type, bad JSON, NaN, oversized bodies, unknown routes and methods."""
    url = f"{server.url}/audio/quote"
    reply = await call(http_session, url, data=b'{"model":"elevenlabs-music"}', headers={})
    assert reply.status == 400
    assert reply.json() == {"error": "'Content-Type' must be 'application/json'"}
    json_headers = {"Content-Type": "application/json"}
    reply = await call(http_session, url, data=b'{"model": ', headers=json_headers)
    assert (reply.status, reply.json()) == (400, {"error": "Invalid JSON request"})
    reply = await call(
        http_session, url, data=b'{"model":"x","duration_seconds":NaN}', headers=json_headers
    )
    assert reply.json() == {"error": "Invalid JSON request"}
    oversized = io.BytesIO(b" " * (35 * 1024 * 1024 + 1))
    reply = await call(http_session, url, data=oversized, headers=json_headers)
    assert reply.status == 413
    reply = await call(http_session, f"{server.url}/audio/nope", {"model": "x"})
    assert reply.status == 404
    assert "error" in reply.json()
    reply = await call(http_session, f"{server.url}/audio/queue", method="GET")
    assert reply.status == 405
    assert "error" in reply.json()
    assert server.count("unknown") == 1


# --- quote -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "elevenlabs-music"}, 0.87),  # durations, default 60 s
        ({"model": "elevenlabs-music", "duration_seconds": 90}, 1.73),
        ({"model": "elevenlabs-music", "duration_seconds": "600"}, 8.63),
        ({"model": "ace-step-15", "duration_seconds": 120}, 0.05),
        ({"model": "minimax-music-v2"}, 0.04),  # generation
        ({"model": "elevenlabs-sound-effects-v2"}, 0.0161),  # per_second x default 7 s
        ({"model": "mmaudio-v2-text-to-audio", "duration_seconds": 10}, 0.0092),
        ({"model": "elevenlabs-tts-v3", "character_count": 2000}, 0.23),  # per 1000 chars
    ],
)
async def test_quote_pricing_shapes(
    server: FakeServer, http_session: aiohttp.ClientSession, body: dict[str, Any], expected: float
) -> None:
    """quote prices all four pricing shapes without credentials."""
    reply = await call(http_session, f"{server.url}/audio/quote", body, headers=None)
    assert reply.status == 200, reply.data
    assert reply.json() == {"quote": expected}


@pytest.mark.anyio
async def test_quote_errors(server: FakeServer, http_session: aiohttp.ClientSession) -> None:
    """quote rejects durations on unmetered models, missing/oversized character counts, bad ids."""
    url = f"{server.url}/audio/quote"
    reply = await call(http_session, url, {"model": "minimax-music-v25", "duration_seconds": 60})
    assert reply.status == 400
    assert reply.json()["error"] == "This model does not support duration_seconds"
    reply = await call(http_session, url, {"model": "elevenlabs-tts-v3"})
    assert reply.json()["details"]["character_count"]["_errors"]
    reply = await call(http_session, url, {"model": "elevenlabs-tts-v3", "character_count": 5001})
    assert reply.status == 400
    reply = await call(http_session, url, {"model": "no-such-model"})
    assert (reply.status, reply.json()) == (404, {"error": "Specified model not found"})
    reply = await call(http_session, url, {"model": "elevenlabs-music", "prompt": PROMPT})
    assert reply.status == 400
    assert reply.json()["issues"][0]["code"] == "unrecognized_keys"


def test_compute_quote_seed_audio_without_duration_uses_120s() -> None:
    """A per-second model without duration metadata is priced at the 120 s reservation."""
    seed = {
        "id": "seed-audio-1-0",
        "type": "music",
        "model_spec": {"pricing": {"per_second": {"usd": 0.002875}}},
    }
    assert compute_quote(seed) == 0.345
    assert check_quote_body({"model": "seed-audio-1-0", "duration_seconds": 30}, seed) == [
        ("duration_seconds", "This model does not support duration_seconds")
    ]


# --- strict schema -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_keys_detailed_error(
    server: FakeServer, http_session: aiohttp.ClientSession
) -> None:
    """Unknown keys give a Zod-style DetailedError with a root _errors entry and an issue."""
    body = {"model": "elevenlabs-music", "prompt": PROMPT, "instrumental": True, "duration": 30}
    reply = await call(http_session, f"{server.url}/audio/queue", body)
    assert reply.status == 400
    error = reply.json()
    assert error["error"] == "Invalid request parameters"
    assert error["details"]["_errors"] == [
        "Unrecognized key(s) in object: 'instrumental', 'duration'"
    ]
    assert error["issues"] == [
        {
            "code": "unrecognized_keys",
            "keys": ["instrumental", "duration"],
            "path": [],
            "message": "Unrecognized key(s) in object: 'instrumental', 'duration'",
        }
    ]
    assert server.jobs == {}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"duration_seconds": -1}, "duration_seconds"),
        ({"duration_seconds": 2.5}, "duration_seconds"),
        ({"duration_seconds": "1.5"}, "duration_seconds"),
        ({"duration_seconds": True}, "duration_seconds"),
        ({"speed": 5}, "speed"),
        ({"speed": "1"}, "speed"),
        ({"force_instrumental": "yes"}, "force_instrumental"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"model": 3}, "model"),
        ({"voice": 7}, "voice"),
    ],
)
def test_schema_type_checks(extra: dict[str, Any], field: str) -> None:
    """Wrong JSON types and out-of-range values are schema errors on their field."""
    body = {"model": "elevenlabs-music", "prompt": PROMPT, **extra}
    fields = [f for f, _ in check_queue_body(body, row("elevenlabs-music"))]
    assert field in fields


def test_schema_required_and_non_object() -> None:
    """Missing required fields say "Required"; a non-object body is a root error."""
    issues = check_queue_body({"model": "elevenlabs-music"}, row("elevenlabs-music"))
    assert ("prompt", "Required") in issues
    assert check_queue_body([1, 2], row("elevenlabs-music")) == [
        ("", "Expected object, received array")
    ]
    assert (
        check_quote_body(
            {"model": "elevenlabs-music", "duration_seconds": 30.0}, row("elevenlabs-music")
        )
        == []
    )


# --- auth --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_auth_402_discovery_and_401(http_session: aiohttp.ClientSession) -> None:
    """No credentials: 402 x402 discovery; unknown key: 401; good key or wallet header: 200."""
    async with FakeServer(api_keys={"good"}, time_scale=SCALE) as server:
        url = f"{server.url}/audio/queue"
        body = {"model": "elevenlabs-music", "prompt": PROMPT}
        reply = await call(http_session, url, body, headers=None)
        assert reply.status == 402
        discovery = reply.json()
        assert discovery["x402Version"] == 2
        assert {"resource", "accepts", "authOptions", "extensions"} <= discovery.keys()
        assert reply.headers["PAYMENT-REQUIRED"]
        reply = await call(http_session, url, body, headers={"Authorization": "Bearer bad"})
        assert (reply.status, reply.json()) == (401, {"error": "Authentication failed"})
        assert (
            await call(http_session, url, body, headers={"Authorization": "Bearer good"})
        ).status == 200
        assert (
            await call(http_session, url, body, headers={"SIGN-IN-WITH-X": "e30="})
        ).status == 200
        quote = await call(
            http_session, f"{server.url}/audio/quote", {"model": "elevenlabs-music"}, headers=None
        )
        assert quote.status == 200
        retrieve_reply = await call(
            http_session,
            f"{server.url}/audio/retrieve",
            {"model": "x", "queue_id": "y"},
            headers=None,
        )
        assert retrieve_reply.status == 402


# --- per-model rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "extra", "field"),
    [
        ("elevenlabs-music", {"prompt": "too short"}, "prompt"),
        ("elevenlabs-music", {"prompt": "   padded   "}, "prompt"),
        ("stable-audio-25", {"prompt": "x" * 501}, "prompt"),
        ("elevenlabs-music", {"lyrics_prompt": "la la la la la"}, "lyrics_prompt"),
        ("minimax-music-v2", {}, "lyrics_prompt"),
        ("minimax-music-v2", {"lyrics_prompt": "   "}, "lyrics_prompt"),
        (
            "minimax-music-v26",
            {"lyrics_prompt": "x" * 1001, "force_instrumental": True},
            "lyrics_prompt",
        ),
        ("ace-step-15", {"lyrics_prompt": "x" * 4097}, "lyrics_prompt"),
        ("minimax-music-v25", {}, "lyrics_prompt"),
        ("minimax-music-v25", {"lyrics_prompt": "la la"}, "lyrics_prompt"),
        ("minimax-music-v26", {"lyrics_prompt": "la la"}, "lyrics_prompt"),
        (
            "minimax-music-v26",
            {"lyrics_prompt": "la la", "lyrics_optimizer": True},
            "lyrics_optimizer",
        ),
        (
            "minimax-music-v25",
            {"lyrics_prompt": "real lyrics here", "lyrics_optimizer": True},
            "lyrics_optimizer",
        ),
        ("elevenlabs-music", {"lyrics_optimizer": False}, "lyrics_optimizer"),
        ("stable-audio-25", {"force_instrumental": False}, "force_instrumental"),
        ("elevenlabs-music", {"loop": False}, "loop"),
        ("elevenlabs-music", {"voice": "Aria"}, "voice"),
        ("elevenlabs-tts-v3", {"voice": "Nobody"}, "voice"),
        ("elevenlabs-tts-v3", {"language_code": "en"}, "language_code"),
        ("elevenlabs-tts-v3", {"speed": 1.0}, "speed"),
        ("elevenlabs-tts-multilingual-v2", {"speed": 1.5}, "speed"),
        ("elevenlabs-tts-multilingual-v2", {"speed": 0.5}, "speed"),
        (
            "minimax-music-v25",
            {"duration_seconds": 60, "force_instrumental": True},
            "duration_seconds",
        ),
        ("ace-step-15", {"duration_seconds": 100}, "duration_seconds"),
        ("elevenlabs-music", {"duration_seconds": 601}, "duration_seconds"),
        ("mmaudio-v2-text-to-audio", {"duration_seconds": "0"}, "duration_seconds"),
    ],
)
def test_per_model_rule_rejected(model: str, extra: dict[str, Any], field: str) -> None:
    """Each per-model rule rejects a body that breaks it, on the right field."""
    body = {"model": model, "prompt": PROMPT, **extra}
    problems = check_queue_body(body, row(model))
    assert field in [f for f, _ in problems], problems


def test_minimax_exemptions_and_all_problems_at_once() -> None:
    """MiniMax lyric exemptions hold, and one body reports every problem together."""
    v25, v26 = row("minimax-music-v25"), row("minimax-music-v26")
    base = {"model": "minimax-music-v25", "prompt": PROMPT}
    assert check_queue_body({**base, "force_instrumental": True}, v25) == []
    assert check_queue_body({**base, "lyrics_prompt": "ten chars!"}, v25) == []
    assert (
        check_queue_body({**base, "model": "minimax-music-v26", "force_instrumental": True}, v26)
        == []
    )
    body = {"model": "elevenlabs-music", "prompt": "short", "loop": True, "speed": 1.0, "extra": 1}
    fields = {f for f, _ in check_queue_body(body, row("elevenlabs-music"))}
    assert fields == {"", "prompt", "loop", "speed"}


def test_custom_voice_ids_and_js_string_semantics() -> None:
    """Custom voice ids pass when the model allows them; lengths count UTF-16 units."""
    custom = row("elevenlabs-tts-v3")
    custom["model_spec"]["supports_custom_voice_id"] = True
    assert (
        check_queue_body(
            {"model": "elevenlabs-tts-v3", "prompt": "Hi", "voice": "pNInz6obpgDQGcFmaJgB"}, custom
        )
        == []
    )
    assert check_queue_body({"model": "elevenlabs-tts-v3", "prompt": "Hi", "voice": " "}, custom)
    assert js_length("\U0001f3b5") == 2
    assert js_trim("\ufeff x \u3000") == "x"
    sfx = row("elevenlabs-sound-effects-v2")  # prompt limit 250
    assert (
        check_queue_body(
            {"model": "elevenlabs-sound-effects-v2", "prompt": "\U0001f3b5" * 125}, sfx
        )
        == []
    )
    assert check_queue_body(
        {"model": "elevenlabs-sound-effects-v2", "prompt": "\U0001f3b5" * 126}, sfx
    )


@pytest.mark.anyio
@pytest.mark.parametrize("model", list(VALID_BODIES))
async def test_valid_body_accepted_for_every_model(
    server: FakeServer, http_session: aiohttp.ClientSession, model: str
) -> None:
    """A valid body for each bundled model passes the pure check and is queued over HTTP."""
    body = {"model": model, **VALID_BODIES[model]}
    assert check_queue_body(body, server.model(model)) == []
    reply = await call(http_session, f"{server.url}/audio/queue", body)
    assert reply.status == 200, reply.data
    answer = reply.json()
    assert answer["model"] == model
    assert answer["status"] == "QUEUED"
    assert uuid.UUID(answer["queue_id"]).version == 4
    assert server.jobs[answer["queue_id"]].body == body


@pytest.mark.anyio
async def test_per_model_rules_over_http(
    server: FakeServer, http_session: aiohttp.ClientSession
) -> None:
    """Per-model 400s over HTTP: own message for one problem, supported_voices for a voice."""
    url = f"{server.url}/audio/queue"
    reply = await call(
        http_session,
        url,
        {
            "model": "minimax-music-v2",
            "prompt": PROMPT,
            "lyrics_prompt": "la la la",
            "duration_seconds": 30,
        },
    )
    assert reply.status == 400
    assert reply.json()["error"] == "This model does not support duration_seconds"
    reply = await call(
        http_session, url, {"model": "elevenlabs-tts-v3", "prompt": "Hello", "voice": "Nobody"}
    )
    assert reply.status == 400
    assert "Aria" in reply.json()["details"]["supported_voices"]
    assert reply.json()["details"]["voice"]["_errors"]
    reply = await call(http_session, url, {"model": "nope", "prompt": PROMPT})
    assert (reply.status, reply.json()) == (404, {"error": "Specified model not found"})
    assert server.jobs == {}


# --- lifecycle ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_full_lifecycle(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """queue -> PROCESSING -> audio (headers, magic bytes) -> complete -> 404."""
    queue_id = await queue(http_session, server)
    reply = await retrieve(http_session, server, queue_id)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {
        "status": "PROCESSING",
        "average_execution_time": 36000,
        "execution_duration": 0,
    }
    clock.advance(12.5)
    assert (await retrieve(http_session, server, queue_id)).json()["execution_duration"] == 12500
    clock.advance(20)
    reply = await retrieve(http_session, server, queue_id)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "audio/mpeg"
    assert reply.headers["Content-Length"] == str(len(reply.data))
    assert reply.headers["x-venice-audio-format"] == "mp3"
    assert reply.headers["x-venice-inference-time"] == "30"
    assert reply.headers["x-venice-model-id"] == "elevenlabs-music"
    assert reply.headers["x-venice-model-name"] == "ElevenLabs Music"
    assert reply.headers["x-venice-version"]
    assert reply.data[:3] == b"ID3"
    assert sniff_audio_format(reply.data) == "mp3"
    assert reply.data == server.audio_for(queue_id)
    again = await retrieve(http_session, server, queue_id)
    assert again.data == reply.data  # re-downloadable until deleted
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}
    gone = await retrieve(http_session, server, queue_id)
    assert gone.status == 404
    assert gone.json() == {
        "error": "Media could not be found. Request may be invalid, expired, or deleted."
    }
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}
    job = server.jobs[queue_id]
    assert (job.retrieve_count, job.complete_count, job.downloads) == (5, 2, 2)
    assert job.deleted
    assert job.released


@pytest.mark.anyio
async def test_complete_false_while_running(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """complete answers false while the job runs (without stopping it), then true, idempotently."""
    queue_id = await queue(http_session, server)
    assert (await complete(http_session, server, queue_id)).json() == {"success": False}
    clock.advance(30)
    assert (await retrieve(http_session, server, queue_id)).headers["Content-Type"] == "audio/mpeg"
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}


@pytest.mark.anyio
async def test_never_issued_and_foreign_ids(
    server: FakeServer, http_session: aiohttp.ClientSession
) -> None:
    """Never-issued ids and a mismatched model give 400 "Request ID is invalid."."""
    invalid = {"error": "Request ID is invalid."}
    made_up = str(uuid.uuid4())
    reply = await retrieve(http_session, server, made_up)
    assert (reply.status, reply.json()) == (400, invalid)
    reply = await complete(http_session, server, made_up)
    assert (reply.status, reply.json()) == (400, invalid)
    queue_id = await queue(http_session, server)
    reply = await retrieve(http_session, server, queue_id, model="stable-audio-25")
    assert (reply.status, reply.json()) == (400, invalid)
    reply = await retrieve(http_session, server, queue_id, model="not-a-model")
    assert reply.status == 404
    reply = await call(
        http_session,
        f"{server.url}/audio/retrieve",
        {"model": "elevenlabs-music", "queue_id": queue_id, "x": 1},
    )
    assert reply.status == 400
    assert reply.json()["details"]["_errors"]


@pytest.mark.anyio
async def test_delete_media_on_completion(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """delete_media_on_completion returns the bytes once, then the media is gone."""
    queue_id = await queue(http_session, server)
    running = await retrieve(http_session, server, queue_id, delete_media_on_completion=True)
    assert running.json()["status"] == "PROCESSING"
    clock.advance(31)
    first = await retrieve(http_session, server, queue_id, delete_media_on_completion=True)
    assert first.status == 200
    assert sniff_audio_format(first.data) == "mp3"
    assert (await retrieve(http_session, server, queue_id)).status == 404
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "content_type", "magic"),
    [("stable-audio-25", "audio/wav", b"RIFF"), ("ace-step-15", "audio/flac", b"fLaC")],
)
async def test_wav_and_flac_outputs(
    server: FakeServer,
    http_session: aiohttp.ClientSession,
    clock: ManualClock,
    model: str,
    content_type: str,
    magic: bytes,
) -> None:
    """WAV and FLAC models answer with their own content type and container."""
    queue_id = await queue(http_session, server, model)
    clock.advance(30)
    reply = await retrieve(http_session, server, queue_id, model)
    assert reply.headers["Content-Type"] == content_type
    assert reply.data.startswith(magic)
    assert reply.headers["x-venice-audio-format"] == content_type.split("/")[1]


@pytest.mark.anyio
async def test_flac_with_leading_id3(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A script can make FLAC output start with an ID3 tag; sniffing still finds FLAC."""
    server.plan(JobScript(duration=1, id3=True))
    queue_id = await queue(http_session, server, "ace-step-15")
    clock.advance(1)
    reply = await retrieve(http_session, server, queue_id, "ace-step-15")
    assert reply.data[:3] == b"ID3"
    assert sniff_audio_format(reply.data) == "flac"


# --- failures and balance ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "message"),
    [
        (422, "Your prompt violates the content policy of Venice.ai or the model provider"),
        (500, "Inference processing failed"),
        (503, "The model is at capacity. Please try again later."),
        (400, "Invalid request parameters"),
    ],
)
async def test_failure_scripts(
    server: FakeServer,
    http_session: aiohttp.ClientSession,
    clock: ManualClock,
    status: int,
    message: str,
) -> None:
    """A failing script answers PROCESSING, then its error on every retrieve; complete is true."""
    server.plan(JobScript(duration=10, fail_status=status, suggested_prompt="A gentle tune"))
    queue_id = await queue(http_session, server)
    assert (await retrieve(http_session, server, queue_id)).json()["status"] == "PROCESSING"
    clock.advance(10)
    for _ in range(2):
        reply = await retrieve(http_session, server, queue_id)
        assert reply.status == status
        assert reply.json()["error"] == message
        if status == 422:
            assert reply.json()["suggested_prompt"] == "A gentle tune"
    assert (await complete(http_session, server, queue_id)).json() == {"success": True}


@pytest.mark.anyio
async def test_balance_debit_402_and_refund(
    http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """queue debits the quote, answers 402 when short, and a failed job is refunded."""
    async with FakeServer(clock=clock, balance_usd=1.0) as server:
        server.plan(JobScript(duration=5, fail_status=500))
        body = {"model": "elevenlabs-music", "prompt": PROMPT}
        reply = await call(http_session, f"{server.url}/audio/queue", body)
        assert reply.status == 200
        assert reply.headers["X-Balance-Remaining"] == "0.130000"
        short = await call(http_session, f"{server.url}/audio/queue", body)
        assert short.status == 402
        assert "Insufficient" in short.json()["error"]
        clock.advance(5)
        assert server.balance_usd == 1.0
        assert (await call(http_session, f"{server.url}/audio/queue", body)).status == 200


# --- faults ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fault_429_with_retry_after(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """An injected 429 carries Retry-After and a ms-epoch reset; the next request is normal."""
    server.inject("queue", Fault.status(429, retry_after=2))
    body = {"model": "elevenlabs-music", "prompt": PROMPT}
    reply = await call(http_session, f"{server.url}/audio/queue", body)
    assert (reply.status, reply.json()) == (429, {"error": "Rate limit exceeded"})
    assert reply.headers["Retry-After"] == "2"
    assert int(reply.headers["x-ratelimit-reset-requests"]) == int((clock.time() + 2) * 1000)
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert server.jobs == {}
    assert (await call(http_session, f"{server.url}/audio/queue", body)).status == 200
    assert [r.fault for r in server.requests] == ["status:429", None]
    assert [r.status for r in server.requests] == [429, 200]


@pytest.mark.anyio
async def test_fault_5xx_bodies(server: FakeServer, http_session: aiohttp.ClientSession) -> None:
    """Injected 5xx faults answer an HTML body or the default JSON error, `times` times."""
    server.inject(
        "quote", Fault.status(502, body="<html>bad gateway</html>", content_type="text/html")
    )
    server.inject("quote", Fault.status(500), times=2)
    url = f"{server.url}/audio/quote"
    body = {"model": "elevenlabs-music"}
    html = await call(http_session, url, body)
    assert html.status == 502
    assert html.headers["Content-Type"] == "text/html"
    assert html.data == b"<html>bad gateway</html>"
    for _ in range(2):
        reply = await call(http_session, url, body)
        assert reply.status == 500
        assert "error" in reply.json()
    assert server.pending_faults() == 0
    assert (await call(http_session, url, body)).status == 200


@pytest.mark.anyio
async def test_fault_delay(http_session: aiohttp.ClientSession) -> None:
    """A delay fault holds the answer; a client that times out still gets its job created."""
    async with FakeServer(time_scale=SCALE) as server:
        server.inject("quote", Fault.delay(150))
        started = time.monotonic()
        reply = await call(http_session, f"{server.url}/audio/quote", {"model": "elevenlabs-music"})
        assert reply.status == 200
        assert time.monotonic() - started >= 0.14
        server.inject("queue", Fault.delay(200))
        with pytest.raises(asyncio.TimeoutError):  # not the builtin on 3.10
            await http_session.post(
                f"{server.url}/audio/queue",
                json={"model": "elevenlabs-music", "prompt": PROMPT},
                headers=AUTH,
                timeout=aiohttp.ClientTimeout(total=0.05),
            )
        with anyio.fail_after(2):
            while not server.jobs:
                await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_fault_drop(server: FakeServer, http_session: aiohttp.ClientSession) -> None:
    """drop closes without an answer; on queue the job exists (a lost response)."""
    server.inject("queue", Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(
            http_session,
            f"{server.url}/audio/queue",
            {"model": "elevenlabs-music", "prompt": PROMPT},
        )
    assert len(server.jobs) == 1
    queue_id = server.queue_ids()[0]
    server.inject("retrieve", Fault.drop())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await retrieve(http_session, server, queue_id)
    assert [(r.endpoint, r.status, r.fault) for r in server.requests] == [
        ("queue", 0, "drop"),
        ("retrieve", 0, "drop"),
    ]
    assert (await retrieve(http_session, server, queue_id)).status == 200


@pytest.mark.anyio
async def test_fault_truncate(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """truncate waits for an audio answer, sends a full Content-Length but half the body."""
    queue_id = await queue(http_session, server)
    server.inject("retrieve", Fault.truncate())
    assert (await retrieve(http_session, server, queue_id)).json()["status"] == "PROCESSING"
    assert server.pending_faults("retrieve") == 1  # not consumed by a JSON answer
    clock.advance(30)
    with pytest.raises(aiohttp.ClientPayloadError):
        await retrieve(http_session, server, queue_id)
    assert server.requests[-1].fault == "truncate"
    full = await retrieve(http_session, server, queue_id)
    assert full.data == server.audio_for(queue_id)
    assert server.jobs[queue_id].downloads == 1


@pytest.mark.anyio
async def test_fault_content_type(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """content_type relabels the audio answer; the bytes stay a valid file."""
    queue_id = await queue(http_session, server)
    clock.advance(30)
    server.inject("retrieve", Fault.content_type("application/octet-stream"))
    reply = await retrieve(http_session, server, queue_id)
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert sniff_audio_format(reply.data) == "mp3"
    assert (await retrieve(http_session, server, queue_id)).headers["Content-Type"] == "audio/mpeg"


@pytest.mark.anyio
async def test_fault_targets_one_queue_id(
    server: FakeServer, http_session: aiohttp.ClientSession
) -> None:
    """A fault injected for one queue id leaves other jobs alone."""
    first, second = await queue(http_session, server), await queue(http_session, server)
    server.inject("retrieve", Fault.status(503), queue_id=second)
    assert (await retrieve(http_session, server, first)).status == 200
    assert (await retrieve(http_session, server, second)).status == 503
    assert (await retrieve(http_session, server, second)).status == 200


def test_fault_and_script_validation() -> None:
    """Invalid scripts, faults and injections are refused early."""
    with pytest.raises(ValueError, match="duration"):
        JobScript(duration=-1)
    with pytest.raises(ValueError, match="fail_status"):
        JobScript(fail_status=200)
    with pytest.raises(ValueError, match="audio_size"):
        JobScript(audio_size=10)
    with pytest.raises(ValueError, match="delay"):
        Fault.delay(-1)
    server = FakeServer()
    with pytest.raises(ValueError, match="retrieve"):
        server.inject("queue", Fault.truncate())
    with pytest.raises(ValueError, match="endpoint"):
        server.inject("nope", Fault.drop())
    with pytest.raises(ValueError, match="rate_limits"):
        FakeServer(rate_limits={"bogus": 1})
    with pytest.raises(RuntimeError):
        _ = server.url


# --- rate limits and error budget --------------------------------------------------------


@pytest.mark.anyio
async def test_rate_limit(http_session: aiohttp.ClientSession, clock: ManualClock) -> None:
    """Over the per-minute limit: 429, integer Retry-After and a ms-epoch reset header."""
    async with FakeServer(clock=clock, rate_limits={"quote": 2}) as server:
        url, body = f"{server.url}/audio/quote", {"model": "elevenlabs-music"}
        first = await call(http_session, url, body)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        clock.advance(10)
        second = await call(http_session, url, body)
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        limited = await call(http_session, url, body)
        assert (limited.status, limited.json()) == (429, {"error": "Rate limit exceeded"})
        assert limited.headers["Retry-After"] == "50"
        reset = int(limited.headers["x-ratelimit-reset-requests"])
        assert reset == int((clock.time() + 50) * 1000)
        assert len(str(reset)) == 13
        assert server.requests[-1].fault == "rate_limit"
        assert (
            await call(http_session, f"{server.url}/models?type=music", method="GET")
        ).status == 200
        clock.advance(50)
        assert (await call(http_session, url, body)).status == 200


@pytest.mark.anyio
async def test_error_budget_lockout(
    http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """More than N failures in the window lock every endpoint into 429 for the window."""
    async with FakeServer(clock=clock, error_budget=(3, 30.0)) as server:
        url = f"{server.url}/audio/quote"
        for _ in range(4):
            assert (await call(http_session, url, {"model": "nope"})).status == 404
        locked = await call(http_session, url, {"model": "elevenlabs-music"})
        assert locked.status == 429
        assert locked.json()["error"] == (
            "Too many failed attempts (> 3) resulting in a non-success status code. "
            "Please wait 30s and try again."
        )
        assert locked.headers["x-ratelimit-remaining"] == "0"
        assert int(locked.headers["x-ratelimit-resets"]) == int((clock.time() + 30) * 1000)
        assert (
            await call(http_session, f"{server.url}/models?type=music", method="GET")
        ).status == 429
        clock.advance(30)
        assert (await call(http_session, url, {"model": "elevenlabs-music"})).status == 200


# --- request log, scripts, scale ---------------------------------------------------------


@pytest.mark.anyio
async def test_request_log_and_peers(server: FakeServer) -> None:
    """Requests are logged with headers, body, query and the client's address."""
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
        await call(one, f"{server.url}/audio/quote", {"model": "elevenlabs-music"})
        await call(one, f"{server.url}/audio/quote", {"model": "elevenlabs-music"})
        await call(two, f"{server.url}/models?type=music", method="GET")
    assert server.count("quote") == 2
    assert server.count("models") == 1
    assert len(server.peer_ports()) == 2  # keep-alive: one connection per session
    assert len(server.peer_ports("quote")) == 1
    first = server.requests[0]
    assert first.endpoint == "quote"
    assert first.method == "POST"
    assert first.status == 200
    assert first.body == {"model": "elevenlabs-music"}
    assert json.loads(first.raw_body) == first.body
    assert first.headers["authorization"] == "Bearer test-key"  # case-insensitive copy
    assert first.peer is not None
    assert first.peer[0] == "127.0.0.1"
    assert server.requests[2].query == {"type": "music"}
    assert server.requests_to("models") == [server.requests[2]]


@pytest.mark.anyio
async def test_plan_fifo_then_job_script(
    http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Planned scripts are used first, in order; then the job_script callable sees the body."""
    seen: list[Mapping[str, Any]] = []

    def script_for(body: Mapping[str, Any]) -> JobScript:
        seen.append(body)
        return JobScript(duration=7, average_execution_time=9)

    async with FakeServer(clock=clock, job_script=script_for) as server:
        server.plan(JobScript(duration=20), JobScript(duration=10, fail_status=500))
        ids = [await queue(http_session, server) for _ in range(3)]
        assert [server.jobs[i].script.duration for i in ids] == [20, 10, 7]
        assert server.jobs[ids[1]].failed
        assert seen == [{"model": "elevenlabs-music", **VALID_BODIES["elevenlabs-music"]}]
        assert server.finish_order() == [ids[2], ids[1], ids[0]]
        reply = await retrieve(http_session, server, ids[2])
        assert reply.json()["average_execution_time"] == 9000


@pytest.mark.anyio
async def test_large_audio_is_streamed(
    server: FakeServer, http_session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A 20 MB body arrives complete, with its Content-Length, and matches audio_for."""
    size = 20 * 1024 * 1024
    server.plan(JobScript(duration=1, audio_size=size))
    queue_id = await queue(http_session, server)
    clock.advance(1)
    digest = hashlib.sha256()
    received = 0
    async with http_session.post(
        f"{server.url}/audio/retrieve",
        json={"model": "elevenlabs-music", "queue_id": queue_id},
        headers=AUTH,
    ) as response:
        assert response.headers["Content-Length"] == str(size)
        assert "chunked" not in response.headers.get("Transfer-Encoding", "")
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.digest() == hashlib.sha256(server.audio_for(queue_id)).digest()


@pytest.mark.anyio
async def test_scaled_time_and_concurrency(http_session: aiohttp.ClientSession) -> None:
    """With time_scale 0.001 a 30 s job ends in ~30 ms; 300 concurrent queues all succeed."""
    async with FakeServer(time_scale=SCALE, job_script=JobScript(duration=30)) as server:
        results: list[str] = []

        async def one() -> None:
            results.append(await queue(http_session, server))

        async with anyio.create_task_group() as group:
            for _ in range(300):
                group.start_soon(one)
        assert len(set(results)) == 300 == len(server.jobs)
        await anyio.sleep(0.04)
        reply = await retrieve(http_session, server, results[0])
        assert reply.headers["Content-Type"] == "audio/mpeg"


@pytest.mark.anyio
async def test_start_close_lifecycle() -> None:
    """start/close work explicitly, close is idempotent, double start is refused."""
    server = FakeServer(time_scale=SCALE)
    await server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert server.url.endswith("/api/v1")
        with pytest.raises(RuntimeError):
            await server.start()
    finally:
        await server.close()
    await server.close()
    with pytest.raises(RuntimeError):
        _ = server.url


# --- audio builders ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
@pytest.mark.parametrize("size", [0, 1, 383, 1024, 70_001])
def test_audio_builders_exact_and_deterministic(fmt: str, size: int) -> None:
    """Every format builds exactly the requested size, deterministically, in any chunking."""
    total = min_audio_size(fmt) + size
    data = audio_bytes(fmt, total, seed="job-1")
    assert len(data) == total
    assert sniff_audio_format(data) == fmt
    assert data == audio_bytes(fmt, total, seed="job-1")
    assert b"".join(iter_audio(fmt, total, seed="job-1", chunk_size=999)) == data
    if size > 64:
        assert data != audio_bytes(fmt, total, seed="job-2")


def test_audio_headers_are_well_formed() -> None:
    """WAV sizes, MP3 frame syncs and the FLAC STREAMINFO block are where players expect."""
    wav = audio_bytes("wav", 1001)
    assert int.from_bytes(wav[4:8], "little") == 1001 - 8
    assert wav[8:16] == b"WAVEfmt "
    mp3 = audio_bytes("mp3", 10 + 384 * 3 + 5)
    tag = 10 + int.from_bytes(mp3[6:10], "big")  # syncsafe; small values are plain
    assert all(mp3[tag + 384 * i : tag + 384 * i + 2] == b"\xff\xfb" for i in range(3))
    flac = audio_bytes("flac", 500)
    assert flac[:4] == b"fLaC"
    assert flac[4] == 0
    assert int.from_bytes(flac[5:8], "big") == 34
    with pytest.raises(ValueError, match="at least"):
        audio_bytes("mp3", 100)
    with pytest.raises(ValueError, match="unknown"):
        audio_bytes("ogg", 1000)


# --- command line ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_module_entry_point(http_session: aiohttp.ClientSession) -> None:
    """`python -m venice_audio_async.testing --port 0` prints its URL and serves /models."""
    package_root = PACKAGE_ROOT
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "venice_audio_async.testing",
        "--port",
        "0",
        "--time-scale",
        "0.001",
    ]
    async with await anyio.open_process(command, env=env) as process:
        assert process.stdout is not None
        buffer = b""
        with anyio.fail_after(20):
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()
        url = buffer.split(b"\n", 1)[0].decode()
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/api/v1")
        reply = await call(http_session, f"{url}/models?type=music", method="GET", headers=None)
        assert reply.status == 200
        assert len(reply.json()["data"]) == 10
        process.terminate()
        with anyio.fail_after(10):
            assert await process.wait() == 0
