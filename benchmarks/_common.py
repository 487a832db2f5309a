"""Helpers shared by the benchmark scripts: the fake server in its own process, tables."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class FakeProcess:
    """A fake server running in a child process (``python -m venice_audio_async.testing``)."""

    def __init__(self, url: str, process: asyncio.subprocess.Process, record: Path) -> None:
        self.url = url
        self.process = process
        self._record = record
        self.data: dict[str, Any] | None = None

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server process (Linux only, else nan)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


@contextlib.asynccontextmanager
async def fake_server(*options: str, record: bool = False) -> AsyncIterator[FakeProcess]:
    """Start the fake in a child process; on exit stop it and (``record``) load its log."""
    with tempfile.TemporaryDirectory(prefix="venice-bench-") as tmp:
        record_path = Path(tmp) / "record.json"
        command = [sys.executable, "-m", "venice_audio_async.testing", "--port", "0", *options]
        if record:
            command += ["--record", str(record_path)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, env=env)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            if not line:
                raise RuntimeError(f"the fake server did not start: {' '.join(command)}")
            fake = FakeProcess(line.decode().strip(), process, record_path)
            yield fake
        finally:
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 60)
        if record:
            fake.data = json.loads(record_path.read_text())


async def queue_raw(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST /audio/queue; returns (status, JSON body, headers)."""
    async with http.post(f"{url}/audio/queue", json=body, headers=AUTH) as response:
        return response.status, await response.json(), dict(response.headers)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) and rows for i in range(len(headers))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|",
    ]
    for row in cells:
        padded = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("| " + " | ".join(padded) + " |")
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def machine() -> str:
    """One line describing the machine and software the numbers come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    return (
        f"{os.cpu_count()} CPU ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


class Stopwatch:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
