"""``AsyncSession``: the object users hold. Submit many jobs, receive each as it finishes.

The session is a facade. It builds its parts, hands each what it needs, owns their
lifecycle (one task group with the scheduler and the journal's write retries) and hands
out results; the parts never see the session:

* :class:`~._client.VeniceClient`: one connection pool, one method per endpoint;
* the request budget (:class:`~._rate.budget.LocalBudget` unless one is given) and the
  :class:`~._rate.retry.Retrier` that waits for it;
* :class:`~._session.catalogue.Catalogue`: the model catalogue, quotes and price estimates;
* :class:`~._ledger.ledger.Ledger`: the spending limit and the journal;
* :class:`~._polling.scheduler.Scheduler`: polls every job and releases its media;
* :class:`~._session.submit.Submitter` (paid submission),
  :class:`~._session.resume.Resumer` (a journal's unfinished jobs)
  and :class:`~._session.results.Results` (outcomes to consumers: ``results``,
  ``wait_for``, ``generate``, ``generate_many``);
* :class:`~._session.status.JobWatch` (``status``, ``forget``) and
  :class:`~._session.statistics.StatisticsCollector` (``statistics``).

Its methods check that the session is open (and, for paid calls, has an API key; the
result calls have ``Results`` check it), then delegate; their docstrings are the user's
documentation. This module holds the lifecycle and the paid side (catalogue, quotes,
submission, the journal, resume, spending); the result calls (``results``, ``generate``,
``wait_for``, ``status``, ``statistics``, ...) are inherited from
:class:`~._session.session.SessionResultsAPI`.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Sequence

from .._core.config import RetryPolicy, check_number
from .._core.models import AudioModel, Job, QueueOptions, QueueRequest, QuoteRequest, QuoteResult
from .._http.transport import require_asyncio
from .._ledger.journal import Journal
from .._ledger.ledger import JournalSource
from .._polling.release import ReleaseMedia
from .lifecycle import SessionState
from .options import SessionOptions
from .resume import ResumeReport
from .submit import Destination
from .view import view_parts
from .wiring import build_parts

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

import sys
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar, cast, overload

from .._core.models import AudioResult
from .._core.outcomes import Outcome
from .batch_flow import BatchResults, FollowedResults
from .results import ResultStream
from .statistics import SessionStatistics
from .status import JobStatus

if TYPE_CHECKING:
    from .wiring import SessionParts

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

__all__ = ["AsyncSession", "SessionResultsAPI"]


# --------------------------------------------------------------------------- session results
# The result half of ``AsyncSession``'s public API: outcomes, waits and job introspection.
#
# ``AsyncSession`` inherits these methods from :class:`SessionResultsAPI`, which holds only
# their signatures and user documentation: each delegates to a part of the session
# (:class:`~._session.results.Results`, :class:`~._session.status.JobWatch`, the scheduler's
# job table, :class:`~._session.statistics.StatisticsCollector`). The paid side and the
# lifecycle are the rest of this module.

T = TypeVar("T")


class SessionResultsAPI:
    """The result half of :class:`AsyncSession`'s public API; not used on its own.

    ``AsyncSession`` inherits it and sets ``_parts``; the methods are documented for users
    as the session's.
    """

    _parts: SessionParts
    #: A view's ``timeout`` (``with_options``): the default deadline of each call.
    _timeout: float | None = None

    def _within(self, seconds: float | None) -> float | None:
        """The call's deadline: the one given, else the view's ``timeout``."""
        return seconds if seconds is not None else self._timeout

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
            requests,
            destination=destination,
            deadline=self._within(deadline),
            validate=validate,
            take=take,
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
        return await self._parts.results.wait_for(job, timeout=self._within(timeout))

    async def wait_outcome(self, job: Job, *, timeout: float | None = None) -> Outcome:
        """Like :meth:`wait_for`, returning the outcome instead of raising the job's error."""
        await self._start()
        return await self._parts.results.wait_outcome(job, timeout=self._within(timeout))

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
            timeout=self._within(timeout),
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


class AsyncSession(SessionResultsAPI):
    """Submit audio generations and receive each result as it finishes.

    ::

        async with AsyncSession() as session:
            async with session.generate_many(requests) as results:
                async for outcome in results:  # as each finishes
                    ...

    One session holds one connection pool, one polling scheduler and one request budget
    (``rate_limits``), shared by everything it does. The API key comes from ``api_key`` or
    ``VENICE_API_KEY`` and is never shown in ``repr``, messages or logs.

    Finished audio goes to ``output_dir`` (a file per job, written atomically) or stays in
    memory. Once stored, the server's copy is released with ``complete``
    (``release_media="complete"``, the default); ``"delete_on_retrieve"`` saves that request
    by asking ``retrieve`` to delete the media as it answers, at the cost that a download cut
    short cannot be fetched again; ``"keep"`` leaves it on the server until it expires.

    ``async with`` is optional, as for ``httpx.AsyncClient``: a session not entered starts
    on its first awaited call (``submit``, ``generate``, ``wait_for``, ``results``,
    ``generate_many``, ``models``, ``quote``, ``resume``, ...), once however many calls
    arrive together, and ``await session.aclose()`` ends it (a ``ResourceWarning`` if a
    started session is collected unclosed). So a notebook keeps one open across cells::

        session = AsyncSession()
        audio = await session.generate("stable-audio-25", "rain", duration_seconds=5)
        ...  # later cells
        await session.aclose()

    Errors of opening (a journal owned by another process: :class:`JournalError`) are
    raised by that first call, and the session stays unstarted. Before its first use the
    synchronous calls see an empty session: :meth:`status` says ``unknown``,
    :meth:`statistics` counts nothing, :meth:`unfinished` and :meth:`finished` are empty,
    :meth:`forget` does nothing, and :meth:`attach` raises :class:`SessionStateError`
    (it polls at once: await any call first). A closed session never restarts: every call
    then raises :class:`SessionStateError`.

    Args:
        api_key: The API key (default: ``VENICE_API_KEY``). Never shown in ``repr``,
            messages or logs. Without one, only ``models`` works.
        base_url: The API's base URL (default: ``VENICE_BASE_URL``, else
            ``https://api.venice.ai/api/v1``).
        timeouts: HTTP timeouts (:class:`Timeouts`; default ``Timeouts()``).
        retry: How failed requests are retried and when a job that gets no answer is
            given up on (:class:`RetryPolicy`; default ``RetryPolicy()``). Per job with
            :meth:`with_options`.
        rate_limits: The client-side request budget per endpoint (:class:`RateLimits`;
            default ``RateLimits()``: the pool over the audio endpoints learnt from the
            key at open, else 60 a minute; 40 queue and 120 retrieve a minute assumed).
        limits: Connections, concurrency and size caps (:class:`Limits`; default
            ``Limits()``).
        polling: Bounds of the poll policy (:class:`PollingBounds`; default
            ``PollingBounds()``).
        output_dir: A directory for finished audio, a file per job written atomically
            (default ``None``: audio stays in memory).
        release_media: When the server's copy of finished audio is released:
            ``"complete"`` (the default), ``"delete_on_retrieve"`` or ``"keep"``. Per job
            with :meth:`with_options`.
        validate: Check each request against the model's rules before sending it
            (default ``True``); each call may override it.
        catalogue: The models to use instead of fetching the catalogue (default
            ``None``: fetched once, on first need).
        http_session: Your own ``aiohttp.ClientSession`` to send through (default
            ``None``: the session owns its pool); it is left open on close.
        clock: The time source (a :class:`Clock`; default the system clock; tests pass
            a ``ManualClock`` or ``ScaledClock``).
        budget: A request budget to share (a :class:`RequestBudget`, such as
            ``RedisBudget``; default: one on ``VENICE_REDIS_URL`` when it is set, else the
            session's own from ``rate_limits``).
        allow_insecure_http: Allow a plain ``http://`` ``base_url`` on a remote host
            (default ``False``: only loopback may use plain http).
        journal: A job journal (a path or a :class:`Journal`; default ``None``): every
            paid job is recorded before it is sent, so ``resume`` can finish it.
        max_spend_usd: A spending limit in USD for the session (default ``None``: none);
            a job that would pass it is refused before it is sent.

    Raises:
        ValueError: invalid configuration (for example a plain-http remote ``base_url``).
        TypeError: an unknown keyword, or an option of the wrong type (naming the class
            it must be).
        ImportError: ``VENICE_REDIS_URL`` is set but the ``redis`` extra is missing.

    .. versionadded:: 0.1.0
    """

    def __init__(self, **options: Unpack[SessionOptions]) -> None:
        self._options = options
        self._parts = parts = build_parts(options)
        self._life, self._scheduler = parts.lifecycle, parts.scheduler

    _is_view = False

    def with_options(
        self,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        release_media: ReleaseMedia | None = None,
    ) -> AsyncSession:
        """A view of this session with other per-call options, as openai's
        ``client.with_options``::

            patient = session.with_options(timeout=600, retry=RetryPolicy(attempts=8))
            audio = await patient.generate("stable-audio-25", "rain", duration_seconds=30)

        The view shares everything of the session: its connection pool, request budget,
        scheduler, journal, spending limit, statistics and lifecycle (closing either closes
        both; a view needs no closing of its own). What it changes, for the calls made
        through it:

        Args:
            timeout: Seconds, the whole deadline of each call that takes one when it is not
                given (``generate``'s and ``wait_for``'s ``timeout``, ``submit``'s and
                ``generate_many``'s ``deadline``: the wait for a queue token included).
                ``None``: the session's (no deadline).
            retry: The :class:`RetryPolicy` of the view's queue calls and of the jobs it
                submits (their polls' backoff and when they are given up on).
            release_media: How the server's copy of the view's jobs' audio is released
                (see the session's ``release_media``).

        Jobs keep the options of the view that submitted them, whoever waits for them;
        jobs attached or resumed get the session's. Options not given are the session's
        (a view of a view keeps the first view's).

        Raises:
            TypeError, ValueError: an option of the wrong type or value (nothing changes).

        .. versionadded:: 0.1.0
        """
        if timeout is not None:
            check_number("with_options(timeout=...) (seconds)", timeout)
        retry = retry if retry is not None else self._view_retry
        release_media = release_media if release_media is not None else self._view_release
        root = self._root
        view = copy.copy(self)
        view._root_session = root
        view._parts = view_parts(root._parts, retry=retry, release=release_media)
        view._timeout = timeout if timeout is not None else self._timeout
        view._view_retry, view._view_release = retry, release_media
        view._is_view = True
        return view

    _view_retry: RetryPolicy | None = None
    _view_release: ReleaseMedia | None = None
    _root_session: AsyncSession

    @property
    def _root(self) -> AsyncSession:
        """The session this view was made from (itself, when not a view)."""
        return self._root_session if self._is_view else self

    def __repr__(self) -> str:
        return (
            f"<AsyncSession {self._life.state.value} base_url={self._parts.client.base_url!r} "
            f"api_key={'set' if self._life.has_key else 'missing'}>"
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncSession:
        require_asyncio("AsyncSession")  # aiohttp runs only on asyncio: say so, before anything
        await self._life.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        return await self._life.close(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the session: stop polling and close the pool. Closing twice is harmless,
        and so is closing one never started. A closed session never restarts.

        Jobs still running stay billed and running on the server; :meth:`unfinished` lists
        them so they can be attached later.
        """
        await self._life.close()

    def __del__(self) -> None:
        life = getattr(self, "_life", None)
        if life is not None and life.state is SessionState.OPEN and not self._is_view:
            warnings.warn(
                f"{self!r} was never closed; use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ catalogue and prices

    async def models(self, *, refresh: bool = False) -> tuple[AudioModel, ...]:
        """The music catalogue, fetched once per session and cached.

        Raises:
            SessionStateError: the session is not open.
            APIStatusError, TransportError: the catalogue could not be fetched.
        """
        await self._start()
        return await self._parts.catalogue.models(refresh=refresh)

    async def quote(
        self,
        model: str,
        *,
        duration_seconds: int | None = None,
        character_count: int | None = None,
        validate: bool | None = None,
    ) -> QuoteResult:
        """The price of a generation in USD (nothing is queued or billed); cached.

        Raises:
            RequestValidationError: the request breaks the model's rules (nothing sent).
            APIStatusError, TransportError: the quote failed.
        """
        await self._start()
        request = QuoteRequest(
            model=model, duration_seconds=duration_seconds, character_count=character_count
        )
        return await self._parts.catalogue.quote(request, validate=validate)

    async def estimate_cost(
        self, request: QueueRequest, *, model: AudioModel | None = None
    ) -> float | None:
        """The estimated price of ``request`` in USD, from the catalogue or ``quote``.

        ``None`` when neither can tell (a model without pricing that quote refuses).
        """
        await self._start()
        return await self._parts.catalogue.estimate_cost(request, model=model)

    # ------------------------------------------------------------------ submit

    async def submit(
        self,
        model: str,
        prompt: str,
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        **options: Unpack[QueueOptions],
    ) -> Job:
        """Validate, queue (billed here) and start polling one generation.

        Returns the job at once; get its result with :meth:`results` or :meth:`wait_for`.
        ``options`` are the optional :class:`QueueRequest` fields (:class:`QueueOptions`).
        ``destination`` is a file or directory for the audio (default: ``output_dir``, else
        memory). ``deadline`` (seconds) bounds the whole submission: no queue token is
        waited for past it (:class:`QueueDeadlineExceeded`, nothing sent), and the job ends
        with :class:`JobDeadlineExceeded` if it runs longer; the job keeps running on the
        server and can be attached later.

        Raises:
            QueueDeadlineExceeded: no queue token before ``deadline``; nothing was sent.
            RequestValidationError: the request breaks the model's rules; nothing was sent.
            SpendLimitExceeded: the job would take the session past ``max_spend_usd``;
                nothing was sent.
            QueueOutcomeUnknown: the request was sent but its answer lost; the job may
                exist and be billed, so it was not retried.
            APIStatusError: the API refused the job (e.g. ``ContentPolicyError``).
            JournalError: the journal could not record the job before sending it; nothing
                was sent. (A journal write failing *after* the queue answered is not raised:
                the job is returned and the write retried; see ``statistics()``.)
            SessionStateError: the session is not open.
            MissingAPIKeyError: no API key was given.
        """
        request = QueueRequest(model=model, prompt=prompt, **options)
        return await self.submit_request(
            request, destination=destination, deadline=deadline, validate=validate
        )

    async def submit_request(
        self,
        request: QueueRequest,
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        key: str | None = None,
        name: str | None = None,
    ) -> Job:
        """Like :meth:`submit`, from a prepared :class:`QueueRequest`.

        ``key`` identifies the job in the journal (e.g. a batch line); ``name`` is the file
        name stem used when the audio goes to a directory.
        """
        await self._start(paid=True)
        return await self._parts.submitter.submit(
            request,
            destination=destination,
            deadline=self._within(deadline),
            validate=validate,
            key=key,
            name=name,
        )

    async def submit_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        take: str | None = None,
    ) -> list[Job]:
        """Validate every request first, then queue them concurrently within the rate limit.

        Nothing is sent if any request is invalid. Jobs come back in the order of
        ``requests``. A failing request never cancels the others: every queue call runs to
        its end first. With a journal, requests without a ``key`` get keys derived from
        their content, so the same batch submitted again queues nothing twice (see
        :meth:`generate_many`; a job that failed earlier is returned with its ``Failed``
        outcome from the journal); ``take`` names a deliberate second take.

        Raises:
            RequestValidationError: some requests are invalid (problems prefixed by index).
            BatchSubmitError: some queue calls failed with a :class:`VeniceError` (including
                :class:`JournalError`); it carries the jobs that were queued (still polled)
                and each error by index.
            Exception: an error that is not a :class:`VeniceError` (a bug) is raised as
                itself, never inside an ``ExceptionGroup``; the jobs queued meanwhile are
                still polled and listed by :meth:`unfinished`.
        """
        await self._start(paid=True)
        return await self._parts.submitter.submit_many(
            requests,
            destination=destination,
            deadline=self._within(deadline),
            validate=validate,
            take=take,
        )

    def attach(
        self,
        model: str,
        queue_id: str,
        *,
        destination: Destination = None,
        deadline: float | None = None,
    ) -> Job:
        """Adopt a job queued elsewhere (another process, an earlier run) and poll it.

        A job whose audio this session already handed over is not polled again (its media
        may be released): if the audio was stored in a file that is still there, the next
        :meth:`wait_for` hands that file over again (wherever ``destination`` points);
        otherwise it raises :class:`OutcomeAlreadyTaken`. A job handed over as failed is
        polled again (for example to a file, after audio too large for memory).

        Raises:
            ValueError: ``model`` or ``queue_id`` is empty.
            SessionStateError: the session is closed, or has not started yet (an attached
                job is polled at once: await any call first, or use ``async with``).
        """
        self._life.check_open(paid=True)
        return self._parts.resumer.attach(
            model, queue_id, destination=destination, deadline=deadline
        )

    # ------------------------------------------------------------------ journal and money

    async def journal_requests(
        self,
        requests: Sequence[QueueRequest],
        *,
        keys: Sequence[str | None] | None = None,
        names: Sequence[str | None] | None = None,
        destination: Destination = None,
        all_or_nothing: bool = True,
        take: str | None = None,
    ) -> float:
        """Record ``requests`` in the journal as jobs to send, sending none; returns their
        estimated cost in USD. :meth:`resume` then queues them, oldest first.

        Recording a whole batch before the first job is sent means a crash at any point
        leaves a journal that ``resume`` finishes: nothing is queued twice, nothing is
        forgotten. ``keys`` identify the jobs in the journal (a repeated key is refused);
        a request with no key (``None`` in ``keys``, and none of its own) gets one derived
        from its content, its destination and name, and its occurrence (see
        :meth:`generate_many`), and is not recorded again if the journal holds that key
        already: recording the same batch twice records it once (the cost returned is
        that of what was recorded now). ``take`` names a deliberate second take.
        ``names`` are their file name stems.

        Raises:
            RequestValidationError: some requests break their model's rules (checked as
                :meth:`submit` checks them, by index); nothing was recorded.
            SpendLimitExceeded: ``all_or_nothing`` and their estimated cost would take the
                session past ``max_spend_usd``; nothing was recorded.
            SessionStateError: the session is not open, or keeps no journal.
            JournalError: a job could not be recorded (those before it are).
            ValueError: ``keys`` or ``names`` are not as many as ``requests``.
        """
        await self._start()
        return await self._parts.submitter.journal_requests(
            requests,
            keys=keys,
            names=names,
            destination=destination,
            all_or_nothing=all_or_nothing,
            take=take,
        )

    async def resume(
        self,
        journal: JournalSource | None = None,
        *,
        requeue_unknown: bool = False,
        on_job: Callable[[Job], object] | None = None,
    ) -> ResumeReport:
        """Pick up every unfinished job of the journal (the session's, or ``journal``).

        A session opened without a journal adopts the one given here, counts the spending
        it records and keeps recording into it (a :class:`Journal` object stays yours to
        close; one opened here from a path is closed with the session).

        Jobs with a ``queue_id`` but no stored audio are attached and polled; jobs never
        sent are queued (oldest first, within the spending limit); jobs already stored are
        skipped. Jobs whose ``queue`` answer was lost ("unknown", or "sending" when a
        process died mid-request) may exist and be billed, so they are only reported, unless
        ``requeue_unknown`` says to send them again. Running it twice does nothing the
        second time. ``on_job`` is called with each job as soon as it is polled, so callers
        can follow results while the rest is still being queued. Media that expired shows
        up as a failed outcome with :class:`MediaNotFoundError`.

        First it deletes the temporary files (``.NAME.1a2b3c4d.part``) that downloads killed
        mid-way left in the journal's output folders; only files named that way, and none
        this process is writing.

        Raises:
            SessionStateError: the session is not open, or has no journal.
            ValueError: the session already keeps another journal.
            JournalError: ``journal`` is missing, empty, damaged, read-only or owned by
                another process (nothing was sent), or a job could not be claimed before
                sending it (another owner took it; it was not sent).
        """
        await self._start(paid=True)
        if journal is not None:
            await self._parts.ledger.adopt(journal)
        return await self._parts.resumer.resume(requeue_unknown=requeue_unknown, on_job=on_job)

    @property
    def journal(self) -> Journal | None:
        """The job journal, when the session keeps one."""
        return self._parts.ledger.journal

    def spending(self) -> tuple[float, float | None]:
        """(estimated USD spent, the limit or ``None``)."""
        return self._parts.ledger.spending()
