"""Clocks: where the library reads the time and how it waits.

Everything time-dependent (rate limiters, the polling scheduler, retry backoff, the fake
server's job timelines) reads time through a :class:`Clock`, so that:

* unit tests run in virtual time (:class:`ManualClock`: ``sleep`` returns when the test
  advances the clock, nothing really waits);
* integration tests and benchmarks run the real :class:`~venice_audio_async.testing.FakeServer`
  with a time scale (:class:`ScaledClock`): a "60 s" job takes 60 ms, and the client's
  limits, ``Retry-After`` values and ETA hints are read in the same scaled seconds.

A :class:`ScaledClock` derives its readings from the system clocks divided by the scale, with
no per-instance origin, so two processes with the same scale agree on "now" (the fake server's
``x-ratelimit-reset-*`` epochs make sense to a client in another process).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Protocol, runtime_checkable

import anyio

from .config import check_number

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """The time source and sleeper used by the library.

    ``monotonic()`` is for durations and deadlines, ``time()`` is the Unix epoch (seconds)
    and is only used to interpret server headers that carry absolute times.
    """

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (returns at once for ``seconds <= 0``)."""
        ...

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        """Wait until ``event`` is set or ``seconds`` of this clock's time have passed."""
        ...


class SystemClock:
    """The real clocks and :func:`anyio.sleep`."""

    # The builtins themselves, not wrappers: a poll reads the clock several times.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        if seconds == math.inf:  # no timer (and no cancel scope) needed: the common idle case
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, seconds)):
            await event.wait()

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """Real time, scaled: with ``scale=0.001`` one clock second lasts one real millisecond.

    Used to run the fake server and the client against each other quickly. Both sides must
    use the same scale.
    """

    def __init__(self, scale: float) -> None:
        check_number("scale", scale)
        self.scale = scale

    def monotonic(self) -> float:
        return time.monotonic() / self.scale

    def time(self) -> float:
        return time.time() / self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) * self.scale)

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        if seconds == math.inf:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, seconds) * self.scale):
            await event.wait()

    def __repr__(self) -> str:
        return f"ScaledClock(scale={self.scale!r})"


class ManualClock:
    """A virtual clock for unit tests: time moves only when :meth:`advance` is called.

    ``sleep`` parks the caller until the clock has been advanced past its wake-up time.
    :meth:`run_until_idle`-style helpers are deliberately absent: tests advance explicitly,
    or use :meth:`advance_to_next` to jump to the earliest pending wake-up.
    """

    def __init__(self, start: float = 0.0, *, epoch: float = 1_800_000_000.0) -> None:
        self._now = start
        self._epoch_offset = epoch - start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._epoch_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), event))
        await event.wait()

    async def wait(self, event: anyio.Event, seconds: float) -> None:
        if seconds <= 0 or event.is_set():
            await anyio.lowlevel.checkpoint()
            return
        # Setting the caller's own event on time-out wakes it; a later set is harmless.
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), event))
        await event.wait()

    @property
    def pending(self) -> int:
        """How many sleepers are waiting."""
        return len(self._sleepers)

    def next_wakeup(self) -> float | None:
        """The earliest pending wake-up time, or ``None``."""
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()

    def advance_to_next(self) -> bool:
        """Jump to the earliest pending wake-up; return ``False`` when nobody sleeps."""
        wake = self.next_wakeup()
        if wake is None:
            return False
        self.advance(max(0.0, wake - self._now))
        return True

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"
