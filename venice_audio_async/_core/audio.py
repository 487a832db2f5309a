"""Where finished audio goes, and how its container is recognised.

:class:`Destinations` decides per job: a file or folder given for it, the session's
``output_dir``, or memory, and names the file (the batch line's name, else the prompt and
the start of the ``queue_id``).

A sink receives a download in chunks and either commits it whole or leaves nothing:

* :class:`MemorySink` keeps the bytes, refusing more than a cap;
* :class:`FileSink` writes to a temporary name beside the target, checks that the file on
  disk holds every byte received and that those are as many as ``Content-Length`` announced,
  then renames (``os.replace`` is atomic on one filesystem), so a file at the target path is
  always complete. Writes are batched (1 MiB) and done in a worker thread to keep the event
  loop free without a thread hop per network chunk.

:func:`sniff_format` recognises MP3, WAV and FLAC from magic bytes, including FLAC preceded
by an ID3 tag (seen in some Venice output).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.to_thread

from .errors import AudioStorageError, ResponseTooLarge, TruncatedResponse
from .models import AudioFormat

__all__ = [
    "AudioSink",
    "Destinations",
    "FileSink",
    "MemorySink",
    "SinkFactory",
    "remove_partial_downloads",
    "safe_stem",
    "sniff_format",
]

_WRITE_BATCH = 1024 * 1024

#: The temporary name of a download in progress: ``.{final name}.{8 hex digits}.part``.
_PARTIAL_NAME = re.compile(r"^\.(?P<final>.+)\.[0-9a-f]{8}\.part$")
_AUDIO_SUFFIXES = (".mp3", ".wav", ".flac")
#: Temporary files this process is writing now: never taken for leftovers.
_writing: set[Path] = set()


def _partial_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")


def remove_partial_downloads(folder: Path, *, final_name: str | None = None) -> list[Path]:
    """Delete the temporary files that killed downloads left in ``folder``; blocking.

    Only names :class:`FileSink` gives its temporaries are touched: of audio files
    (``.{stem}.{mp3,wav,flac}.{hex}.part``), or of ``final_name`` alone when given; never
    one this process is writing now. Returns the files removed.
    """
    removed: list[Path] = []
    try:
        candidates = list(folder.resolve().iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = _PARTIAL_NAME.match(path.name)
        if match is None or path in _writing or not path.is_file():
            continue
        final = match["final"]
        if final_name is not None and final != final_name:
            continue
        if final_name is None and not final.lower().endswith(_AUDIO_SUFFIXES):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _id3_size(head: bytes) -> int | None:
    """Total size of a leading ID3v2 tag (header + body + optional footer)."""
    if len(head) < 10 or head[:3] != b"ID3":
        return None
    size = 0
    for byte in head[6:10]:
        size = (size << 7) | (byte & 0x7F)  # syncsafe integer
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def sniff_format(head: bytes) -> AudioFormat | None:
    """The container of an audio file from its first bytes, or ``None`` if unrecognised.

    Give at least 12 bytes; with an ID3 tag, enough bytes to see past it (else the tag is
    assumed to belong to an MP3, its most common owner).
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    tag = _id3_size(head)
    if tag is not None:
        after = head[tag : tag + 4]
        if after == b"fLaC":
            return "flac"
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "mp3"  # MPEG audio frame sync
    return None


def sniff_needs(head: bytes) -> int:
    """How many leading bytes :func:`sniff_format` wants to decide about ``head``."""
    tag = _id3_size(head)
    return 12 if tag is None else tag + 4


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(text: str, *, max_length: int = 80) -> str:
    """A file-name stem derived from free text (a prompt): no separators, no dot-files."""
    stem = _UNSAFE.sub("-", text).strip("-._")[:max_length].strip("-._")
    return stem or "audio"


class AudioSink(Protocol):
    """Receives one download. ``finish`` commits it; ``abort`` leaves nothing behind."""

    async def begin(
        self, *, audio_format: AudioFormat, content_type: str, content_length: int | None
    ) -> None:
        """Called once, before the first chunk."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Store one chunk."""
        ...

    async def finish(self, size: int) -> tuple[bytes | None, Path | None]:
        """Commit the download; return the bytes (memory) or the final path (file)."""
        ...

    async def abort(self) -> None:
        """Drop everything received so far."""
        ...


class MemorySink:
    """Keeps the audio in memory, up to ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    async def begin(
        self, *, audio_format: AudioFormat, content_type: str, content_length: int | None
    ) -> None:
        if content_length is not None and content_length > self.max_bytes:
            raise ResponseTooLarge(
                f"audio of {content_length} bytes exceeds the in-memory cap of "
                f"{self.max_bytes} bytes; download it to a file instead",
                endpoint="retrieve",
            )

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.max_bytes:
            self._parts.clear()
            raise ResponseTooLarge(
                f"audio exceeds the in-memory cap of {self.max_bytes} bytes; "
                "download it to a file instead",
                endpoint="retrieve",
            )
        self._parts.append(chunk)

    async def finish(self, size: int) -> tuple[bytes | None, Path | None]:
        data = b"".join(self._parts)
        self._parts.clear()
        return data, None

    async def abort(self) -> None:
        self._parts.clear()


class FileSink:
    """Writes the audio to ``path`` atomically.

    The file is renamed into place only once it holds every byte received, and as many as
    the answer's ``Content-Length`` announced (when it did); otherwise the temporary file is
    removed. A write the disk refuses (``OSError``, such as ``ENOSPC``) or a file shorter than
    what was written is an :class:`~venice_audio_async.AudioStorageError`; fewer bytes than
    announced is a :class:`~venice_audio_async.TruncatedResponse`.

    When ``path`` is a directory (``directory=True``, or an existing one), the file is named
    ``{stem}.{ext}`` inside it (the extension from the detected format, the stem sanitised so
    nothing escapes the directory); the directory is created if missing.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, stem: str = "audio", directory: bool | None = None
    ) -> None:
        self._target = Path(path)
        # None: decided at download time (an existing directory is one). The session says
        # True for its output folder so a folder not created yet is never taken for a file.
        self._directory = directory
        self._stem = safe_stem(stem)
        self._final: Path | None = None
        self._temp: Path | None = None
        self._file: IO[bytes] | None = None
        self._pending: list[bytes] = []  # chunks not written yet (no copying until then)
        self._pending_size = 0
        self._announced: int | None = None

    def _choose_final(self, audio_format: AudioFormat) -> Path:
        if self._directory or (self._directory is None and self._target.is_dir()):
            self._target.mkdir(parents=True, exist_ok=True)
            directory = self._target.resolve()
            final = (directory / f"{self._stem}.{audio_format}").resolve()
            if final.parent != directory:  # belt and braces: the stem is already sanitised
                raise ValueError(f"refusing to write outside {directory}")
            return final
        return self._target

    async def begin(
        self, *, audio_format: AudioFormat, content_type: str, content_length: int | None
    ) -> None:
        def choose() -> tuple[Path, Path]:
            final = self._choose_final(audio_format)
            return final, _partial_name(final).resolve()  # resolved: compared by resume

        final, temp = await anyio.to_thread.run_sync(choose)
        self._final, self._temp = final, temp
        self._announced = content_length
        _writing.add(temp)
        self._file = await anyio.to_thread.run_sync(temp.open, "wb")

    async def _flush(self) -> None:
        if self._pending and self._file is not None:
            data, self._pending, self._pending_size = self._pending, [], 0
            await anyio.to_thread.run_sync(self._file.writelines, data)

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _WRITE_BATCH:
            await self._flush()

    async def finish(self, size: int) -> tuple[bytes | None, Path | None]:
        """Commit the file.

        Raises:
            TruncatedResponse: fewer bytes were received than ``Content-Length`` announced.
            AudioStorageError: the file on disk does not hold every byte received.
            OSError: the disk refused a write, the flush or the rename.
        """
        announced = self._announced
        if announced is not None and size != announced:
            await self.abort()
            raise TruncatedResponse(
                f"received {size} of {announced} announced bytes", endpoint="retrieve"
            )
        try:
            await self._flush()
        except BaseException:
            await self.abort()
            raise
        file, temp, final = self._file, self._temp, self._final
        if file is None or temp is None or final is None:
            raise RuntimeError("finish() called before begin()")

        def _commit() -> int:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            written = temp.stat().st_size
            if written == size:
                os.replace(temp, final)
                _writing.discard(temp)
            return written

        try:
            written = await anyio.to_thread.run_sync(_commit)
        except BaseException:
            await self.abort()
            raise
        self._file = None
        if written != size:
            await self.abort()
            # Every byte was received; the disk kept fewer: a storage failure, not the network's.
            raise AudioStorageError(
                f"the file on disk has {written} of the {size} bytes written to it"
            )
        self._temp = None
        return None, final

    async def abort(self) -> None:
        # Shielded: cleanup must finish even when the download is being cancelled.
        with anyio.CancelScope(shield=True):
            file, temp = self._file, self._temp
            self._file = self._temp = None
            self._pending, self._pending_size = [], 0

            def _remove() -> None:
                if file is not None:
                    file.close()
                if temp is not None:
                    temp.unlink(missing_ok=True)
                    _writing.discard(temp)

            await anyio.to_thread.run_sync(_remove)


#: Builds a fresh sink for one download attempt of a job.
SinkFactory = Callable[[], AudioSink]


class Destinations:
    """Where each job's audio goes (see the module docstring)."""

    def __init__(self, *, output_dir: Path | None, memory_limit: int) -> None:
        self.output_dir = output_dir
        self._memory_limit = memory_limit

    def target(self, destination: str | os.PathLike[str] | None) -> Path | None:
        """The file or folder for a job (``None``: keep the audio in memory)."""
        return Path(destination) if destination is not None else self.output_dir

    def sinks(self, target: Path | None, stem: str) -> SinkFactory:
        """A factory of sinks writing into ``target`` as ``stem`` (memory for ``None``)."""
        limit = self._memory_limit
        # The session's output folder is a folder even before it exists; a destination
        # given per job is a folder if it exists as one, else the file to write.
        directory = True if target is not None and target == self.output_dir else None

        def make() -> AudioSink:
            if target is None:
                return MemorySink(limit)
            return FileSink(target, stem=stem, directory=directory)

        return make

    @staticmethod
    def stem(prompt: str, queue_id: str, name: str | None = None) -> str:
        """A job's file name stem: ``name``, else its prompt and the start of its id."""
        return name or f"{safe_stem(prompt, max_length=40)}-{queue_id[:8]}"
