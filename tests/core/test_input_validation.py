"""Bad input is refused with a clear error before any request is sent.

* Every per-model rule of the bundled catalogue (and the model-specific extras the reference
  documents) is broken once, on its own: the client names exactly that field, the fake
  server's validator would have refused the same field, and nothing reaches the server.
* Wrong types, blank prompts, unknown models and unknown keyword arguments are refused too.
* Hypothesis draws requests around the catalogue's constraints and checks that the client's
  verdict (which fields are wrong) is the server's. Text is ASCII: the server counts lengths
  in UTF-16 code units and trims like JavaScript, the client counts code points and trims
  like Python; for ASCII the two agree.

Two differences from the server are deliberate and checked as such: a boolean support flag
the catalogue row does not state (``supports_loop`` on most rows) is "unknown", so the client
lets the server decide; and ``duration_seconds`` must be an ``int`` (the server also takes a
digit string or ``30.0``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import venice_audio_async as v
from venice_audio_async._core.converters import structure_catalogue, unstructure_request
from venice_audio_async._core.validation import queue_problems
from venice_audio_async.journal import Journal
from venice_audio_async.testing import (
    FakeServer,
    JobScript,
    ScaledClock,
    check_queue_body,
    load_default_catalogue,
)
from venice_audio_async.types import AudioModel

from ..conftest import API_KEY, TIME_SCALE, make_session

ROWS: dict[str, dict[str, Any]] = {row["id"]: row for row in load_default_catalogue()}
MODELS: dict[str, AudioModel] = {
    m.id: m for m in structure_catalogue({"object": "list", "data": list(ROWS.values())})
}
PROMPT = "A gentle evening melody"  # within every model's prompt limits
LYRICS = "[Verse] walking down the river road, la la la"  # within every lyrics limit
#: Lyric rules of AUDIO_API.md section 4 that the catalogue does not carry.
MINIMAX_SHORT_LYRICS = ("minimax-music-v25", "minimax-music-v26")


def _spec(model_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = ROWS[model_id]["model_spec"]
    return spec


def _base(model_id: str) -> v.QueueRequest:
    """A valid request for the model: the prompt, plus lyrics where the model takes them."""
    lyrics = LYRICS if _spec(model_id).get("supports_lyrics") else None
    return v.QueueRequest(model_id, PROMPT, lyrics_prompt=lyrics)


def _server_fields(request: v.QueueRequest) -> set[str]:
    """The fields the fake server's validator refuses in ``request``."""
    return {
        field for field, _ in check_queue_body(unstructure_request(request), ROWS[request.model])
    }


def _client_fields(request: v.QueueRequest) -> set[str]:
    return {p.field for p in queue_problems(request, MODELS[request.model])}


def _case(base: v.QueueRequest, name: str, field: str, **changes: Any) -> Any:
    """``base`` with ``changes``, expected to be refused on ``field`` alone."""
    request = attrs.evolve(base, **changes)
    return pytest.param(request, field, id=f"{base.model}:{name}")


def _rule_cases() -> Iterator[Any]:
    """One request per rule of each catalogue row, breaking only that rule."""
    for model_id in sorted(ROWS):
        spec = _spec(model_id)
        case = functools.partial(_case, _base(model_id))
        minimum = spec.get("min_prompt_length", 10)
        short = "x" * (minimum - 1) if minimum > 1 else "  \n "
        yield case("prompt-too-short", "prompt", prompt=short)
        yield case("prompt-too-long", "prompt", prompt="x" * (spec["prompt_character_limit"] + 1))
        if spec.get("supports_lyrics"):
            limit = spec.get("lyrics_character_limit", 4096)
            yield case("lyrics-too-long", "lyrics_prompt", lyrics_prompt="l" * (limit + 1))
            if spec.get("lyrics_required") or model_id == "minimax-music-v2":
                yield case("lyrics-missing", "lyrics_prompt", lyrics_prompt=None)
                yield case("lyrics-blank", "lyrics_prompt", lyrics_prompt="   ")
            if model_id in MINIMAX_SHORT_LYRICS:
                yield case("lyrics-under-10", "lyrics_prompt", lyrics_prompt="la la")
        else:
            yield case("lyrics-unsupported", "lyrics_prompt", lyrics_prompt=LYRICS)
        if spec.get("supports_force_instrumental") is False:
            # the mere presence of the key is refused, even false
            yield case("instrumental-unsupported", "force_instrumental", force_instrumental=False)
        if spec.get("supports_lyrics_optimizer") is False:
            yield case("optimizer-unsupported", "lyrics_optimizer", lyrics_optimizer=False)
        elif spec.get("supports_lyrics_optimizer"):
            yield case("optimizer-with-lyrics", "lyrics_optimizer", lyrics_optimizer=True)
        if spec.get("supports_loop") is False:
            yield case("loop-unsupported", "loop", loop=False)
        options = spec.get("duration_options")
        low, high = spec.get("min_duration"), spec.get("max_duration")
        if options:
            yield case(
                "duration-not-an-option", "duration_seconds", duration_seconds=options[0] + 1
            )
        elif low is not None or high is not None:
            if high is not None:
                yield case("duration-above-max", "duration_seconds", duration_seconds=int(high) + 1)
            if low is not None and low > 1:
                yield case("duration-below-min", "duration_seconds", duration_seconds=int(low) - 1)
        else:
            yield case("duration-unsupported", "duration_seconds", duration_seconds=30)
        if spec.get("voices"):
            yield case("voice-unknown", "voice", voice="Nobody")
        else:
            yield case("voice-unsupported", "voice", voice="Aria")
        if spec.get("supports_speed"):
            yield case("speed-below-min", "speed", speed=spec["min_speed"] - 0.05)
            yield case("speed-above-max", "speed", speed=spec["max_speed"] + 0.05)
        else:
            yield case("speed-unsupported", "speed", speed=1.0)
        if not spec.get("supports_language_code"):
            yield case("language-unsupported", "language_code", language_code="en")


def _session(server: FakeServer, **overrides: Any) -> v.AsyncSession:
    """A session with the catalogue given up front (validation needs no ``models`` call)."""
    return make_session(server, **{"catalogue": list(MODELS.values()), **overrides})


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("model_id", sorted(ROWS))
def test_base_requests_are_valid_for_client_and_server(model_id: str) -> None:
    """The starting point of every rule case is valid on both sides."""
    request = _base(model_id)
    assert _client_fields(request) == set()
    assert _server_fields(request) == set()


@pytest.mark.parametrize(("request_", "field"), list(_rule_cases()))
def test_each_catalogue_rule_is_the_servers_verdict(request_: v.QueueRequest, field: str) -> None:
    """Breaking one rule flags exactly that field, on the client as on the server."""
    assert _client_fields(request_) == {field}
    assert _server_fields(request_) == {field}


@pytest.mark.anyio
@pytest.mark.parametrize(("request_", "field"), list(_rule_cases()))
async def test_each_catalogue_rule_is_refused_before_sending(
    fake_server: FakeServer, request_: v.QueueRequest, field: str
) -> None:
    """The session refuses the request with a message naming the field; nothing is sent."""
    async with _session(fake_server) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            await session.submit_request(request_)
    assert [p.field for p in caught.value.problems] == [field]
    assert f"- {field}: " in str(caught.value)
    assert request_.model in str(caught.value)
    assert fake_server.requests == []


def test_every_rule_kind_is_covered() -> None:
    """The generated cases touch every option the catalogue constrains."""
    fields = {param.values[1] for param in _rule_cases()}
    assert fields == {
        "prompt",
        "lyrics_prompt",
        "force_instrumental",
        "lyrics_optimizer",
        "duration_seconds",
        "voice",
        "speed",
        "language_code",
    }


# --------------------------------------------------------------------------- types

#: (model, options of the wrong type or shape, the field refused)
WRONG: list[tuple[str, dict[str, Any], str]] = [
    ("elevenlabs-tts-multilingual-v2", {"speed": "fast"}, "speed"),
    ("elevenlabs-tts-multilingual-v2", {"speed": math.nan}, "speed"),
    ("elevenlabs-tts-multilingual-v2", {"speed": math.inf}, "speed"),
    ("elevenlabs-tts-multilingual-v2", {"speed": True}, "speed"),
    ("elevenlabs-tts-multilingual-v2", {"speed": 9.0}, "speed"),
    ("elevenlabs-music", {"duration_seconds": -5}, "duration_seconds"),
    ("elevenlabs-music", {"duration_seconds": 0}, "duration_seconds"),
    ("elevenlabs-music", {"duration_seconds": 30.5}, "duration_seconds"),
    ("elevenlabs-music", {"duration_seconds": "30"}, "duration_seconds"),
    ("elevenlabs-music", {"duration_seconds": True}, "duration_seconds"),
    ("elevenlabs-music", {"prompt": ""}, "prompt"),
    ("elevenlabs-music", {"prompt": " \t\n "}, "prompt"),
    ("elevenlabs-music", {"prompt": None}, "prompt"),
    ("elevenlabs-music", {"prompt": 42}, "prompt"),
    ("elevenlabs-music", {"force_instrumental": "yes"}, "force_instrumental"),
    ("elevenlabs-music", {"force_instrumental": 1}, "force_instrumental"),
    ("ace-step-15", {"lyrics_prompt": 123}, "lyrics_prompt"),
    ("minimax-music-v25", {"lyrics_optimizer": "true"}, "lyrics_optimizer"),
    ("elevenlabs-sound-effects-v2", {"loop": "true"}, "loop"),
    ("elevenlabs-tts-v3", {"voice": 7}, "voice"),
    ("elevenlabs-music", {"language_code": "english"}, "language_code"),
    ("elevenlabs-music", {"language_code": 44}, "language_code"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-catalogue-check"])
@pytest.mark.parametrize(
    ("model", "changes", "field"), WRONG, ids=[f"{m}:{'+'.join(c)}={c}" for m, c, _ in WRONG]
)
async def test_wrong_types_and_blank_prompts_are_refused(
    fake_server: FakeServer, model: str, changes: dict[str, Any], field: str, validate: bool
) -> None:
    """Type and shape errors are refused before sending, even with validate=False."""
    options = {"prompt": PROMPT, **changes}
    prompt = options.pop("prompt")
    async with _session(fake_server, validate=validate) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            await session.submit(model, prompt, **options)
    assert field in {p.field for p in caught.value.problems}
    assert isinstance(caught.value, ValueError)
    assert fake_server.requests == []


@pytest.mark.anyio
async def test_unknown_model_is_refused_with_the_known_ones(fake_server: FakeServer) -> None:
    """An unknown model is refused, naming the models that exist; no queue is sent."""
    async with v.AsyncSession(
        api_key=API_KEY, base_url=fake_server.url, clock=ScaledClock(TIME_SCALE)
    ) as session:
        for model in ("no-such-model", "", "ELEVENLABS-MUSIC"):
            with pytest.raises(v.RequestValidationError) as caught:
                await session.submit(model, PROMPT)
            (problem,) = caught.value.problems
            assert problem.field == "model"
            assert "stable-audio-25" in problem.message
    # The key's limits at open (the defaults leave the pool to learn), the catalogue (read
    # for the first model), then once more for the third: a model met after the catalogue
    # was read may be newer than it. A blank id is refused as it is.
    assert [r.endpoint for r in fake_server.requests] == ["key_rate_limits"] + ["models"] * 2


@pytest.mark.anyio
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-catalogue-check"])
async def test_unknown_model_is_refused_even_without_validation(
    fake_server: FakeServer, validate: bool
) -> None:
    """validate=False still refuses an unknown model locally: sent, it would be a 404 that
    counts toward the key's failed-request lockout."""
    async with make_session(fake_server, validate=validate) as session:
        with pytest.raises(v.RequestValidationError, match="unknown model 'no-such-model'"):
            await session.submit("no-such-model", PROMPT)
        with pytest.raises(v.RequestValidationError, match="unknown model"):
            await session.submit_many([v.QueueRequest("no-such-model", PROMPT)])
    assert fake_server.count("queue") == 0


@pytest.mark.anyio
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "no-catalogue-check"])
async def test_a_model_added_after_the_catalogue_was_read_is_sent(
    fake_server: FakeServer, validate: bool
) -> None:
    """A model released after the session read the catalogue is found by one more read, and
    sent; an unknown one costs one more read, not one per request."""
    new = {**fake_server.model("stable-audio-25"), "id": "stable-audio-99"}
    async with make_session(fake_server, validate=validate) as session:
        assert "stable-audio-99" not in {m.id for m in await session.models()}
        fake_server.add_model(new)
        job = await session.submit("stable-audio-99", PROMPT)
        assert job.model == "stable-audio-99"
        for _ in range(3):
            with pytest.raises(v.RequestValidationError, match="unknown model"):
                await session.submit("stable-audio-100", PROMPT)
    assert fake_server.count("queue") == 1
    assert fake_server.count("models") == 3  # the first read, one for each new id


@pytest.mark.anyio
async def test_journal_requests_checks_the_rules_as_submit_does(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """journal_requests refuses (records nothing) a request breaking its model's rules, so
    resume never sends one the API would refuse."""
    requests = [
        v.QueueRequest("stable-audio-25", PROMPT),
        v.QueueRequest("stable-audio-25", PROMPT, duration_seconds=999),
        v.QueueRequest("no-such-model", PROMPT),
    ]
    path = tmp_path / "jobs.sqlite3"
    async with _session(fake_server, journal=path) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            await session.journal_requests(requests)
        fields = [p.field for p in caught.value.problems]
        assert fields == ["[1].duration_seconds", "[2].model"]
        report = await session.resume()
    assert (report.queued, report.jobs) == (0, ())
    async with await Journal.open(path) as journal:
        assert await journal.entries() == []
    assert fake_server.count("queue") == 0


@pytest.mark.anyio
async def test_unknown_keyword_arguments_are_refused(fake_server: FakeServer) -> None:
    """Misspelt or invented options raise TypeError and send nothing."""
    async with _session(fake_server) as session:
        with pytest.raises(TypeError, match="colour"):
            await session.submit("stable-audio-25", PROMPT, colour="blue")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="duration"):
            await session.generate("stable-audio-25", PROMPT, duration=30)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="instrumental"):
            v.QueueRequest("stable-audio-25", PROMPT, instrumental=True)  # type: ignore[call-arg]
    assert fake_server.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"model": "elevenlabs-tts-v3"}, "character_count"),
        ({"model": "elevenlabs-tts-v3", "character_count": 5001}, "character_count"),
        ({"model": "elevenlabs-tts-v3", "character_count": "5"}, "character_count"),
        ({"model": "minimax-music-v2", "duration_seconds": 30}, "duration_seconds"),
        ({"model": "elevenlabs-music", "duration_seconds": -1}, "duration_seconds"),
        ({"model": "ace-step-15", "duration_seconds": 61}, "duration_seconds"),
    ],
)
async def test_bad_quotes_are_refused_before_sending(
    fake_server: FakeServer, options: dict[str, Any], field: str
) -> None:
    """quote() checks its request against the model too; nothing is sent."""
    async with _session(fake_server) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            await session.quote(**options)
    assert [p.field for p in caught.value.problems] == [field]
    assert fake_server.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize("deadline", [0, -1.0, math.nan])
async def test_bad_deadline_is_refused_before_sending(
    fake_server: FakeServer, deadline: float
) -> None:
    """A deadline that is not a positive number of seconds is refused; nothing is queued."""
    async with _session(fake_server) as session:
        with pytest.raises(ValueError, match="deadline"):
            await session.submit("stable-audio-25", PROMPT, deadline=deadline)
    assert fake_server.count("queue") == 0


@pytest.mark.anyio
async def test_one_bad_request_stops_the_whole_batch(fake_server: FakeServer) -> None:
    """submit_many checks every request first: one wrong type means nothing is queued."""
    requests = [
        v.QueueRequest("stable-audio-25", PROMPT),
        v.QueueRequest("stable-audio-25", PROMPT, speed="fast"),  # type: ignore[arg-type]
        v.QueueRequest("stable-audio-25", PROMPT, duration_seconds=999),
    ]
    async with _session(fake_server) as session:
        with pytest.raises(v.RequestValidationError) as caught:
            await session.submit_many(requests)
    fields = [p.field for p in caught.value.problems]
    assert "[1].speed" in fields
    assert "[2].duration_seconds" in fields
    assert fake_server.requests == []


@pytest.mark.parametrize(
    ("factory", "changes"),
    [
        (v.RetryPolicy, {"attempts": 0}),
        (v.RetryPolicy, {"initial_backoff": -1.0}),
        (v.Timeouts, {"read": 0}),
        (v.Timeouts, {"connect": math.inf}),
        (v.Limits, {"max_connections": 0}),
        (v.RateLimits, {"queue_per_minute": -40}),
    ],
)
def test_bad_configuration_is_refused(factory: Any, changes: dict[str, Any]) -> None:
    """Configuration objects refuse impossible values when built."""
    with pytest.raises(ValueError, match=next(iter(changes))):
        factory(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"attempts": "3"},
        {"attempts": 2.5},
        {"attempts": True},
        {"initial_backoff": "1"},
        {"retry_queue_on_ambiguous_failure": "false"},
        {"retry_queue_on_ambiguous_failure": 1},
    ],
)
def test_a_retry_policy_of_the_wrong_type_is_refused_by_name(changes: dict[str, Any]) -> None:
    """A field of the wrong type is a TypeError naming it, not a comparison error from
    inside (or, for the queue switch, a truthy string opting in to a double charge)."""
    with pytest.raises(TypeError, match=rf"RetryPolicy\({next(iter(changes))}=\.\.\.\)"):
        v.RetryPolicy(**changes)


# --------------------------------------------------------------------------- hypothesis

ASCII = st.characters(min_codepoint=32, max_codepoint=126)
PADDING = st.sampled_from(["", " ", "\t", "\n ", "  "])


def _text_near(limits: list[int]) -> st.SearchStrategy[str]:
    """ASCII text whose trimmed length is near one of ``limits`` (or short and random)."""
    lengths = st.one_of(*(st.integers(max(0, n - 2), n + 2) for n in limits))
    sized = st.builds(lambda n, a, b: a + "x" * n + b, lengths, PADDING, PADDING)
    return st.one_of(sized, st.text(ASCII, max_size=24))


def _flag() -> st.SearchStrategy[Any]:
    return st.sampled_from([None, None, True, False, "yes", 1])


@st.composite
def _requests(draw: st.DrawFn, *, finite: bool = True) -> v.QueueRequest:
    """A request near the constraints of a catalogue model (valid or not)."""
    model_id = draw(st.sampled_from(sorted(ROWS)))
    spec = _spec(model_id)
    minimum = spec.get("min_prompt_length", 10)
    # Deliberately any type: the library checks the fields' types at run time.
    prompt: Any = draw(
        st.one_of(
            _text_near([minimum, spec["prompt_character_limit"]]),
            st.sampled_from([None, 42]),
        )
    )
    lyrics_limit = spec.get("lyrics_character_limit", 4096)
    lyrics: Any = draw(
        st.one_of(st.none(), _text_near([1, 10, lyrics_limit]), st.just(LYRICS), st.just(123))
    )
    durations: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.integers(-2, 3),
        st.sampled_from([True, 2.5]),
    ]
    if spec.get("duration_options"):
        durations.append(st.sampled_from(spec["duration_options"]))
    for bound in ("min_duration", "max_duration"):
        if spec.get(bound) is not None:
            durations.append(st.integers(int(spec[bound]) - 2, int(spec[bound]) + 2))
    speeds: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.floats(0.0, 5.0),
        st.sampled_from(["fast", True, 1]),
    ]
    if not finite:
        speeds.append(st.sampled_from([math.nan, math.inf]))
    voices = spec.get("voices") or ["Aria"]
    language: Any = draw(st.sampled_from([None, None, "en", "english", 44]))
    return v.QueueRequest(
        model=model_id,
        prompt=prompt,
        lyrics_prompt=lyrics,
        duration_seconds=draw(st.one_of(*durations)),
        force_instrumental=draw(_flag()),
        lyrics_optimizer=draw(_flag()),
        loop=draw(_flag()),
        voice=draw(st.one_of(st.none(), st.sampled_from([*voices, "Nobody", "", 7]))),
        language_code=language,
        speed=draw(st.one_of(*speeds)),
    )


def _expected_server_fields(request: v.QueueRequest) -> set[str]:
    """The server's verdict, less the one rule the client leaves to the server on purpose."""
    fields = _server_fields(request)
    if _loop_left_to_server(request):
        fields.discard("loop")
    return fields


def _loop_left_to_server(request: v.QueueRequest) -> bool:
    """A well-typed ``loop`` on a row that does not say whether it supports it ("unknown")."""
    return isinstance(request.loop, bool) and "supports_loop" not in _spec(request.model)


@settings(max_examples=400, deadline=None)
@given(request=_requests(finite=False))
def test_client_verdict_is_the_servers(request: v.QueueRequest) -> None:
    """For generated requests the client flags exactly the fields the server would."""
    assert _client_fields(request) == _expected_server_fields(request)


@pytest.mark.anyio
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=_requests())
async def test_generated_requests_against_the_fake(
    fake_server: FakeServer, request: v.QueueRequest
) -> None:
    """The fake queues what the client accepts and refuses exactly the fields it refuses."""
    fake_server.plan(JobScript(duration=1000.0))
    expected = _client_fields(request)
    sent = fake_server.count("queue")
    async with _session(fake_server) as session:
        if expected:
            with pytest.raises(v.RequestValidationError) as caught:
                await session.submit_request(request)
            assert {p.field.split(".")[-1] for p in caught.value.problems} == expected
            assert fake_server.count("queue") == sent
    async with v.VeniceClient(api_key=API_KEY, base_url=fake_server.url) as client:
        try:
            await client.queue(request)  # no client-side checks on this path
        except v.BadRequestError as error:
            refused = {str(issue["path"][0]) for issue in error.issues if issue["path"]}
        else:
            refused = set()
    assert refused - {"loop"} == expected - {"loop"}
    assert ("loop" in refused) == ("loop" in expected or _loop_left_to_server(request))


def test_lengths_are_counted_like_the_server() -> None:
    """A prompt of 126 emoji is 252 UTF-16 units: over the 250 limit for the server."""
    request = v.QueueRequest("elevenlabs-sound-effects-v2", "\U0001f3b5" * 126)
    assert _server_fields(request) == {"prompt"}
    assert _client_fields(request) == {"prompt"}
