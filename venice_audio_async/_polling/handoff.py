"""Handing items from one producer task to a set of worker tasks, without a loop pass.

anyio's memory object stream passes through the event loop once more on every receive, even
when an item is waiting; the scheduler hands every poll to a worker, so that pass is paid per
poll. This queue gives an item to a waiting worker's future directly, or keeps it for the
next worker that asks. The package runs on asyncio only (``require_asyncio``), and anyio's
cancellation of a worker is an asyncio task cancellation, which a future wait honours.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["HandOff"]

T = TypeVar("T")


class HandOff(Generic[T]):
    """A first-in first-out hand-off to worker tasks. Internal."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._idle: deque[asyncio.Future[T]] = deque()

    def put(self, item: T) -> None:
        """Give ``item`` to a waiting worker, or keep it for the next one (never waits)."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._items.append(item)

    async def get(self) -> T:
        """The next item, waiting for one if none is kept."""
        if self._items:
            return self._items.popleft()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled: an item handed over meanwhile goes to the next worker, not lost.
            if waiter.done() and not waiter.cancelled():
                self._items.appendleft(waiter.result())
            else:
                waiter.cancel()
            raise
