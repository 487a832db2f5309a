"""Opening and closing a session's parts, in order: unopened → open → closed, never reopened.

Opening takes the journal (refused before anything is sent when it cannot be used), then
starts the session's one task group: the scheduler, and the retries of journal writes that
failed after a payment. Closing lets media releases already started finish (bounded), stops
the task group, closes the connection pool, the journal and a shared budget's connections
(its ``aclose``, if it has one; shielded, so a cancelled close still closes), and logs the
ids of jobs left running: they are paid for.
"""

from __future__ import annotations

import enum
import logging
import types

import anyio
import anyio.abc

from ._budget import RequestBudget
from ._client import VeniceClient
from ._errors import SessionStateError
from ._ledger import Ledger
from ._scheduler import Scheduler

__all__ = ["Lifecycle", "SessionState"]

log = logging.getLogger("venice_audio_async")

#: How long closing waits for media releases already in flight.
_RELEASE_DRAIN_SECONDS = 5.0


class SessionState(enum.Enum):
    """Where a session stands."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Lifecycle:
    """The session's state and task group (see the module docstring)."""

    def __init__(
        self, *, client: VeniceClient, budget: RequestBudget, ledger: Ledger, scheduler: Scheduler
    ) -> None:
        self._client = client
        self._budget = budget
        self._ledger = ledger
        self._scheduler = scheduler
        self.state = SessionState.UNOPENED
        self._tg: anyio.abc.TaskGroup | None = None

    def check_open(self) -> None:
        """Raises:
        SessionStateError: the session is not open (yet, or any more)."""
        if self.state is SessionState.UNOPENED:
            raise SessionStateError("the session is not open; use 'async with AsyncSession()'")
        if self.state is SessionState.CLOSED:
            raise SessionStateError("the session is closed")

    async def open(self) -> None:
        """Open the journal and start the background tasks.

        Raises:
            SessionStateError: already open, or closed (a session is never reopened).
            JournalError: the journal cannot be used; nothing was sent.
        """
        if self.state is SessionState.OPEN:
            raise SessionStateError("the session is already open")
        if self.state is SessionState.CLOSED:
            raise SessionStateError("a closed session cannot be reopened; create a new one")
        await self._ledger.open()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._scheduler.run)
            tg.start_soon(self._ledger.keep_writes_landing)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            await self._client.aclose()
            await self._ledger.aclose()
            await _close_budget(self._budget)
            self.state = SessionState.CLOSED
            raise
        self._tg = tg
        self.state = SessionState.OPEN

    async def close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: types.TracebackType | None = None,
    ) -> bool | None:
        """Close everything; harmless when closed already. With the body's exception, as
        ``__aexit__``: that error propagates as it is, never inside an ExceptionGroup."""
        if self.state is SessionState.UNOPENED:
            self.state = SessionState.CLOSED
            await self._client.aclose()
            await _close_budget(self._budget)
            return None
        if self.state is not SessionState.OPEN or self._tg is None:
            return None
        self.state = SessionState.CLOSED
        tg, self._tg = self._tg, None
        # Media releases already started finish first (bounded), so stored audio does not
        # leave its copy on the server just because the session ended right after it.
        with anyio.move_on_after(_RELEASE_DRAIN_SECONDS):
            await self._scheduler.wait_releases()
        tg.cancel_scope.cancel()
        try:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # The body's own error: stop the scheduler and let that error propagate
                # as it is, rather than wrapped in an ExceptionGroup by the task group.
                await tg.__aexit__(None, None, None)
                return None
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await self._client.aclose()
                await self._ledger.aclose()
                await _close_budget(self._budget)
            unfinished = self._scheduler.unfinished()
            if unfinished:
                log.warning(
                    "session closed with %d unfinished job(s); their ids: %s",
                    len(unfinished),
                    ", ".join(j.queue_id for j in unfinished[:20]),
                )


async def _close_budget(budget: RequestBudget) -> None:
    """Close a shared budget's connections (``RedisBudget``; it reopens them if used again)."""
    close = getattr(budget, "aclose", None)
    if close is not None:
        await close()
