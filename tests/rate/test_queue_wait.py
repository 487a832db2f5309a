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
from venice_audio_async._core.clock import ManualClock
from venice_audio_async._core.config import RateLimit, endpoint_rates, pooled_rate
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async._rate.endpoint_rate import EndpointRate, LinePlan
from venice_audio_async.testing import FakeServer, Fault, JobScript

from ..conftest import API_KEY, TIME_SCALE, UNLIMITED, make_session

pytestmark = pytest.mark.anyio

MODEL = "stable-audio-25"

#: A second process that submits one unkeyed job into a journal, then waits (to be killed).
SUBMITTER = f"""
import sys, anyio, venice_audio_async as v
from venice_audio_async.testing import ScaledClock
async def main():
    async with v.AsyncSession(
        api_key={API_KEY!r}, base_url=sys.argv[1], journal=sys.argv[2],
        clock=ScaledClock({TIME_SCALE}),
        rate_limits=v.RateLimits(
            queue_per_minute=None, retrieve_per_minute=None, pooled_per_minute=None
        ),
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


# --------------------------------------------------------------------------- a place in line
#
# A submit waiting for a queue token knows its place in line: one whose token would come
# after its deadline is refused at once (nothing sent), counting ahead of it only the
# callers that can make their own deadlines.

#: At 40/min (window 60.5 s, a burst of 6, then paced) tokens come at 0 (x6), 1.73, 3.46,
#: 5.19 ...: within a 5 s deadline 8 callers get one.
QUEUE_40 = {"queue": RateLimit(40)}


async def _race(
    budget: LocalBudget, clock: ManualClock, deadlines: list[float | None]
) -> dict[int, tuple[bool, float]]:
    """Callers asking for a queue token in this order; each one's answer and clock time."""
    got: dict[int, tuple[bool, float]] = {}

    async def ask(index: int, deadline: float | None) -> None:
        got[index] = (await budget.acquire("queue", deadline_at=deadline), clock.monotonic())

    async with anyio.create_task_group() as tg:
        for index, deadline in enumerate(deadlines):
            tg.start_soon(ask, index, deadline)
            await anyio.wait_all_tasks_blocked()
        while len(got) < len(deadlines):
            assert clock.advance_to_next()
            await anyio.wait_all_tasks_blocked()
    return got


async def test_callers_that_cannot_make_it_are_refused_at_once() -> None:
    """20 callers with 5 s at 40/min: 12 refused at clock time 0, the 8 others in time."""
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates=QUEUE_40)
    got = await _race(budget, clock, [5.0] * 20)
    refused = [i for i, (ok, _) in got.items() if not ok]
    assert refused == list(range(8, 20))
    assert all(at == 0.0 for i, (_, at) in got.items() if i in refused)
    granted = sorted(at for ok, at in got.values() if ok)
    assert granted[:6] == [0.0] * 6
    assert granted[6:] == pytest.approx([1.7286, 3.4571], abs=1e-3)
    assert budget.statistics().endpoints["queue"].granted == 8


async def test_a_hopeless_caller_does_not_delay_those_behind_it() -> None:
    """A caller that will give up is not counted ahead of the others; they keep their order.

    After the burst, A (deadline 3.0), B (4.0) and C (6.0) wait for 1.73, 3.46 and 5.19. A
    pause until 3.5 then makes A hopeless: it gives up at once, and B and C, no longer
    behind it, get the tokens at 3.5 and 5.18 (counted behind A, B's would come at 5.18).
    Then H (deadline 3.6) is refused at once: its token would come after C's.
    """
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates=QUEUE_40)
    for _ in range(6):
        assert budget.try_acquire_now("queue")
    got: dict[str, tuple[bool, float]] = {}

    async def ask(name: str, deadline: float) -> None:
        got[name] = (await budget.acquire("queue", deadline_at=deadline), clock.monotonic())

    async with anyio.create_task_group() as tg:
        for name, deadline in (("A", 3.0), ("B", 4.0), ("C", 6.0)):
            tg.start_soon(ask, name, deadline)
            await anyio.wait_all_tasks_blocked()
        assert got == {}
        budget.pause(3.5, reason="a test")
        await anyio.wait_all_tasks_blocked()
        assert got == {"A": (False, 0.0)}
        tg.start_soon(ask, "H", 3.6)
        await anyio.wait_all_tasks_blocked()
        assert got["H"] == (False, 0.0)
        while len(got) < 4:
            assert clock.advance_to_next()
            await anyio.wait_all_tasks_blocked()
    assert list(got) == ["A", "H", "B", "C"]
    assert got["B"][0]
    assert got["B"][1] == pytest.approx(3.5)
    assert got["C"][0]
    assert got["C"][1] == pytest.approx(3.5 + 57.0 / 34, abs=1e-6)


async def test_callers_without_deadlines_count_ahead_and_keep_the_order() -> None:
    """A caller without a deadline always counts; one with room keeps its place (FIFO)."""
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates=QUEUE_40)
    for _ in range(6):
        assert budget.try_acquire_now("queue")
    # None takes 1.73; the 2.0 caller cannot make it (3.46); the 4.0 one can (3.46).
    got = await _race(budget, clock, [None, 2.0, 4.0, None])
    assert got[1] == (False, 0.0)
    assert [got[i][0] for i in (0, 2, 3)] == [True, True, True]
    assert got[0][1] < got[2][1] < got[3][1]


async def test_under_a_pooled_limit_the_line_counts_the_pool() -> None:
    """RateLimits(pooled_per_minute=8): tokens come as the pool frees; the rest are refused
    at once, not when they reach the front."""
    limits = v.RateLimits(pooled_per_minute=8)
    clock = ManualClock()
    budget = LocalBudget(
        clock=clock,
        rates=endpoint_rates(limits),
        pool=pooled_rate(limits),
        pooled_endpoints=limits.pooled_endpoints,
    )
    # Six other audio calls (no limit of their own: polls would be spread) use six of the
    # pool's eight; they leave its window at 60.5.
    for _ in range(6):
        assert budget.try_acquire_now("complete")
    clock.advance(59.0)
    got = await _race(budget, clock, [59.0 + 5.0] * 20)
    granted = sorted(at for ok, at in got.values() if ok)
    refused = [i for i, (ok, at) in got.items() if not ok]
    # Two at once (the pool's last two), four as the pool frees at 60.5 (queue's own burst
    # of six), then queue's pace; the 9th token would come at 65.6.
    assert granted == pytest.approx([59.0] * 2 + [60.5] * 4 + [62.186, 63.871], abs=1e-3)
    assert refused == list(range(8, 20))
    assert all(got[i][1] == 59.0 for i in refused)


async def test_twenty_web_handlers_busy_ones_hear_it_at_once() -> None:
    """20 concurrent generate(timeout=5) at 40/min, on one virtual clock for the session and
    the fake: the 12 that cannot get a token in time are refused at clock time 0 with
    nothing sent; the 8 others are queued in time and get their audio."""
    clock = ManualClock()
    async with FakeServer(
        clock=clock,
        api_keys=[API_KEY],
        rate_limits={"queue": 40, "retrieve": 120},
        job_script=JobScript(duration=0.2),
    ) as fake:
        got: dict[int, object] = {}

        async def handler(session: v.AsyncSession, index: int) -> None:
            try:
                got[index] = await session.generate(MODEL, f"a cheerful jingle {index}", timeout=5)
            except v.QueueDeadlineExceeded as busy:
                got[index] = (busy, clock.monotonic())

        async with make_session(fake, clock=clock, retry=v.RetryPolicy(jitter=0.0)) as session:
            async with anyio.create_task_group() as tg:
                for index in range(20):
                    tg.start_soon(handler, session, index)
                with anyio.fail_after(10):  # real seconds: only a hang could take this long
                    while len(got) < 12:
                        await anyio.sleep(0.001)
                assert clock.monotonic() == 0.0
                busy = [o for o in got.values() if isinstance(o, tuple)]
                assert len(busy) == 12
                assert all(at == 0.0 and error.waited == 0.0 for error, at in busy)
                with anyio.fail_after(10):
                    while len(got) < 20:
                        clock.advance(0.05)
                        await anyio.sleep(0.001)
            audio = [o for o in got.values() if isinstance(o, v.AudioResult)]
            assert len(audio) == 8
            assert clock.monotonic() <= 5.0 + 0.05
            assert session.statistics().requests["queue"] == 8
    prompts = {r.body.get("prompt") for r in fake.requests_to("queue")}
    refused = {error.request.prompt for error, _ in busy}
    assert len(prompts) == 8
    assert not prompts & refused


async def test_a_burst_of_callers_plays_the_line_forward_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """500 callers with deadlines joining at once: the line is played forward once and
    kept (O(N) in all), not once per caller (O(N^2): 2.8 s of CPU for 1,000)."""
    plays = 0
    original = LocalBudget._what_if

    def counted(self: LocalBudget, state: EndpointRate, now: float) -> LinePlan:
        nonlocal plays
        plays += 1
        return original(self, state, now)

    monkeypatch.setattr(LocalBudget, "_what_if", counted)
    clock = ManualClock()
    budget = LocalBudget(clock=clock, rates=QUEUE_40)
    answers: list[bool] = []

    async def ask() -> None:
        answers.append(await budget.acquire("queue", deadline_at=600.0))

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        assert plays == 1
        assert answers.count(False) == 500 - 397  # 397 tokens fit in 600 s at 40/min
        tg.cancel_scope.cancel()
