"""Latency under the limits users meet: one process, several processes on one key, other limits.

The measuring instrument of the rate-limit work (targets below). Every run starts a fresh
fake server in its own process (``python -m venice_audio_async.testing``), time-scaled, with
jobs of ~20 virtual seconds (``--job-mix stable-audio-25=20:0.15``, drawn from the run's
seed) and the fake's error budget counting 429s (more than 20 failures in 30 s lock every
route for 30 s). Worker processes (``python -m tests.redis_worker jobs --default-limits``:
sessions on their own default limits, told nothing) each submit their jobs at the same
moment and wait for them. Scenarios:

1. ``1x36 reference``: 1 process x 36 jobs, the limits the session assumes (queue 40 /
   retrieve 120 per minute), stated in ``x-ratelimit-*`` headers;
2. ``3x12 Redis``: 3 processes x 12 jobs on the same server, sharing one ``RedisBudget``;
3. ``3x12 no Redis``: the same, each process its own ``LocalBudget`` (3 web workers, one key);
   ``3x12 no Redis, share 1/3``: the same, each keeping its polls to a third of the retrieve
   limit (``PollingBounds(retrieve_share=0.333)``, what docs/processes.md advises);
4. ``pooled 60``: 1 x 12, one limit of 60/min over every audio endpoint, stated nowhere
   neither in headers nor at ``GET /api_keys/rate_limits``
   (``--pooled-rate-limit 60 --no-state-limits --no-key-limits``): the session assumes the
   documented 60/min;
5. ``pooled 30``: the same at 30/min (too tight for 12 jobs: it must draw 429s);
6. ``outside half``: 1 x 12 on the reference limits, while an outside client on the same key
   spends half of each window (``--outside-load queue=20 --outside-load retrieve=60``).

Each scenario runs once per seed (``--seeds``, default 5); the table shows the median over
seeds of each figure (``delivered``: the worst seed). Figures, virtual seconds:

* **delay** p50 / p95 / max: from a job's real end on the fake's clock (its ``finishes_at``)
  to its audio in the caller's hands (the worker's clock; both are ``ScaledClock`` readings of
  the same ``time.monotonic()``, so they agree);
* **429s**: rate-limit answers the server sent (lockout answers not counted); **lockouts**:
  error-budget lockouts the server entered (also those an outside client's 429s caused);
* **stall**: the longest time with nothing sent while work was due. Work is due from the
  start until the last ``queue`` request (a submit is waiting), and for each job from its
  ``finishes_at`` until the ``retrieve`` that handed its audio over (the job's last 200
  retrieve; a job never handed over stays due to the end). For each gap between consecutive
  requests the server received (all processes together, the start counting as one), the
  stall is the part of the gap in which work was due, minus the part spent in a lockout,
  minus the spacing the limit itself requires for the work due (60 / the per-minute limit
  left to the client: the queue limit while only a submit is due, the retrieve limit once a
  job is due, the pooled limit under a pooled one); the figure is the longest. Waits for a
  ``Retry-After`` are stall, by design: the target allows the server's Retry-After + 2 s,
  and the **Retry-After** column is the longest the server asked for in the run;
* **real time**: wall-clock seconds of the run (fake and workers started to results read).

A second table checks the targets on those medians (met / missed). The 3x12 Redis
target is relative to this run's 1x36 reference.

Run: ``python benchmarks/multiprocess.py`` (about 6 minutes; ``--quick``: 1 seed, fewer jobs,
under a minute). Needs ``redis-server`` on PATH and the ``redis`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from _common import API_KEY, ROOT, fake_server, machine, percentile, table

# The test helpers this benchmark drives (the Redis server and the worker processes). They
# may move: this is the one place that names them.
sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer, missing_redis
from tests.redis_worker import run_workers

JOB_MEAN = 20.0  # virtual seconds a job runs, on average
JOB_SIGMA = 0.15
MODEL = "stable-audio-25"  # the model tests.redis_worker submits
REFERENCE = ["--rate-limit", "queue=40", "--rate-limit", "retrieve=120"]


@attrs.frozen
class Scenario:
    """One row: who runs how many jobs against which server, and the spacing its limit needs."""

    name: str
    processes: int
    jobs: int  # per process
    quick_jobs: int
    server: tuple[str, ...]
    queue_spacing: float  # 60 / the queue limit left to the client (virtual s)
    retrieve_spacing: float
    redis: bool = False
    worker: tuple[str, ...] = ()  # more options of each worker process


SCENARIOS = [
    Scenario("1x36 reference", 1, 36, 12, tuple(REFERENCE), 60 / 40, 60 / 120),
    Scenario("3x12 Redis", 3, 12, 4, tuple(REFERENCE), 60 / 40, 60 / 120, redis=True),
    Scenario("3x12 no Redis", 3, 12, 4, tuple(REFERENCE), 60 / 40, 60 / 120),
    Scenario(
        "3x12 no Redis, share 1/3",
        3,
        12,
        4,
        tuple(REFERENCE),
        60 / 40,
        60 / 120,
        worker=("--retrieve-share", "0.333"),
    ),
    Scenario(
        "pooled 60",
        1,
        12,
        6,
        ("--pooled-rate-limit", "60", "--no-state-limits", "--no-key-limits"),
        60 / 60,
        60 / 60,
    ),
    Scenario(
        "pooled 30",
        1,
        12,
        6,
        ("--pooled-rate-limit", "30", "--no-state-limits", "--no-key-limits"),
        60 / 30,
        60 / 30,
    ),
    Scenario(
        "outside half",
        1,
        12,
        6,
        (*REFERENCE, "--outside-load", "queue=20", "--outside-load", "retrieve=60"),
        60 / (40 - 20),
        60 / (120 - 60),
    ),
]

HEADERS = [
    "scenario",
    "delay p50 (s)",
    "delay p95 (s)",
    "delay max (s)",
    "429s",
    "lockouts",
    "delivered",
    "stall (s)",
    "Retry-After max (s)",
    "real time (s)",
]


@attrs.define
class Figures:
    """What one run of one scenario measured."""

    p50: float
    p95: float
    max: float
    refused: int
    lockouts: int
    delivered: int
    jobs: int
    stall: float
    retry_after: float
    wall: float


def stall(
    requests: Sequence[dict[str, Any]],
    jobs: Sequence[dict[str, Any]],
    start: float,
    lockouts: Sequence[Sequence[float]],
    scenario: Scenario,
) -> float:
    """The longest time with nothing sent while work was due (see the module docstring)."""
    times = sorted(r["time"] for r in requests)
    if not times:
        return math.nan
    end = times[-1]
    due: list[tuple[float, float, float]] = []  # (from, until, spacing the limit needs)
    queues = [r["time"] for r in requests if r["endpoint"] == "queue"]
    if queues:
        due.append((start, max(queues), scenario.queue_spacing))
    handed: dict[str, float] = {}
    for r in requests:
        if r["endpoint"] == "retrieve" and r["status"] == 200 and r["queue_id"]:
            handed[r["queue_id"]] = max(handed.get(r["queue_id"], -math.inf), r["time"])
    for job in jobs:
        until = handed.get(job["queue_id"], end)
        due.append((job["finishes_at"], until, scenario.retrieve_spacing))
    longest = 0.0
    for before, after in zip([start, *times], times, strict=False):
        if after <= before:
            continue
        # No due interval ends inside a gap (each ends at a request), so once work is due
        # in a gap it stays due until the gap's end.
        pending = [(a, s) for a, b, s in due if a < after and b >= after]
        if not pending:
            continue
        since = max(before, min(a for a, _ in pending))
        locked = sum(max(0.0, min(after, u) - max(since, s)) for s, u in lockouts)
        spacing = min(s for _, s in pending)
        longest = max(longest, after - since - locked - spacing)
    return longest


async def run_once(scenario: Scenario, seed: int, args: argparse.Namespace) -> Figures:
    """One fresh server (and Redis), the scenario's workers, their figures."""
    jobs = scenario.quick_jobs if args.quick else scenario.jobs
    server_options = [
        "--time-scale", str(args.scale),
        "--job-mix", f"{MODEL}={JOB_MEAN}:{JOB_SIGMA}",
        "--seed", str(seed),
        "--error-budget", "20:30",
        "--error-budget-counts-429",
        "--api-key", API_KEY,
        *scenario.server,
    ]  # fmt: skip
    started = time.perf_counter()
    redis = RedisServer() if scenario.redis else None
    try:
        if redis is not None:
            redis.start()  # a fresh one per run: no window left over from the last run
        async with fake_server(*server_options, record=True) as fake:
            argv = ["jobs", "--api", fake.url, "--api-key", API_KEY, "--jobs", str(jobs)]
            argv += ["--processes", str(scenario.processes), "--scale", str(args.scale)]
            argv += ["--default-limits", *scenario.worker]
            if redis is not None:
                argv += ["--redis", redis.url]
            results = await run_workers(
                [[*argv, "--label", f"s{seed}-w{i}"] for i in range(scenario.processes)],
                timeout=args.timeout,
            )
    finally:
        if redis is not None:
            redis.close()
    wall = time.perf_counter() - started
    assert fake.data is not None
    requests: list[dict[str, Any]] = fake.data["requests"]
    record_jobs: list[dict[str, Any]] = fake.data["jobs"]
    lockouts: list[list[float]] = fake.data["lockouts"]
    finished = {job["queue_id"]: job["finishes_at"] for job in record_jobs}
    received = {qid: t for result in results for qid, t in result["received"].items()}
    delays = [t - finished[qid] for qid, t in received.items()]
    refused = [
        r for r in requests if r["status"] == 429 and "error_budget" not in (r["fault"] or "")
    ]
    errors = sorted({e for result in results for e in result["errors"]})
    if errors:
        print(f"  {scenario.name} seed {seed}: errors: {', '.join(errors)}", file=sys.stderr)
    return Figures(
        p50=percentile(delays, 0.5),
        p95=percentile(delays, 0.95),
        max=max(delays, default=math.nan),
        refused=len(refused),
        lockouts=len(lockouts),
        delivered=len(received),
        jobs=jobs * scenario.processes,
        stall=stall(requests, record_jobs, min(r["started"] for r in results), lockouts, scenario),
        retry_after=max((r["retry_after"] or 0.0 for r in requests), default=0.0),
        wall=wall,
    )


def median(runs: Sequence[Figures], field: Callable[[Figures], float]) -> float:
    values = [field(run) for run in runs if not math.isnan(field(run))]
    return statistics.median(values) if values else math.nan


@attrs.frozen
class Summary:
    """The medians over seeds of one scenario (``delivered``: the worst seed)."""

    p50: float
    p95: float
    max: float
    refused: float
    lockouts: float
    delivered: int
    jobs: int
    stall: float
    retry_after: float
    wall: float

    @classmethod
    def of(cls, runs: Sequence[Figures]) -> Summary:
        return cls(
            p50=median(runs, lambda r: r.p50),
            p95=median(runs, lambda r: r.p95),
            max=median(runs, lambda r: r.max),
            refused=median(runs, lambda r: r.refused),
            lockouts=median(runs, lambda r: r.lockouts),
            delivered=min(r.delivered for r in runs),
            jobs=runs[0].jobs,
            stall=median(runs, lambda r: r.stall),
            retry_after=median(runs, lambda r: r.retry_after),
            wall=median(runs, lambda r: r.wall),
        )

    def row(self, name: str) -> list[object]:
        return [
            name,
            self.p50,
            self.p95,
            self.max,
            self.refused,
            self.lockouts,
            f"{self.delivered} / {self.jobs}",
            self.stall,
            self.retry_after,
            self.wall,
        ]


def _check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets(summaries: dict[str, Summary]) -> list[list[object]]:
    """The rate-limit work's targets, each with the figure it is checked on."""
    rows: list[list[object]] = []

    def add(name: str, target: str, figure: str, ok: bool) -> None:
        rows.append([name, target, figure, _check(ok)])

    reference = summaries.get("1x36 reference")
    for name, s in summaries.items():
        if name == "1x36 reference":
            add(name, "p50 about 1.0 s (<= 1.2)", f"{s.p50:.2f}", s.p50 <= 1.2)
            add(name, "p95 about 3.9 s (<= 4.7)", f"{s.p95:.2f}", s.p95 <= 4.7)
        if name == "3x12 Redis" and reference is not None:
            add(name, "p50 <= 1.5 x reference", f"{s.p50:.2f} / {reference.p50:.2f}",
                s.p50 <= 1.5 * reference.p50)  # fmt: skip
            add(name, "p95 <= 1.5 x reference", f"{s.p95:.2f} / {reference.p95:.2f}",
                s.p95 <= 1.5 * reference.p95)  # fmt: skip
            add(name, "0 x 429", f"{s.refused:g}", s.refused == 0)
        if name.startswith("3x12 no Redis"):
            add(name, "<= 10 x 429", f"{s.refused:g}", s.refused <= 10)
            add(name, "p50 <= 5 s", f"{s.p50:.2f}", s.p50 <= 5)
            add(name, "p95 <= 15 s", f"{s.p95:.2f}", s.p95 <= 15)
        if name.startswith("pooled"):
            add(name, "all delivered", f"{s.delivered} / {s.jobs}", s.delivered == s.jobs)
            add(name, "<= 3 x 429", f"{s.refused:g}", s.refused <= 3)
            add(name, "no lockout", f"{s.lockouts:g}", s.lockouts == 0)
        if name == "pooled 60":
            add(name, "p50 <= 3 s", f"{s.p50:.2f}", s.p50 <= 3)
            add(name, "p95 <= 8 s", f"{s.p95:.2f}", s.p95 <= 8)
        if name == "pooled 30":
            add(name, ">= 1 x 429 (the scenario bites)", f"{s.refused:g}", s.refused >= 1)
        add(name, "stall <= Retry-After + 2 s", f"{s.stall:.1f} / {s.retry_after:g} + 2",
            s.stall <= s.retry_after + 2)  # fmt: skip
    return rows


async def main_async(args: argparse.Namespace) -> int:
    reason = missing_redis()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    chosen = [s for s in SCENARIOS if args.scenarios is None or s.name in args.scenarios]
    print(f"# Latency under the limits users meet  ({machine()})")
    print(
        f"jobs of ~{JOB_MEAN:g} s (log-sd {JOB_SIGMA:g}); fake error budget 20 failures in "
        f"30 s, 429s count; time scale {args.scale} (1 virtual s = {args.scale * 1000:g} real "
        f"ms); seeds {', '.join(map(str, args.seeds))}; medians over seeds (delivered: worst "
        f"seed); sessions on their default limits; times in virtual seconds\n"
    )
    begun = time.perf_counter()
    summaries: dict[str, Summary] = {}
    for scenario in chosen:
        runs = []
        for seed in args.seeds:
            runs.append(await run_once(scenario, seed, args))
            print(
                f"  done {scenario.name} seed {seed} in {runs[-1].wall:.1f} s real",
                file=sys.stderr,
                flush=True,
            )
        summaries[scenario.name] = Summary.of(runs)
    print(table(HEADERS, [s.row(name) for name, s in summaries.items()]))
    print()
    print(table(["scenario", "target", "figure", "status"], targets(summaries)))
    print(f"\ntotal real time {time.perf_counter() - begun:.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, fewer jobs, scale 0.05"
    )
    parser.add_argument("--seeds", type=int, default=5, help="runs per scenario (seeds 1..N)")
    parser.add_argument("--scale", type=float, default=0.1, help="real seconds per virtual s")
    parser.add_argument("--timeout", type=float, default=600.0, help="real seconds per run")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        choices=[s.name for s in SCENARIOS],
        metavar="NAME",
        help="only these scenarios (quoted names, e.g. 'pooled 60')",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.quick:
        args.seeds, args.scale = 1, min(args.scale, 0.05)
    args.seeds = list(range(1, args.seeds + 1))
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
