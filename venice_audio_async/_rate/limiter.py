"""The session's cap on concurrent HTTP requests, and the polls' share of it.

A free slot is taken at once, with no pass through the event loop; only a full limiter
waits, in a FIFO queue of asyncio futures (the package runs on asyncio only: aiohttp needs
it). A released slot is handed straight to the first waiter still waiting, so a newcomer
never overtakes the queue; a waiter cancelled just after being handed a slot passes it on.
This costs a poll a fraction of what anyio's ``CapacityLimiter`` did (per-task borrower
bookkeeping and ``current_task`` lookups on every acquire and release; measured in
``benchmarks/overhead.py``).

Polls get a *share*: a limiter with a ``parent``. A holder of a share's slot also holds
one of the parent's, so the session never has more than the parent's ``total`` requests in
flight, and polls never more than the share's ``total``. Making the share smaller than the
parent reserves the difference for every other request: however slowly the server answers
polls, ``queue``, ``quote`` and ``complete`` find a slot. (Two disjoint limiters would do
the same for slots, but would let the two together exceed the connection pool, where the
polls could then starve the others by holding every connection.)
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import deque

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """``async with limiter:`` holds one of ``total`` request slots (and, for a share, one
    of its ``parent``'s)."""

    def __init__(self, total: int, *, parent: RequestLimiter | None = None) -> None:
        self.total = total
        self.parent = parent
        self._free = total
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def borrowed(self) -> int:
        """Slots held right now."""
        return self.total - self._free

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as this task was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to it directly
                return
        self._free += 1

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
