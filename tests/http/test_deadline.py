"""The retrieve's status deadline: asyncio's timeout, and the anyio stand-in for 3.10."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from venice_audio_async._http.deadline import AnyioDeadline, status_deadline

pytestmark = pytest.mark.anyio

KINDS: list[Callable[[float | None], Any]] = [AnyioDeadline]
if sys.version_info >= (3, 11):
    KINDS.append(status_deadline)


@pytest.mark.parametrize("deadline", KINDS)
async def test_a_passed_deadline_ends_the_block_with_timeout_error(
    deadline: Callable[[float | None], Any],
) -> None:
    """The block is cut short at the deadline and TimeoutError is raised after it."""
    scope = deadline(asyncio.get_running_loop().time() + 0.01)
    with pytest.raises(TimeoutError):
        async with scope:
            await asyncio.sleep(10)
    assert scope.expired()


@pytest.mark.parametrize("deadline", KINDS)
async def test_a_lifted_deadline_lets_the_block_finish(
    deadline: Callable[[float | None], Any],
) -> None:
    """After reschedule(None) the block runs past the first deadline undisturbed."""
    scope = deadline(asyncio.get_running_loop().time() + 0.01)
    async with scope:
        scope.reschedule(None)
        await asyncio.sleep(0.03)
    assert not scope.expired()


@pytest.mark.parametrize("deadline", KINDS)
async def test_a_cancellation_from_outside_stays_a_cancellation(
    deadline: Callable[[float | None], Any],
) -> None:
    """Cancelling the task inside the block is not mistaken for the deadline."""

    async def run() -> None:
        async with deadline(asyncio.get_running_loop().time() + 10):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
