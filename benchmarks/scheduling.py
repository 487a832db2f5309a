"""Latency at the budget: the session's poll policy against simple pollers, in virtual time.

The four workloads of ../shared/POLLING.md, each run by every variant on the same jobs (same
run times, same arrival times), at the real per-key limits: the server accepts at most 120
retrieves in any rolling 60 s (over that it answers 429 with the Retry-After that frees a
slot) and queues are paced at 40 per minute.

Workloads:

* **A** 20 jobs submitted at once, run times Normal(30 s, 7.5 s), server hint = the P80;
* **B** 1,000 jobs submitted at once, so they arrive at the queue limit (40/min), four
  models with lognormal run times (means 20/30/45/60 s, log-sd 0.18), hint = each P80;
* **C** a trickle: one job every 3 s for 10 minutes, lognormal (mean 40 s, log-sd 0.3);
* **D** one job at a time (a web handler awaiting each), as A, 60 jobs in a row.

"Submitted at once" goes through the session's own queue pacing (``LocalBudget`` at 40/min,
burst 6), as a user's submits would: the first 6 arrive together, then one every ~1.7 s
(A's 20 arrivals spread over 24 s; B's 1,000 over 25 minutes). Every variant gets those
arrival times.

Variants:

* ``session``: this library's ``Scheduler`` with the ``LocalBudget`` and ``PollingBounds()``
  an ``AsyncSession`` builds (default settings), driven on a ``ManualClock`` by a stub
  client that answers like the API (``average_execution_time`` = the model's P80 and
  ``execution_duration`` while running; the audio once finished);
* ``session, price 0.01``: the same with ``PollingBounds(delay_per_poll=0.01)``;
* ``fixed 2 s`` / ``fixed 5 s``: each job polled every 2 / 5 s from its submit; on a 429
  the client sleeps the Retry-After (no client-side limit, as typical clients);
* ``fair RR``: one round-robin loop over the jobs in flight, one retrieve every 60.5/120 s
  (the poller this library had before: never a 429, every token spent evenly);
* ``every token``: a token every 60.5/120 s (never a 429), each spent on the job whose poll
  is worth most now (expected delay accrued since its last poll, under the prior belief the
  server's hint gives: P80 = hint, log-sd 0.35), by a scan of every job;
* ``oracle``: one retrieve per job exactly when it finishes (it knows the run times);
* ``bound``: POLLING.md's lower bound on the *mean* delay under the window (its dynamic
  program over poll times: A 1.23 s, B 2.09 s, C 1.69 s, D 0.13 s); and, computed here,
  the fluid-limit bound ``K^2 / k`` at the session's own polls per job ``k``.

Delay = the time of the poll that saw the job finished minus its real finish. Deterministic
(seeded): run it twice, get the same table.

Run: ``python benchmarks/scheduling.py`` (``--quick`` for a smoke run; ``--spread 1 2 3 4 5 6``
for the session alone on six draws of the same workloads, to see how far its margins are
from draw-to-draw noise).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import anyio
import anyio.lowlevel
import attrs
from _common import machine, percentile, table

import venice_audio_async as v
from venice_audio_async._client import VeniceClient
from venice_audio_async._core.config import RateLimit, endpoint_rates
from venice_audio_async._polling.estimator import DurationEstimator, PollingBounds
from venice_audio_async._polling.run_time_belief import RunTimeBelief
from venice_audio_async._polling.scheduler import Scheduler
from venice_audio_async._rate.budget import LocalBudget
from venice_audio_async._rate.limiter import RequestLimiter
from venice_audio_async._rate.retry import Retrier
from venice_audio_async.testing import ManualClock
from venice_audio_async.types import (
    AudioSink,
    CompleteRequest,
    CompleteResult,
    MemorySink,
    Processing,
    RetrieveRequest,
    VeniceHeaders,
)

LIMIT, WINDOW = 120, 60.0  # the server's retrieve limit
QUEUE_PER_MINUTE = 40
Z80 = statistics.NormalDist().inv_cdf(0.8)
POLLING_MD_BOUND = {"A": 1.23, "B": 2.09, "C": 1.69, "D": 0.13}


@attrs.frozen
class Job:
    model: str
    arrival: float
    duration: float
    hint: float


@attrs.frozen
class Workload:
    name: str
    description: str
    jobs: tuple[Job, ...]
    sequential: bool = False  # D: each job is submitted when the previous one is handed over
    #: The true run-time densities jobs are drawn from, with their weights (for K).
    densities: tuple[tuple[float, Callable[[float], float]], ...] = ()


@attrs.define
class Result:
    variant: str
    polls: int = 0
    rejected: int = 0  # 429s
    delays: list[float] = attrs.field(factory=list)
    accepted: list[float] = attrs.field(factory=list)  # times of accepted retrieves
    busiest: list[int] = attrs.field(factory=list)  # per race, for repeated workloads

    def add(self, other: Result) -> None:
        """Fold in one more race of a repeated workload."""
        self.polls += other.polls
        self.rejected += other.rejected
        self.delays += other.delays
        self.busiest.append(busiest(other.accepted))


# --------------------------------------------------------------------------- workloads


def queue_paced(n: int, start: float = 0.0) -> list[float]:
    """When ``n`` submits made at once get their queue tokens (the session's pacing)."""
    clock = ManualClock(start)
    budget = LocalBudget(clock=clock, rates={"queue": RateLimit(per_minute=QUEUE_PER_MINUTE)})
    times: list[float] = []
    while len(times) < n:
        clock.advance(max(0.0, budget.next_available("queue") - clock.monotonic()))
        assert budget.try_acquire_now("queue")
        times.append(clock.monotonic())
    return times


def normal_density(mean: float, sd: float) -> Callable[[float], float]:
    dist = statistics.NormalDist(mean, sd)
    return dist.pdf


def lognormal_density(mean: float, sigma: float) -> Callable[[float], float]:
    mu = math.log(mean) - sigma * sigma / 2

    def pdf(t: float) -> float:
        if t <= 0:
            return 0.0
        z = (math.log(t) - mu) / sigma
        return math.exp(-z * z / 2) / (math.sqrt(2 * math.pi) * sigma * t)

    return pdf


def lognormal_p80(mean: float, sigma: float) -> float:
    return math.exp(math.log(mean) - sigma * sigma / 2 + sigma * Z80)


#: Workload A is 20 jobs: run it this many times (seeded) so its figures are not one draw.
A_RACES = 50


def workload_a(rng: random.Random, n: int = 20) -> Workload:
    hint = 30.0 + Z80 * 7.5
    arrivals = queue_paced(n)
    jobs = tuple(Job("m", t, max(1.0, rng.gauss(30.0, 7.5)), hint) for t in arrivals)
    return Workload(
        "A", f"{n} at once, Normal(30, 7.5)", jobs, densities=((1.0, normal_density(30, 7.5)),)
    )


#: Workload B's models: mean run times (seconds) and the log-sd they share.
B_MEANS = {"m20": 20.0, "m30": 30.0, "m45": 45.0, "m60": 60.0}
B_SIGMA = 0.18


def workload_b(rng: random.Random, n: int = 1000) -> Workload:
    means, sigma = B_MEANS, B_SIGMA
    jobs = []
    for i, t in enumerate(queue_paced(n)):
        model = list(means)[i % 4]
        mean = means[model]
        mu = math.log(mean) - sigma * sigma / 2
        jobs.append(Job(model, t, math.exp(rng.gauss(mu, sigma)), lognormal_p80(mean, sigma)))
    densities = tuple((0.25, lognormal_density(m, sigma)) for m in means.values())
    return Workload("B", f"{n} at the queue limit, 4 models", tuple(jobs), densities=densities)


def workload_c(rng: random.Random, minutes: float = 10.0) -> Workload:
    sigma, mean = 0.3, 40.0
    mu = math.log(mean) - sigma * sigma / 2
    hint = lognormal_p80(mean, sigma)
    jobs = tuple(
        Job("m", 3.0 * i, math.exp(rng.gauss(mu, sigma)), hint)
        for i in range(int(minutes * 60 / 3))
    )
    densities = ((1.0, lognormal_density(mean, sigma)),)
    return Workload("C", "one every 3 s for 10 min", jobs, densities=densities)


def workload_d(rng: random.Random, n: int = 60) -> Workload:
    hint = 30.0 + Z80 * 7.5
    jobs = tuple(Job("m", 0.0, max(1.0, rng.gauss(30.0, 7.5)), hint) for _ in range(n))
    return Workload(
        "D",
        f"one at a time, {n} in a row",
        jobs,
        sequential=True,
        densities=((1.0, normal_density(30, 7.5)),),
    )


def fluid_constant(density: Callable[[float], float], upper: float = 400.0) -> float:
    """K = integral of sqrt(f S / 2): mean delay >= K^2 / k with k polls per job."""
    step, t, survival, total = 0.01, 0.005, 1.0, 0.0
    while t < upper:
        f = density(t)
        total += math.sqrt(max(0.0, f * survival) / 2) * step
        survival = max(0.0, survival - f * step)
        t += step
    return total


# --------------------------------------------------------------------------- the server


class Server:
    """Accepts at most LIMIT retrieves in any rolling WINDOW; answers 429 over it."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.log: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """None if accepted, else the Retry-After (seconds until a slot frees)."""
        log = self.log
        while log and log[0] <= now - WINDOW + 1e-9:
            log.popleft()
        if len(log) >= LIMIT:
            self.result.rejected += 1
            return max(1e-3, log[0] + WINDOW - now)
        log.append(now)
        self.result.accepted.append(now)
        self.result.polls += 1
        return None


# --------------------------------------------------------------------------- simple pollers


def simulate_simple(
    workload: Workload, variant: str, decide: Callable[..., Any] | None = None
) -> Result:
    """Discrete-event run of the fixed, round-robin and oracle pollers."""
    result = Result(variant)
    server = Server(result)
    events: list[tuple[float, int, str, int]] = []
    seq = 0

    def push(t: float, kind: str, index: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, index))

    jobs = workload.jobs
    start: dict[int, float] = {}
    in_flight: list[int] = []
    done: set[int] = set()
    interval = {"fixed 2 s": 2.0, "fixed 5 s": 5.0}.get(variant)
    next_job = 0

    def submit(index: int, t: float) -> None:
        start[index] = t
        in_flight.append(index)
        if interval is not None:
            push(t + interval, "poll", index)
        elif variant == "oracle":
            push(t + jobs[index].duration, "poll", index)

    if workload.sequential:
        submit(0, 0.0)
        next_job = 1
    else:
        for i, job in enumerate(jobs):
            push(job.arrival, "submit", i)
    if variant in ("fair RR", "every token"):
        push(0.0, "rr", -1)
    seen: dict[int, float] = {}  # age at the last poll that saw the job running
    cursor = 0
    while events:
        t, _, kind, index = heapq.heappop(events)
        if kind == "submit":
            submit(index, t)
            continue
        if kind == "rr":
            if len(done) == len(jobs):
                break
            live = [i for i in in_flight if i not in done]
            if live:
                if variant == "every token":
                    index = max(
                        live, key=lambda i: prior(jobs[i]).worth(t - start[i], seen.get(i, 0.0))
                    )
                else:
                    cursor %= len(live)
                    index = live[cursor]
                    cursor += 1
                if server.admit(t) is None:
                    finish(index, t, start, jobs, done, result)
                    seen[index] = t - start[index]
                    if index in done and workload.sequential and next_job < len(jobs):
                        submit(next_job, t)
                        next_job += 1
            push(t + (WINDOW + 0.5) / LIMIT, "rr", -1)
            continue
        if index in done:
            continue
        retry_after = server.admit(t)
        if retry_after is not None:
            push(t + retry_after, "poll", index)
            continue
        finish(index, t, start, jobs, done, result)
        if index in done:
            if workload.sequential and next_job < len(jobs):
                submit(next_job, t)
                next_job += 1
        elif interval is not None:
            push(t + interval, "poll", index)
    return result


@functools.cache
def _prior(hint: float) -> RunTimeBelief:
    return RunTimeBelief(math.log(hint) - 0.35 * Z80, 0.35)


def prior(job: Job) -> RunTimeBelief:
    """The belief a client has from the server's P80 hint alone."""
    return _prior(job.hint)


def finish(
    index: int,
    t: float,
    start: dict[int, float],
    jobs: Sequence[Job],
    done: set[int],
    result: Result,
) -> None:
    finished_at = start[index] + jobs[index].duration
    if t >= finished_at - 1e-9:
        done.add(index)
        result.delays.append(t - finished_at)


# --------------------------------------------------------------------------- the session


class StubClient:
    """Answers retrieve like the API, through the Server's window."""

    def __init__(self, clock: ManualClock, server: Server) -> None:
        self.clock = clock
        self.server = server
        self.jobs: dict[str, tuple[float, Job]] = {}
        self.finished: dict[str, float] = {}

    def add(self, queue_id: str, job: Job) -> v.Job:
        self.jobs[queue_id] = (self.clock.monotonic(), job)
        return v.Job(model=job.model, queue_id=queue_id)

    async def retrieve(self, request: RetrieveRequest, *, sink: Any) -> Any:
        now = self.clock.monotonic()
        retry_after = self.server.admit(now)
        if retry_after is not None:
            raise v.RateLimitError("429", status_code=429, retry_after=retry_after)
        started, job = self.jobs[request.queue_id]
        if now < started + job.duration:
            return Processing(average_execution_time=job.hint, execution_duration=now - started)
        self.finished[request.queue_id] = now - (started + job.duration)
        return v.AudioResult(
            content_type="audio/mpeg",
            format="mp3",
            size=3,
            data=b"abc",
            venice=VeniceHeaders(inference_time=job.duration),
        )

    async def complete(self, request: CompleteRequest) -> CompleteResult:
        return CompleteResult(success=True)


async def settle() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        await anyio.lowlevel.checkpoint()
        if not loop._ready:  # type: ignore[attr-defined]
            await anyio.lowlevel.checkpoint()
            if not loop._ready:  # type: ignore[attr-defined]
                return


async def simulate_session(workload: Workload, variant: str, bounds: PollingBounds) -> Result:
    result = Result(variant)
    server = Server(result)
    clock = ManualClock()
    client = StubClient(clock, server)
    # What AsyncSession builds by default for retrieves (120/min, spread by the budget).
    rates = endpoint_rates(v.RateLimits(queue_per_minute=None, pooled_per_minute=None))
    budget = LocalBudget(clock=clock, rates=rates)
    scheduler = Scheduler(
        client=cast(VeniceClient, client),
        budget=budget,
        estimator=DurationEstimator(bounds=bounds),
        clock=clock,
        retrier=Retrier(acquire=budget.acquire, policy=v.RetryPolicy(), clock=clock),
        limiter=RequestLimiter(16),
        release="keep",
    )
    jobs = workload.jobs
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        pending = sorted(range(len(jobs)), key=lambda i: jobs[i].arrival)
        position = 0

        def submit(index: int) -> None:
            scheduler.track(client.add(f"j{index}", jobs[index]), _sink, elapsed=0.0)

        if workload.sequential:
            for index in range(len(jobs)):
                submit(index)
                await settle()
                while scheduler.counts().succeeded < index + 1:
                    assert clock.advance_to_next()
                    await settle()
        else:
            while scheduler.counts().succeeded < len(jobs):
                next_arrival = jobs[pending[position]].arrival if position < len(pending) else None
                wake = clock.next_wakeup()
                if next_arrival is not None and (wake is None or next_arrival <= wake):
                    clock.advance(max(0.0, next_arrival - clock.monotonic()))
                    while position < len(pending) and jobs[pending[position]].arrival <= (
                        clock.monotonic() + 1e-9
                    ):
                        submit(pending[position])
                        position += 1
                else:
                    assert clock.advance_to_next()
                await settle()
        tg.cancel_scope.cancel()
    result.delays = list(client.finished.values())
    return result


def _sink() -> AudioSink:
    return MemorySink(1000)


# --------------------------------------------------------------------------- report


def busiest(times: Sequence[float]) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 60.0 + 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def row(workload: Workload, result: Result, races: int = 1) -> list[object]:
    n = len(workload.jobs) * races
    delays = result.delays
    peak = statistics.median(result.busiest) if result.busiest else busiest(result.accepted)
    return [
        workload.name,
        result.variant,
        result.polls / n,
        result.rejected,
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        max(delays),
        statistics.fmean(delays),
        peak,
        len(delays),
    ]


HEADERS = [
    "workload",
    "variant",
    "retrieves/job",
    "429s",
    "delay p50",
    "delay p95",
    "delay max",
    "delay mean",
    "busiest 60 s (median race)",
    "handed over",
]


def draw(seed: int, scale: float = 1.0, races: int = A_RACES) -> list[list[Workload]]:
    """The four workloads drawn from ``seed`` (the same draw whatever the mode)."""
    rng = random.Random(seed)
    return [
        [workload_a(rng) for _ in range(races)],
        [workload_b(rng, int(1000 * scale))],
        [workload_c(rng, 10.0 * scale)],
        [workload_d(rng, max(10, int(60 * scale)))],
    ]


async def spread_async(seeds: Sequence[int]) -> int:
    """The session's figures (default settings) on several draws of the same workloads:
    how far the targets' margins are from draw-to-draw noise."""
    print(f"# Latency at the budget, draw to draw  ({machine()})")
    print("session, default settings; delays in seconds; each seed is a new draw\n")
    rows: list[list[object]] = []
    for seed in seeds:
        for repeats in draw(seed):
            total = Result("session")
            for race in repeats:
                total.add(await simulate_session(race, "session", PollingBounds()))
            n = len(repeats[0].jobs) * len(repeats)
            delays = total.delays
            rows.append(
                [
                    seed,
                    repeats[0].name,
                    total.polls / n,
                    total.rejected,
                    percentile(delays, 0.5),
                    percentile(delays, 0.95),
                    max(delays),
                    max(total.busiest),
                ]
            )
        print(f"  done seed {seed}", file=sys.stderr, flush=True)
    headers = [
        "seed",
        "workload",
        "retrieves/job",
        "429s",
        "p50",
        "p95",
        "max",
        "busiest 60 s (any race)",
    ]
    print(table(headers, sorted(rows, key=lambda r: (str(r[1]), int(cast(int, r[0]))))))
    return 0


async def main_async(args: argparse.Namespace) -> int:
    if args.spread:
        return await spread_async(args.spread)
    print(f"# Latency at the budget  ({machine()})")
    print(
        f"virtual time; server limit {LIMIT} retrieves per rolling {WINDOW:g} s, queue "
        f"{QUEUE_PER_MINUTE}/min; seed {args.seed}; delays in seconds\n"
    )
    scale = 0.2 if args.quick else 1.0
    workloads = draw(args.seed, scale, 10 if args.quick else A_RACES)
    rows: list[list[object]] = []
    bounds_rows: list[list[object]] = []
    for repeats in workloads:
        workload = repeats[0]
        arrivals = [job.arrival for job in workload.jobs]
        spread = max(arrivals) - min(arrivals)
        times = f" ({len(repeats)} races)" if len(repeats) > 1 else ""
        print(
            f"{workload.name}: {workload.description}{times}; arrivals spread over {spread:.0f} s"
        )
        session_polls = 0.0
        for variant, bounds in (
            ("session", PollingBounds()),
            ("session, price 0.01", PollingBounds(delay_per_poll=0.01)),
        ):
            total = Result(variant)
            for race in repeats:
                total.add(await simulate_session(race, variant, bounds))
            rows.append(row(workload, total, len(repeats)))
            if variant == "session":
                session_polls = total.polls / (len(workload.jobs) * len(repeats))
        for variant in ("every token", "fixed 2 s", "fixed 5 s", "fair RR", "oracle"):
            total = Result(variant)
            for race in repeats:
                total.add(simulate_simple(race, variant))
            rows.append(row(workload, total, len(repeats)))
        # Each job's own distribution is known (its model): the best split of k polls per
        # job over the models gives mean delay >= (sum of w K)^2 / k (Cauchy-Schwarz).
        k = sum(weight * fluid_constant(density) for weight, density in workload.densities)
        bounds_rows.append(
            [
                workload.name,
                POLLING_MD_BOUND[workload.name],
                f"{k * k / session_polls:.2f} (K = {k:.2f}, k = {session_polls:.2f})",
            ]
        )
    print()
    print(table(HEADERS, rows))
    print()
    print(
        table(
            ["workload", "bound on mean delay (POLLING.md DP)", "fluid bound K^2/k at session's k"],
            bounds_rows,
        )
    )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spread",
        type=int,
        nargs="+",
        metavar="SEED",
        help="only the session, on the draws of these seeds: a table of its figures per draw",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
