"""Reading an answer's body within its bounds: capped JSON, and audio streamed to a sink.

A JSON body is read up to ``Limits.max_json_bytes`` and an audio body up to
``Limits.max_audio_file_bytes``: never a byte more than the cap plus one, and a
``Content-Length`` over the cap is refused before reading. Audio must also keep
``Timeouts.min_download_rate`` over each ``Timeouts.stall_window`` (:class:`AudioBody`), and
goes into an :class:`~._core.audio.AudioSink` chunk by chunk, the sink aborted
on any failure so nothing partial remains.

This module does not import aiohttp: it reads any :class:`BodyReader` (aiohttp's
``StreamReader`` is one), which ``_http.transport`` hands it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

import anyio

from .._core.audio import AudioSink, sniff_format, sniff_needs
from .._core.config import Timeouts
from .._core.errors import (
    AudioStorageError,
    MalformedResponse,
    RequestTimeout,
    ResponseTooLarge,
    TruncatedResponse,
    VeniceError,
)
from .._core.logging import log
from .._core.models import AudioResult, VeniceHeaders, format_for_media_type

__all__ = ["AudioBody", "BodyReader", "read_json", "read_up_to", "stream_audio"]

_CHUNK = 64 * 1024
_MAX_SNIFF = 1 << 20  # never hold more than this much audio back to recognise its format

T = TypeVar("T")


class BodyReader(Protocol):
    """What is read from an answer's body: up to ``n`` bytes, ``b""`` at its end."""

    async def read(self, n: int) -> bytes: ...


async def read_up_to(content: BodyReader, limit: int) -> bytes:
    """Read until the end of the body or ``limit`` bytes, whichever comes first."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def read_json(
    content: BodyReader, *, endpoint: str, content_length: int | None, cap: int
) -> Any:
    """The decoded JSON body, refused past ``cap`` (``Limits.max_json_bytes``) unread.

    Raises:
        ResponseTooLarge: the body (announced or received) is over the cap.
        MalformedResponse: the body is not JSON.
    """
    length = content_length
    if length is None or length <= cap:
        raw = await read_up_to(content, cap + 1)
        if len(raw) <= cap:
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise MalformedResponse(
                    f"{endpoint} answered {len(raw)} bytes that are not JSON", endpoint=endpoint
                ) from exc
        length = None  # the announced length was wrong: say only what the cap is
    announced = "" if length is None else f" ({length} bytes announced)"
    raise ResponseTooLarge(
        f"{endpoint} answered JSON over Limits.max_json_bytes ({cap} bytes){announced}; "
        "it was not read",
        endpoint=endpoint,
    )


class AudioBody:
    """Reads an audio body within its size cap and above its minimum pace.

    The pace is checked per window: each ``window`` seconds spent waiting for the network
    must bring ``rate * window`` bytes, else the download fails as stalled; a window that
    brings them ends there and the next one starts. Time spent between reads (storing the
    chunks) does not count: the rule judges the server, not the disk. The clock is real
    time, like aiohttp's own timeouts.
    """

    def __init__(self, content: BodyReader, *, cap: int, rate: float | None, window: float) -> None:
        self._content = content
        self._cap = cap
        self._rate = rate
        self._window = window
        self._needed = math.inf if rate is None else rate * window
        self.received = 0
        self._window_start = self._left_at = anyio.current_time()
        self._window_bytes = 0

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (``b""`` at the end).

        Raises:
            ResponseTooLarge: the body went over the cap (one byte past it was read).
            RequestTimeout: the body came slower than the minimum pace.
        """
        n = min(n, self._cap + 1 - self.received)
        if self._rate is None:
            chunk = await self._content.read(n)
        else:
            chunk = await self._paced_read(n)
        self.received += len(chunk)
        if self.received > self._cap:
            raise ResponseTooLarge(
                f"audio is over Limits.max_audio_file_bytes ({self._cap} bytes); nothing was kept",
                endpoint="retrieve",
            )
        return chunk

    async def _paced_read(self, n: int) -> bytes:
        self._window_start += anyio.current_time() - self._left_at
        with anyio.CancelScope(deadline=self._window_start + self._window) as scope:
            chunk = await self._content.read(n)
        if scope.cancelled_caught:
            raise RequestTimeout(
                f"audio download stalled: under {self._rate:g} bytes/s over {self._window:g} s "
                "(Timeouts.min_download_rate, Timeouts.stall_window)",
                endpoint="retrieve",
            )
        self._left_at = anyio.current_time()
        self._window_bytes += len(chunk)
        if self._window_bytes >= self._needed:
            self._window_start, self._window_bytes = self._left_at, 0
        return chunk


async def _store(call: Awaitable[T]) -> T:
    """Await a sink operation; any storage failure becomes an :class:`AudioStorageError`.

    So a full disk or a bad destination fails that one download (the scheduler reports the
    job as failed and keeps its media on the server) instead of escaping as a bare
    ``OSError`` that nothing above expects.
    """
    try:
        return await call
    except VeniceError:
        raise
    except Exception as exc:  # a custom sink's bug must fail one job, not the session
        raise AudioStorageError(f"could not store the audio: {exc!r}") from exc


def _venice_headers(headers: Mapping[str, str]) -> VeniceHeaders:
    def number(name: str) -> float | None:
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            return None

    return VeniceHeaders(
        audio_format=headers.get("x-venice-audio-format"),
        inference_time=number("x-venice-inference-time"),
        model_id=headers.get("x-venice-model-id"),
        model_name=headers.get("x-venice-model-name"),
        audio_duration=number("x-venice-audio-duration"),
        audio_subtitle=headers.get("x-venice-audio-subtitle"),
        version=headers.get("x-venice-version"),
    )


async def _sniffed_head(body: AudioBody) -> bytes:
    """The first bytes of the audio, as many as its container needs to be recognised."""
    head = b""
    while len(head) < _MAX_SNIFF:
        needed = sniff_needs(head)
        if len(head) >= needed:
            break
        chunk = await body.read(max(needed - len(head), 16))
        if not chunk:
            break
        head += chunk
    return head


async def stream_audio(
    content: BodyReader,
    *,
    media_type: str,
    content_length: int | None,
    headers: Mapping[str, str],
    sink: AudioSink,
    cap: int,
    timeouts: Timeouts,
) -> AudioResult:
    """Stream a non-JSON ``retrieve`` answer into ``sink`` and describe what was stored.

    ``headers`` are the answer's, with lower-case names; ``cap`` is
    ``Limits.max_audio_file_bytes``.

    Raises:
        ResponseTooLarge: the announced or received audio is over ``cap``.
        RequestTimeout: the audio came slower than ``Timeouts.min_download_rate``.
        MalformedResponse: the answer is neither labelled nor recognisable as audio.
        TruncatedResponse: fewer bytes came than ``Content-Length`` announced.
        AudioStorageError: the sink could not store the audio.
    """
    # The media type decides "audio"; the magic bytes decide which container, because
    # labels have been seen wrong in third-party reports and octet-stream says nothing.
    declared = format_for_media_type(media_type)
    length = content_length
    if length is not None and length > cap:
        raise ResponseTooLarge(
            f"audio of {length} bytes is over Limits.max_audio_file_bytes ({cap} bytes); "
            "it was not downloaded",
            endpoint="retrieve",
        )
    body = AudioBody(
        content, cap=cap, rate=timeouts.min_download_rate, window=timeouts.stall_window
    )
    head = await _sniffed_head(body)
    sniffed = sniff_format(head)
    audio_format = sniffed or declared
    if audio_format is None:
        raise MalformedResponse(
            f"retrieve answered {media_type!r} that is neither a status nor audio",
            endpoint="retrieve",
        )
    if declared is not None and sniffed is not None and sniffed != declared:
        log.info("audio labelled %s is %s; trusting the bytes", media_type, sniffed)
    await _store(
        sink.begin(audio_format=audio_format, content_type=media_type, content_length=length)
    )
    try:
        if head:
            await _store(sink.write(head))
        while chunk := await body.read(_CHUNK):
            await _store(sink.write(chunk))
        # Every byte read went to the sink, so what the body received is the size stored.
        size = body.received
        if length is not None and size != length:
            raise TruncatedResponse(
                f"audio body has {size} of {length} announced bytes", endpoint="retrieve"
            )
        data, path = await _store(sink.finish(size))
    except BaseException:
        await sink.abort()
        raise
    return AudioResult(
        content_type=media_type,
        format=audio_format,
        size=size,
        data=data,
        path=path,
        venice=_venice_headers(headers),
    )
