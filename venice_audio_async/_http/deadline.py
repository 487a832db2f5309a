"""The status deadline of a ``retrieve``: a timeout that can be lifted half-way.

``status_deadline(when)`` is asyncio's own :func:`asyncio.timeout_at` on Python 3.11+; on
3.10, which has none, :class:`AnyioDeadline` gives an anyio cancel scope the same three calls
(``async with``, ``reschedule``, ``expired``). Either raises :class:`TimeoutError` at the end
of the block when the deadline cut it short. This module does not import aiohttp.
"""

from __future__ import annotations

import math
import sys
import types

import anyio

__all__ = ["AnyioDeadline", "status_deadline"]


class AnyioDeadline:
    """``asyncio.timeout_at`` for Python 3.10, built on an anyio cancel scope."""

    def __init__(self, when: float | None) -> None:
        self._scope = anyio.CancelScope(deadline=math.inf if when is None else when)

    async def __aenter__(self) -> AnyioDeadline:
        self._scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self._scope.__exit__(exc_type, exc, tb):
            raise TimeoutError from exc  # the deadline cancelled the block

    def reschedule(self, when: float | None) -> None:
        """Move the deadline (``None``: lift it)."""
        self._scope.deadline = math.inf if when is None else when

    def expired(self) -> bool:
        """Whether the deadline cut the block short."""
        return self._scope.cancelled_caught


if sys.version_info >= (3, 11):
    from asyncio import timeout_at as status_deadline
else:
    status_deadline = AnyioDeadline
