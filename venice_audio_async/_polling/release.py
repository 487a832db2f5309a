"""Releasing the server's copy of finished media with ``complete``, once the audio is stored.

Each release runs in its own task (a poll worker must not sit through ``complete``'s
retries), on the request slots the polls do not use, and is retried as every idempotent
request is (:class:`~._rate.retry.Retrier`). A release that still fails is logged, never raised:
the audio is safe, and the server expires the media on its own. The session's close waits
(bounded) for releases in flight, so stored audio does not leave its copy behind just
because the session ended right after it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import anyio.abc

from .._client import VeniceClient
from .._core.errors import VeniceError
from .._core.models import CompleteRequest, Job
from .._rate.limiter import RequestLimiter
from .._rate.retry import Retrier

__all__ = ["RELEASE_MODES", "MediaReleaser", "ReleaseHook", "ReleaseMedia"]

log = logging.getLogger("venice_audio_async")

#: What happens to the server's copy of a job's media once the audio is stored.
ReleaseMedia = Literal["complete", "delete_on_retrieve", "keep"]
RELEASE_MODES: tuple[ReleaseMedia, ...] = ("complete", "delete_on_retrieve", "keep")

#: Awaited after a job's media was released on the server.
ReleaseHook = Callable[[Job], Awaitable[None]]


class MediaReleaser:
    """Sends ``complete`` for stored jobs and counts the releases."""

    def __init__(
        self,
        *,
        client: VeniceClient,
        retrier: Retrier,
        limiter: RequestLimiter,
        on_released: ReleaseHook | None = None,
    ) -> None:
        self._client = client
        self._retrier = retrier
        self._limiter = limiter
        self._on_released = on_released
        self.released = 0
        self._in_flight = 0
        self._drained = anyio.Event()

    def start(self, job: Job, tg: anyio.abc.TaskGroup) -> None:
        """Release ``job``'s media in a task of ``tg`` (only once its audio is stored)."""
        self._in_flight += 1
        tg.start_soon(self._release, job)

    async def wait(self) -> None:
        """Wait until no release is in flight."""
        while self._in_flight:
            await self._drained.wait()

    async def _release(self, job: Job) -> None:
        try:
            await self._send_complete(job)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()
                self._drained = anyio.Event()

    async def _send_complete(self, job: Job) -> None:
        request = CompleteRequest(model=job.model, queue_id=job.queue_id)
        try:
            result = await self._retrier.call(
                "complete", lambda: self._client.complete(request), limiter=self._limiter
            )
        except VeniceError as error:
            log.warning("could not release media of job %s: %s", job.queue_id, error)
            return
        if result.success:
            self.released += 1
            if self._on_released is not None:
                with anyio.CancelScope(shield=True):
                    await self._on_released(job)
