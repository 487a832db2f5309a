"""The body rules of ``_http_body`` run on any reader, no aiohttp response needed."""

from __future__ import annotations

import pytest

import venice_audio_async as v
from venice_audio_async._http.body import read_json, stream_audio
from venice_audio_async.testing import audio_bytes
from venice_audio_async.types import MemorySink


class _Reader:
    """A body handed out in small chunks; counts what was read from it."""

    def __init__(self, body: bytes, chunk: int = 7) -> None:
        self._body = body
        self._chunk = chunk
        self.read_bytes = 0

    async def read(self, n: int) -> bytes:
        part = self._body[self.read_bytes : self.read_bytes + min(n, self._chunk)]
        self.read_bytes += len(part)
        return part


class _Sink(MemorySink):
    """A memory sink that remembers whether it was aborted."""

    aborted = False

    async def abort(self) -> None:
        self.aborted = True
        await super().abort()


@pytest.mark.anyio
async def test_json_under_a_false_length_is_read_no_further_than_the_cap() -> None:
    """A Content-Length that understates the body does not make the reader read past the cap."""
    reader = _Reader(b"[" + b"1," * 1000 + b"1]")
    with pytest.raises(v.ResponseTooLarge, match="it was not read"):
        await read_json(reader, endpoint="retrieve", content_length=10, cap=100)
    assert reader.read_bytes == 101


@pytest.mark.anyio
async def test_audio_shorter_than_announced_aborts_the_sink() -> None:
    """Fewer audio bytes than Content-Length announced: TruncatedResponse, the sink aborted."""
    audio = audio_bytes("wav", 4096)
    sink = _Sink(max_bytes=1 << 20)
    with pytest.raises(v.TruncatedResponse, match="4096 of 5000"):
        await stream_audio(
            _Reader(audio, chunk=1000),
            media_type="audio/wav",
            content_length=5000,
            headers={},
            sink=sink,
            cap=1 << 20,
            timeouts=v.Timeouts(),
        )
    assert sink.aborted


@pytest.mark.anyio
async def test_audio_is_streamed_whole_with_the_sniffed_format() -> None:
    """Audio labelled as octet-stream is stored whole and described by its bytes."""
    audio = audio_bytes("flac", 3000)
    result = await stream_audio(
        _Reader(audio, chunk=500),
        media_type="application/octet-stream",
        content_length=len(audio),
        headers={"x-venice-audio-duration": "2.5"},
        sink=MemorySink(max_bytes=1 << 20),
        cap=1 << 20,
        timeouts=v.Timeouts(),
    )
    assert (result.format, result.size, result.data) == ("flac", 3000, audio)
    assert result.venice.audio_duration == 2.5
