"""The session's cap on concurrent HTTP requests, and the polls' share of it.

anyio's ``CapacityLimiter`` makes every acquisition a full pass through the event loop,
even when a slot is free. Here a free slot is taken at once and only a full limiter waits:
the request that follows yields to the loop anyway, so nothing is starved, and a poll costs
one event-loop pass less (measured in ``benchmarks/overhead.py``).

Polls get a *share*: a limiter with a ``parent``. A holder of a share's slot also holds
one of the parent's, so the session never has more than the parent's ``total`` requests in
flight, and polls never more than the share's ``total``. Making the share smaller than the
parent reserves the difference for every other request: however slowly the server answers
polls, ``queue``, ``quote`` and ``complete`` find a slot. (Two disjoint limiters would do
the same for slots, but would let the two together exceed the connection pool, where the
polls could then starve the others by holding every connection.)
"""

from __future__ import annotations

import types

import anyio

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """``async with limiter:`` holds one of ``total`` request slots (and, for a share, one
    of its ``parent``'s)."""

    def __init__(self, total: int, *, parent: RequestLimiter | None = None) -> None:
        self.total = total
        self.parent = parent
        self._limiter = anyio.CapacityLimiter(total)

    async def _acquire(self) -> None:
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()

    async def __aenter__(self) -> None:
        # The share first: a poll waiting for its turn must not sit on a parent slot.
        await self._acquire()
        if self.parent is not None:
            try:
                await self.parent._acquire()
            except BaseException:
                self._limiter.release()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self.parent is not None:
            self.parent._limiter.release()
        self._limiter.release()
