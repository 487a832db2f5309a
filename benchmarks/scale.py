"""Scale: memory per in-flight job, and the scheduler's cost per decision as jobs pile up.

1. **Memory per tracked job.** An ``AsyncSession`` on a ``ManualClock`` (time never moves,
   so nothing is ever polled and no server is needed) tracks N jobs; the growth of traced
   Python memory (``tracemalloc``), and separately of the process's RSS, divided by N.
   Two paths: ``attach`` (public; a ``Job`` with no request) and ``submit`` (what
   ``submit_request`` keeps after the queue answer: the ``Job`` with its ``QueueRequest``
   and a per-job sink factory; driven through the same private call ``submit_request``
   makes, since no server is involved).
2. **Cost per decision.** The real scheduler loop with a stub client that answers at once
   (no network) on a ``ManualClock``: N long jobs come due together (at ``max_interval``)
   and are each polled and rescheduled; wall time / N is the cost of one decision (pop,
   budget, price check, poll task, parse, belief, push). Flat across N means no scan of
   every job per tick.
3. **Cost per completion with N waiting jobs of the same model.** 200 short jobs finish one
   after another (run times spread, so the model's fitted timing moves) while N long jobs
   of the same model wait; extra wall time per completion relative to N = 0, and the heap
   size afterwards. A completion refits the model (from its finished jobs and at most 64
   running ones) and, when the fit moved, re-keys jobs in slices of 128 per loop pass, so
   this part shows whether that grows with N.

Run: ``python benchmarks/scale.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from _common import Stopwatch, machine, table

import venice_audio_async as v
from venice_audio_async._core.audio import Destinations, MemorySink
from venice_audio_async._polling.estimator import DurationEstimator, PollingBounds
from venice_audio_async._polling.scheduler import Scheduler
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import Retrier
from venice_audio_async.testing import ManualClock
from venice_audio_async.types import (
    CompleteRequest,
    CompleteResult,
    Processing,
    RetrieveRequest,
    VeniceHeaders,
)

MODEL = "elevenlabs-music"


def rss_bytes() -> int:
    """Resident set size of this process (Linux), or 0 when unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- 1. memory


async def _track(session: v.AsyncSession, n: int, path: str) -> None:
    if path == "attach":
        for _ in range(n):
            session.attach(MODEL, str(uuid.uuid4()))
        return
    for i in range(n):
        request = v.QueueRequest(model=MODEL, prompt=f"a calm piano piece, take {i:06d}")
        job = v.Job(model=MODEL, queue_id=str(uuid.uuid4()), request=request)
        # What submit_request does once the queue answer is in (no server here).
        stem = Destinations.stem(request.prompt, job.queue_id)
        session._scheduler.track(job, session._parts.destinations.sinks(None, stem), elapsed=0.0)


async def memory_per_job(n: int, path: str, *, traced: bool) -> float:
    """Bytes per tracked job: traced Python memory, or RSS."""
    clock = ManualClock()
    session = v.AsyncSession(
        api_key="bench", base_url="http://127.0.0.1:9/api/v1", clock=clock, validate=False
    )
    async with session:
        # Attached jobs are polled at once: hold the budget so nothing is sent (port 9).
        session._parts.budget.pause(1e9, reason="benchmark")  # type: ignore[attr-defined]
        await settle()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
        await _track(session, n, path)
        await settle()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
        assert session.statistics().jobs_in_flight == n
        assert session._scheduler.counts().polls == 0  # nothing was polled
    return (after - before) / n


# --------------------------------------------------------------------------- 2./3. the loop


_LONGEST_PASS = [0.0]


async def settle() -> None:
    """Return once every other task waits on something (anyio's ``wait_all_tasks_blocked``
    does the same check but sleeps 0.1 s whenever one is runnable, which would dominate).

    Also records the longest single event-loop pass seen (``_LONGEST_PASS``): how long any
    other task could have been kept waiting, i.e. the stall a user would notice.
    """
    me = asyncio.current_task()
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0)
        now = time.perf_counter()
        _LONGEST_PASS[0] = max(_LONGEST_PASS[0], now - last)
        last = now
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not me and (waiter is None or waiter.done()):
                break
        else:
            return


class StubClient:
    """Answers ``retrieve`` at once from a table of run times on the manual clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.queued_at: dict[str, float] = {}
        self.duration: dict[str, float] = {}
        self.hint: dict[str, float] = {}
        self.retrieves = 0

    def add(self, duration: float, hint: float) -> v.Job:
        queue_id = str(uuid.uuid4())
        self.queued_at[queue_id] = self.clock.monotonic()
        self.duration[queue_id] = duration
        self.hint[queue_id] = hint
        return v.Job(model=MODEL, queue_id=queue_id)

    async def retrieve(self, request: RetrieveRequest, *, sink: Any) -> Any:
        self.retrieves += 1
        queue_id = request.queue_id
        elapsed = self.clock.monotonic() - self.queued_at[queue_id]
        if elapsed < self.duration[queue_id]:
            return Processing(
                average_execution_time=self.hint[queue_id], execution_duration=elapsed
            )
        return v.AudioResult(
            content_type="audio/mpeg",
            format="mp3",
            size=3,
            data=b"abc",
            venice=VeniceHeaders(inference_time=self.duration[queue_id]),
        )

    async def complete(self, request: CompleteRequest) -> CompleteResult:
        return CompleteResult(success=True)


def make_scheduler(clock: ManualClock, client: StubClient) -> Scheduler:
    budget = LocalBudget(clock=clock, rates={})
    return Scheduler(
        client=client,  # type: ignore[arg-type]
        budget=budget,
        estimator=DurationEstimator(bounds=PollingBounds()),
        clock=clock,
        retrier=Retrier(acquire=budget.acquire, policy=v.RetryPolicy(), clock=clock),
        limiter=RequestLimiter(1_000_000),
        release="keep",
    )


def _sink() -> MemorySink:
    return MemorySink(1 << 20)


async def decision_cost(n: int, short: int) -> tuple[float, float, float, int, int]:
    """(us per decision for N jobs due at once, us per completion, longest step in ms,
    heap size, heap pushes while the short jobs finish).

    ``short`` jobs with spread run times finish while the N long ones wait.
    """
    clock = ManualClock()
    client = StubClient(clock)
    scheduler = make_scheduler(clock, client)
    # The model's estimate is known (as after its first answer), so no job waits on a probe.
    scheduler._fits.estimator.observe_hint(MODEL, 23.0)
    rng = random.Random(5)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        for _ in range(n):
            scheduler.track(client.add(duration=1e9, hint=1.2e9), _sink, elapsed=0.0)
        await settle()
        # Phase A: the long jobs come due together (at max_interval); one decision each,
        # plus the checks of the jobs keyed at the 30 s horizon on the way there.
        watch = Stopwatch()
        while client.retrieves < n:
            assert clock.advance_to_next()
            await settle()
        first_round = watch()
        assert client.retrieves == n, client.retrieves
        # Phase B: short jobs with spread run times finish one after another while the N
        # long ones wait; each completion refits the model (and may re-key its jobs).
        short_jobs = [
            client.add(duration=20.0 * math.exp(0.2 * rng.gauss(0, 1)), hint=23.0)
            for _ in range(short)
        ]
        # The model's estimate is what the short jobs report (the long ones' polls left
        # their outlier estimate as the model's latest, which would price the short jobs'
        # first poll at max_interval and stretch this phase to 300 s).
        scheduler._fits.estimator.observe_hint(MODEL, 23.0)
        for job in short_jobs:
            scheduler.track(job, _sink, elapsed=0.0)
        await settle()
        pushes_before = scheduler._heap.pushes
        watch = Stopwatch()
        _LONGEST_PASS[0] = 0.0
        while scheduler._counts["succeeded"] < short:
            assert clock.advance_to_next()
            await settle()
        longest = _LONGEST_PASS[0]
        completions = watch()
        pushes = scheduler._heap.pushes - pushes_before
        heap = len(scheduler._heap)
        tg.cancel_scope.cancel()
    per_decision = first_round / max(1, n) * 1e6
    return per_decision, completions / max(1, short) * 1e6, longest * 1e3, heap, pushes


async def main_async(args: argparse.Namespace) -> int:
    print(f"# Scale  ({machine()})\n")
    total = Stopwatch()

    rows: list[list[object]] = []
    for n in args.jobs:
        for path in ("attach", "submit"):
            # A fresh process each, so that memory freed by an earlier measurement is not
            # reused (which would hide RSS growth); RSS first, then traced (tracemalloc's
            # own bookkeeping inflates RSS).
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                path,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await child.communicate()
            traced, rss = (float(x) for x in out.split())
            rows.append([n, path, traced, rss])
            print(f"  memory N={n} {path}", file=sys.stderr, flush=True)
    print("## Memory per in-flight job\n")
    print(table(["tracked jobs", "path", "traced bytes/job", "RSS bytes/job"], rows))

    rows = []
    baseline_completion = None
    for n in args.decisions:
        decision, completion, longest, heap, pushes = await decision_cost(n, args.short)
        if baseline_completion is None:
            baseline_completion = completion
        extra = completion - baseline_completion
        rows.append([n, decision, completion, extra, longest, pushes, heap])
        print(f"  decisions N={n}", file=sys.stderr, flush=True)
    print(f"\n## Scheduler cost ({args.short} short jobs finish while N long jobs wait)\n")
    print(
        table(
            [
                "waiting jobs N",
                "us/decision (N due at once)",
                "us/completion",
                "extra us/completion vs N=0",
                "longest event-loop pass (ms)",
                "heap pushes while they finish",
                "heap size after",
            ],
            rows,
        )
    )
    print(f"\ntotal real time {total():.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small N")
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--decisions", type=int, nargs="+", default=[0, 1_000, 10_000, 100_000])
    parser.add_argument("--short", type=int, default=200, help="jobs that finish in part 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.decisions, args.short = [1_000], [0, 1_000], 50
    return args


async def memory_child(n: int, path: str) -> None:
    rss = await memory_per_job(n, path, traced=False)
    gc.collect()
    tracemalloc.start()
    traced = await memory_per_job(n, path, traced=True)
    tracemalloc.stop()
    print(traced, rss)


if __name__ == "__main__":
    logging.getLogger("venice_audio_async").setLevel(logging.ERROR)  # "unfinished jobs" notes
    if sys.argv[1:2] == ["--memory-child"]:
        asyncio.run(memory_child(int(sys.argv[2]), sys.argv[3]))
        sys.exit(0)
    sys.exit(asyncio.run(main_async(parse_args())))
