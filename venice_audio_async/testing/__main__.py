"""Run the fake Venice audio API until interrupted.

Usage::

    python -m venice_audio_async.testing --port 8000 [--time-scale 0.01] [--host 127.0.0.1]

The first line printed on stdout is the base URL (for example
``http://127.0.0.1:8000/api/v1``), flushed at once so a parent process can read it; the server
then runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ._server import ENDPOINTS, FakeServer, JobScript

__all__ = ["main"]


def _rate_limit(text: str) -> tuple[str, int]:
    endpoint, _, limit = text.partition("=")
    if endpoint not in ENDPOINTS or not limit.isdigit():
        raise argparse.ArgumentTypeError(f"expected ENDPOINT=N with ENDPOINT in {ENDPOINTS}")
    return endpoint, int(limit)


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
    parser.add_argument("--balance-usd", type=float, default=None, help="starting balance")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not available on every platform (Windows); Ctrl-C then raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    server = FakeServer(
        api_keys=args.api_keys,
        time_scale=args.time_scale,
        job_script=JobScript(duration=args.job_duration),
        rate_limits=dict(args.rate_limit) or None,
        balance_usd=args.balance_usd,
        host=args.host,
        port=args.port,
    )
    async with server:
        print(server.url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGINT/SIGTERM and return the exit status."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
