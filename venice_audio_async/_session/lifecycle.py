"""Opening and closing a session's parts, in order: unopened → open → closed, never reopened.

A session opens with ``async with``, or on its first awaited call (:meth:`Lifecycle.start`:
once, however many calls arrive together, shielded so a cancelled first call does not
leave it half open). Opening takes the journal (refused before anything is sent when it
cannot be used), settles the limits in force (``KeyLimits``: the key's own, asked once,
or the documented ones), then starts the session's one task group: the scheduler, and the retries
of journal writes that failed after a payment. The task group runs inside a *host* task
the session owns, not in the opener's task, so it outlives the call that started it and
any task of the loop may close the session (another task than the opener,
``asyncio.wait_for(session.aclose(), t)``, a later notebook cell).

Closing lets media releases already started finish (bounded), stops the host task, closes
the connection pool, the journal and a shared budget's connections (its ``aclose``, if it
has one), and logs the ids of jobs left running (they are paid for) and of outcomes nobody
took. Everything after the drain is shielded and bounded, so a
close that is cancelled (its owner cancelled while it waits) still closes all of it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import types
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from .._client import VeniceClient
from .._core.errors import MissingAPIKeyError, SessionStateError
from .._http.transport import require_asyncio
from .._ledger.ledger import Ledger
from .._polling.scheduler import Scheduler
from .._rate.budget import RequestBudget
from .key_limits import KeyLimits

__all__ = ["Lifecycle", "SessionState"]

log = logging.getLogger("venice_audio_async")

#: How long closing waits for media releases already in flight.
_RELEASE_DRAIN_SECONDS = 5.0
#: How long the shielded rest of closing may take at most (tasks, pool, journal).
_CLEANUP_SECONDS = 10.0


class SessionState(enum.Enum):
    """Where a session stands."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Lifecycle:
    """The session's state and host task (see the module docstring), and whether paid
    calls may be made (``has_key``: an API key was given)."""

    def __init__(
        self,
        *,
        client: VeniceClient,
        budget: RequestBudget,
        ledger: Ledger,
        scheduler: Scheduler,
        has_key: bool,
        key_limits: KeyLimits | None = None,
    ) -> None:
        self.has_key = has_key
        self._key_limits = key_limits
        self._client = client
        self._budget = budget
        self._ledger = ledger
        self._scheduler = scheduler
        self.state = SessionState.UNOPENED
        self._host: asyncio.Task[None] | None = None
        self._stop: anyio.CancelScope | None = None
        self._host_error: BaseException | None = None
        self._running = False  # the host's task group started
        self._tg: anyio.abc.TaskGroup | None = None
        self._opening: asyncio.Task[None] | None = None  # concurrent first calls share it

    def check_open(self, *, paid: bool = False) -> None:
        """Refuse calls on a session not open; ``paid`` calls also need an API key.

        Raises:
            SessionStateError: the session is not open (yet, or any more).
            MissingAPIKeyError: ``paid`` and no API key was given.
        """
        if self.state is SessionState.UNOPENED:
            raise SessionStateError(
                "the session has not started: await any of its calls first "
                "(or use 'async with AsyncSession()')"
            )
        if self.state is SessionState.CLOSED:
            raise SessionStateError("the session is closed")
        if paid:
            self._check_key()

    def _check_key(self) -> None:
        if not self.has_key:
            raise MissingAPIKeyError(
                "no API key: pass AsyncSession(api_key=...) or set VENICE_API_KEY "
                "(create one at https://venice.ai/settings/api)"
            )

    async def start(self, *, paid: bool = False) -> None:
        """Open the session on its first use, then :meth:`check_open` it.

        Concurrent first calls open it once. The opening runs in a task of its own: a
        first call cancelled meanwhile (a timeout around it) leaves the session open for
        the next.

        Raises:
            SessionStateError: the session is closed (it never restarts).
            MissingAPIKeyError: ``paid`` and no API key was given (nothing is opened).
            AsyncioRequiredError: not running on asyncio.
            JournalError: the journal cannot be used; the session stays unstarted, so
                the next call tries again.
        """
        if self.state is SessionState.UNOPENED:
            if paid:
                self._check_key()
            require_asyncio("AsyncSession")
            opening = self._opening
            if opening is None or opening.done():  # the first call, or the last opening failed
                opening = self._opening = asyncio.get_running_loop().create_task(
                    self.open(), name="venice-audio-session-open"
                )
                # Its error is raised to the callers waiting; none may be left to take it.
                opening.add_done_callback(lambda task: task.cancelled() or task.exception())
            # A task of its own, shielded: a caller cancelled (a timeout around the first
            # call, even a plain asyncio cancel) does not cut the opening short.
            await asyncio.shield(opening)
        self.check_open(paid=paid)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn`` in the session's task group. It must never raise: an error there
        would stop the scheduler.

        Raises:
            SessionStateError: the session is not open.
        """
        self.check_open()
        assert self._tg is not None
        self._tg.start_soon(fn)

    async def open(self) -> None:
        """Open the journal and start the background tasks.

        Raises:
            SessionStateError: already open, or closed (a session is never reopened).
            JournalError: the journal cannot be used; nothing was sent.
        """
        opening = self._opening
        starting = opening is not None and not opening.done()
        if self.state is SessionState.OPEN or (starting and asyncio.current_task() is not opening):
            raise SessionStateError(
                "the session is already open (a session started by its first call is "
                "closed with aclose(), not entered with 'async with')"
            )
        if self.state is SessionState.CLOSED:
            raise SessionStateError("a closed session cannot be reopened; create a new one")
        await self._ledger.open()
        if self._key_limits is not None:
            await self._key_limits.settle()  # the key's limits, before the first request
        started = anyio.Event()
        self._host = asyncio.get_running_loop().create_task(
            self._run_host(started), name="venice-audio-session"
        )
        try:
            await started.wait()
        except BaseException:
            await self._cleanup()
            self.state = SessionState.CLOSED
            raise
        if not self._running:  # the scheduler failed to start
            await self._cleanup()
            self.state = SessionState.CLOSED
            error = self._host_error
            self._host_error = None
            if error is not None:
                raise error
            raise SessionStateError("the session's background tasks did not start")
        self.state = SessionState.OPEN

    async def _run_host(self, started: anyio.Event) -> None:
        """The session's task group, in a task of its own, until ``_stop`` is cancelled;
        then the pool and the journal are closed here, shielded and bounded, so a close
        whose caller is cancelled (even by a plain asyncio cancel) still completes."""
        try:
            with anyio.CancelScope() as stop:
                self._stop = stop
                async with anyio.create_task_group() as tg:
                    await tg.start(self._scheduler.run)
                    tg.start_soon(self._ledger.keep_writes_landing)
                    self._tg = tg  # spawn() starts batch flows here
                    self._running = True
                    started.set()
        except Exception as error:
            log.error("the session's background tasks failed: %r", error)
            self._host_error = error  # raised by close
        finally:
            started.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_SECONDS):
                await self._client.aclose()
                await self._ledger.aclose()
                await _close_budget(self._budget)

    async def close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: types.TracebackType | None = None,
    ) -> bool | None:
        """Close everything; harmless when closed already. With the body's exception, as
        ``__aexit__``: that error propagates as it is, never inside an ExceptionGroup.

        Raises:
            Exception: a background task failed (a bug), when the body raised nothing.
        """
        opening = self._opening
        if opening is not None and not opening.done():
            # A first call is opening it: let that finish (bounded, shielded), then close
            # what it opened; closing the unopened parts under it would leave it half open.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP_SECONDS):
                await asyncio.wait([opening])
        if self.state is SessionState.UNOPENED:
            self.state = SessionState.CLOSED
            await self._client.aclose()
            await _close_budget(self._budget)
            return None
        if self.state is not SessionState.OPEN:
            return None
        self.state = SessionState.CLOSED
        try:
            # Media releases already started finish first (bounded), so stored audio does
            # not leave its copy on the server just because the session ended right after.
            with anyio.move_on_after(_RELEASE_DRAIN_SECONDS):
                await self._scheduler.wait_releases()
        finally:
            await self._cleanup()
            self._log_left_over()
        error, self._host_error = self._host_error, None
        if error is not None and exc is None:
            raise error
        return None

    async def _cleanup(self) -> None:
        """Stop the host task and wait (shielded, bounded) for it to close everything."""
        host = self._host
        if host is None:
            return
        if self._stop is not None:
            self._stop.cancel()
        else:
            host.cancel()  # not started yet (the opener was cancelled at once)
        with anyio.CancelScope(shield=True), anyio.move_on_after(2 * _CLEANUP_SECONDS):
            # Waiting never cancels the host: if this caller is cancelled, it finishes alone.
            await asyncio.wait([host])

    def _log_left_over(self) -> None:
        unfinished = self._scheduler.jobs.unfinished()
        if unfinished:
            log.warning(
                "session closed with %d unfinished job(s); their ids: %s",
                len(unfinished),
                ", ".join(j.queue_id for j in unfinished[:20]),
            )
        untaken = self._scheduler.jobs.finished()
        if untaken:
            log.warning(
                "session closed with %d finished job(s) nobody took; their media is kept "
                "on the server; their ids: %s",
                len(untaken),
                ", ".join(j.queue_id for j in untaken[:20]),
            )


async def _close_budget(budget: RequestBudget) -> None:
    """Close a shared budget's connections (``RedisBudget``; it reopens them if used again)."""
    close = getattr(budget, "aclose", None)
    if close is not None:
        await close()
