"""Limits learned from GET /api_keys/rate_limits: the client call and RateLimits.from_api."""

from __future__ import annotations

import logging

import pytest

import venice_audio_async as v
from venice_audio_async._core.converters import structure_key_rate_limits
from venice_audio_async.testing import FakeServer, ScaledClock
from venice_audio_async.types import ModelRateLimits

from ..conftest import API_KEY, make_client

pytestmark = pytest.mark.anyio


async def test_client_reads_the_key_rate_limits() -> None:
    """key_rate_limits() returns every model's limits by type, and the key's tier."""
    limits = {"elevenlabs-music": {"RPM": 60, "RPD": 2000}, "text-model": {"TPM": 1000}}
    async with (
        FakeServer(api_keys=[API_KEY], key_rate_limits=limits) as server,
        make_client(server) as client,
    ):
        answer = await client.key_rate_limits()
    assert answer.api_tier == "paid"
    assert answer.access_permitted is True
    music = answer.for_model("elevenlabs-music")
    assert music == ModelRateLimits(model="elevenlabs-music", limits={"RPM": 60, "RPD": 2000})
    assert music.per_minute == 60
    assert music.per_day == 2000
    assert answer.for_model("nope") is None


async def test_client_needs_a_valid_key() -> None:
    """A wrong key is refused with AuthenticationError."""
    async with (
        FakeServer(api_keys=[API_KEY]) as server,
        v.VeniceClient(api_key="wrong", base_url=server.url) as client,
    ):
        with pytest.raises(v.AuthenticationError):
            await client.key_rate_limits()


def test_malformed_answers() -> None:
    """No data.rateLimits list is malformed; odd rows and limits are skipped."""
    with pytest.raises(v.MalformedResponse):
        structure_key_rate_limits({"data": {}})
    answer = structure_key_rate_limits(
        {
            "data": {
                "rateLimits": [
                    {"rateLimits": [{"amount": 1, "type": "RPM"}]},  # no model id
                    {"apiModelId": "m", "rateLimits": [{"amount": "9", "type": "RPM"}, 3]},
                    {"apiModelId": "n", "rateLimits": [{"amount": 5, "type": "RPM"}]},
                ]
            }
        }
    )
    assert answer.models == (
        ModelRateLimits(model="m", limits={}),
        ModelRateLimits(model="n", limits={"RPM": 5.0}),
    )


async def test_from_api_pools_the_smallest_audio_rpm(caplog: pytest.LogCaptureFixture) -> None:
    """The lowest RPM among the audio models becomes the pooled limit; RPD is reported."""
    limits = {
        "elevenlabs-music": {"RPM": 60, "RPD": 2000},
        "stable-audio-25": {"RPM": 45},
        "some-text-model": {"RPM": 5},  # not audio: ignored
    }
    async with (
        FakeServer(api_keys=[API_KEY], key_rate_limits=limits) as server,
        make_client(server) as client,
    ):
        with caplog.at_level(logging.INFO, logger="venice_audio_async"):
            learned = await v.RateLimits.from_api(client)
    assert learned.found
    assert learned.pooled_per_minute == 45
    assert learned.model == "stable-audio-25"
    assert learned.per_day == {"elevenlabs-music": 2000}
    assert learned.rate_limits == v.RateLimits(pooled_per_minute=45)
    assert "45/min" in learned.message
    assert learned.message in caplog.text


async def test_from_api_says_when_it_found_none(caplog: pytest.LogCaptureFixture) -> None:
    """With no audio RPM listed, the base limits are kept and a warning says so."""
    base = v.RateLimits(queue_per_minute=10)
    async with (
        FakeServer(api_keys=[API_KEY], key_rate_limits={"x": {"RPD": 9}}) as server,
        make_client(server) as client,
    ):
        with caplog.at_level(logging.WARNING, logger="venice_audio_async"):
            learned = await v.RateLimits.from_api(client, base=base)
    assert not learned.found
    assert learned.rate_limits is base
    assert "no requests-per-minute limit" in learned.message
    assert learned.message in caplog.text


async def test_learned_pool_keeps_a_session_under_the_server_pool() -> None:
    """A session on the learned pool sends no request the fake's pooled limit refuses."""
    # The budget's window is 0.5 s longer than the server's: that covers the time from a
    # grant to the request's arrival, 25 ms of real time at this scale (at 0.03, 15 ms, a
    # machine beside three busy loops took longer over the first, new connections: 429s).
    scale = 0.05
    async with FakeServer(api_keys=[API_KEY], time_scale=scale, pooled_rate_limit=8) as server:
        async with make_client(server) as client:
            learned = await v.RateLimits.from_api(client, models=["stable-audio-25"])
        assert learned.pooled_per_minute == 8
        async with v.AsyncSession(
            api_key=API_KEY,
            base_url=server.url,
            clock=ScaledClock(scale),
            rate_limits=learned.rate_limits,
        ) as session:
            jobs = await session.submit_many(
                [
                    v.QueueRequest(model="stable-audio-25", prompt=f"learned pool track {i}")
                    for i in range(6)
                ]
            )
            for job in jobs:
                await session.wait_for(job)
        timeline = [(r.endpoint, round(r.time, 2), r.status) for r in server.requests]
        assert not [r for r in server.requests if r.status == 429], "\n".join(map(str, timeline))
