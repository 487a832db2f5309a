"""The request limiter: slots, their FIFO queue, cancellation, and the polls' share."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from venice_audio_async._rate.limiter import RequestLimiter

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_waiters_get_released_slots_first_in_first_out() -> None:
    """A full limiter queues its waiters and serves them in the order they came."""
    limiter = RequestLimiter(1)
    order: list[int] = []
    release = anyio.Event()

    async def holder() -> None:
        async with limiter:
            await release.wait()

    async def waiter(n: int) -> None:
        async with limiter:
            order.append(n)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await _settle()
        for n in range(3):
            tg.start_soon(waiter, n)
            await _settle()
        assert limiter.borrowed == 1
        assert order == []
        release.set()
    assert order == [0, 1, 2]
    assert limiter.borrowed == 0


async def test_a_newcomer_does_not_overtake_the_queue() -> None:
    """A slot released while tasks wait goes to the first of them, not to a task that
    asks for one right after the release."""
    limiter = RequestLimiter(1)
    await limiter.__aenter__()
    got: list[str] = []

    async def take(name: str) -> None:
        async with limiter:
            got.append(name)

    queued = asyncio.ensure_future(take("queued"))
    await _settle()
    await limiter.__aexit__(None, None, None)
    newcomer = asyncio.ensure_future(take("newcomer"))
    await asyncio.gather(queued, newcomer)
    assert got == ["queued", "newcomer"]


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    """Cancelling a task waiting for a slot leaves the slots as they were; the next
    waiter is served."""
    limiter = RequestLimiter(1)
    await limiter.__aenter__()
    cancelled = asyncio.ensure_future(limiter.__aenter__())
    served: list[bool] = []

    async def take() -> None:
        async with limiter:
            served.append(True)

    second = asyncio.ensure_future(take())
    await _settle()
    cancelled.cancel()
    await _settle()
    await limiter.__aexit__(None, None, None)
    await second
    assert cancelled.cancelled()
    assert served == [True]
    assert limiter.borrowed == 0


async def test_a_slot_handed_to_a_task_being_cancelled_passes_on() -> None:
    """A waiter cancelled after a slot was handed to it, before it ran again, passes
    the slot to the next waiter instead of losing it."""
    limiter = RequestLimiter(1)
    await limiter.__aenter__()
    first = asyncio.ensure_future(limiter.__aenter__())
    second = asyncio.ensure_future(limiter.__aenter__())
    await _settle()
    await limiter.__aexit__(None, None, None)  # hands the slot to ``first`` ...
    first.cancel()  # ... which is cancelled before it runs
    await _settle()
    assert first.cancelled()
    assert second.done()
    assert limiter.borrowed == 1
    await limiter.__aexit__(None, None, None)
    assert limiter.borrowed == 0


async def test_a_share_holds_a_slot_of_its_parent_too() -> None:
    """A share's holder also holds one of the parent's slots; a full parent makes the
    share wait, and cancelling that wait gives the share's slot back."""
    parent = RequestLimiter(2)
    share = RequestLimiter(2, parent=parent)
    async with share:
        assert (share.borrowed, parent.borrowed) == (1, 1)
        async with parent:
            waiting = asyncio.ensure_future(share.__aenter__())
            await _settle()
            assert not waiting.done()
            assert (share.borrowed, parent.borrowed) == (2, 2)
            waiting.cancel()
            await _settle()
            assert (share.borrowed, parent.borrowed) == (1, 2)
    assert (share.borrowed, parent.borrowed) == (0, 0)
