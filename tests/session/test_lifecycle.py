"""Closing is complete from any task, and even when the closing task is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from pathlib import Path

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async._session.lifecycle import SessionState
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import UNLIMITED, make_session
from ..ledger.test_journal_edges import _holder

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


# --------------------------------------------------------------------------- without async with


async def test_started_by_its_first_call_and_kept_across_awaits(fake_server: FakeServer) -> None:
    """A notebook's flow: no ``async with``; separate awaits share one session; aclose ends it."""
    session = make_session(fake_server, rate_limits=UNLIMITED)
    job = v.Job(model=MODEL, queue_id="not-yet")
    assert session.status(job).phase == "unknown"  # before the first use: an empty session
    assert session.unfinished() == []
    assert session.finished() == []
    assert session.statistics().jobs_succeeded == 0
    session.forget(job)
    with pytest.raises(v.SessionStateError, match="has not started"):
        session.attach(MODEL, "q-1")
    audio = await session.generate(MODEL, "a first cell", duration_seconds=5)  # starts it
    assert audio.size > 0
    job = await session.submit(MODEL, "a later cell", duration_seconds=5)  # the same session
    assert session.attach(MODEL, job.queue_id) == job
    await session.wait_for(job)
    assert session.statistics().jobs_succeeded == 2
    await session.aclose()
    await session.aclose()  # twice is harmless
    for call in (session.models(), session.submit(MODEL, "after close", duration_seconds=5)):
        with pytest.raises(v.SessionStateError, match="closed"):
            await call
    with pytest.raises(v.SessionStateError, match="closed"):
        async with session.results([job]):
            pass
    assert fake_server.count("queue") == 2


async def test_concurrent_first_calls_start_it_once(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Five first calls at once open the journal once and run one host task."""
    session = make_session(fake_server, rate_limits=UNLIMITED, journal=tmp_path / "j.sqlite3")
    calls: list[Awaitable[object]] = [session.models() for _ in range(4)]
    calls.append(session.submit(MODEL, "all at once together", duration_seconds=5))
    await asyncio.gather(*calls)
    hosts = [t for t in asyncio.all_tasks() if t.get_name() == "venice-audio-session"]
    assert len(hosts) == 1
    await session.aclose()
    assert _all_closed(session)


async def test_a_cancelled_first_call_leaves_it_usable(fake_server: FakeServer) -> None:
    """A first call cancelled while it opens the session does not close it half-opened."""
    session = make_session(fake_server, rate_limits=UNLIMITED)
    first = asyncio.get_running_loop().create_task(session.models())
    while session._life._host is None:  # now inside the opening: the host task exists
        await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(await session.models()) > 0
    await session.aclose()


async def test_aclose_while_the_first_call_opens_it(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """aclose() during the opening waits for it, then closes all it opened; nothing stays."""
    before = _tasks()
    session = make_session(fake_server, rate_limits=UNLIMITED, journal=tmp_path / "j.sqlite3")
    first = asyncio.get_running_loop().create_task(session.models())
    while session._life._host is None:  # inside the opening
        await asyncio.sleep(0)
    with pytest.raises(v.SessionStateError):
        async with session:  # the first call is opening it already
            pass
    await session.aclose()
    assert session._life.state is SessionState.CLOSED
    assert _all_closed(session)
    with contextlib.suppress(v.SessionStateError):  # closed under it, or done before
        await first
    assert _tasks() == before


async def test_a_paid_first_call_without_a_key_starts_nothing(fake_server: FakeServer) -> None:
    """No API key: the paid call is refused before the session opens anything."""
    session = make_session(fake_server, api_key="", rate_limits=UNLIMITED)
    with pytest.raises(v.MissingAPIKeyError):
        await session.submit(MODEL, "no key", duration_seconds=5)
    assert session._life.state is SessionState.UNOPENED
    await session.aclose()


async def test_errors_of_opening_surface_at_the_first_call(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """A journal another process holds: the first call raises JournalError, nothing is sent;
    the session stays unstarted, and starts on a later call once the journal is free."""
    path = tmp_path / "jobs.sqlite3"
    session = make_session(fake_server, rate_limits=UNLIMITED, journal=path)
    with _holder(path) as holder:
        with pytest.raises(v.JournalError, match=f"in use by process {holder.pid}"):
            await session.submit(MODEL, "would be paid twice otherwise", duration_seconds=5)
        assert fake_server.requests == []
        holder.kill()
        holder.wait()
    await session.generate(MODEL, "the journal is free again", duration_seconds=5)
    await session.aclose()
    assert fake_server.count("queue") == 1


async def test_a_started_session_never_closed_warns(fake_server: FakeServer) -> None:
    """A session started by a call and collected unclosed emits a ResourceWarning."""
    session = make_session(fake_server, rate_limits=UNLIMITED)
    await session.models()
    life = session._life
    with pytest.warns(ResourceWarning, match="never closed"):
        del session  # nothing else refers to it: collected at once
    await life.close()
