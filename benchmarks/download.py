"""Downloads: MB/s and peak memory streaming a large audio body to disk, session vs raw aiohttp.

The fake server runs in its own process (real time, no rate limits) with jobs that are done
at once and carry an audio body of the given size (WAV). Each round downloads a fresh job:

* ``session``: ``AsyncSession.attach(..., destination=file)`` + ``wait_for``: the body is
  streamed by the transport into a ``FileSink`` (1 MiB batches written in a worker thread,
  then fsync and an atomic rename), with the container sniffed from the first bytes. The
  figure includes the scheduler's first poll (1 ms here) and everything up to the caller
  holding the result;
* ``raw aiohttp``: ``POST /audio/retrieve`` and ``async for chunk in
  response.content.iter_chunked(64 KiB): file.write(chunk)``, the usual hand-written loop;
* ``raw + fsync``: the same, then fsync and rename, i.e. the durability the session gives.

MB/s is the median of the timed rounds (no tracing). Peak memory is measured in separate
rounds: the peak of traced Python allocations above the level before the download
(``tracemalloc``; aiohttp's buffers, the sink's batch, the chunks). The same peak at two body
sizes means memory stays flat whatever the size.

Run: ``python benchmarks/download.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from _common import API_KEY, AUTH, Stopwatch, fake_server, machine, queue_raw, table

import venice_audio_async as v

MODEL = "stable-audio-25"  # WAV: the fake builds its body fastest
MIB = 1024 * 1024
CHUNK = 64 * 1024


class Downloader:
    """The three ways of downloading one job's audio to ``path``."""

    def __init__(self, url: str, http: aiohttp.ClientSession, session: v.AsyncSession) -> None:
        self.url = url
        self.http = http
        self.session = session

    async def via_session(self, queue_id: str, path: Path) -> int:
        job = self.session.attach(MODEL, queue_id, destination=path)
        audio = await self.session.wait_for(job)
        assert audio.path == path
        return audio.size

    async def raw(self, queue_id: str, path: Path, *, durable: bool = False) -> int:
        body = {"model": MODEL, "queue_id": queue_id}
        size = 0
        target = path.with_name(path.name + ".part") if durable else path
        async with self.http.post(f"{self.url}/audio/retrieve", json=body, headers=AUTH) as r:
            assert r.status == 200, r.status
            assert r.content_type.startswith("audio/"), r.content_type
            with target.open("wb") as file:
                async for chunk in r.content.iter_chunked(CHUNK):
                    file.write(chunk)
                    size += len(chunk)
                if durable:
                    file.flush()
                    os.fsync(file.fileno())
        if durable:
            os.replace(target, path)
        return size

    async def raw_durable(self, queue_id: str, path: Path) -> int:
        return await self.raw(queue_id, path, durable=True)


async def measure_size(size: int, args: argparse.Namespace, tmp: Path) -> list[list[object]]:
    rounds = args.rounds
    variants = ["session", "raw aiohttp", "raw + fsync"]
    per_variant = args.warmup + rounds + 1  # timed rounds + one traced round
    async with (
        fake_server(
            "--time-scale",
            "1",
            "--job-duration",
            "0",
            "--audio-size",
            str(size),
            "--api-key",
            API_KEY,
        ) as fake,
        aiohttp.ClientSession() as http,
    ):
        ids = []
        for i in range(per_variant * len(variants)):
            status, data, _ = await queue_raw(
                http, fake.url, {"model": MODEL, "prompt": f"download benchmark {i:04d}"}
            )
            assert status == 200, data
            ids.append(str(data["queue_id"]))
        session = v.AsyncSession(
            api_key=API_KEY,
            base_url=fake.url,
            validate=False,
            release_media="keep",
            polling=v.PollingBounds(min_interval=0.001, max_interval=0.001, first_poll=0.001),
        )
        async with session:
            downloader = Downloader(fake.url, http, session)
            functions: dict[str, Callable[[str, Path], Awaitable[int]]] = {
                "session": downloader.via_session,
                "raw aiohttp": downloader.raw,
                "raw + fsync": downloader.raw_durable,
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            counter = iter(ids)
            # Alternate the variants round by round so drift hits them alike.
            for index in range(args.warmup + rounds):
                for name in variants:
                    path = tmp / f"{name.replace(' ', '-')}-{index}.wav"
                    watch = Stopwatch()
                    got = await functions[name](next(counter), path)
                    elapsed = watch()
                    assert got == size == path.stat().st_size, (got, size)
                    path.unlink()
                    if index >= args.warmup:
                        times[name].append(elapsed)
            peaks: dict[str, float] = {}
            for name in variants:
                path = tmp / f"{name.replace(' ', '-')}-traced.wav"
                queue_id = next(counter)
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                await functions[name](queue_id, path)
                peak = tracemalloc.get_traced_memory()[1] - before
                tracemalloc.stop()
                peaks[name] = peak
                path.unlink()
    rows: list[list[object]] = []
    raw_rate = size / MIB / statistics.median(times["raw aiohttp"])
    for name in variants:
        rate = size / MIB / statistics.median(times[name])
        rows.append([size / MIB, name, rate, rate / raw_rate, peaks[name] / MIB])
    return rows


async def main_async(args: argparse.Namespace) -> int:
    print(f"# Downloads  ({machine()})")
    print(
        f"{args.rounds} timed rounds per variant after {args.warmup} warm-up; "
        "MiB = 2^20 bytes; files written to a temporary directory on the same disk\n"
    )
    total = Stopwatch()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="venice-download-", dir=args.dir) as tmp:
        for size_mib in args.sizes:
            rows += await measure_size(int(size_mib * MIB), args, Path(tmp))
            print(f"  done {size_mib} MiB", file=sys.stderr, flush=True)
    print(
        table(
            [
                "body (MiB)",
                "client",
                "MiB/s",
                "vs raw aiohttp",
                "peak traced memory (MiB)",
            ],
            rows,
        )
    )
    print(f"\ntotal real time {total():.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one small body")
    parser.add_argument("--sizes", type=float, nargs="+", default=[20, 80], help="MiB")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = [4], 2
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
