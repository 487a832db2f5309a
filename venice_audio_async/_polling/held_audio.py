"""Finished audio held in memory until a caller takes it, and the cap on its total size.

An outcome the scheduler accepted belongs to the session until a caller takes it. Audio
kept only in memory counts against ``Limits.max_untaken_bytes``:

* with ``release_media="complete"`` (or ``"keep"``) the server still has the media, so over
  the cap the oldest untaken audio drops its bytes and is downloaded again when taken;
* with ``"delete_on_retrieve"`` the server deletes the media as it is downloaded, so
  nothing can be dropped: polls wait (:meth:`HeldAudio.wait_for_room`) until callers take
  enough audio to go under the cap again.

The ids of the last :data:`HANDED_RECORD` taken outcomes are remembered so that asking for
one again can say it was handed over, naming the job; for audio stored in a file, with the
outcome (no bytes: the path), so that attaching the job again hands that file over instead
of polling for media the session may have released; for a failure, as such (its media, if
any, was never released: attaching the job again polls it again).
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio

from .._core.outcomes import Failed, Outcome, Succeeded
from .release import ReleaseMedia

__all__ = ["HeldAudio"]

log = logging.getLogger("venice_audio_async")

HANDED_RECORD = 10_000  # ids of recently taken outcomes remembered (for a clear error)

#: What is remembered of a taken outcome: a stored file's outcome, or audio taken from
#: memory, or a failure.
_Handed = Succeeded | Literal["audio", "failed"]


class HeldAudio:
    """Sizes of untaken in-memory audio, oldest first, under one cap. Internal."""

    def __init__(self, *, max_bytes: int | None, release: ReleaseMedia) -> None:
        self._max = max_bytes
        self._release = release
        self._sizes: dict[str, int] = {}  # untaken in-memory audio, oldest first
        self._pinned: set[str] = set()  # of those, the ones never dropped (deleted on retrieve)
        self.bytes = 0
        self._handed: dict[str, _Handed] = {}  # recently taken ids, oldest first (bounded)
        self._release_on_take: set[str] = set()
        self._room = anyio.Event()
        self._room.set()

    def hold(self, queue_id: str, size: int, release: ReleaseMedia | None = None) -> list[str]:
        """Count ``size`` bytes of untaken audio of ``queue_id`` (``release``: its job's
        mode, when not the session's). Returns the ids whose bytes must be dropped to stay
        under the cap (oldest first; never one under ``delete_on_retrieve``, whose file
        could not be downloaded again)."""
        if self._max is None:
            return []
        self._sizes[queue_id] = size
        self.bytes += size
        if (release or self._release) == "delete_on_retrieve":
            self._pinned.add(queue_id)
            if self.bytes > self._max and self._room.is_set():
                self._room = anyio.Event()  # once per time it fills: one warning each
                log.warning(
                    "%d bytes of finished audio wait to be taken (max_untaken_bytes=%d); "
                    "under delete_on_retrieve no further audio is downloaded until "
                    "results are taken",
                    self.bytes,
                    self._max,
                )
            return []
        dropped: list[str] = []
        for oldest in [held for held in self._sizes if held not in self._pinned]:
            if self.bytes <= self._max:
                break
            self.bytes -= self._sizes.pop(oldest)
            dropped.append(oldest)
        return dropped

    @property
    def full(self) -> bool:
        """Whether polls must wait for callers to take audio (``delete_on_retrieve`` only)."""
        return not self._room.is_set()

    async def wait_for_room(self) -> None:
        """Wait until the untaken audio is under the cap again."""
        await self._room.wait()

    def release_when_taken(self, queue_id: str) -> None:
        """The server's copy of ``queue_id`` is released once a caller takes the audio."""
        self._release_on_take.add(queue_id)

    def taken(self, queue_id: str, outcome: Outcome | None = None) -> bool:
        """A caller took ``queue_id``'s ``outcome``. Returns whether its media is to be
        released now."""
        self.bytes -= self._sizes.pop(queue_id, 0)
        self._pinned.discard(queue_id)
        if self._max is not None and self.bytes <= self._max and not self._room.is_set():
            self._room.set()
        self._handed.pop(queue_id, None)  # taken again: now the newest
        handed: _Handed = "failed" if isinstance(outcome, Failed) else "audio"
        if isinstance(outcome, Succeeded) and outcome.audio.path is not None:
            handed = outcome  # no bytes: the file's path
        self._handed[queue_id] = handed
        if len(self._handed) > HANDED_RECORD:
            del self._handed[next(iter(self._handed))]
        if queue_id in self._release_on_take:
            self._release_on_take.discard(queue_id)
            return True
        return False

    def was_taken(self, queue_id: str) -> bool:
        """Whether ``queue_id``'s outcome was handed over recently (bounded record)."""
        return queue_id in self._handed

    def stored(self, queue_id: str) -> Succeeded | None:
        """The outcome handed over recently for ``queue_id`` if its audio was in a file."""
        handed = self._handed.get(queue_id)
        return handed if isinstance(handed, Succeeded) else None

    def took_audio(self, queue_id: str) -> bool:
        """Whether ``queue_id``'s audio was handed over recently (not a failure)."""
        return self._handed.get(queue_id, "failed") != "failed"
