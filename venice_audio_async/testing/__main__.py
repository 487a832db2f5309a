"""Run the fake Venice audio API until interrupted.

Usage::

    python -m venice_audio_async.testing --port 8000 [--time-scale 0.01] [--host 127.0.0.1]
        [--job-mix elevenlabs-music=60:0.2 --job-mix stable-audio-25=30 --seed 1]
        [--audio-size BYTES] [--record FILE]
        [--rate-limit queue=40 --rate-limit retrieve=120] [--pooled-rate-limit 60]
        [--no-state-limits | --state-limits-on queue] [--no-key-limits] [--error-budget 20:30
        [--error-budget-counts-429]] [--overload elevenlabs-music=30@60-180]
        [--outside-load retrieve=30]

The first line printed on stdout is the base URL (for example
``http://127.0.0.1:8000/api/v1``), flushed at once so a parent process can read it; the server
then runs until SIGINT or SIGTERM. With ``--record``, it then writes every job and request it
saw to FILE as JSON (see :func:`record`), for benchmarks that run the server in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._mix import JobMix, ModelTiming
from ._server import FakeServer
from ._types import ENDPOINTS, JobScript

__all__ = ["main", "record"]


def _rate_limit(text: str) -> tuple[str, int]:
    endpoint, _, limit = text.partition("=")
    if endpoint not in ENDPOINTS or not limit.isdigit():
        raise argparse.ArgumentTypeError(f"expected ENDPOINT=N with ENDPOINT in {ENDPOINTS}")
    return endpoint, int(limit)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("expected an integer >= 1")
    return int(text)


def _error_budget(text: str) -> tuple[int, float]:
    failures, _, window = text.partition(":")
    try:
        parsed = (int(failures), float(window))
    except ValueError:
        parsed = (-1, 0.0)
    if parsed[0] < 0 or not parsed[1] > 0:
        raise argparse.ArgumentTypeError("expected FAILURES:SECONDS, e.g. 20:30")
    return parsed


def _overload(text: str) -> tuple[str, float, tuple[float, float] | None]:
    spec, _, window = text.partition("@")
    model, _, retry_after = spec.partition("=")
    start, dash, end = window.partition("-")
    try:
        seconds = float(retry_after) if retry_after else 30.0
        span = (float(start), float(end)) if window else None
    except ValueError:
        seconds, span = -1.0, None
    if (
        not model
        or not seconds >= 0
        or (window and (not dash or span is None or not 0 <= span[0] < span[1]))
    ):
        raise argparse.ArgumentTypeError(
            "expected MODEL[=RETRY_AFTER][@FROM-UNTIL] (virtual seconds), "
            "e.g. elevenlabs-music=30@60-180"
        )
    return model, seconds, span


def _outside_load(text: str) -> tuple[str, float]:
    endpoint, _, rate = text.partition("=")
    try:
        per_minute = float(rate)
    except ValueError:
        per_minute = 0.0
    if endpoint not in ENDPOINTS or not per_minute > 0:
        raise argparse.ArgumentTypeError(f"expected ENDPOINT=N (N > 0), ENDPOINT in {ENDPOINTS}")
    return endpoint, per_minute


def _endpoint(text: str) -> str:
    if text not in ENDPOINTS:
        raise argparse.ArgumentTypeError(f"expected one of {ENDPOINTS}")
    return text


def _job_mix(text: str) -> tuple[str, ModelTiming]:
    model, _, timing = text.partition("=")
    mean, _, sigma = timing.partition(":")
    if not model or not mean:
        raise argparse.ArgumentTypeError("expected MODEL=MEAN[:SIGMA]")
    try:
        return model, ModelTiming(float(mean), float(sigma) if sigma else 0.15)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected MODEL=MEAN[:SIGMA] with MEAN > 0 and SIGMA >= 0 ({exc})"
        ) from None


def record(server: FakeServer) -> dict[str, Any]:
    """Every job and request ``server`` saw, as plain JSON data (times: virtual seconds).

    ``jobs``: ``queue_id``, ``model``, ``queued_at``, ``duration``, ``estimate``,
    ``finishes_at``, ``retrieve_count``, ``complete_count``, ``downloads``; ``requests``:
    ``endpoint``, ``time``, ``status``, ``queue_id``, ``fault``, ``retry_after``; ``outside``:
    the requests an outside client spent (``--outside-load``),
    ``{endpoint: {"admitted": n, "refused": n}}``; ``lockouts``: every error-budget lockout,
    ``[start, until]``.
    """
    jobs = [
        {
            "queue_id": job.queue_id,
            "model": job.model,
            "queued_at": job.queued_at,
            "duration": job.script.duration,
            "estimate": job.script.estimate,
            "finishes_at": job.finishes_at,
            "retrieve_count": job.retrieve_count,
            "complete_count": job.complete_count,
            "downloads": job.downloads,
        }
        for job in server.jobs.values()
    ]
    outside = {endpoint: dict(tally) for endpoint, tally in server.outside_spent.items()}
    requests = [
        {
            "endpoint": r.endpoint,
            "time": r.time,
            "status": r.status,
            "queue_id": r.body.get("queue_id") if isinstance(r.body, dict) else None,
            "fault": r.fault,
            "retry_after": r.retry_after,
        }
        for r in server.requests
    ]
    lockouts = [list(lockout) for lockout in server.lockouts]
    return {"jobs": jobs, "requests": requests, "outside": outside, "lockouts": lockouts}


def _write_record(server: FakeServer, path: Path) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    temp.write_text(json.dumps(record(server), separators=(",", ":")))
    os.replace(temp, path)  # a reader never sees half a file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m venice_audio_async.testing",
        description="Serve a fake Venice.ai asynchronous audio API.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="real seconds per virtual second (0.001: a 60 s job takes 60 ms)",
    )
    parser.add_argument(
        "--job-duration", type=float, default=30.0, help="virtual seconds each job runs"
    )
    parser.add_argument(
        "--job-mix",
        action="append",
        type=_job_mix,
        default=[],
        metavar="MODEL=MEAN[:SIGMA]",
        help=(
            "jobs of MODEL run a lognormal time with this mean (virtual seconds) and log-sd "
            "(default 0.15), reporting the model's P80 as average_execution_time (repeatable; "
            "other models use --job-duration)"
        ),
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the --job-mix draws (reproducible)"
    )
    parser.add_argument(
        "--audio-size", type=int, default=None, help="bytes of every audio body (default: 1 KiB)"
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="on shutdown, write every job and request seen to FILE (JSON)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accepted API key (repeatable; default: any non-empty key)",
    )
    parser.add_argument(
        "--rate-limit",
        action="append",
        type=_rate_limit,
        default=[],
        metavar="ENDPOINT=N",
        help="requests per virtual minute for an endpoint (repeatable)",
    )
    parser.add_argument(
        "--pooled-rate-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help=(
            "requests per virtual minute over quote, queue, retrieve and complete together; "
            "its 429s state no limit, only Retry-After"
        ),
    )
    parser.add_argument(
        "--no-state-limits",
        dest="state_limits",
        action="store_false",
        help="never state the --rate-limit limits in x-ratelimit-*-requests headers",
    )
    parser.add_argument(
        "--no-key-limits",
        dest="key_limits",
        action="store_false",
        help=(
            "list no limit for any model at GET /api_keys/rate_limits (by default every "
            "model is listed at --pooled-rate-limit): with --no-state-limits, a pooled limit "
            "stated nowhere"
        ),
    )
    parser.add_argument(
        "--state-limits-on",
        dest="state_limits_on",
        action="append",
        type=_endpoint,
        default=[],
        metavar="ENDPOINT",
        help="state the --rate-limit limits in headers on this endpoint only (repeatable)",
    )
    parser.add_argument(
        "--overload",
        action="append",
        type=_overload,
        default=[],
        metavar="MODEL[=RETRY_AFTER][@FROM-UNTIL]",
        help=(
            "queue calls for MODEL answer the 'model is currently overloaded' 429 with this "
            "Retry-After (default 30), from FROM to UNTIL virtual seconds after the start "
            "(default: always); repeatable"
        ),
    )
    parser.add_argument(
        "--outside-load",
        action="append",
        type=_outside_load,
        default=[],
        metavar="ENDPOINT=N",
        help=(
            "an outside client on the same key spends N requests per virtual minute of "
            "ENDPOINT, evenly spaced, in the same windows (repeatable)"
        ),
    )
    parser.add_argument(
        "--error-budget",
        type=_error_budget,
        default=None,
        metavar="FAILURES:SECONDS",
        help="more than FAILURES failed answers in SECONDS lock every route for SECONDS",
    )
    parser.add_argument(
        "--error-budget-counts-429",
        action="store_true",
        help="count rate-limit 429s as failures of --error-budget",
    )
    parser.add_argument("--balance-usd", type=float, default=None, help="starting balance")
    parser.add_argument(
        "--audio",
        choices=("bytes", "tones"),
        default="bytes",
        help=(
            "bytes: small strict files in each model's container (default); tones: playable "
            "WAV sine tones as long as each request asks"
        ),
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep the jobs in FILE (JSON Lines), so a restarted server still knows them",
    )
    return parser


def _build_server(args: argparse.Namespace) -> FakeServer:
    """The server the parsed command line describes (not started)."""
    default = JobScript(duration=args.job_duration, audio_size=args.audio_size)
    script: JobScript | JobMix = default
    if args.job_mix:
        script = JobMix(
            dict(args.job_mix), seed=args.seed, default=default, audio_size=args.audio_size
        )
    state_limits: bool | list[str] = args.state_limits
    if args.state_limits_on:
        if not args.state_limits:
            raise ValueError("--state-limits-on and --no-state-limits exclude each other")
        state_limits = args.state_limits_on
    always = {model: seconds for model, seconds, span in args.overload if span is None}
    server = FakeServer(
        api_keys=args.api_keys,
        time_scale=args.time_scale,
        job_script=script,
        rate_limits=dict(args.rate_limit) or None,
        pooled_rate_limit=args.pooled_rate_limit,
        state_limits=state_limits,
        error_budget=args.error_budget,
        error_budget_counts_429=args.error_budget_counts_429,
        balance_usd=args.balance_usd,
        host=args.host,
        port=args.port,
        audio=args.audio,
        state_path=args.state,
        overloaded_models=always or None,
        key_rate_limits=None if args.key_limits else {},
        outside_load=dict(args.outside_load) or None,
    )
    for model, seconds, span in args.overload:
        if span is not None:  # from the server's construction, which its start follows
            start, end = span
            server.overload(model, retry_after=seconds, for_seconds=end - start, starting_in=start)
    return server


async def _serve(server: FakeServer, record_path: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform (Windows); Ctrl-C then raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        print(server.url, flush=True)
        await stop.wait()
    if record_path is not None:
        _write_record(server, record_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGINT/SIGTERM and return the exit status."""
    args = _parser().parse_args(argv)
    try:
        server = _build_server(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server, args.record))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
