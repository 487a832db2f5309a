"""Where a command connects: the real API, a given URL, or the built-in fake; and its session.

Also the clock (real time, or the fake server's scaled time) and the one message for a
missing API key.
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from .._core.clock import Clock, ScaledClock, SystemClock
from .._core.environment import api_key_from_env
from .._ledger.journal import Journal
from .._rate.redis_budget import RedisBudget
from .._session.session import AsyncSession
from .console import say
from .folder import JOURNAL_NAME

__all__ = [
    "clock_scale",
    "command_clock",
    "endpoint",
    "folder_session",
    "need_key",
    "open_session",
]

_FAKE_KEY = "fake-key"


def _demo_script(body: Mapping[str, Any]) -> Any:
    """Job timelines for --fake: 20-60 "seconds" by model, spread like real runs."""
    from ..testing import JobScript

    means = {"elevenlabs-music": 60.0, "ace-step-15": 45.0, "stable-audio-25": 30.0}
    mean = means.get(str(body.get("model")), 20.0)
    duration = random.lognormvariate(0.0, 0.1) * mean
    return JobScript(duration=duration, average_execution_time=mean * 1.1)


def command_clock(args: argparse.Namespace) -> Clock:
    """The clock of the command: real time, or the fake server's scaled time."""
    if args.fake:
        return ScaledClock(_fake_scale(args))
    return SystemClock() if args.time_scale == 1.0 else ScaledClock(args.time_scale)


def clock_scale(args: argparse.Namespace) -> float:
    """Real seconds per second of the command's clock (1.0 unless time is scaled)."""
    return _fake_scale(args) if args.fake else float(args.time_scale)


def _fake_scale(args: argparse.Namespace) -> float:
    return float(args.time_scale) if args.time_scale != 1.0 else 0.01


@contextlib.asynccontextmanager
async def endpoint(
    args: argparse.Namespace, *, fake_state: Path | None = None
) -> AsyncIterator[tuple[str, str | None, Clock]]:
    """The base URL, key and clock to use: the real API, a given URL, or a fresh fake.

    The fake serves playable WAV tones; with ``fake_state`` it keeps its jobs in that file
    (and knows those an earlier run kept there).
    """
    clock = command_clock(args)
    if args.fake:
        from ..testing import FakeServer

        scale = _fake_scale(args)
        async with FakeServer(
            time_scale=scale, job_script=_demo_script, audio="tones", state_path=fake_state
        ) as server:
            say(f"using the built-in fake server at {server.url} (time x{1 / scale:g})")
            yield server.url, _FAKE_KEY, clock
        return
    yield args.base_url, api_key_from_env(args.api_key or None), clock


def need_key(key: str | None) -> bool:
    """Whether there is an API key; if not, say how to set one (False)."""
    if key:
        return True
    say(
        "No API key. Set one with\n"
        "    export VENICE_API_KEY=your-key     (create it at https://venice.ai/settings/api)\n"
        "or pass --api-key, or try everything offline with --fake."
    )
    return False


def open_session(
    args: argparse.Namespace,
    url: str,
    key: str | None,
    clock: Clock,
    **options: Any,
) -> AsyncSession:
    """A session for the command's options (``--redis``, ``--allow-insecure-http``)."""
    if getattr(args, "redis", None):
        # One budget for every process on this key (the session closes it).
        options.setdefault("budget", RedisBudget.from_url(args.redis, api_key=key, clock=clock))
    return AsyncSession(
        api_key=key,
        base_url=url,
        clock=clock,
        allow_insecure_http=args.allow_insecure_http,
        **options,
    )


def folder_session(
    args: argparse.Namespace,
    url: str,
    key: str | None,
    clock: Clock,
    out: Path,
    journal: Journal | None = None,
) -> AsyncSession:
    """A session writing into a batch folder, with the folder's journal."""
    return open_session(
        args,
        url,
        key,
        clock,
        journal=journal if journal is not None else out / JOURNAL_NAME,
        output_dir=out,
        max_spend_usd=args.max_spend,
    )
