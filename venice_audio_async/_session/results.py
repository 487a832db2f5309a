"""Handing outcomes over: streams of finished jobs, waiting for one, and the calls built on
them (``results()``, ``wait_for()``, ``generate()``, ``generate_many()``).

Consumers only ever read a memory object stream the scheduler feeds: no task group or
cancel scope of ours is open while they iterate, so breaking out of the loop or being
cancelled cannot corrupt anything (and the jobs keep being polled: they are paid for).
An outcome is *taken* only when the stream yields it; the ones still unread in a stream
its consumer left stay with the scheduler, for a later ``results()`` or ``wait_for``.

:class:`Delivery` subscribes consumers to the scheduler; :class:`Results` is the session's
side of it: each call checks the session is open, then submits (``generate``), delivers,
or hands the stream to :class:`~._session.batch_flow.BatchFlows` (jobs arriving over time,
``generate_many``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .._core.clock import Clock
from .._core.config import check_number
from .._core.errors import JobDeadlineExceeded, OutcomeAlreadyTaken
from .._core.models import AudioResult, Job, QueueOptions, QueueRequest
from .._core.outcomes import Outcome, Succeeded
from .._polling.scheduler import Scheduler
from .batch_flow import BatchFlows, BatchResults, FollowedResults
from .submit import Destination, Submitter

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

__all__ = ["Delivery", "OpenCheck", "ResultStream", "Results"]


class OpenCheck(Protocol):
    """Refuses a call on a session not open; a ``paid`` call also needs an API key."""

    def __call__(self, *, paid: bool = False) -> None: ...


class ResultStream:
    """Async iterator over outcomes, in finish order. Obtained from ``session.results()``.

    It only reads a memory stream: no task group or cancel scope is open while it yields.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Outcome],
        total: int,
        take: Callable[[str], None],
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
        # Taken as it is yielded (the one hand-over rule, Scheduler.take), with no
        # checkpoint before the caller has it: nothing is lost between.
        self._take(outcome.job.queue_id)
        self._remaining -= 1
        return outcome


class Delivery:
    """Subscribes consumers to the scheduler's outcomes."""

    def __init__(self, *, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock

    def _require_tracked(self, job: Job) -> None:
        if job.queue_id in self._scheduler.jobs:
            return
        if self._scheduler.jobs.was_taken(job.queue_id):
            raise OutcomeAlreadyTaken(job)
        if job.queue_id not in self._scheduler.jobs:
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
            # Outcomes reached already go into the stream now: in the order they were
            # reached, so the stream is in finish order whenever it was asked for.
            for job in sorted(wanted, key=lambda j: self._scheduler.jobs.finished_at(j.queue_id)):
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


class Results:
    """The session's result calls; see the ``AsyncSession`` methods of the same names.

    Each checks ``check_open`` when it starts (a context manager: when it is entered).
    """

    def __init__(
        self,
        *,
        delivery: Delivery,
        flows: BatchFlows,
        submitter: Submitter,
        clock: Clock,
        check_open: OpenCheck,
    ) -> None:
        self._delivery = delivery
        self._flows = flows
        self._submitter = submitter
        self._clock = clock
        self._check_open = check_open

    def results(
        self, jobs: Iterable[Job] | AsyncIterable[Job]
    ) -> AbstractAsyncContextManager[ResultStream] | AbstractAsyncContextManager[FollowedResults]:
        """Outcomes of ``jobs`` (given now, or arriving over time) as they finish.

        Raises:
            OutcomeAlreadyTaken: a job's outcome was already handed over (a ValueError).
            ValueError: a job is not tracked.
            SessionStateError: the session is not open.
        """
        if isinstance(jobs, AsyncIterable):
            self._check_open()
            return self._flows.follow(jobs)
        return self._stream(jobs)

    @asynccontextmanager
    async def _stream(self, jobs: Iterable[Job]) -> AsyncIterator[ResultStream]:
        self._check_open()
        async with self._delivery.results(jobs) as stream:
            yield stream

    async def wait_outcome(self, job: Job, *, timeout: float | None) -> Outcome:
        """The outcome of one job once it is finished.

        Raises:
            JobDeadlineExceeded: ``timeout`` seconds passed first.
            SessionStateError: the session is not open.
        """
        self._check_open()
        return await self._delivery.wait_outcome(job, timeout=timeout)

    async def wait_for(self, job: Job, *, timeout: float | None) -> AudioResult:
        """The audio of one job once it is finished.

        Raises:
            JobDeadlineExceeded: ``timeout`` seconds passed first.
            VeniceError: the job failed (its typed error).
        """
        outcome = await self.wait_outcome(job, timeout=timeout)
        if isinstance(outcome, Succeeded):
            return outcome.audio
        raise outcome.error

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None,
        destination: Destination,
        deadline: float | None,
        validate: bool | None,
        **options: Unpack[QueueOptions],
    ) -> AudioResult:
        """Submit one generation and wait for its audio, ``timeout`` bounding the whole.

        Raises:
            QueueDeadlineExceeded: no queue token within ``timeout``; nothing was sent.
            JobDeadlineExceeded: not finished within ``timeout``; the job keeps running.
            VeniceError: the submission or the job failed.
        """
        self._check_open(paid=True)
        if timeout is not None:
            check_number("timeout (seconds)", timeout)
        clock = self._clock
        ends_at = None if timeout is None else clock.monotonic() + timeout
        request = QueueRequest(model=model, prompt=prompt, **options)
        job = await self._submitter.submit(
            request,
            destination=destination,
            deadline=deadline,
            validate=validate,
            token_deadline_at=ends_at,
        )
        # A queue call in flight is never cut short: past the timeout its job is handed back
        # at once, inside JobDeadlineExceeded.
        left = None if ends_at is None else max(0.0, ends_at - clock.monotonic())
        return await self.wait_for(job, timeout=left)

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
        """Queue a batch and hand over each outcome as it finishes.

        Raises:
            RequestValidationError: some requests are invalid; nothing was sent.
            SessionStateError, MissingAPIKeyError: see ``check_open``.
        """
        self._check_open(paid=True)
        if deadline is not None:
            check_number("deadline (seconds)", deadline)
        async with self._flows.generate_many(
            requests, destination=destination, deadline=deadline, validate=validate, take=take
        ) as results:
            yield results


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
