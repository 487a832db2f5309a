"""The session's cap on concurrent HTTP requests, and the polls' share of it.

Each limiter is an :class:`asyncio.Semaphore` (the package runs on asyncio only: aiohttp
needs it): a free slot is taken without a pass through the event loop, waiters are served
first in, first out, and a slot released to a waiter cancelled meanwhile passes on. Why a
share has a parent: docs/architecture.md, "Request slots".
"""

from __future__ import annotations

import asyncio
import types

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """``async with limiter:`` holds one of ``total`` request slots (and, for a share, one
    of its ``parent``'s)."""

    def __init__(self, total: int, *, parent: RequestLimiter | None = None) -> None:
        self.total = total
        self.parent = parent
        self._slots = asyncio.Semaphore(total)
        self._held = 0

    @property
    def borrowed(self) -> int:
        """Slots held right now."""
        return self._held

    async def _acquire(self) -> None:
        await self._slots.acquire()
        self._held += 1

    def _release(self) -> None:
        self._held -= 1
        self._slots.release()

    async def __aenter__(self) -> None:
        # The share first: a poll waiting for its turn must not sit on a parent slot.
        await self._acquire()
        if self.parent is not None:
            try:
                await self.parent._acquire()
            except BaseException:
                self._release()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self.parent is not None:
            self.parent._release()
        self._release()
