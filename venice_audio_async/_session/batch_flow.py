"""Results while a batch is still being queued, and results of jobs handed in over time.

``generate_many`` validates the whole batch first, then a task in the session's task group
submits the requests (paced by the queue budget, first come first served) while the
scheduler already polls the ones queued; every outcome goes into one memory stream the
caller reads, and each is taken (``Scheduler.take``, the one hand-over rule) as it is
yielded. ``results()`` of an async iterable works the same way, with the caller's jobs
instead of submissions. The caller only reads the stream: no task group or cancel
scope of ours is open while it iterates. Leaving the block cancels the feeding task: a
request still waiting for its token is never sent, a ``queue`` call already on the wire
finishes (it is shielded) and its job stays tracked, polled and listed by ``unfinished()``.
"""

from __future__ import annotations

import math
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
)
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core.errors import VeniceError
from .._core.models import Job, QueueRequest
from .._core.outcomes import BatchOutcome, Outcome, Refused
from .._polling.scheduler import Scheduler
from .submit import Destination, Submitter

__all__ = ["BatchFlows", "BatchResults", "FollowedResults"]

T = TypeVar("T", Outcome, BatchOutcome)


@attrs.frozen
class _End:
    """The feed has handed in everything it will."""


@attrs.frozen
class _Raise:
    """The feed failed with an error that is not a job's (a bug): raise it to the reader."""

    error: BaseException


class _Feed(Generic[T]):
    """One memory stream of outcomes, fed by the scheduler and by the feeding task."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        send, receive = anyio.create_memory_object_stream[T | _End | _Raise](math.inf)
        self._send: MemoryObjectSendStream[T | _End | _Raise] = send
        self.receive: MemoryObjectReceiveStream[T | _End | _Raise] = receive
        self._jobs: list[Job] = []
        self.handed_in = 0
        self.closed = False

    def add_job(self, job: Job) -> None:
        if self.closed:
            return
        self._jobs.append(job)
        self.handed_in += 1
        if not self._scheduler.subscribe(job, self._send):
            self.fail(ValueError(f"job {job.queue_id} is not tracked by this session; attach it"))

    def take(self, item: T) -> T:
        """``item`` is being yielded to the caller: the one hand-over rule
        (:meth:`Scheduler.take`) applies to it, as to every outcome that leaves the session.
        A ``Refused`` request has no job: nothing to take."""
        if not isinstance(item, Refused):
            self._scheduler.take(item.job.queue_id)
        return item

    def add(self, item: T) -> None:
        if not self.closed:
            self.handed_in += 1
            self._send.send_nowait(item)

    def end(self) -> None:
        if not self.closed:
            self._send.send_nowait(_End())

    def fail(self, error: BaseException) -> None:
        if not self.closed:
            self._send.send_nowait(_Raise(error))

    def close(self) -> None:
        self.closed = True
        for job in self._jobs:
            self._scheduler.unsubscribe(job, self._send)
        self._send.close()
        self.receive.close()


class _Reader(Generic[T]):
    def __init__(self, feed: _Feed[T]) -> None:
        self._feed: _Feed[T] = feed
        self._taken = 0
        self._ended = False

    @property
    def taken(self) -> int:
        """Outcomes yielded so far."""
        return self._taken

    @property
    def pending(self) -> int:
        """Outcomes of what was handed in so far (queued or refused) not yielded yet."""
        return self._feed.handed_in - self._taken

    async def _next(self) -> T:
        while True:
            if self._ended and self._taken >= self._feed.handed_in:
                raise StopAsyncIteration
            try:
                item = await self._feed.receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            if isinstance(item, _End):
                self._ended = True
                continue
            if isinstance(item, _Raise):
                raise item.error
            self._taken += 1
            # Taken as it is yielded, with no checkpoint before the caller has it: an
            # outcome still unread when the caller leaves stays the session's.
            return self._feed.take(item)


class BatchResults(_Reader[BatchOutcome]):
    """Outcomes of ``generate_many``, in finish order: ``Succeeded``, ``Failed`` or
    ``Refused`` (a request never queued). Iterate with ``async for``.

    .. versionadded:: 0.1.0
    """

    def __aiter__(self) -> BatchResults:
        return self

    async def __anext__(self) -> BatchOutcome:
        return await self._next()


class FollowedResults(_Reader[Outcome]):
    """Outcomes of jobs handed to ``results()`` over time, in finish order.

    .. versionadded:: 0.1.0
    """

    def __aiter__(self) -> FollowedResults:
        return self

    async def __anext__(self) -> Outcome:
        return await self._next()


class BatchFlows:
    """Builds the streams of ``generate_many`` and of ``results()`` over an async source."""

    def __init__(
        self,
        *,
        submitter: Submitter,
        scheduler: Scheduler,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
    ) -> None:
        self._submitter = submitter
        self._scheduler = scheduler
        self._spawn = spawn

    @asynccontextmanager
    async def generate_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination,
        deadline: float | None,
        validate: bool | None,
        take: str | None = None,
    ) -> AsyncIterator[BatchResults]:
        """See ``AsyncSession.generate_many``.

        Raises:
            RequestValidationError: some requests are invalid; nothing was sent.
            JournalError: the journal could not be read; nothing was sent.
        """
        batch = await self._submitter.check_all(requests, validate)
        # Keys derived from each request's content: a re-run queues nothing twice.
        keys = await self._submitter.batch_keys(batch, destination=destination, take=take)
        feed: _Feed[BatchOutcome] = _Feed(self._scheduler)
        submitter = self._submitter

        async def one(request: QueueRequest, key: str | None) -> None:
            try:
                job = await submitter.submit(
                    request, destination=destination, deadline=deadline, validate=False, key=key
                )
            except VeniceError as error:
                feed.add(Refused(request, error))
                return
            except Exception as error:  # a bug: raised to the reader, never in our group
                feed.fail(error)
                return
            feed.add_job(job)

        async def submit_all() -> None:
            # Submits wait for their tokens in request order (the budget is FIFO).
            async with anyio.create_task_group() as tg:
                for request, key in zip(batch, keys, strict=True):
                    tg.start_soon(one, request, key)
            feed.end()

        async with self._fed(feed, submit_all):
            yield BatchResults(feed)

    @asynccontextmanager
    async def follow(self, jobs: AsyncIterable[Job]) -> AsyncIterator[FollowedResults]:
        """Outcomes of the jobs ``jobs`` yields, as they finish; see ``AsyncSession.results``."""
        feed: _Feed[Outcome] = _Feed(self._scheduler)

        async def pull() -> None:
            try:
                async for job in jobs:
                    feed.add_job(job)
            except Exception as error:  # the caller's source failed: raised to the reader
                feed.fail(error)
                return
            feed.end()

        async with self._fed(feed, pull):
            yield FollowedResults(feed)

    @asynccontextmanager
    async def _fed(
        self, feed: _Feed[T], fill: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[None]:
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await fill()

        self._spawn(run)
        try:
            yield
        finally:
            scope.cancel()  # nothing more is sent; queue calls on the wire finish
            feed.close()
