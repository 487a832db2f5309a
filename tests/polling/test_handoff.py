"""The scheduler's hand-off of polls to its worker tasks."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from venice_audio_async._polling.scheduler import HandOff

pytestmark = pytest.mark.anyio


async def test_items_reach_waiting_workers_first_in_first_out() -> None:
    """Items go to the workers waiting, in order; items put with no worker waiting are kept."""
    queue = HandOff[int]()
    got: list[tuple[str, int]] = []

    async def worker(name: str, count: int) -> None:
        for _ in range(count):
            got.append((name, await queue.get()))

    queue.put(0)  # nobody waits yet: kept
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "a", 2)
        tg.start_soon(worker, "b", 1)
        await anyio.lowlevel.checkpoint()
        queue.put(1)
        queue.put(2)
    assert sorted(item for _, item in got) == [0, 1, 2]
    assert got[0] == ("a", 0)


async def test_an_item_handed_to_a_cancelled_worker_goes_to_the_next() -> None:
    """A worker cancelled after an item was handed to it, before it ran again, loses
    nothing: the next worker to ask gets that item."""
    queue = HandOff[str]()
    worker = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the worker now waits
    queue.put("poll")  # handed to it ...
    worker.cancel()  # ... and cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await worker
    with anyio.fail_after(1):
        assert await queue.get() == "poll"


async def test_a_worker_cancelled_while_waiting_takes_nothing() -> None:
    """A worker cancelled while nothing was handed to it leaves no claim behind."""
    queue = HandOff[str]()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.get)
            await anyio.lowlevel.checkpoint()  # the worker now waits
            scope.cancel()
    queue.put("poll")
    with anyio.fail_after(1):
        assert await queue.get() == "poll"
