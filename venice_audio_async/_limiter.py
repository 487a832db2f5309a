"""The session's cap on concurrent HTTP requests.

anyio's ``CapacityLimiter`` makes every acquisition a full pass through the event loop,
even when a slot is free. Here a free slot is taken at once and only a full limiter waits:
the request that follows yields to the loop anyway, so nothing is starved, and a poll costs
one event-loop pass less (measured in ``benchmarks/overhead.py``).
"""

from __future__ import annotations

import types

import anyio

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """``async with limiter:`` holds one of ``total`` request slots."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._limiter = anyio.CapacityLimiter(total)

    @property
    def borrowed(self) -> int:
        """Slots in use."""
        return int(self._limiter.borrowed_tokens)

    async def __aenter__(self) -> None:
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            await self._limiter.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self._limiter.release()
