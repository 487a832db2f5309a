"""Scheduling efficiency: how many polls, how late, how many 429s, against naive pollers.

The fake server runs in its own process, time-scaled, with the real per-minute limits (queue
40, retrieve 120 per virtual minute) and a realistic job mix (per-model lognormal run times,
``average_execution_time`` = the model's P80, see ``venice_audio_async.testing.JobMix``). For
each N, every variant gets a fresh server and the same N requests (hence the same run times):

* ``session``: this library's ``AsyncSession`` on its default settings (no limits given);
  the fake states its limits in ``x-ratelimit-*`` headers. With ``--hidden-limits`` it runs
  again against a fake that states none (``--no-state-limits``: whether the real audio
  routes send those headers is not known), in the rows ``session, limits hidden``;
* ``naive 2s``: one loop per job, retrieve every 2 s, on 429 sleep ``Retry-After`` (what
  typical clients do; no client-side retrieve limit);
* ``fair RR``: one round-robin loop over the jobs in flight, one retrieve every 60.5/120 s:
  the best a fixed-interval poller can do without 429s;
* ``oracle``: one retrieve per job exactly when it finishes (it knows the run times): the
  lower bound.

All variants queue through the same client-side queue budget (the library's ``LocalBudget``
at 40/min), so their submissions are paced alike and only the polling differs; all use one
aiohttp pool of 16 connections (the library's default) and release each job's media with
``complete`` after the download, as the session does.

Detection delay = virtual time the caller had the outcome (client clock) minus the job's real
finish (``queued_at + duration`` from the server's own record). Both processes read the same
``time.monotonic()`` through a ``ScaledClock`` of the same scale, so the two agree.

Run: ``python benchmarks/scheduling.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import attrs
from _common import API_KEY, AUTH, Stopwatch, fake_server, machine, percentile, table

import venice_audio_async as v
from venice_audio_async._core.config import RateLimit
from venice_audio_async._core.converters import unstructure_request
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async.testing import JobMix, ModelTiming, ScaledClock

#: The job mix: per-model mean run time (virtual s) and log-sd. Music models are slower and
#: spread more than sound effects.
MIX: dict[str, ModelTiming] = {
    "elevenlabs-music": ModelTiming(60.0, 0.20),
    "minimax-music-v2": ModelTiming(45.0, 0.20),
    "stable-audio-25": ModelTiming(30.0, 0.15),
    "mmaudio-v2-text-to-audio": ModelTiming(20.0, 0.15),
}
QUEUE_PER_MINUTE = 40
RETRIEVE_PER_MINUTE = 120
NAIVE_INTERVAL = 2.0
POOL = v.Limits()  # 16 connections: the library's default pool, used by every variant


@attrs.define
class Run:
    """What one variant did, client side."""

    variant: str
    t0: float = 0.0
    received: dict[str, float] = attrs.field(factory=dict)
    failed: int = 0
    cpu: float = 0.0
    wall: float = 0.0
    lags: list[float] = attrs.field(factory=list)


def build_requests(n: int) -> list[v.QueueRequest]:
    """N requests cycling through the mix's models (valid for each model's rules)."""
    models = list(MIX)
    out = []
    for i in range(n):
        model = models[i % len(models)]
        lyrics = "[Verse] la la la, benchmark line" if model == "minimax-music-v2" else None
        out.append(
            v.QueueRequest(model=model, prompt=f"benchmark track {i:05d}", lyrics_prompt=lyrics)
        )
    return out


# --------------------------------------------------------------------------- variants


async def run_session(url: str, requests: Sequence[v.QueueRequest], scale: float, run: Run) -> None:
    clock = ScaledClock(scale)
    # The session's own default limits: limits given explicitly would not be the defaults
    # a user meets (and a session may treat them as the user's word over the server's).
    async with v.AsyncSession(api_key=API_KEY, base_url=url, clock=clock, limits=POOL) as session:
        await session.models()
        run.t0 = clock.monotonic()

        async def one(request: v.QueueRequest) -> None:
            try:
                job = await session.submit_request(request)
            except v.VeniceError:
                run.failed += 1
                return
            outcome = await session.wait_outcome(job)
            run.received[job.queue_id] = clock.monotonic()
            if not isinstance(outcome, v.Succeeded):
                run.failed += 1

        await asyncio.gather(*(one(r) for r in requests))


class Baseline:
    """The plumbing the hand-written pollers share: pool, paced queue, raw retrieve."""

    def __init__(self, url: str, scale: float, run: Run) -> None:
        self.url = url
        self.clock = ScaledClock(scale)
        self.run = run
        self.queue_budget = LocalBudget(
            clock=self.clock, rates={"queue": RateLimit(per_minute=QUEUE_PER_MINUTE)}
        )
        connector = aiohttp.TCPConnector(
            limit=POOL.max_connections, limit_per_host=POOL.max_connections
        )
        self.http = aiohttp.ClientSession(connector=connector)

    async def aclose(self) -> None:
        await self.http.close()

    async def submit(self, body: dict[str, Any]) -> tuple[str, float]:
        """Queue within the shared queue budget; returns (queue_id, time of the answer)."""
        while True:
            await self.queue_budget.acquire("queue")
            async with self.http.post(f"{self.url}/audio/queue", json=body, headers=AUTH) as r:
                data = await r.json()
                await self.queue_budget.record_response("queue", r.status, r.headers)
                if r.status == 200:
                    return str(data["queue_id"]), self.clock.monotonic()
                if r.status != 429:
                    raise RuntimeError(f"queue answered {r.status}: {data}")

    async def retrieve(self, model: str, queue_id: str) -> tuple[str, float]:
        """One retrieve: ("audio" | "processing" | "429" | "error", Retry-After seconds)."""
        body = {"model": model, "queue_id": queue_id}
        async with self.http.post(f"{self.url}/audio/retrieve", json=body, headers=AUTH) as r:
            if r.status == 429:
                await r.read()
                return "429", float(r.headers.get("Retry-After", "1"))
            if r.status != 200:
                await r.read()
                return "error", 0.0
            if r.content_type == "application/json":
                await r.json()
                return "processing", 0.0
            await r.read()  # the audio (small here); a real client would stream it
            return "audio", 0.0

    async def finished(self, model: str, queue_id: str) -> None:
        """Record the moment the caller has the audio, then release the media."""
        self.run.received[queue_id] = self.clock.monotonic()
        body = {"model": model, "queue_id": queue_id}
        async with self.http.post(f"{self.url}/audio/complete", json=body, headers=AUTH) as r:
            await r.read()


async def run_naive(url: str, requests: Sequence[v.QueueRequest], scale: float, run: Run) -> None:
    base = Baseline(url, scale, run)
    clock = base.clock
    run.t0 = clock.monotonic()

    async def one(request: v.QueueRequest) -> None:
        queue_id, _ = await base.submit(unstructure_request(request))
        await clock.sleep(NAIVE_INTERVAL)
        while True:
            answer, retry_after = await base.retrieve(request.model, queue_id)
            if answer == "audio":
                await base.finished(request.model, queue_id)
                return
            if answer == "error":
                run.failed += 1
                return
            await clock.sleep(retry_after if answer == "429" else NAIVE_INTERVAL)

    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        await base.aclose()


async def run_fair(url: str, requests: Sequence[v.QueueRequest], scale: float, run: Run) -> None:
    base = Baseline(url, scale, run)
    clock = base.clock
    interval = RateLimit(per_minute=RETRIEVE_PER_MINUTE).interval  # 60.5 s / 120
    in_flight: collections.deque[tuple[str, str]] = collections.deque()
    arrived = asyncio.Event()
    remaining = len(requests)
    run.t0 = clock.monotonic()

    async def submit(request: v.QueueRequest) -> None:
        queue_id, _ = await base.submit(unstructure_request(request))
        in_flight.append((request.model, queue_id))
        arrived.set()

    async def poll(model: str, queue_id: str) -> float:
        nonlocal remaining
        answer, retry_after = await base.retrieve(model, queue_id)
        if answer in ("processing", "429"):
            in_flight.append((model, queue_id))
        else:
            remaining -= 1
            if answer == "audio":
                await base.finished(model, queue_id)
            else:
                run.failed += 1
        arrived.set()  # wakes the poller: a job is back in the round, or all are done
        return retry_after

    async def poller() -> None:
        tasks: set[asyncio.Task[float]] = set()
        next_at = clock.monotonic()
        while remaining > 0:
            if not in_flight:
                arrived.clear()
                await arrived.wait()
                next_at = max(next_at, clock.monotonic())
                continue
            await clock.sleep(next_at - clock.monotonic())
            if not in_flight:
                continue
            model, queue_id = in_flight.popleft()
            task = asyncio.ensure_future(poll(model, queue_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        await asyncio.gather(*tasks)

    try:
        await asyncio.gather(poller(), *(submit(r) for r in requests))
    finally:
        await base.aclose()


async def run_oracle(
    url: str, requests: Sequence[v.QueueRequest], scale: float, run: Run, mix: JobMix
) -> None:
    base = Baseline(url, scale, run)
    clock = base.clock
    run.t0 = clock.monotonic()

    async def one(request: v.QueueRequest) -> None:
        body = unstructure_request(request)
        queue_id, answered = await base.submit(body)
        # The job was queued before its answer arrived, so it is done by answered + duration.
        await clock.sleep(answered + mix.duration_for(body) - clock.monotonic())
        while True:
            answer, retry_after = await base.retrieve(request.model, queue_id)
            if answer == "audio":
                await base.finished(request.model, queue_id)
                return
            if answer == "error":
                run.failed += 1
                return
            await clock.sleep(retry_after if answer == "429" else 0.05)

    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        await base.aclose()


# --------------------------------------------------------------------------- harness


async def _lag_monitor(lags: list[float], period: float = 0.005) -> None:
    """Record how late a short sleep wakes up: the event loop's responsiveness."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(period)
        lags.append(time.perf_counter() - start - period)


async def measure(
    variant: str,
    body: Callable[[str, Run], Awaitable[None]],
    server_options: Sequence[str],
) -> tuple[Run, dict[str, Any]]:
    run = Run(variant)
    async with fake_server(*server_options, record=True) as fake:
        monitor = asyncio.ensure_future(_lag_monitor(run.lags))
        watch = Stopwatch()
        cpu = time.process_time()
        try:
            await body(fake.url, run)
        finally:
            run.cpu = time.process_time() - cpu
            run.wall = watch()
            monitor.cancel()
    assert fake.data is not None
    return run, fake.data


def summarise(run: Run, record: dict[str, Any], n: int, scale: float) -> list[object]:
    jobs = {job["queue_id"]: job for job in record["jobs"]}
    requests = record["requests"]
    retrieves = sum(1 for r in requests if r["endpoint"] == "retrieve")
    r429 = sum(1 for r in requests if r["endpoint"] == "retrieve" and r["status"] == 429)
    q429 = sum(1 for r in requests if r["endpoint"] == "queue" and r["status"] == 429)
    delays = [t - jobs[qid]["finishes_at"] for qid, t in run.received.items()]
    makespan = max(run.received.values()) - run.t0 if run.received else float("nan")
    lag_p99 = percentile(run.lags, 0.99) / scale
    return [
        run.variant,
        n,
        retrieves / n,
        r429,
        q429,
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        max(delays, default=float("nan")),
        makespan,
        len(run.received) - run.failed,
        run.cpu,
        lag_p99,
    ]


HEADERS = [
    "variant",
    "N",
    "retrieve/job",
    "429 retrieve",
    "429 queue",
    "delay p50 (s)",
    "delay p95 (s)",
    "delay max (s)",
    "makespan (s)",
    "ok",
    "client CPU (s)",
    "loop lag p99 (s)",
]


async def main_async(args: argparse.Namespace) -> int:
    mix_timings = {
        model: ModelTiming(t.mean, args.spread if args.spread is not None else t.sigma)
        for model, t in MIX.items()
    }
    mix = JobMix(mix_timings, seed=args.seed)
    server_options = [
        "--time-scale",
        str(args.scale),
        "--rate-limit",
        f"queue={QUEUE_PER_MINUTE}",
        "--rate-limit",
        f"retrieve={RETRIEVE_PER_MINUTE}",
        "--api-key",
        API_KEY,
        "--seed",
        str(args.seed),
    ]
    for model, timing in mix_timings.items():
        server_options += ["--job-mix", f"{model}={timing.mean}:{timing.sigma}"]

    print(f"# Scheduling efficiency  ({machine()})")
    print(
        f"time scale {args.scale} (1 virtual s = {args.scale * 1000:g} real ms), "
        f"limits queue {QUEUE_PER_MINUTE}/min retrieve {RETRIEVE_PER_MINUTE}/min, seed {args.seed}"
    )
    hidden_rows = " (rows 'session, limits hidden': stated nowhere)" if args.hidden_limits else ""
    print(f"the fake states its limits in x-ratelimit-* headers{hidden_rows}")
    print(
        "job mix (mean s / log-sd / reported P80 s): "
        + ", ".join(f"{m} {t.mean:g}/{t.sigma:g}/{t.p80:.1f}" for m, t in mix_timings.items())
    )
    print("times in virtual seconds; delay = caller has the audio - job really finished\n")
    total = Stopwatch()
    rows: list[list[object]] = []
    variants: dict[str, Callable[[Sequence[v.QueueRequest]], Callable[[str, Run], Awaitable[None]]]]
    variants = {
        "session": lambda reqs: lambda url, run: run_session(url, reqs, args.scale, run),
        "naive 2s": lambda reqs: lambda url, run: run_naive(url, reqs, args.scale, run),
        "fair RR": lambda reqs: lambda url, run: run_fair(url, reqs, args.scale, run),
        "oracle": lambda reqs: lambda url, run: run_oracle(url, reqs, args.scale, run, mix),
    }
    for n in args.sizes:
        requests = build_requests(n)
        runs = [(name, name, server_options) for name in args.variants]
        if args.hidden_limits:
            hidden = [*server_options, "--no-state-limits"]
            runs.append(("session", "session, limits hidden", hidden))
        for kind, name, options in runs:
            run, record = await measure(name, variants[kind](requests), options)
            durations = {j["queue_id"]: j["duration"] for j in record["jobs"]}
            expected = sorted(mix.duration_for(unstructure_request(r)) for r in requests)
            if sorted(durations.values()) != expected:
                print(f"warning: {name} N={n} ran different run times", file=sys.stderr)
            row = summarise(run, record, n, args.scale)
            rows.append(row)
            print(
                f"  done {name:9} N={n:<5} in {run.wall:6.1f} s real", file=sys.stderr, flush=True
            )
    print(table(HEADERS, rows))
    print(f"\ntotal real time {total():.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N=20 at scale 0.01")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--scale", type=float, default=0.02, help="real seconds per virtual second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spread", type=float, default=None, help="override every model's log-sd")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["session", "naive 2s", "fair RR", "oracle"],
        choices=["session", "naive 2s", "fair RR", "oracle"],
    )
    parser.add_argument(
        "--hidden-limits",
        action="store_true",
        help="also run the session against a fake that hides its limits (--no-state-limits)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [20]
        args.scale = 0.01
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
