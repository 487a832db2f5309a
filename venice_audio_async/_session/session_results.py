"""The result half of ``AsyncSession``'s public API: outcomes, waits and job introspection.

``AsyncSession`` inherits these methods from :class:`SessionResultsAPI`, which holds only
their signatures and user documentation: each delegates to a part of the session
(:class:`~._results.Results`, :class:`~._status.JobWatch`, the scheduler's job table,
:class:`~._statistics.StatisticsCollector`). The paid side and the lifecycle stay in
``_session``; this module never imports it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, cast, overload

from .._core.models import AudioResult, Job, Outcome, QueueOptions, QueueRequest
from .batch_flow import BatchResults, FollowedResults
from .results import ResultStream
from .statistics import SessionStatistics
from .status import JobStatus
from .submit import Destination

if TYPE_CHECKING:
    from .wiring import SessionParts

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

__all__ = ["SessionResultsAPI"]

T = TypeVar("T")


class SessionResultsAPI:
    """The result half of :class:`AsyncSession`'s public API; not used on its own.

    ``AsyncSession`` inherits it and sets ``_parts``; the methods are documented for users
    as the session's.
    """

    _parts: SessionParts

    async def _start(self, *, paid: bool = False) -> None:
        """Start the session on its first use (no ``async with`` needed); refuse it closed."""
        await self._parts.lifecycle.start(paid=paid)

    @asynccontextmanager
    async def _started(
        self, enter: Callable[[], AbstractAsyncContextManager[T]]
    ) -> AsyncIterator[T]:
        await self._start()
        async with enter() as value:
            yield value

    # ------------------------------------------------------------------ results

    @overload
    def results(self, jobs: Iterable[Job]) -> AbstractAsyncContextManager[ResultStream]: ...

    @overload
    def results(self, jobs: AsyncIterable[Job]) -> AbstractAsyncContextManager[FollowedResults]: ...

    def results(
        self, jobs: Iterable[Job] | AsyncIterable[Job]
    ) -> AbstractAsyncContextManager[ResultStream] | AbstractAsyncContextManager[FollowedResults]:
        """Outcomes of ``jobs`` as they finish, in finish order.

        ::

            async with session.results(jobs) as results:
                async for outcome in results:
                    match outcome:
                        case Succeeded(job, audio): ...
                        case Failed(job, error): ...

        One failed job does not end the iteration. Leaving the block early (``break``,
        cancellation) loses nothing: the jobs keep being polled (listed by
        :meth:`unfinished`), and outcomes not yielded yet stay with the session for a later
        ``results()`` or :meth:`wait_for` (listed by :meth:`finished`). An outcome is
        handed over once; the session then drops it.

        ``jobs`` may also arrive over time: an async iterable (such as an anyio memory
        object receive stream) of jobs as they are submitted; the iteration ends once it
        is exhausted and every job it gave has finished.

        Raises:
            OutcomeAlreadyTaken: a job's outcome was already handed over (a ValueError).
            ValueError: a job is not known to this session (submit or attach it first).
        """
        results = self._parts.results
        # Results.results answers by the type of ``jobs``, as the overloads above say.
        if isinstance(jobs, AsyncIterable):
            source = jobs
            return self._started(
                lambda: cast(AbstractAsyncContextManager[FollowedResults], results.results(source))
            )
        given = jobs
        return self._started(
            lambda: cast(AbstractAsyncContextManager[ResultStream], results.results(given))
        )

    @asynccontextmanager
    async def generate_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        take: str | None = None,
    ) -> AsyncIterator[BatchResults]:
        """Queue a batch and hand over each outcome as it finishes, while the rest is still
        being queued::

            async with session.generate_many(requests) as results:
                async for outcome in results:
                    match outcome:
                        case Succeeded(job, audio): ...
                        case Failed(job, error): ...  # queued, then failed
                        case Refused(request, error): ...  # never queued, nothing billed

        Every request is validated first (all problems at once; nothing is sent if one is
        invalid). Then they are queued within the queue rate limit, in order, while the
        jobs already queued are polled. A request the API or the session refuses at queue
        time (402, ``max_spend_usd``, the server's validation, no token before
        ``deadline``) yields :class:`Refused`, which has no ``queue_id``. Leaving the block
        early sends none of the requests not queued yet; the queued ones stay tracked
        (:meth:`unfinished`); outcomes not yielded yet stay with the session
        (:meth:`finished`). Each outcome is taken as it is yielded, as by :meth:`results`.
        ``destination``, ``deadline`` and ``validate`` are as for :meth:`submit`.

        With a journal the batch is idempotent: a request without a ``key`` gets one
        derived from what is sent and where its audio goes, plus its occurrence among
        identical requests of the batch (never its position). Running the same batch
        again on the same journal finishes it and queues nothing twice: a job stored
        earlier yields its ``Succeeded`` from the journal (its file; audio kept in memory
        and taken earlier has neither data nor path), a queued one is fetched, a failed
        one yields its ``Failed`` with the journaled error; one refused by the API, or
        whose queue answer was lost (``QueueOutcomeUnknown``: it may be billed), yields
        ``Refused`` as in the first run; none of these is sent again. An INFO log line
        says how many requests the journal already holds. ``take`` (any label) is the
        deliberate opt-out: its keys differ from those of the default take, so the
        requests are queued (and paid) again, once; running the same ``take`` again
        finishes that take.

        Raises:
            RequestValidationError: some requests are invalid (problems prefixed by index).
            JournalError: the journal could not be read; nothing was sent.
            SessionStateError: the session is not open.
            MissingAPIKeyError: no API key was given.

        .. versionadded:: 0.1.0
        """
        await self._start(paid=True)
        async with self._parts.results.generate_many(
            requests, destination=destination, deadline=deadline, validate=validate, take=take
        ) as results:
            yield results

    async def wait_for(self, job: Job, *, timeout: float | None = None) -> AudioResult:
        """The audio of one job, once it is finished.

        Raises:
            JobDeadlineExceeded: ``timeout`` seconds passed first (the job keeps running;
                wait again or attach it later).
            VeniceError: the job failed (its typed error).
        """
        await self._start()
        return await self._parts.results.wait_for(job, timeout=timeout)

    async def wait_outcome(self, job: Job, *, timeout: float | None = None) -> Outcome:
        """Like :meth:`wait_for`, returning the outcome instead of raising the job's error."""
        await self._start()
        return await self._parts.results.wait_outcome(job, timeout=timeout)

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        **options: Unpack[QueueOptions],
    ) -> AudioResult:
        """Submit one generation and wait for its audio: the one-call form.

        ``options`` are the optional :class:`QueueRequest` fields (:class:`QueueOptions`);
        ``deadline`` and ``validate`` are as for :meth:`submit`. ``timeout`` (seconds)
        bounds the whole call, the wait for a queue token included.

        Raises:
            RequestValidationError, QueueOutcomeUnknown, APIStatusError: see :meth:`submit`.
            QueueDeadlineExceeded: no queue token could be had within ``timeout``; nothing
                was sent.
            JobDeadlineExceeded: not finished within ``timeout``; the job keeps running
                (``error.job``: wait for it again, or attach it elsewhere, later).
            VeniceError: the job failed.
        """
        await self._start(paid=True)
        return await self._parts.results.generate(
            model,
            prompt,
            timeout=timeout,
            destination=destination,
            deadline=deadline,
            validate=validate,
            **options,
        )

    # ------------------------------------------------------------------ introspection

    def unfinished(self) -> list[Job]:
        """Jobs queued (and paid for) that have no outcome yet: keep their ids. Empty
        before the session's first call."""
        return self._parts.scheduler.jobs.unfinished()

    def forget(self, job: Job) -> None:
        """Stop tracking a job given up on: it is no longer polled, kept or listed by
        :meth:`unfinished`. Forgetting a job not tracked does nothing.

        The job may still run, and it was paid for: its ``queue_id`` is logged (INFO) and
        stays in the journal, so :meth:`attach` (here or in another session) or ``resume``
        can still fetch it. Before the session's first call there is nothing to forget.

        Raises:
            ValueError: a :meth:`results` or :meth:`wait_for` waits on the job right now.

        .. versionadded:: 0.1.0
        """
        self._parts.watch.forget(job)

    def status(self, job: Job | QueueRequest) -> JobStatus:
        """The last known state of ``job``: waiting here for a queue token, at Venice
        (queued, or running with the server's estimate and an estimated time left), or
        finished. Pass the :class:`QueueRequest` to ask about a submit still waiting for
        its token (the same object that was submitted). Sends nothing. Before the
        session's first call every job is ``unknown``.

        .. versionadded:: 0.1.0
        """
        return self._parts.watch.status(job)

    def finished(self) -> list[Job]:
        """Jobs whose outcome is ready but nobody has taken yet, oldest first.

        Get them with :meth:`results` or :meth:`wait_for`; in-memory audio keeps its
        media on the server until then. Empty before the session's first call.

        .. versionadded:: 0.1.0
        """
        return self._parts.scheduler.jobs.finished()

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of jobs, requests, 429s, pauses and spend (every field is
        documented on :class:`SessionStatistics`). Before the session's first call it
        counts nothing (a journal's earlier spending is read when the session opens)."""
        return self._parts.statistics.snapshot()
