"""Shared fixtures and builders: asyncio only (aiohttp is asyncio-only), a time-scaled fake server.

Test modules import the builders (``make_session``, ``make_client``) and constants from here;
a module that needs a differently configured fake server defines its own ``server`` fixture.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, ScaledClock

from .redis_server import RedisServer, missing_redis, require_redis_env

#: Typed user code for .ci/run's wheel check; one file there must fail type checking.
collect_ignore = ["typed_usage"]

#: One virtual second lasts this many real seconds in integration tests.
TIME_SCALE = 0.001
API_KEY = "test-key-5f2c9a7e-never-leak"

#: No client-side pacing, for tests about something other than the rate limiter.
UNLIMITED = v.RateLimits(queue_per_minute=None, retrieve_per_minute=None, pooled_per_minute=None)
#: The per-endpoint defaults without a pool, so nothing is asked at open: the limits most
#: tests run under (tests of the limits learnt at open give their own).
PER_ENDPOINT = v.RateLimits(pooled_per_minute=None)


def max_in_window(times: Sequence[float], window: float) -> int:
    """The largest number of times in any closed interval of length ``window``."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + window) - k for k, t in enumerate(ordered)), default=0
    )


def busiest_window(times: Sequence[float], window: float = 60.0) -> int:
    """The most of ``times`` that fall in any half-open window ``(t - window, t]``."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window + 1e-9:  # float-safe
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.fixture
def anyio_backend() -> str:
    """Run every async test on asyncio."""
    return "asyncio"


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    """A time-scaled FakeServer accepting API_KEY."""
    async with FakeServer(time_scale=TIME_SCALE, api_keys=[API_KEY]) as server:
        yield server


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client, for tests that speak HTTP to the fake server directly."""
    async with aiohttp.ClientSession() as client:
        yield client


def make_session(server: FakeServer | str, **overrides: Any) -> v.AsyncSession:
    """A session with API_KEY on the fake's time scale; ``overrides`` replace any option.

    ``server`` is a fake server or a base URL (for tests that point at no server at all).
    """
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server if isinstance(server, str) else server.url,
        "clock": ScaledClock(TIME_SCALE),
        "rate_limits": PER_ENDPOINT,
    }
    options.update(overrides)
    return v.AsyncSession(**options)


def make_client(server: FakeServer, **options: Any) -> v.VeniceClient:
    """A low-level client with API_KEY, pointed at ``server``."""
    return v.VeniceClient(api_key=API_KEY, base_url=server.url, **options)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole run (persistence off); skipped where it is missing.

    With VENICE_REQUIRE_REDIS=1 (set by .ci/run) a missing Redis fails instead.
    """
    server = _started_redis()
    yield server
    server.close()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop and start again."""
    server = _started_redis()
    yield server
    server.close()


def _started_redis() -> RedisServer:
    reason = missing_redis()
    if reason is not None:
        if require_redis_env():
            pytest.fail(f"VENICE_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    server = RedisServer()
    server.start()
    return server
