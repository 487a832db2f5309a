"""Limits learned from the API, end to end against the fake server."""

from __future__ import annotations

import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, JobScript, ScaledClock

from ..conftest import API_KEY, make_session

pytestmark = pytest.mark.anyio


async def test_a_pooled_unstated_limit_draws_a_handful_of_429s_and_no_lockout() -> None:
    """Venice's "Audio: 60 requests/min" reading: one unstated limit over every audio
    endpoint. A batch of 12 jobs with the default 40 queue / 120 retrieve budget learns it
    from 429s: a handful of them, never the failed-request lockout, every job delivered."""
    scale = 0.01  # coarse enough that network jitter stays inside the 0.5 s window margin
    async with FakeServer(
        time_scale=scale,
        api_keys=[API_KEY],
        pooled_rate_limit=60,
        state_limits=False,
        error_budget=(20, 30.0),
        error_budget_counts_429=True,
    ) as server:
        # The server's estimate is far too low, so the jobs look overdue for a minute and
        # are polled often: more than the pool allows.
        scripts = [
            JobScript(duration=90.0 + 2.0 * i, average_execution_time=20.0) for i in range(12)
        ]
        server.plan(*scripts)
        async with make_session(server, clock=ScaledClock(scale)) as session:
            requests = [
                v.QueueRequest(model="stable-audio-25", prompt=f"pooled limit track {i}")
                for i in range(12)
            ]
            jobs = await session.submit_many(requests)
            async with session.results(jobs) as results:
                outcomes = [outcome async for outcome in results]
            learned = session._parts.budget.window("retrieve")
        limited = [r for r in server.requests if r.status == 429]
        assert learned is not None
        assert learned.limit < 120  # the 429s taught it (recovery takes quiet minutes)
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    assert len(outcomes) == 12
    # Polls already in flight when the pool fills are refused together: 1-12 seen.
    assert 1 <= len(limited) <= 12, [r.fault for r in limited]
    assert not [r for r in limited if r.fault and "error_budget" in r.fault]


async def test_a_stated_limit_is_obeyed_from_the_first_answer() -> None:
    """The server states 20 retrieves a minute (we assume 120): the session keeps to it
    from the first answer on (the server enforces the 20)."""
    # A coarser time scale than most tests: the budget's window is 0.5 s longer than the
    # server's, to cover a grant's way to the server; that is 25 ms of real time here (at
    # 0.03, 15 ms: a full suite run drew three 429s).
    scale = 0.05
    async with FakeServer(
        time_scale=scale, api_keys=[API_KEY], rate_limits={"retrieve": 20}
    ) as server:
        server.plan(*[JobScript(duration=20.0 + i) for i in range(12)])
        async with make_session(server, clock=ScaledClock(scale)) as session:
            jobs = [await session.submit("stable-audio-25", f"stated limit {i}") for i in range(12)]
            async with session.results(jobs) as results:
                outcomes = [outcome async for outcome in results]
    retrieves = server.requests_to("retrieve")
    assert all(isinstance(o, v.Succeeded) for o in outcomes)
    # A poll already on the wire when an answer states "remaining: 1" can still be refused
    # (the allowance cannot see requests in flight): at most one, in about 1 run in 5.
    assert len([r for r in retrieves if r.status == 429]) <= 1
    assert session._parts.budget.window("retrieve").limit == 20  # type: ignore[union-attr]
