"""A ``queue`` answered "no job was created" (429, 503) gives its journal row back while it waits.

Kept "sending" during the wait, a crash there would leave a row ``resume`` must call
unknown (maybe billed, never re-sent): a job the caller asked for and never got. Back in
"intent", the crash leaves a job ``resume`` sends, once.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import venice_audio_async as v
from venice_audio_async.testing import FakeServer, Fault, JobScript

from .conftest import API_KEY, TIME_SCALE, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"

#: A second process that submits one unkeyed job into a journal, then waits (to be killed).
SUBMITTER = f"""
import sys, anyio, venice_audio_async as v
async def main():
    async with v.AsyncSession(
        api_key={API_KEY!r}, base_url=sys.argv[1], journal=sys.argv[2],
        clock=v.ScaledClock({TIME_SCALE}),
        rate_limits=v.RateLimits(queue_per_minute=None, retrieve_per_minute=None),
        retry=v.RetryPolicy(max_retry_after=1e9),
    ) as session:
        await session.submit({MODEL!r}, "rain on a tin roof")
anyio.run(main)
"""


def _states(journal: Path) -> list[str]:
    """The journal's row states, read by a second connection (as another program would)."""
    if not journal.exists():
        return []
    db = sqlite3.connect(journal, timeout=5.0)
    try:
        return [row[0] for row in db.execute("SELECT state FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:  # the table is not made yet
        return []
    finally:
        db.close()


async def _state_during_the_wait(server: FakeServer, journal: Path) -> list[str]:
    """The rows once the first queue attempt was answered and the retry has not arrived."""
    with anyio.fail_after(10):
        while True:
            if server.count("queue") == 1:
                states = _states(journal)
                if states != ["sending"]:  # the answer is still being handled
                    assert server.count("queue") == 1, "the retry came before the row was read"
                    return states
            await anyio.sleep(0.002)


@pytest.mark.parametrize(
    "fault",
    [Fault.status(429, retry_after=300.0), Fault.status(503)],
    ids=["429", "503"],
)
async def test_a_row_waiting_to_be_sent_again_is_intent(
    fake_server: FakeServer, tmp_path: Path, fault: Fault
) -> None:
    """Queue answered 429 / 503, then success: during the wait the row is "intent", then queued."""
    fake_server.plan(JobScript(duration=1.0))
    fake_server.inject("queue", fault)
    journal = tmp_path / "j.sqlite3"
    policy = v.RetryPolicy(initial_backoff=300.0, jitter=0.0, max_retry_after=1000.0)
    async with make_session(
        fake_server, rate_limits=UNLIMITED, journal=journal, retry=policy
    ) as session:
        jobs: list[v.Job] = []

        async def submit() -> None:
            jobs.append(await session.submit(MODEL, "rain on a tin roof"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            assert await _state_during_the_wait(fake_server, journal) == ["intent"]
        assert (await session.wait_for(jobs[0])).size > 0
    assert _states(journal) == ["succeeded"]
    assert fake_server.count("queue") == 2


async def test_a_cancel_during_the_wait_leaves_a_job_to_send(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """Cancelled while waiting after a 429: nothing counted as spent, resume sends it once."""
    fake_server.plan(JobScript(duration=1.0))
    fake_server.inject("queue", Fault.status(429, retry_after=300.0))
    journal = tmp_path / "j.sqlite3"
    options = {
        "rate_limits": UNLIMITED,
        "journal": journal,
        "retry": v.RetryPolicy(max_retry_after=1000.0),
        "max_spend_usd": 100.0,
    }
    async with make_session(fake_server, **options) as session:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.submit, MODEL, "rain on a tin roof")
            assert await _state_during_the_wait(fake_server, journal) == ["intent"]
            tg.cancel_scope.cancel()
        assert session.spending()[0] == 0.0
    async with make_session(fake_server, **options) as session:
        report = await session.resume()
        assert (report.queued, report.unknown) == (1, ())
        await session.wait_for(report.jobs[0])
    assert fake_server.count("queue") == 2


async def test_resume_after_a_kill_during_the_wait_queues_it_once(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    """kill -9 while a queue waits after a 429: resume queues that job exactly once."""
    fake_server.plan(JobScript(duration=1.0))
    fake_server.inject("queue", Fault.status(429, retry_after=1e6))
    journal = tmp_path / "j.sqlite3"
    process = await anyio.open_process(
        [sys.executable, "-c", SUBMITTER, fake_server.url, str(journal)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with process:
        try:
            assert await _state_during_the_wait(fake_server, journal) == ["intent"]
        finally:
            process.kill()  # kill -9: no cleanup runs; the OS drops the journal's lock
            await process.wait()
    async with make_session(fake_server, rate_limits=UNLIMITED, journal=journal) as session:
        report = await session.resume()
        assert (report.queued, report.unknown) == (1, ())
        await session.wait_for(report.jobs[0])
        again = await session.resume()
        assert (again.queued, again.skipped) == (0, 1)
    assert fake_server.count("queue") == 2
    assert _states(journal) == ["succeeded"]
