"""Bounded answers: size caps, the status timeout, the stall rule, the polls' share of slots.

Each misbehaving server here is a small aiohttp app written for the test (not the
FakeServer), so it can drip, stall or send more than any real answer: a poll that drips its
JSON or sends its headers late, audio that drips or comes slowly but steadily, JSON and
audio bodies far over their caps, polls that never answer, a disk that is full.

Timeouts are real seconds (aiohttp's clock), so they are set to fractions of a second; the
session's own clock is scaled so its backoffs and poll delays cost milliseconds.
"""

from __future__ import annotations

import errno
import itertools
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

import venice_audio_async as v
from venice_audio_async._core.converters import structure_catalogue
from venice_audio_async._rate.retry import is_transient
from venice_audio_async.testing import ScaledClock, audio_bytes, load_default_catalogue
from venice_audio_async.types import FileSink, MemorySink, RetrieveRequest

from ..conftest import API_KEY, TIME_SCALE

pytestmark = pytest.mark.anyio

MODEL = "elevenlabs-music"
UNLIMITED = v.RateLimits(queue_per_minute=None, retrieve_per_minute=None, pooled_per_minute=None)
#: Virtual seconds on the scaled clock: retries within milliseconds.
FAST_RETRY = v.RetryPolicy(initial_backoff=1.0, max_backoff=8.0)
AUDIO = audio_bytes("mp3", 40_000, seed=b"bounds")
STATUS = json.dumps({"status": "PROCESSING", "average_execution_time": 1000}).encode()
#: A status that takes 10 s to drip out, one byte every 50 ms (trailing blanks are valid JSON).
DRIPPING_STATUS = STATUS + b" " * 150

Responder = Callable[[web.Request, "_Server", str], Awaitable[web.StreamResponse]]


class _Server:
    """A minimal Venice on 127.0.0.1: ``retrieve`` answers per job from a script.

    ``plan(queue_id, *responders)``: the job's retrieves get these answers in turn, the
    last one repeating. ``calls`` counts requests per endpoint and job, ``sent`` the body
    bytes each job's retrieves handed to the socket.
    """

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str | None]] = Counter()
        self.sent: Counter[str] = Counter()
        self.active: Counter[str] = Counter()  # retrieves being answered right now, per job
        self._plans: dict[str, list[Responder]] = {}
        self._ids = itertools.count()
        self.quote_body = b'{"quote": 0.5}'
        self.complete_failures: Counter[str] = Counter()  # 503s to answer first, per job
        self.url = ""

    def plan(self, queue_id: str, *responders: Responder) -> None:
        self._plans[queue_id] = list(responders)

    def count(self, endpoint: str, queue_id: str | None = None) -> int:
        return self.calls[(endpoint, queue_id)]

    async def __aenter__(self) -> _Server:
        app = web.Application()
        app.router.add_post("/audio/retrieve", self._retrieve)
        app.router.add_post("/audio/complete", self._complete)
        app.router.add_post("/audio/quote", self._quote)
        app.router.add_post("/audio/queue", self._queue)
        # handler_cancellation: a handler still dripping when the client gives up ends.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        queue_id = (await request.json())["queue_id"]
        self.calls[("retrieve", queue_id)] += 1
        plan = self._plans.get(queue_id, [audio()])
        responder = plan.pop(0) if len(plan) > 1 else plan[0]
        self.active[queue_id] += 1
        try:
            return await responder(request, self, queue_id)
        finally:
            self.active[queue_id] -= 1

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        queue_id = (await request.json())["queue_id"]
        self.calls[("complete", queue_id)] += 1
        if self.complete_failures[queue_id] > 0:
            self.complete_failures[queue_id] -= 1
            return web.json_response({"error": "busy"}, status=503)
        return web.json_response({"success": True})

    async def _quote(self, request: web.Request) -> web.StreamResponse:
        self.calls[("quote", None)] += 1
        return web.Response(body=self.quote_body, content_type="application/json")

    async def _queue(self, request: web.Request) -> web.StreamResponse:
        self.calls[("queue", None)] += 1
        return web.json_response(
            {"model": MODEL, "queue_id": f"queued-{next(self._ids)}", "status": "QUEUED"}
        )


async def _stream(
    request: web.Request,
    server: _Server,
    queue_id: str,
    *,
    content_type: str,
    chunks: Callable[[], AsyncIterator[bytes]],
    length: int | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in chunks():
            await response.write(chunk)
            server.sent[queue_id] += len(chunk)
    except (ConnectionError, RuntimeError):
        pass  # the client gave up, as it should
    return response


def audio(data: bytes = AUDIO) -> Responder:
    """The whole audio at once, with its Content-Length."""

    async def respond(request: web.Request, server: _Server, queue_id: str) -> web.Response:
        server.sent[queue_id] += len(data)
        return web.Response(body=data, content_type="audio/mpeg")

    return respond


def paced(
    data: bytes,
    *,
    chunk: int,
    every: float,
    content_type: str = "audio/mpeg",
    length: int | None = None,
) -> Responder:
    """``data`` in pieces of ``chunk`` bytes, one every ``every`` real seconds."""

    async def respond(request: web.Request, server: _Server, queue_id: str) -> web.StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), chunk):
                yield data[start : start + chunk]
                await anyio.sleep(every)

        return await _stream(
            request, server, queue_id, content_type=content_type, chunks=chunks, length=length
        )

    return respond


def late(seconds: float) -> Responder:
    """The status, after ``seconds`` of silence before any header."""

    async def respond(request: web.Request, server: _Server, queue_id: str) -> web.Response:
        await anyio.sleep(seconds)
        return web.Response(body=STATUS, content_type="application/json")

    return respond


def huge(total: int, *, content_type: str, announce: bool, head: bytes = b"") -> Responder:
    """``total`` bytes (``head`` first, then filler), announced or chunked."""
    filler = (b"x" if content_type == "application/json" else b"\0") * 65536

    async def respond(request: web.Request, server: _Server, queue_id: str) -> web.StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield head
            left = total - len(head)
            while left > 0:
                yield filler[:left]
                left -= len(filler)

        length = total if announce else None
        return await _stream(
            request, server, queue_id, content_type=content_type, chunks=chunks, length=length
        )

    return respond


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    """A fresh misbehaving server."""
    async with _Server() as running:
        yield running


def _session(server: _Server, **kwargs: Any) -> v.AsyncSession:
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server.url,
        "clock": ScaledClock(TIME_SCALE),
        "rate_limits": UNLIMITED,
        "retry": FAST_RETRY,
        "validate": False,
        # Given, as this server has no catalogue: even unvalidated, a model must be known.
        "catalogue": structure_catalogue({"data": load_default_catalogue()}),
    }
    options.update(kwargs)
    return v.AsyncSession(**options)


def _client(server: _Server, **kwargs: Any) -> v.VeniceClient:
    return v.VeniceClient(api_key=API_KEY, base_url=server.url, **kwargs)


def _retrieve(queue_id: str) -> RetrieveRequest:
    return RetrieveRequest(model=MODEL, queue_id=queue_id)


# --------------------------------------------------------------------------- settings


def test_new_settings_have_the_documented_defaults() -> None:
    """1 MiB JSON, 500 MiB files, a 10 s status answer, 1 KiB/s over 30 s."""
    limits, timeouts = v.Limits(), v.Timeouts()
    assert limits.max_json_bytes == 1024 * 1024
    assert limits.max_audio_file_bytes == 500 * 1024 * 1024
    assert timeouts.status == 10.0
    assert (timeouts.min_download_rate, timeouts.stall_window) == (1024.0, 30.0)
    with pytest.raises(ValueError, match="max_json_bytes"):
        v.Limits(max_json_bytes=0)
    with pytest.raises(ValueError, match="stall_window"):
        v.Timeouts(stall_window=0)


def test_polls_get_a_share_that_leaves_room_for_the_rest() -> None:
    """Polls get three quarters of the requests the pool carries, at least one left over."""
    assert v.Limits().concurrent_polls == 12
    assert v.Limits(max_concurrent_requests=2).concurrent_polls == 1
    assert v.Limits(max_concurrent_requests=1).concurrent_polls == 1
    assert v.Limits(max_connections=8, max_concurrent_requests=16).concurrent_polls == 6
    assert v.Limits(max_concurrent_polls=5).concurrent_polls == 5
    assert v.Limits(max_concurrent_polls=99).concurrent_polls == 16


def test_too_large_is_not_transient_and_timeouts_are() -> None:
    """Over a cap is final (not retried); a status timeout or a stall is retried."""
    assert not is_transient(v.ResponseTooLarge("big", endpoint="retrieve"))
    assert is_transient(v.RequestTimeout("slow", endpoint="retrieve"))


# --------------------------------------------------------------------------- status timeout


@pytest.mark.parametrize("slow", ["headers", "body"])
async def test_a_slow_status_answer_times_out(server: _Server, slow: str) -> None:
    """A poll whose headers or JSON drip past Timeouts.status raises RequestTimeout soon."""
    dripping = paced(DRIPPING_STATUS, chunk=1, every=0.05, content_type="application/json")
    server.plan("job", late(30.0) if slow == "headers" else dripping)
    async with _client(server, timeouts=v.Timeouts(status=0.2)) as client:
        started = time.monotonic()
        with anyio.fail_after(5), pytest.raises(v.RequestTimeout) as caught:
            await client.retrieve(_retrieve("job"))
    assert time.monotonic() - started < 2
    assert "Timeouts.status" in str(caught.value)


@pytest.mark.parametrize("slow", ["headers", "body"])
async def test_a_slow_poll_is_retried_and_the_job_completes(server: _Server, slow: str) -> None:
    """The session polls a dripping job again after the status timeout and gets its audio."""
    dripping = paced(DRIPPING_STATUS, chunk=1, every=0.05, content_type="application/json")
    server.plan("job", late(30.0) if slow == "headers" else dripping, audio())
    async with _session(server, timeouts=v.Timeouts(status=0.5)) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(5):
            result = await session.wait_for(job)
    assert result.data == AUDIO
    assert server.count("retrieve", "job") == 2


async def test_the_status_timeout_does_not_cut_a_download(server: _Server) -> None:
    """Once audio streams, Timeouts.status no longer applies: a 1 s download completes."""
    server.plan("job", paced(AUDIO, chunk=4000, every=0.1))
    timeouts = v.Timeouts(status=0.3, min_download_rate=1000.0, stall_window=0.5)
    async with _client(server, timeouts=timeouts) as client:
        result = await client.retrieve(_retrieve("job"))
    assert isinstance(result, v.AudioResult)
    assert result.data == AUDIO


async def test_a_download_that_falls_silent_fails_after_the_read_timeout(server: _Server) -> None:
    """The status deadline stands in for the read timeout only until audio comes: a
    download that then goes quiet for longer than Timeouts.read is a RequestTimeout."""
    server.plan("job", paced(AUDIO, chunk=len(AUDIO) // 4, every=3.0))
    timeouts = v.Timeouts(status=0.2, read=0.3, min_download_rate=None)
    async with _client(server, timeouts=timeouts) as client:
        with anyio.fail_after(2.5):  # the next chunk comes 3 s after the first
            with pytest.raises(v.RequestTimeout):
                await client.retrieve(_retrieve("job"))


async def test_a_status_slower_than_the_read_timeout_allows_still_fails(server: _Server) -> None:
    """With Timeouts.status above Timeouts.read, a silent wait for the status fails after
    the read timeout, as before the status deadline existed."""
    server.plan("job", late(1.0))
    timeouts = v.Timeouts(status=5.0, read=0.2)
    async with _client(server, timeouts=timeouts) as client:
        with anyio.fail_after(0.9), pytest.raises(v.RequestTimeout):
            await client.retrieve(_retrieve("job"))


# --------------------------------------------------------------------------- stall rule


async def test_a_dripping_download_fails_as_stalled_and_leaves_no_file(
    server: _Server, tmp_path: Path
) -> None:
    """Audio slower than min_download_rate over stall_window fails, nothing left on disk."""
    server.plan("job", paced(AUDIO, chunk=20, every=0.02, length=len(AUDIO)))  # 1 KB/s
    timeouts = v.Timeouts(min_download_rate=5000.0, stall_window=0.5)
    async with _client(server, timeouts=timeouts) as client:
        with anyio.fail_after(5), pytest.raises(v.RequestTimeout) as caught:
            await client.retrieve(_retrieve("job"), sink=FileSink(tmp_path / "a.mp3"))
    assert "stalled" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


async def test_a_stalled_download_is_retried_and_completes(server: _Server, tmp_path: Path) -> None:
    """The session fetches a stalled download again (the media is still there)."""
    server.plan("job", paced(AUDIO, chunk=20, every=0.02, length=len(AUDIO)), audio())
    timeouts = v.Timeouts(min_download_rate=5000.0, stall_window=0.5)
    async with _session(server, timeouts=timeouts, output_dir=tmp_path) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(5):
            result = await session.wait_for(job)
    assert result.path is not None
    assert result.path.read_bytes() == AUDIO
    assert server.count("retrieve", "job") == 2
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]


async def test_a_slow_steady_download_completes(server: _Server, tmp_path: Path) -> None:
    """A download above the minimum rate completes, however long it takes in all."""
    # 2,000 bytes every 50 ms (40 KB/s) for about a second, against 5 KB/s over 0.5 s.
    server.plan("job", paced(AUDIO, chunk=2000, every=0.05, length=len(AUDIO)))
    timeouts = v.Timeouts(min_download_rate=5000.0, stall_window=0.5)
    async with _client(server, timeouts=timeouts) as client:
        result = await client.retrieve(_retrieve("job"), sink=FileSink(tmp_path / "a.mp3"))
    assert isinstance(result, v.AudioResult)
    assert (tmp_path / "a.mp3").read_bytes() == AUDIO


# --------------------------------------------------------------------------- size caps


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_json_answer_is_capped_without_reading_it(
    server: _Server, announce: bool
) -> None:
    """A 50 MiB status answer fails with ResponseTooLarge after about 1 MiB, memory bounded."""
    server.plan("job", huge(50 << 20, content_type="application/json", announce=announce))
    async with _client(server) as client:
        tracemalloc.start()
        try:
            with anyio.fail_after(10), pytest.raises(v.ResponseTooLarge) as caught:
                await client.retrieve(_retrieve("job"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "Limits.max_json_bytes" in str(caught.value)
    assert peak < 8 << 20
    assert server.sent["job"] < 16 << 20  # the rest of the 50 MiB was never sent


async def test_a_huge_json_answer_fails_the_job_for_good(server: _Server) -> None:
    """The session does not poll an oversized status again, nor release the media."""
    server.plan("job", huge(50 << 20, content_type="application/json", announce=False))
    async with _session(server) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(10):
            outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.ResponseTooLarge)
    assert server.count("retrieve", "job") == 1
    assert server.count("complete", "job") == 0


async def test_a_huge_json_answer_to_quote_is_capped(server: _Server) -> None:
    """Other JSON answers are capped too: a quote over max_json_bytes is refused, once."""
    server.quote_body = b'{"quote": 0.5, "pad": "' + b"x" * 5000 + b'"}'
    async with _session(server, limits=v.Limits(max_json_bytes=1000)) as session:
        with pytest.raises(v.ResponseTooLarge):
            await session.quote(MODEL, duration_seconds=30)
    assert server.count("quote") == 1


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
async def test_audio_over_the_file_cap_fails_keeps_nothing_and_keeps_the_media(
    server: _Server, tmp_path: Path, announce: bool
) -> None:
    """A body over max_audio_file_bytes: ResponseTooLarge, no file, no retry, no complete."""
    head = AUDIO[:4096]
    server.plan("job", huge(20 << 20, content_type="audio/mpeg", announce=announce, head=head))
    limits = v.Limits(max_audio_file_bytes=100_000)
    async with _session(server, limits=limits, output_dir=tmp_path) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(10):
            outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.ResponseTooLarge)
    assert "Limits.max_audio_file_bytes" in str(outcome.error)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file
    assert server.count("retrieve", "job") == 1
    assert server.count("complete", "job") == 0
    assert server.sent["job"] < 16 << 20


class _CountingSink(MemorySink):
    """A memory sink that remembers how many bytes it was given."""

    def __init__(self) -> None:
        super().__init__(1 << 30)
        self.received = 0

    async def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        await super().write(chunk)


async def test_no_more_than_the_cap_reaches_the_sink(server: _Server) -> None:
    """The download stops at the cap: the sink never sees more than max_audio_file_bytes."""
    server.plan("job", huge(20 << 20, content_type="audio/mpeg", announce=False, head=AUDIO[:16]))
    sink = _CountingSink()
    async with _client(server, limits=v.Limits(max_audio_file_bytes=100_000)) as client:
        with pytest.raises(v.ResponseTooLarge):
            await client.retrieve(_retrieve("job"), sink=sink)
    assert 0 < sink.received <= 100_000


async def test_a_content_length_over_the_cap_is_refused_before_reading(server: _Server) -> None:
    """An announced size over the cap fails before a single byte reaches the sink."""
    server.plan("job", huge(20 << 20, content_type="audio/mpeg", announce=True, head=AUDIO[:16]))
    sink = _CountingSink()
    async with _client(server, limits=v.Limits(max_audio_file_bytes=100_000)) as client:
        with pytest.raises(v.ResponseTooLarge) as caught:
            await client.retrieve(_retrieve("job"), sink=sink)
    assert str(20 << 20) in str(caught.value)
    assert sink.received == 0


# --------------------------------------------------------------------------- poll share


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


async def test_slow_polls_cannot_hold_up_quote_or_submit(server: _Server) -> None:
    """With every poll slot held by polls that never answer, quote and submit go through."""
    hung = [f"hung-{i}" for i in range(8)]
    for queue_id in hung:
        server.plan(queue_id, late(30.0))
    limits = v.Limits(max_concurrent_requests=4)  # polls may hold 3 of the 4
    async with _session(server, limits=limits, timeouts=v.Timeouts(status=None)) as session:
        for queue_id in hung:
            session.attach(MODEL, queue_id)
        await _until(lambda: sum(server.active.values()) == limits.concurrent_polls)
        with anyio.fail_after(2):
            assert (await session.quote(MODEL, duration_seconds=30)).quote == 0.5
            await session.submit(MODEL, "a calm piano")
        assert server.count("queue") == 1
        assert sum(server.active.values()) == limits.concurrent_polls  # still hung


async def test_complete_is_not_held_up_by_slow_polls(server: _Server) -> None:
    """A release retried while every poll slot hangs still goes through at once."""
    server.plan("done", paced(AUDIO, chunk=4000, every=0.1))  # done in about a second
    server.complete_failures["done"] = 1  # its retry comes when the polls hold every slot
    hung = [f"hung-{i}" for i in range(8)]
    for queue_id in hung:
        server.plan(queue_id, late(30.0))
    limits = v.Limits(max_concurrent_requests=4)
    async with _session(server, limits=limits, timeouts=v.Timeouts(status=None)) as session:
        done = session.attach(MODEL, "done")
        await _until(lambda: server.active["done"] == 1)
        for queue_id in hung:
            session.attach(MODEL, queue_id)
        # Every poll slot taken while "done" still downloads: by it and hung polls.
        await _until(lambda: sum(server.active.values()) >= limits.concurrent_polls)
        assert server.active["done"] == 1
        with anyio.fail_after(5):
            assert (await session.wait_for(done)).data == AUDIO
        await _until(lambda: server.count("complete", "done") == 2, seconds=2)


# --------------------------------------------------------------------------- disk full


async def test_a_full_disk_is_a_storage_error_and_keeps_the_media(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing fails the job with AudioStorageError: no file, no retry, no release."""

    async def full(self: FileSink, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSink, "write", full)
    async with _session(server, output_dir=tmp_path) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(5):
            outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.AudioStorageError)
    assert isinstance(outcome.error.__cause__, OSError)
    assert outcome.error.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    assert server.count("retrieve", "job") == 1
    assert server.count("complete", "job") == 0


async def test_a_short_write_is_a_storage_error_not_a_truncation(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file shorter than the bytes received is AudioStorageError, not a retried truncation."""
    real_flush = FileSink._flush

    async def short_flush(self: FileSink) -> None:
        if self._pending:
            self._pending[-1] = self._pending[-1][:-1]  # the disk silently kept a byte less
        await real_flush(self)

    monkeypatch.setattr(FileSink, "_flush", short_flush)
    async with _session(server, output_dir=tmp_path) as session:
        job = session.attach(MODEL, "job")
        with anyio.fail_after(5):
            outcome = await session.wait_outcome(job)
    assert isinstance(outcome, v.Failed)
    assert isinstance(outcome.error, v.AudioStorageError)
    assert list(tmp_path.iterdir()) == []
    assert server.count("retrieve", "job") == 1
    assert server.count("complete", "job") == 0
