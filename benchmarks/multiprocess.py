"""Many processes, one API key: a shared RedisBudget against independent local budgets.

One fake server process (``python -m venice_audio_async.testing``) with the real per-minute
limits (queue 40, retrieve 120), time-scaled, and the failed-request lockout counting 429s
(more than 20 failures in 30 s lock the key for 30 s). ``--workers`` worker processes
(``python -m tests.redis_worker jobs``) each generate ``--jobs`` jobs on the same key, all
started at the same moment:

* **redis**: every worker's session uses ``RedisBudget`` on one local ``redis-server``;
* **local**: every worker's session has its own ``LocalBudget`` (each spends the whole limit),
  which is what several processes on one key do without a shared budget.

Columns: the server's 429s (of them, lockout answers), jobs delivered, the delay from a job's
real end to its audio in the caller's hands (virtual seconds, p50 / p95), retrieve requests
per job, Redis round trips per grant, and the real time of the run.

Run: ``python benchmarks/multiprocess.py`` (``--quick`` for a smoke run). Needs
``redis-server`` on PATH and the ``redis`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from _common import API_KEY, ROOT, fake_server, machine, percentile, table

sys.path.insert(0, str(ROOT))
from tests.redis_server import RedisServer, missing_redis
from tests.redis_worker import run_workers

HEADERS = [
    "budget",
    "429s",
    "lockout 429s",
    "delivered",
    "delay p50 (s)",
    "delay p95 (s)",
    "retrieves / job",
    "Redis round trips / grant",
    "real time (s)",
]


async def run_variant(name: str, args: argparse.Namespace, redis_url: str) -> list[object]:
    server_options = [
        "--time-scale", str(args.scale),
        "--rate-limit", "queue=40",
        "--rate-limit", "retrieve=120",
        "--error-budget", "20:30",
        "--error-budget-counts-429",
        "--api-key", API_KEY,
        "--job-duration", str(args.job_duration),
    ]  # fmt: skip
    started = time.perf_counter()
    async with fake_server(*server_options, record=True) as fake:
        argv = ["jobs", "--api", fake.url, "--api-key", API_KEY, "--jobs", str(args.jobs)]
        argv += ["--processes", str(args.workers), "--scale", str(args.scale)]
        if name == "redis":
            argv += ["--redis", redis_url]
        results = await run_workers(
            [[*argv, "--label", f"{name}-{i}"] for i in range(args.workers)],
            timeout=args.timeout,
        )
    wall = time.perf_counter() - started
    assert fake.data is not None
    requests: list[dict[str, Any]] = fake.data["requests"]
    finished = {job["queue_id"]: job["finishes_at"] for job in fake.data["jobs"]}
    received = {qid: t for result in results for qid, t in result["received"].items()}
    delays = [t - finished[qid] for qid, t in received.items()]
    refused = [r for r in requests if r["status"] == 429]
    lockouts = [r for r in refused if r["fault"] and "error_budget" in r["fault"]]
    retrieves = sum(1 for r in requests if r["endpoint"] == "retrieve")
    jobs = args.workers * args.jobs
    trips: float = float("nan")
    if name == "redis":
        granted = sum(result["granted"] for result in results)
        trips = sum(result["round_trips"] for result in results) / max(1, granted)
    if refused:
        by_endpoint = Counter(r["endpoint"] for r in refused)
        print(f"  {name}: 429s by endpoint: {dict(by_endpoint)}", file=sys.stderr)
    errors = sorted({e for result in results for e in result["errors"]})
    if errors:
        print(f"  {name}: errors seen: {', '.join(errors)}", file=sys.stderr)
    return [
        name,
        len(refused),
        len(lockouts),
        f"{len(received)} / {jobs}",
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        retrieves / jobs,
        trips,
        wall,
    ]


async def main_async(args: argparse.Namespace) -> int:
    reason = missing_redis()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    print(f"# Many processes, one key  ({machine()})")
    print(
        f"{args.workers} worker processes x {args.jobs} jobs of {args.job_duration:g} s; fake "
        f"server limits queue 40/min, retrieve 120/min, lockout after > 20 failures in 30 s "
        f"(429s count); time scale {args.scale} (1 virtual s = {args.scale * 1000:g} real ms)\n"
    )
    rows = []
    with RedisServer() as redis:
        for name in args.variants:
            rows.append(await run_variant(name, args, redis.url))
            print(f"  done {name}", file=sys.stderr, flush=True)
    print(table(HEADERS, rows))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 workers x 10 jobs")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per worker")
    parser.add_argument("--job-duration", type=float, default=30.0, help="virtual seconds")
    parser.add_argument("--scale", type=float, default=0.1, help="real seconds per virtual s")
    parser.add_argument("--timeout", type=float, default=900.0, help="real seconds per variant")
    parser.add_argument(
        "--variants", nargs="+", default=["redis", "local"], choices=["redis", "local"]
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.jobs = 2, 10
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
