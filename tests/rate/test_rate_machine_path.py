"""The rate rule on the user's path, over HTTP against the fake: a 429 costs what the
server asks and no more (issue 22, point 1)."""

from __future__ import annotations

import itertools

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript, ScaledClock

from ..conftest import API_KEY, make_session

pytestmark = pytest.mark.anyio


def _longest_silence(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


async def test_a_429_under_an_unstated_pooled_limit_costs_its_retry_after() -> None:
    """Unstated pooled 60/min; the session keeps to it, polling overdue jobs, when a "Rate
    limit exceeded" 429 with Retry-After 2 comes (another client on the key spent the
    window): requests resume 2 s later, spaced at the lowered rate. The old decrease rule
    held every request until the window's count fell below the lowered limit (~50 s)."""
    scale = 0.01
    async with FakeServer(
        time_scale=scale, api_keys=[API_KEY], pooled_rate_limit=60, state_limits=False
    ) as server:
        # Far too low an estimate: the jobs look overdue and are polled often.
        server.plan(
            *[JobScript(duration=70.0 + 2.0 * i, average_execution_time=5.0) for i in range(12)]
        )
        server.inject("retrieve", Fault.status(429, retry_after=2.0), times=1, during=(5.0, 300.0))
        limits = v.RateLimits(pooled_per_minute=60)
        async with make_session(server, clock=ScaledClock(scale), rate_limits=limits) as session:
            requests = [
                v.QueueRequest(model="stable-audio-25", prompt=f"pooled limit track {i}")
                for i in range(12)
            ]
            jobs = await session.submit_many(requests)
            async with session.results(jobs) as results:
                outcomes = [outcome async for outcome in results]
        refused = [r for r in server.requests if r.status == 429]
        sent = [r.time for r in server.requests]
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    injected = [r.time for r in refused if r.fault == "status:429"]
    assert len(injected) == 1
    # Work is due all along (twelve overdue jobs): requests resume at the Retry-After, then
    # go spaced at the lowered pooled rate (at worst its floor, 60 / 8 a minute: 8.6 s
    # apart): no wait for the grants before the 429 to age out (57 s under the old rule).
    silence = _longest_silence([t for t in sent if t >= injected[0]])
    assert silence <= 2.0 + 60.5 / 7 + 1.0, f"nothing sent for {silence:.1f} s after the 429"


async def test_an_overloaded_models_429_holds_only_its_own_queue_calls() -> None:
    """elevenlabs-music is overloaded (429 "The model is currently overloaded", Retry-After
    30): its queue call waits 30 s; polls and another model's queue calls go on meanwhile
    (the session's budget is not paused, and lowers no rate)."""
    scale = 0.01
    async with FakeServer(time_scale=scale, api_keys=[API_KEY]) as server:
        server.plan(*[JobScript(duration=20.0) for _ in range(4)])
        clock = ScaledClock(scale)
        async with make_session(server, clock=clock) as session:
            first = await session.submit("stable-audio-25", "a first track, polled")
            server.overload("elevenlabs-music", retry_after=30.0, for_seconds=1.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.submit, "elevenlabs-music", "the overloaded model's")
                await clock.sleep(5.0)
                second = await session.submit("stable-audio-25", "another model, meanwhile")
            async with session.results([first, second]) as results:
                outcomes = [outcome async for outcome in results]
            budget = session._parts.budget
            queue_window = budget.window("queue")
            stats = budget.statistics()
    refused = [r for r in server.requests if r.status == 429]
    assert [r.fault for r in refused] == ["overloaded"]
    held_from = refused[0].time
    meanwhile = [r for r in server.requests if held_from < r.time < held_from + 29.0]
    assert any(r.endpoint == "retrieve" for r in meanwhile)  # polls went on
    assert any(r.endpoint == "queue" and r.body["model"] == "stable-audio-25" for r in meanwhile)
    music = [
        r
        for r in server.requests
        if r.endpoint == "queue" and r.body["model"] == ("elevenlabs-music")
    ]
    assert len(music) == 2  # refused once, sent again once the model's hold ended
    assert music[1].time - music[0].time == pytest.approx(30.0, abs=2.0)
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    assert stats.paused_seconds == 0.0  # the session was never paused
    assert queue_window is not None
    assert queue_window.limit == 40  # and no rate was lowered


@pytest.mark.parametrize(
    ("given", "expected_retrieve"),
    [
        (v.RateLimits(pooled_per_minute=None), 300),
        (v.RateLimits(retrieve_per_minute=120, pooled_per_minute=None), 120),
    ],
    ids=["assumed", "user-set"],
)
async def test_stated_limits_raise_and_lower_what_the_user_did_not_set(
    given: v.RateLimits, expected_retrieve: int
) -> None:
    """The API states 300 retrieves and 10 queue calls a minute: within one answer each
    the assumed 120 becomes 300 and the assumed 40 becomes 10; a retrieve limit the user
    set stays as set (never raised by a stated one)."""
    scale = 0.01
    async with FakeServer(
        time_scale=scale, api_keys=[API_KEY], rate_limits={"retrieve": 300, "queue": 10}
    ) as server:
        server.plan(JobScript(duration=3.0))
        async with make_session(server, clock=ScaledClock(scale), rate_limits=given) as session:
            job = await session.submit("stable-audio-25", "a track to learn the limits by")
            await session.wait_for(job)
            budget = session._parts.budget
            retrieve, queue = budget.window("retrieve"), budget.window("queue")
    assert retrieve is not None
    assert queue is not None
    assert retrieve.limit == expected_retrieve
    assert queue.limit == 10  # lower: holds whoever set it
