"""A worker process for the multi-process tests and benchmark (``python -m tests.redis_worker``).

Each worker prints ``ready`` once imported, then reads one line ``START UNTIL`` from stdin
(``time.monotonic()`` readings, which every process on the machine shares): so slow
interpreter start-ups on a loaded machine do not eat into the measured time.
:func:`run_workers` does that handshake. Two modes, each printing one JSON object on stdout:

* ``acquire``: take tokens from a :class:`RedisBudget` on one endpoint as fast as it grants
  them from START until UNTIL; prints ``{"grants": [clock times], "round_trips": n}``.
* ``jobs``: from START, run ``--jobs`` generations through an :class:`AsyncSession` against
  ``--api`` (the fake server), with a shared budget (``--redis URL``) or a local one; prints
  when each job's audio arrived and what the session counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

import venice_audio_async as v
from venice_audio_async.budget import RedisBudget
from venice_audio_async.testing import ScaledClock

MODEL = "stable-audio-25"
ROOT = Path(__file__).resolve().parents[1]


async def run_workers(
    argvs: Sequence[Sequence[str]], *, duration: float = 0.0, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Run one worker per argv; once all are ready, start them together for ``duration``
    real seconds (``acquire``; ``jobs`` ignores it). Returns their JSON answers."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    processes = []
    try:
        with anyio.fail_after(timeout):
            for argv in argvs:
                processes.append(
                    await anyio.open_process(
                        [sys.executable, "-m", "tests.redis_worker", *argv],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=ROOT,
                        env=env,
                    )
                )
            outputs: list[bytearray] = [bytearray() for _ in processes]

            async def ready(index: int) -> None:
                stream = processes[index].stdout
                assert stream is not None
                while b"\n" not in outputs[index]:
                    outputs[index] += await stream.receive()

            async with anyio.create_task_group() as tg:
                for index in range(len(processes)):
                    tg.start_soon(ready, index)
            start = time.monotonic() + 0.05
            for process in processes:
                assert process.stdin is not None
                await process.stdin.send(f"{start} {start + duration}\n".encode())

            async def finish(index: int) -> None:
                process = processes[index]
                assert process.stdout is not None
                assert process.stderr is not None
                async for chunk in process.stdout:
                    outputs[index] += chunk
                errors = b"".join([chunk async for chunk in process.stderr])
                if await process.wait() != 0:
                    raise RuntimeError(f"worker {index} failed:\n{errors.decode()}")

            async with anyio.create_task_group() as tg:
                for index in range(len(processes)):
                    tg.start_soon(finish, index)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    return [json.loads(bytes(out).split(b"\n", 1)[1]) for out in outputs]


async def _acquire(args: argparse.Namespace) -> dict[str, Any]:
    clock = ScaledClock(args.scale)
    limits = v.RateLimits(
        queue_per_minute=args.limit,
        retrieve_per_minute=None,
        pooled_per_minute=args.pooled,
    )
    budget = RedisBudget.from_url(
        args.redis, namespace=args.namespace, clock=clock, rate_limits=limits
    )
    await budget.acquire("warm-up")  # connected, scripts loaded: then ready
    await _ready(args)
    grants: list[float] = []
    async with budget:
        while time.monotonic() < args.until:
            with anyio.move_on_after(max(0.0, args.until - time.monotonic())):
                await budget.acquire(args.endpoint)
                grants.append(clock.monotonic())
    return {"grants": grants, "round_trips": budget.round_trips}


async def _jobs(args: argparse.Namespace) -> dict[str, Any]:
    clock = ScaledClock(args.scale)
    limits: v.RateLimits | None = None  # --default-limits: whatever the session assumes
    if not args.default_limits:
        limits = v.RateLimits(
            queue_per_minute=args.queue_limit,
            retrieve_per_minute=args.retrieve_limit,
            pooled_per_minute=None,
        )
    budget: RedisBudget | None = None
    if args.redis:
        budget = RedisBudget.from_url(
            args.redis,
            api_key=args.api_key,
            clock=clock,
            rate_limits=limits,
            local_share=1 / args.processes,
        )
    received: dict[str, float] = {}
    errors: list[str] = []
    if budget is not None:
        await budget.acquire("warm-up")
    await _ready(args)
    async with v.AsyncSession(
        api_key=args.api_key,
        base_url=args.api,
        clock=clock,
        rate_limits=limits,
        budget=budget,
        release_media="keep",
        polling=v.PollingBounds(retrieve_share=args.retrieve_share),
    ) as session:
        requests = [
            v.QueueRequest(model=MODEL, prompt=f"{args.label} track {i:04d}", duration_seconds=10)
            for i in range(args.jobs)
        ]
        started = clock.monotonic()

        async def one(request: v.QueueRequest) -> None:
            try:
                job = await session.submit_request(request)
                await session.wait_for(job)
            except v.VeniceError as error:
                errors.append(type(error).__name__)
                return
            received[job.queue_id] = clock.monotonic()

        async with anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(one, request)
        statistics = session.statistics()
    result: dict[str, Any] = {
        "started": started,
        "received": received,
        "errors": errors,
        "requests": statistics.requests,
        "rate_limited": statistics.rate_limited,
    }
    if budget is not None:
        result["round_trips"] = budget.round_trips
        result["granted"] = budget.statistics().granted
    return result


async def _ready(args: argparse.Namespace) -> None:
    """Say "ready", read when to start (and stop), and wait until then."""
    print("ready", flush=True)
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    start, until = line.split()
    args.start_at, args.until = float(start), float(until)
    await anyio.sleep(max(0.0, args.start_at - time.monotonic()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.redis_worker")
    modes = parser.add_subparsers(dest="mode", required=True)
    acquire = modes.add_parser("acquire")
    acquire.add_argument("--redis", required=True)
    acquire.add_argument("--namespace", required=True)
    acquire.add_argument("--endpoint", default="queue")
    acquire.add_argument("--limit", type=float, default=None)
    acquire.add_argument("--pooled", type=float, default=None)
    jobs = modes.add_parser("jobs")
    jobs.add_argument("--api", required=True)
    jobs.add_argument("--api-key", required=True)
    jobs.add_argument("--redis", default="")
    jobs.add_argument("--jobs", type=int, required=True)
    jobs.add_argument("--processes", type=int, default=4, help="for the local share")
    jobs.add_argument("--queue-limit", type=float, default=40.0)
    jobs.add_argument("--retrieve-limit", type=float, default=120.0)
    jobs.add_argument("--label", default="worker")
    jobs.add_argument("--retrieve-share", type=float, default=1.0, help="PollingBounds'")
    jobs.add_argument(
        "--default-limits",
        action="store_true",
        help="give the session and budget no RateLimits (ignores --queue-/--retrieve-limit)",
    )
    for mode in (acquire, jobs):
        mode.add_argument("--scale", type=float, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = _acquire if args.mode == "acquire" else _jobs
    result = anyio.run(run, args, backend="asyncio")
    json.dump(result, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
