"""Shared fixtures: asyncio only (aiohttp is asyncio-only), a time-scaled fake server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from venice_audio_async.testing import FakeServer

#: One virtual second lasts this many real seconds in integration tests.
TIME_SCALE = 0.001
API_KEY = "test-key-5f2c9a7e-never-leak"


@pytest.fixture
def anyio_backend() -> str:
    """Run every async test on asyncio."""
    return "asyncio"


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeServer]:
    """A time-scaled FakeServer accepting API_KEY."""
    async with FakeServer(time_scale=TIME_SCALE, api_keys=[API_KEY]) as server:
        yield server
