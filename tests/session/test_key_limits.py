"""The limits in force, settled at open (issue 22 point 2): the key's own, read with one
``GET /api_keys/rate_limits``, or Venice's documented audio limit, 60/min pooled."""

from __future__ import annotations

import logging

import pytest

import venice_audio_async as v
from venice_audio_async.budget import LocalBudget
from venice_audio_async.testing import FakeServer, Fault, JobScript, ScaledClock

from ..conftest import API_KEY, TIME_SCALE, make_session

pytestmark = pytest.mark.anyio

#: A key whose audio models allow 45 and 90 a minute (a text model's 5 is not audio).
KEY_LIMITS = {
    "stable-audio-25": {"RPM": 90, "RPD": 5000},
    "elevenlabs-music": {"RPM": 45},
    "some-text-model": {"RPM": 5},
}


def _pool_limit(session: v.AsyncSession) -> int | None:
    budget = session._parts.budget
    assert isinstance(budget, LocalBudget)
    window = budget.window("complete")  # only the pool limits complete
    return window.limit if window is not None else None


def _in_force(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "limits in force" in r.getMessage()]


async def test_the_keys_limits_are_learnt_at_open_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Left to its default, the pool is the lowest audio figure the key lists; one INFO
    line says so; the catalogue read to tell audio models apart serves the submits too."""
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], key_rate_limits=KEY_LIMITS
    ) as server:
        server.plan(JobScript(duration=2.0))
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            async with make_session(server, rate_limits=v.RateLimits()) as session:
                assert _pool_limit(session) == 45
                job = await session.submit("stable-audio-25", "rain on a tin roof")
                await session.wait_for(job)
        endpoints = [r.endpoint for r in server.requests]
    assert endpoints[:2] == ["key_rate_limits", "models"]
    assert endpoints.count("key_rate_limits") == 1
    assert endpoints.count("models") == 1
    (line,) = _in_force(caplog)
    assert "45 requests/min pooled" in line
    assert "from the API" in line
    assert "elevenlabs-music" in line


@pytest.mark.parametrize("answer", ["500", "no audio"])
async def test_the_documented_limit_applies_when_the_key_tells_nothing(
    answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint fails, or lists no audio model: 60/min pooled over the audio
    endpoints, said once; the session works on it."""
    listed = {"some-text-model": {"RPM": 5}} if answer == "no audio" else KEY_LIMITS
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], key_rate_limits=listed
    ) as server:
        if answer == "500":
            server.inject("key_rate_limits", Fault.status(500))
        server.plan(JobScript(duration=2.0))
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            async with make_session(server, rate_limits=v.RateLimits()) as session:
                assert _pool_limit(session) == 60
                job = await session.submit("stable-audio-25", "rain on a tin roof")
                audio = await session.wait_for(job)
                assert audio.size > 0
        assert server.count("key_rate_limits") == 1
    (line,) = _in_force(caplog)
    assert "60 requests/min pooled over complete, queue, quote, retrieve" in line
    assert "documented default" in line


@pytest.mark.parametrize(
    "options",
    [
        {"rate_limits": v.RateLimits(pooled_per_minute=50)},
        {"rate_limits": v.RateLimits(pooled_per_minute=None)},
        {"budget": "local"},
        {"api_key": None},
    ],
    ids=["pool-given", "no-pool-given", "budget-given", "no-key"],
)
async def test_nothing_is_asked_at_open_when_every_figure_was_given(
    options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled figure given (a number, or None for none), a budget given, or no key to
    ask with: no request at open."""
    monkeypatch.delenv("VENICE_API_KEY", raising=False)
    if options.get("budget") == "local":
        options = {"budget": LocalBudget(clock=ScaledClock(TIME_SCALE), rates={})}
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], key_rate_limits=KEY_LIMITS
    ) as server:
        async with make_session(server, **options):
            pass
        assert server.requests == []


async def test_a_stated_limit_never_raises_the_pool_past_the_keys_lowest() -> None:
    """The API states 300 retrieves a minute in its headers: the retrieve limit rises, the
    pool stays at the lowest figure the key listed for an audio model."""
    async with FakeServer(
        time_scale=TIME_SCALE,
        api_keys=[API_KEY],
        key_rate_limits=KEY_LIMITS,
        rate_limits={"retrieve": 300},
    ) as server:
        server.plan(JobScript(duration=3.0))
        async with make_session(server, rate_limits=v.RateLimits()) as session:
            job = await session.submit("stable-audio-25", "rain on a tin roof")
            await session.wait_for(job)
            budget = session._parts.budget
            assert isinstance(budget, LocalBudget)
            assert budget._endpoint("retrieve").limit == 300  # its own limit: raised
            assert _pool_limit(session) == 45


async def test_an_assumed_pool_is_dropped_once_queue_and_retrieve_state_different_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The key lists nothing, so the documented 60/min pool is assumed; the API then states
    40 a minute on queue answers and 120 on retrieve answers: separate limits, not one
    pool. After a submit and a poll the pool is gone (each endpoint keeps the limit it
    stated), said once at INFO."""
    async with FakeServer(
        time_scale=TIME_SCALE, api_keys=[API_KEY], rate_limits={"queue": 40, "retrieve": 120}
    ) as server:
        server.plan(JobScript(duration=2.0))
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            async with make_session(server, rate_limits=v.RateLimits()) as session:
                assert _pool_limit(session) == 60
                job = await session.submit("stable-audio-25", "rain on a tin roof")
                await session.wait_for(job)
                budget = session._parts.budget
                assert _pool_limit(session) is None
                limits = {name: budget.window(name) for name in ("queue", "retrieve")}
                assert {k: w.limit if w else None for k, w in limits.items()} == {
                    "queue": 40,
                    "retrieve": 120,
                }
                stats = budget.statistics()
                assert stats.endpoints["queue"].granted == 1
                assert stats.endpoints["retrieve"].granted >= 1
        assert server.count("key_rate_limits") == 1
    refuted = [r.getMessage() for r in caplog.records if "not one pool" in r.getMessage()]
    assert refuted == [
        "the API states 40/min for queue and 120/min for retrieve: separate limits, not one "
        "pool; dropping the assumed 60/min pool"
    ]
