"""Overhead per request: polls per second and client CPU per poll, session vs bare aiohttp.

The fake server runs in its own process (real time, no rate limits) with jobs that never
finish, so every ``retrieve`` answers the small PROCESSING JSON. At each concurrency C (C jobs
in flight at once) two clients poll them as fast as they can for a fixed time:

* ``bare aiohttp``: C tasks, each a loop of ``POST /audio/retrieve`` + read and parse the JSON
  over one ``aiohttp.ClientSession`` (pool of C connections);
* ``VeniceClient``: the same C loops through this library's low-level client
  (``client.retrieve``: transport, error mapping, parsing into ``Processing``), no scheduler:
  it splits the session's overhead between the HTTP layer and the scheduler;
* ``session``: an ``AsyncSession`` that attached the C jobs, with a pool of C connections, no
  client-side rate limit and polling bounds of 1 microsecond, so its scheduler re-polls each
  job as soon as the previous answer is in. Everything a real poll does runs: the heap, the
  budget, the limiter, the transport's error mapping, parsing into ``Processing``, the
  estimator and rescheduling.

Client CPU is ``time.process_time()`` of this process (the server's CPU is in another
process); each figure is the median of several alternating rounds.

Run: ``python benchmarks/overhead.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp
from _common import API_KEY, AUTH, FakeProcess, Stopwatch, fake_server, machine, queue_raw, table

import venice_audio_async as v
from venice_audio_async.types import Processing, RetrieveRequest

MODEL = "stable-audio-25"


async def queue_jobs(url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession() as http:
        ids = []
        for i in range(count):
            body = {"model": MODEL, "prompt": f"overhead benchmark {i:05d}"}
            status, data, _ = await queue_raw(http, url, body)
            assert status == 200, data
            ids.append(str(data["queue_id"]))
        return ids


async def _measure(
    count: Callable[[], int], fake: FakeProcess, warmup: float, seconds: float
) -> tuple[float, float, float]:
    """(polls per second, client CPU us per poll, server CPU us per poll) over ``seconds``."""
    await asyncio.sleep(warmup)
    start_count, start_cpu, start_server = count(), time.process_time(), fake.cpu_seconds()
    watch = Stopwatch()
    await asyncio.sleep(seconds)
    polls = count() - start_count
    elapsed = watch()
    cpu = time.process_time() - start_cpu
    server = fake.cpu_seconds() - start_server
    return polls / elapsed, cpu / polls * 1e6, server / polls * 1e6


async def bare_round(
    fake: FakeProcess, ids: Sequence[str], warmup: float, seconds: float
) -> tuple[float, float, float]:
    done = 0
    stop = False
    url = f"{fake.url}/audio/retrieve"
    connector = aiohttp.TCPConnector(limit=len(ids), limit_per_host=len(ids))
    async with aiohttp.ClientSession(connector=connector) as http:

        async def loop(queue_id: str) -> None:
            nonlocal done
            body = {"model": MODEL, "queue_id": queue_id}
            while not stop:
                async with http.post(url, json=body, headers=AUTH) as response:
                    if response.status != 200:
                        raise RuntimeError(f"retrieve answered {response.status}")
                    status = await response.json()
                    if status["status"] != "PROCESSING":
                        raise RuntimeError(f"unexpected answer {status}")
                done += 1

        tasks = [asyncio.ensure_future(loop(queue_id)) for queue_id in ids]
        try:
            result = await _measure(lambda: done, fake, warmup, seconds)
        finally:
            stop = True
            await asyncio.gather(*tasks)
    return result


async def client_round(
    fake: FakeProcess, ids: Sequence[str], warmup: float, seconds: float
) -> tuple[float, float, float]:
    done = 0
    stop = False
    limits = v.Limits(max_connections=len(ids), max_concurrent_requests=len(ids))
    async with v.VeniceClient(api_key=API_KEY, base_url=fake.url, limits=limits) as client:

        async def loop(queue_id: str) -> None:
            nonlocal done
            request = RetrieveRequest(model=MODEL, queue_id=queue_id)
            while not stop:
                answer = await client.retrieve(request)
                if not isinstance(answer, Processing):
                    raise RuntimeError(f"unexpected answer {answer}")
                done += 1

        tasks = [asyncio.ensure_future(loop(queue_id)) for queue_id in ids]
        try:
            result = await _measure(lambda: done, fake, warmup, seconds)
        finally:
            stop = True
            await asyncio.gather(*tasks)
    return result


async def session_round(
    fake: FakeProcess, ids: Sequence[str], warmup: float, seconds: float
) -> tuple[float, float, float]:
    tiny = 1e-6
    session = v.AsyncSession(
        api_key=API_KEY,
        base_url=fake.url,
        limits=v.Limits(
            max_connections=len(ids),
            max_concurrent_requests=len(ids),
            max_concurrent_polls=len(ids),  # the benchmark polls at exactly C at once
        ),
        rate_limits=v.RateLimits(
            queue_per_minute=None, retrieve_per_minute=None, pooled_per_minute=None
        ),
        polling=v.PollingBounds(min_interval=tiny, max_interval=tiny, first_poll=tiny),
        release_media="keep",
        validate=False,
    )
    async with session:
        for queue_id in ids:
            session.attach(MODEL, queue_id)

        def count() -> int:
            return session.statistics().requests.get("retrieve", 0)

        result = await _measure(count, fake, warmup, seconds)
        if session.statistics().jobs_failed:
            raise RuntimeError("a poll failed")
    return result


async def main_async(args: argparse.Namespace) -> int:
    # Closing a session with jobs still running logs their ids: expected here.
    logging.getLogger("venice_audio_async").setLevel(logging.ERROR)
    print(f"# Overhead per poll  ({machine()})")
    print(
        f"fake server in its own process; {args.rounds} alternating rounds of "
        f"{args.seconds:g} s (after {args.warmup:g} s warm-up), medians\n"
    )
    total = Stopwatch()
    rows: list[list[object]] = []
    async with fake_server(
        "--time-scale", "1", "--job-duration", "1e9", "--api-key", API_KEY
    ) as fake:
        for concurrency in args.concurrency:
            ids = await queue_jobs(fake.url, concurrency)
            rounds = {"bare aiohttp": bare_round, "VeniceClient": client_round}
            rounds["session"] = session_round
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rounds}
            for _ in range(args.rounds):
                for name, round_ in rounds.items():
                    results[name].append(await round_(fake, ids, args.warmup, args.seconds))
            med = {
                name: [statistics.median(r[i] for r in got) for i in range(3)]
                for name, got in results.items()
            }
            bare = med["bare aiohttp"]
            for name, (rate, cpu, server) in med.items():
                ratios: list[object] = ["", "", ""]
                if name != "bare aiohttp":
                    # Each round measured the clients back to back: the ratio within a round
                    # is less moved by the machine's drift than the ratio of the medians.
                    paired = statistics.median(
                        mine[1] / theirs[1]
                        for mine, theirs in zip(results[name], results["bare aiohttp"], strict=True)
                    )
                    ratios = [cpu / bare[1], paired, bare[0] / rate]
                rows.append([concurrency, name, rate, cpu, server, *ratios])
            print(f"  done concurrency {concurrency}", file=sys.stderr, flush=True)
    print(
        table(
            [
                "concurrency",
                "client",
                "polls/s",
                "client CPU us/poll",
                "server CPU us/poll",
                "CPU ratio",
                "CPU ratio, paired",
                "time ratio",
            ],
            rows,
        )
    )
    print(
        "\nCPU ratio = median CPU per poll / bare aiohttp's median CPU per poll (the overhead "
        "figure); CPU ratio, paired = the median over rounds of that ratio within each round "
        "(the clients of a round run back to back); time ratio = bare aiohttp's polls/s / "
        "polls/s."
    )
    print(f"total real time {total():.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short rounds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 0.5, 0.2, 1
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
