"""Several real processes on one key and one fake server: with RedisBudget, no 429 at all."""

from __future__ import annotations

import pytest

from venice_audio_async._polling.scheduler import SHARE_SECONDS
from venice_audio_async.testing import FakeServer

from ..conftest import API_KEY
from ..redis_server import RedisServer
from ..redis_worker import run_workers

pytestmark = pytest.mark.anyio

#: The 0.5 s window margin lasts 10 ms: room for a loaded machine's delays.
SCALE = 0.02


async def test_processes_sharing_redis_get_no_429(redis_server: RedisServer) -> None:
    """Three worker processes x 4 jobs over a 10/min queue limit: all delivered, no 429."""
    async with FakeServer(
        api_keys=[API_KEY],
        time_scale=SCALE,
        rate_limits={"queue": 10, "retrieve": 30},
        error_budget=(20, 30.0),
        error_budget_counts_429=True,
    ) as server:
        argv = ["jobs", "--api", server.url, "--api-key", API_KEY, "--redis", redis_server.url]
        argv += ["--jobs", "4", "--processes", "3", "--scale", str(SCALE)]
        argv += ["--queue-limit", "10", "--retrieve-limit", "30"]
        results = await run_workers([[*argv, "--label", f"w{i}"] for i in range(3)])
    assert [len(r["received"]) for r in results] == [4, 4, 4]
    assert all(not r["errors"] for r in results)
    assert not [r for r in server.requests if r.status == 429]
    queued = [r.time for r in server.requests if r.endpoint == "queue"]
    assert max(queued) - min(queued) > 55  # 12 queues over a 10/min limit: a second window
    # One round trip per grant, give or take the ones that found the slot taken; the
    # poll-demand trade of a process whose polls wait, at most one per SHARE_SECONDS; and
    # the run-time trade beside it (at most one per trade, and one per job finished).
    grants = sum(r["granted"] for r in results)
    times = [r.time for r in server.requests]
    trades = 3 * (max(times) - min(times)) / SHARE_SECONDS
    assert sum(r["round_trips"] for r in results) <= 3 * grants + 2 * trades + 12
