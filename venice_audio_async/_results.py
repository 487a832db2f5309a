"""Handing outcomes over: streams of finished jobs, and waiting for one.

Consumers only ever read a memory object stream the scheduler feeds: no task group or
cancel scope of ours is open while they iterate, so breaking out of the loop or being
cancelled cannot corrupt anything (and the jobs keep being polled: they are paid for).
An outcome is *taken* only when the stream yields it; the ones still unread in a stream
its consumer left stay with the scheduler, for a later ``results()`` or ``wait_for``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._clock import Clock
from ._errors import JobDeadlineExceeded, OutcomeAlreadyTaken
from ._models import Job, Outcome
from ._scheduler import Scheduler

__all__ = ["Delivery", "ResultStream"]


class ResultStream:
    """Async iterator over outcomes, in finish order. Obtained from ``session.results()``.

    It only reads a memory stream: no task group or cancel scope is open while it yields.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Outcome],
        total: int,
        take: Callable[[str], None] = lambda queue_id: None,
    ) -> None:
        self._receive = receive
        self._remaining = total
        self._take = take

    @property
    def remaining(self) -> int:
        """Outcomes not yet yielded."""
        return self._remaining

    def __aiter__(self) -> ResultStream:
        return self

    async def __anext__(self) -> Outcome:
        if self._remaining <= 0:
            raise StopAsyncIteration
        try:
            outcome = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        # Taken here, with no checkpoint before the caller has it: nothing is lost between.
        self._take(outcome.job.queue_id)
        self._remaining -= 1
        return outcome


class Delivery:
    """Subscribes consumers to the scheduler's outcomes."""

    def __init__(self, *, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock

    def _require_tracked(self, job: Job) -> None:
        if self._scheduler.is_tracked(job.queue_id):
            return
        if self._scheduler.was_taken(job.queue_id):
            raise OutcomeAlreadyTaken(job)
        if not self._scheduler.is_tracked(job.queue_id):
            raise ValueError(f"job {job.queue_id} is not tracked by this session; attach it")

    @asynccontextmanager
    async def results(self, jobs: Iterable[Job]) -> AsyncIterator[ResultStream]:
        """The outcomes of ``jobs`` as they finish; see ``AsyncSession.results``.

        Raises:
            OutcomeAlreadyTaken: a job's outcome was already handed over (a ValueError).
            ValueError: a job is not tracked.
        """
        wanted = list(dict.fromkeys(jobs))
        for job in wanted:
            self._require_tracked(job)
        send, receive = anyio.create_memory_object_stream[Outcome](max_buffer_size=len(wanted) or 1)
        try:
            for job in wanted:
                self._scheduler.subscribe(job, send)
            yield ResultStream(receive, len(wanted), self._scheduler.take)
        finally:
            for job in wanted:
                self._scheduler.unsubscribe(job, send)
            send.close()
            receive.close()

    async def wait_outcome(self, job: Job, *, timeout: float | None) -> Outcome:
        """The outcome of one job; see ``AsyncSession.wait_outcome``.

        Raises:
            OutcomeAlreadyTaken: its outcome was already handed over (a ValueError).
            ValueError: the job is not tracked.
            JobDeadlineExceeded: ``timeout`` clock seconds passed first.
        """
        self._require_tracked(job)
        started = self._clock.monotonic()
        async with self.results([job]) as results:
            got: list[Outcome] = []

            async def receive() -> None:
                async for outcome in results:
                    got.append(outcome)
                    return

            if timeout is None:
                await receive()
            else:
                await _within(self._clock, timeout, receive)
            if not got:
                raise JobDeadlineExceeded(job, self._clock.monotonic() - started)
            return got[0]


async def _within(clock: Clock, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn()`` until it returns or ``seconds`` of ``clock`` time pass."""
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep(seconds)
            tg.cancel_scope.cancel()

        async def body() -> None:
            await fn()
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        tg.start_soon(body)
