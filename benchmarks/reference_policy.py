"""Workload B: the session against POLLING.md's policy written out literally, told the truth.

How much of B's delay is the policy's, and how much is this library's (learning the run
times, keying a heap, safety rules)? The reference here is POLLING.md's sketch run as
written: every job's worth read at every step (a 0.02 s time step), the window price
recomputed every 0.25 s from every job in flight, a client log of 120 grants per 60.5 s, and
each model's **true** run-time distribution known from the first job (no learning). It runs
on exactly the benchmark's B jobs (``benchmarks/scheduling.py``, same seed), at the slack
factors POLLING.md (1.2) and the session (0.95) use, and 1.0; the session row is the
library, default settings, learning as it goes.

Run: ``python benchmarks/reference_policy.py`` (``--seeds 1 2 3`` for several draws; about
10 s per seed and row).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Sequence

from _common import machine, percentile, table
from scheduling import (
    A_RACES,
    B_MEANS,
    B_SIGMA,
    WINDOW,
    Workload,
    lognormal_p80,
    simulate_session,
    workload_a,
    workload_b,
)

from venice_audio_async._polling.estimator import PollingBounds
from venice_audio_async._polling.run_time_belief import RunTimeBelief

LIMIT, CLIENT_WINDOW = 120, WINDOW + 0.5
LOOK_AHEAD = (2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.5)
STEP, REPRICE = 0.02, 0.25
FLOOR = PollingBounds().delay_per_poll


def b_of(seed: int) -> Workload:
    """Workload B exactly as ``benchmarks/scheduling.py`` draws it for ``seed``."""
    rng = random.Random(seed)
    for _ in range(A_RACES):
        workload_a(rng)  # drawn first there
    return workload_b(rng)


def reference(workload: Workload, slack: float) -> tuple[float, list[float]]:
    """(retrieves per job, delays) of POLLING.md's policy with the true beliefs."""
    true = {
        model: RunTimeBelief(math.log(mean) - B_SIGMA * B_SIGMA / 2, B_SIGMA)
        for model, mean in B_MEANS.items()
    }
    for job in workload.jobs:  # the hint is the P80 of the same distribution
        assert math.isclose(job.hint, lognormal_p80(B_MEANS[job.model], B_SIGMA))
    grants: deque[float] = deque()
    arrivals: deque[tuple[float, RunTimeBelief]] = deque()
    running: list[list[float]] = []  # [start, duration, model index, age last seen running]
    beliefs = list(true.values())
    models = list(true)
    delays: list[float] = []
    polls, position, now, priced_at, price = 0, 0, 0.0, -math.inf, FLOOR
    jobs = workload.jobs
    while len(delays) < len(jobs):
        while position < len(jobs) and jobs[position].arrival <= now + 1e-9:
            job = jobs[position]
            model = models.index(job.model)
            running.append([now, job.duration, model, 0.0])
            arrivals.append((now, beliefs[model]))
            position += 1
        while grants and grants[0] <= now - CLIENT_WINDOW:
            grants.popleft()
        while arrivals and arrivals[0][0] <= now - CLIENT_WINDOW:
            arrivals.popleft()
        if now - priced_at >= REPRICE:
            priced_at, price = now, FLOOR
            for x in LOOK_AHEAD:
                demand = 0.0
                for start, _, index, seen in running:
                    belief, age = beliefs[int(index)], now - start
                    tail = max(belief.survival(seen), 1e-12)
                    demand += (belief.fluid_polls(age + x) - belief.fluid_polls(age)) / tail
                for _, belief in arrivals:
                    demand += belief.fluid_polls_of_arrivals(x) / CLIENT_WINDOW
                free = LIMIT - sum(1 for t in grants if t > now + x - CLIENT_WINDOW)
                price = max(price, (demand / (slack * max(free, 0.5))) ** 2)
        while len(grants) < LIMIT and running:
            best = max(running, key=lambda j: beliefs[int(j[2])].worth(now - j[0], j[3]))
            if beliefs[int(best[2])].worth(now - best[0], best[3]) < price:
                break
            grants.append(now)
            polls += 1
            if now >= best[0] + best[1]:
                delays.append(now - best[0] - best[1])
                running.remove(best)
            else:
                best[3] = now - best[0]
        now += STEP
    return polls / len(jobs), delays


def row(seed: int, name: str, per_job: float, delays: Sequence[float]) -> list[object]:
    return [
        seed,
        name,
        per_job,
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        max(delays),
        statistics.fmean(delays),
    ]


async def main_async(args: argparse.Namespace) -> int:
    print(f"# Workload B: the session against POLLING.md's policy told the truth  ({machine()})")
    print(f"time step {STEP} s for the reference; delays in seconds\n")
    rows: list[list[object]] = []
    for seed in args.seeds:
        workload = b_of(seed)
        result = await simulate_session(workload, "session", PollingBounds())
        rows.append(row(seed, "session (learns)", result.polls / len(workload.jobs), result.delays))
        for slack in (1.2, 1.0, 0.95):
            per_job, delays = reference(workload, slack)
            rows.append(row(seed, f"reference, true beliefs, slack {slack}", per_job, delays))
            print(f"  done seed {seed} slack {slack}", file=sys.stderr, flush=True)
    print(table(["seed", "policy", "retrieves/job", "p50", "p95", "max", "mean"], rows))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
