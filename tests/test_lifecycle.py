"""Closing is complete from any task, and even when the closing task is cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript

from .conftest import UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"


def _tasks() -> int:
    """Tasks alive in this loop, leaving out the in-process fake server's (its handlers,
    and the sleep and the wait its delayed answers race)."""
    server_side = ("RequestHandler", "ScaledClock.sleep", "Event.wait")
    return sum(
        1
        for task in asyncio.all_tasks()
        if not getattr(task.get_coro(), "__qualname__", "").startswith(server_side)
    )


def _all_closed(session: v.AsyncSession) -> bool:
    journal = session.journal
    assert journal is not None
    return bool(session._parts.client.transport._closed and journal._store.closed)


async def test_aclose_from_another_task(fake_server: FakeServer, tmp_path: Path) -> None:
    """A session opened in one task closes from another, under asyncio.wait_for."""
    before = _tasks()
    session = make_session(fake_server, rate_limits=UNLIMITED, journal=tmp_path / "j.sqlite3")
    opened = asyncio.get_running_loop().create_task(session.__aenter__())
    await opened
    await asyncio.wait_for(session.aclose(), 5.0)
    assert _all_closed(session)
    assert _tasks() == before


async def test_cancelled_exit_still_closes_everything(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Cancelling the owner while __aexit__ waits for a hanging complete closes it all."""
    fake_server.plan(JobScript(duration=1.0))
    fake_server.inject("complete", Fault.delay(1_000_000.0), times=5)
    before = _tasks()
    session = make_session(
        fake_server, rate_limits=UNLIMITED, journal=tmp_path / "j.sqlite3", output_dir=tmp_path
    )

    async def owner() -> None:
        async with session:
            job = await session.submit(MODEL, "a tiny sound")
            await session.wait_for(job)
            with anyio.fail_after(5):
                while fake_server.pending_faults("complete") == 5:
                    await anyio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(owner())
    with anyio.fail_after(5):
        while fake_server.pending_faults("complete") == 5:
            await anyio.sleep(0.005)
    await anyio.sleep(0.05)  # the owner is now in __aexit__, draining the release
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with anyio.move_on_after(5):
        while not (_all_closed(session) and _tasks() == before):
            await anyio.sleep(0.005)
    assert _all_closed(session)
    assert _tasks() == before
