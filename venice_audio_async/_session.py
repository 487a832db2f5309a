"""``AsyncSession``: the object users hold. Submit many jobs, receive each as it finishes.

The session owns one :class:`~._client.VeniceClient` (one connection pool), one anyio task
group with the :class:`~._scheduler.Scheduler` in it, the request budget shared by every
submit and poll, and the catalogue cache used to validate requests before sending them.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import sys
import types
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, TypeVar

import aiohttp
import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream

from ._audio import AudioSink, FileSink, MemorySink, remove_partial_downloads, safe_stem
from ._budget import LocalBudget, RequestBudget, ResponseRecorder
from ._client import VeniceClient
from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_BASE_URL,
    Limits,
    RateLimits,
    RetryPolicy,
    Timeouts,
    check_number,
    endpoint_rates,
)
from ._errors import (
    APIStatusError,
    BatchSubmitError,
    JobDeadlineExceeded,
    MalformedResponse,
    MissingAPIKeyError,
    QueueOutcomeUnknown,
    RequestValidationError,
    ServerError,
    SessionStateError,
    SpendLimitExceeded,
    TransportError,
    VeniceError,
)
from ._estimator import DurationEstimator, PollingBounds
from ._journal import JobState, Journal, JournalEntry
from ._ledger import Intent, Ledger, Ticket
from ._limiter import RequestLimiter
from ._models import (
    AudioModel,
    AudioResult,
    FieldProblem,
    Job,
    Outcome,
    PerThousandCharactersPricing,
    QueueOptions,
    QueueRequest,
    QuoteRequest,
    QuoteResult,
    Succeeded,
)
from ._retry import Retrier, queue_answer_lost
from ._scheduler import Scheduler, SinkFactory
from ._validation import check_queue, check_quote, estimate_cost_usd

if sys.version_info >= (3, 12):
    from typing import Unpack
else:  # Unpack for **kwargs (PEP 692) is in typing from 3.12
    from typing_extensions import Unpack

__all__ = ["AsyncSession", "ResultStream", "ResumeReport", "SessionStatistics"]

log = logging.getLogger("venice_audio_async")

T = TypeVar("T")

_RELEASE_DRAIN_SECONDS = 5.0
#: Backoff (session-clock seconds) between retries of journal writes that failed.
_JOURNAL_RETRY_FIRST = 0.2
_JOURNAL_RETRY_MAX = 10.0

Destination = str | os.PathLike[str] | None
ReleaseMedia = Literal["complete", "delete_on_retrieve", "keep"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@attrs.frozen
class SessionStatistics:
    """A snapshot of what the session has done.

    .. versionadded:: 0.1.0
    """

    jobs_in_flight: int
    jobs_succeeded: int
    jobs_failed: int
    outcomes_untaken: int
    requests: Mapping[str, int]
    rate_limited: int
    paused_seconds: float
    media_released: int
    #: Journal writes that failed when made after a job was paid for (each logged as a
    #: warning naming the job); they are retried until they land.
    journal_write_failures: int = 0
    #: Of those, the ones not landed yet.
    journal_writes_pending: int = 0

    @property
    def retrieves_per_finished_job(self) -> float:
        """Mean ``retrieve`` calls per finished job (1.0 is the ideal)."""
        finished = self.jobs_succeeded + self.jobs_failed
        return self.requests.get("retrieve", 0) / finished if finished else 0.0


@attrs.frozen
class ResumeReport:
    """What :meth:`AsyncSession.resume` did.

    ``jobs`` are now polled (read them with ``results``); ``unknown`` were sent but their
    answer was lost (not re-queued); ``failed`` ended with an error (earlier, or refused
    now); ``not_queued`` jobs were left unsent because ``spend_limit`` was reached;
    ``partial_files_removed`` counts leftover temporary files of killed downloads.

    .. versionadded:: 0.1.0
    """

    jobs: tuple[Job, ...]
    attached: int
    queued: int
    skipped: int
    unknown: tuple[JournalEntry, ...]
    failed: tuple[JournalEntry, ...]
    not_queued: int = 0
    spend_limit: SpendLimitExceeded | None = None
    #: Temporary files of downloads an earlier run was killed in, removed from the
    #: journal's output folders.
    partial_files_removed: int = 0


class ResultStream:
    """Async iterator over outcomes, in finish order. Obtained from ``session.results()``.

    It only reads a memory stream: no task group or cancel scope is open while it yields.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[Outcome], total: int) -> None:
        self._receive = receive
        self._remaining = total

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
        self._remaining -= 1
        return outcome


class AsyncSession:
    """Submit audio generations and receive each result as it finishes.

    ::

        async with AsyncSession() as session:
            jobs = await session.submit_many(requests)
            async with session.results(jobs) as results:
                async for outcome in results:
                    ...

    One session holds one connection pool, one polling scheduler and one request budget
    (``rate_limits``), shared by everything it does. The API key comes from ``api_key`` or
    ``VENICE_API_KEY`` and is never shown in ``repr``, messages or logs.

    Finished audio goes to ``output_dir`` (a file per job, written atomically) or stays in
    memory. Once stored, the server's copy is released with ``complete``
    (``release_media="complete"``, the default); ``"delete_on_retrieve"`` saves that request
    by asking ``retrieve`` to delete the media as it answers, at the cost that a download cut
    short cannot be fetched again; ``"keep"`` leaves it on the server until it expires.

    Raises:
        ValueError: invalid configuration (for example a plain-http remote ``base_url``).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limits: RateLimits | None = None,
        limits: Limits | None = None,
        polling: PollingBounds | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        release_media: ReleaseMedia = "complete",
        validate: bool = True,
        catalogue: Sequence[AudioModel] | None = None,
        http_session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        budget: RequestBudget | None = None,
        allow_insecure_http: bool = False,
        journal: str | os.PathLike[str] | Journal | None = None,
        max_spend_usd: float | None = None,
    ) -> None:
        if release_media not in ("complete", "delete_on_retrieve", "keep"):
            raise ValueError(
                f"release_media must be complete/delete_on_retrieve/keep, got {release_media!r}"
            )
        self._clock = clock or SystemClock()
        self._retry = retry or RetryPolicy()
        self._limits = limits or Limits()
        self._rate_limits = rate_limits or RateLimits()
        self._validate = validate
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._release: ReleaseMedia = release_media
        self._catalogue: dict[str, AudioModel] | None = (
            {m.id: m for m in catalogue} if catalogue is not None else None
        )
        self._catalogue_lock = anyio.Lock()
        key = api_key if api_key is not None else os.environ.get("VENICE_API_KEY")
        self._has_key = bool(key)
        self._client = VeniceClient(
            api_key=key,
            base_url=base_url,
            timeouts=timeouts,
            limits=self._limits,
            http_session=http_session,
            allow_insecure_http=allow_insecure_http,
        )
        self._budget = budget or LocalBudget(
            clock=self._clock,
            rates=endpoint_rates(self._rate_limits),
            max_retry_after=self._retry.max_retry_after,
            failure_window=(
                self._rate_limits.failures_per_window,
                self._rate_limits.failure_window,
            ),
        )
        self._recorder = ResponseRecorder(self._budget)
        self._client.transport.set_observer(self._recorder)
        self._ledger = Ledger(limit_usd=max_spend_usd, clock=self._clock, journal=journal)
        self._rng = random.Random()  # backoff jitter and the poll policy's draws
        self._retrier = Retrier(
            acquire=self._budget.acquire, policy=self._retry, clock=self._clock, rng=self._rng
        )
        self._limiter = RequestLimiter(self._limits.max_concurrent_requests)
        # Polls hold only their share of the slots: the rest stay free for the other calls.
        polls = RequestLimiter(self._limits.concurrent_polls, parent=self._limiter)
        self._scheduler = Scheduler(
            client=self._client,
            budget=self._budget,
            estimator=DurationEstimator(bounds=polling or PollingBounds()),
            clock=self._clock,
            retry=self._retry,
            limiter=polls,
            release_limiter=self._limiter,
            release=release_media,
            rng=self._rng,
            on_outcome=self._ledger.record_outcome,
            on_released=self._ledger.record_released,
        )
        self._quotes: dict[QuoteRequest, QuoteResult] = {}
        self._state = _State.UNOPENED
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return (
            f"<AsyncSession {self._state.value} base_url={self._client.transport.base_url!r} "
            f"api_key={'set' if self._has_key else 'missing'}>"
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncSession:
        if self._state is _State.OPEN:
            raise SessionStateError("the session is already open")
        if self._state is _State.CLOSED:
            raise SessionStateError("a closed session cannot be reopened; create a new one")
        # Raises JournalError (owned elsewhere, damaged, read-only) before anything is sent.
        await self._ledger.open()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._scheduler.run)
            tg.start_soon(self._ledger.keep_writes_landing)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            await self._client.aclose()
            await self._ledger.aclose()
            self._state = _State.CLOSED
            raise
        self._tg = tg
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        if self._state is not _State.OPEN or self._tg is None:
            return None
        self._state = _State.CLOSED
        tg, self._tg = self._tg, None
        # Media releases already started finish first (bounded), so stored audio does not
        # leave its copy on the server just because the session ended right after it.
        with anyio.move_on_after(_RELEASE_DRAIN_SECONDS):
            await self._scheduler.wait_releases()
        tg.cancel_scope.cancel()
        try:
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # The body's own error: stop the scheduler and let that error propagate
                # as it is, rather than wrapped in an ExceptionGroup by the task group.
                await tg.__aexit__(None, None, None)
                return None
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            with anyio.CancelScope(shield=True):
                await self._client.aclose()
                await self._ledger.aclose()
            unfinished = self._scheduler.unfinished()
            if unfinished:
                log.warning(
                    "session closed with %d unfinished job(s); their ids: %s",
                    len(unfinished),
                    ", ".join(j.queue_id for j in unfinished[:20]),
                )

    async def aclose(self) -> None:
        """Close the session: stop polling and close the pool. Closing twice is harmless.

        Jobs still running stay billed and running on the server; :meth:`unfinished` lists
        them so they can be attached later.
        """
        if self._state is _State.OPEN:
            await self.__aexit__(None, None, None)
        elif self._state is _State.UNOPENED:
            self._state = _State.CLOSED
            await self._client.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is _State.OPEN:
            warnings.warn(
                f"{self!r} was never closed; use 'async with' or await aclose()",
                ResourceWarning,
                stacklevel=2,
            )

    def _check_key(self) -> None:
        if not self._has_key:
            raise MissingAPIKeyError(
                "no API key: pass AsyncSession(api_key=...) or set VENICE_API_KEY "
                "(create one at https://venice.ai/settings/api)"
            )

    def _check_open(self) -> None:
        if self._state is _State.UNOPENED:
            raise SessionStateError("the session is not open; use 'async with AsyncSession()'")
        if self._state is _State.CLOSED:
            raise SessionStateError("the session is closed")

    # ------------------------------------------------------------------ plumbing

    async def _idempotent(self, endpoint: str, send: Callable[[], Awaitable[T]]) -> T:
        return await self._retrier.call(endpoint, send, limiter=self._limiter)

    def _sink_factory(self, target: Path | None, stem: str) -> SinkFactory:
        limit = self._limits.max_audio_bytes_in_memory
        # The session's output folder is a folder even before it exists; a destination
        # given per job is a folder if it exists as one, else the file to write.
        directory = True if target is not None and target == self._output_dir else None

        def make(job: Job) -> AudioSink:
            if target is None:
                return MemorySink(limit)
            return FileSink(target, stem=stem, directory=directory)

        return make

    # ------------------------------------------------------------------ catalogue

    async def models(self, *, refresh: bool = False) -> tuple[AudioModel, ...]:
        """The music catalogue, fetched once per session and cached.

        Raises:
            SessionStateError: the session is not open.
            APIStatusError, TransportError: the catalogue could not be fetched.
        """
        self._check_open()
        async with self._catalogue_lock:
            if self._catalogue is None or refresh:
                rows = await self._idempotent("models", self._client.models)
                self._catalogue = {m.id: m for m in rows}
            return tuple(self._catalogue.values())

    async def _model_for(self, model_id: str) -> AudioModel:
        catalogue = self._catalogue
        if catalogue is None:
            await self.models()
            catalogue = self._catalogue
        assert catalogue is not None
        if model_id not in catalogue:
            known = ", ".join(sorted(catalogue)) or "none"
            raise RequestValidationError(
                (FieldProblem("model", f"unknown model {model_id!r}; known: {known}"),),
                model=model_id,
            )
        return catalogue[model_id]

    # ------------------------------------------------------------------ quote

    async def quote(
        self,
        model: str,
        *,
        duration_seconds: int | None = None,
        character_count: int | None = None,
        validate: bool | None = None,
    ) -> QuoteResult:
        """The price of a generation in USD (nothing is queued or billed).

        Raises:
            RequestValidationError: the request breaks the model's rules (nothing sent).
            APIStatusError, TransportError: the quote failed.
        """
        self._check_open()
        request = QuoteRequest(
            model=model, duration_seconds=duration_seconds, character_count=character_count
        )
        model_row = await self._model_for(model) if self._should_validate(validate) else None
        check_quote(request, model_row)
        cached = self._quotes.get(request)
        if cached is not None:
            return cached
        result = await self._idempotent("quote", lambda: self._client.quote(request))
        self._quotes[request] = result  # prices move slowly; one answer per session is enough
        return result

    def _should_validate(self, override: bool | None) -> bool:
        return self._validate if override is None else override

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
        memory). ``deadline`` (seconds) ends the job with :class:`JobDeadlineExceeded` if it
        runs longer; the job keeps running on the server and can be attached later.

        Raises:
            RequestValidationError: the request breaks the model's rules; nothing was sent.
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
        self._check_open()
        self._check_key()
        if deadline is not None:
            check_number("deadline (seconds)", deadline)
        model = await self._model_for(request.model) if self._should_validate(validate) else None
        check_queue(request, model)
        # Estimates cost requests (catalogue, quote): only when a limit or journal needs them.
        estimate = None
        if self._ledger.needs_estimates:
            estimate = await self.estimate_cost(request, model=model)
        target = Path(destination) if destination is not None else self._output_dir
        ticket = await self._ledger.intend(
            Intent(
                request=request,
                estimate_usd=estimate,
                key=key,
                destination=str(target) if target is not None else None,
                name=name,
            )
        )
        return await self._queue_and_track(request, ticket, target, name, deadline)

    async def _queue_and_track(
        self,
        request: QueueRequest,
        ticket: Ticket,
        target: Path | None,
        name: str | None,
        deadline: float | None,
    ) -> Job:
        try:
            job = await self._queue(request, ticket)
        except BaseException as error:
            await self._ledger.failed(ticket, error)
            raise
        stem = name or f"{safe_stem(request.prompt, max_length=40)}-{job.queue_id[:8]}"
        self._scheduler.track(job, self._sink_factory(target, stem), deadline=deadline, elapsed=0.0)
        return job

    async def estimate_cost(
        self, request: QueueRequest, *, model: AudioModel | None = None
    ) -> float | None:
        """The estimated price of ``request`` in USD, from the catalogue or ``quote``.

        ``None`` when neither can tell (a model without pricing that quote refuses).
        """
        self._check_open()
        row = model
        if row is None:
            catalogue = self._catalogue
            if catalogue is None:
                try:
                    await self.models()
                except VeniceError as error:
                    log.info("catalogue unavailable for estimates: %s", error)
                catalogue = self._catalogue
            row = catalogue.get(request.model) if catalogue is not None else None
        if row is not None:
            estimate = estimate_cost_usd(request, row)
            if estimate is not None:
                return estimate
        characters = len(request.prompt) if _priced_by_characters(row) else None
        try:
            quoted = await self.quote(
                request.model,
                duration_seconds=request.duration_seconds,
                character_count=characters,
                validate=False,
            )
            return quoted.quote
        except VeniceError as error:
            log.info("no price estimate for %s: %s", request.model, error)
            return None

    async def _queue(self, request: QueueRequest, ticket: Ticket) -> Job:
        async def send() -> Job:
            # Shielded from "sending" to "queued": once the request may be on the wire, its
            # answer (a paid queue_id) is waited for and recorded even if we are being
            # cancelled (Ctrl-C); the request timeout bounds the wait.
            with anyio.CancelScope(shield=True):
                # Raises JournalError (nothing sent) if the row cannot be claimed: another
                # owner has it, or the write failed.
                await self._ledger.claim(ticket)
                job = await self._client.queue(request)
                await self._check_new(request, job)
                await self._ledger.queued(ticket, job.queue_id)  # never raises
            return job

        try:
            return await self._retrier.call("queue", send, limiter=self._limiter)
        except (ServerError, TransportError) as error:
            if queue_answer_lost(error):
                raise QueueOutcomeUnknown(request, error) from error
            raise

    async def _check_new(self, request: QueueRequest, job: Job) -> None:
        """Refuse a ``queue_id`` the server already gave to another job.

        A server repeating an id gives us no way to tell this job from the other one:
        polling it would hand the other job's audio over as this request's. So this one is
        "unknown" (maybe billed, kept in the journal with the id in its error, never re-sent
        silently) and the caller gets the documented error for that.
        """
        queue_id = job.queue_id
        if self._scheduler.is_tracked(queue_id) or await self._ledger.holds_queue_id(queue_id):
            raise QueueOutcomeUnknown(
                request,
                MalformedResponse(
                    f"the server answered queue_id {queue_id}, which it had already given "
                    "to another job; whether a second job was created (and billed) cannot "
                    "be told",
                    endpoint="queue",
                ),
            )

    async def submit_many(
        self,
        requests: Iterable[QueueRequest],
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
    ) -> list[Job]:
        """Validate every request first, then queue them concurrently within the rate limit.

        Nothing is sent if any request is invalid. Jobs come back in the order of
        ``requests``. A failing request never cancels the others: every queue call runs to
        its end first.

        Raises:
            RequestValidationError: some requests are invalid (problems prefixed by index).
            BatchSubmitError: some queue calls failed with a :class:`VeniceError` (including
                :class:`JournalError`); it carries the jobs that were queued (still polled)
                and each error by index.
            Exception: an error that is not a :class:`VeniceError` (a bug) is raised as
                itself, never inside an ``ExceptionGroup``; the jobs queued meanwhile are
                still polled and listed by :meth:`unfinished`.
        """
        self._check_open()
        self._check_key()
        batch = list(requests)
        problems: list[FieldProblem] = []
        for index, request in enumerate(batch):
            try:
                model = (
                    await self._model_for(request.model)
                    if self._should_validate(validate)
                    else None
                )
                check_queue(request, model)
            except RequestValidationError as error:
                problems.extend(
                    FieldProblem(f"[{index}].{p.field}", p.message) for p in error.problems
                )
        if problems:
            raise RequestValidationError(tuple(problems))
        jobs: list[Job | None] = [None] * len(batch)
        errors: dict[int, VeniceError] = {}
        unexpected: list[Exception] = []

        async def one(index: int, request: QueueRequest) -> None:
            # Errors are collected, not raised: a failing sibling must not cancel queue
            # calls in flight (a cancelled queue call could lose a billed job's id).
            try:
                jobs[index] = await self.submit_request(
                    request, destination=destination, deadline=deadline, validate=False
                )
            except VeniceError as error:
                errors[index] = error
            except Exception as error:  # raised below as itself, not in an ExceptionGroup
                unexpected.append(error)

        async with anyio.create_task_group() as tg:
            for index, request in enumerate(batch):
                tg.start_soon(one, index, request)
        if unexpected:
            raise unexpected[0]
        if errors:
            raise BatchSubmitError(jobs, dict(sorted(errors.items())))
        return [job for job in jobs if job is not None]

    def attach(
        self,
        model: str,
        queue_id: str,
        *,
        destination: Destination = None,
        deadline: float | None = None,
    ) -> Job:
        """Adopt a job queued elsewhere (another process, an earlier run) and poll it.

        Raises:
            SessionStateError: the session is not open.
        """
        self._check_open()
        self._check_key()
        if not queue_id or not model:
            raise ValueError("attach needs a model and a queue_id")
        job = Job(model=model, queue_id=queue_id)
        target = Path(destination) if destination is not None else self._output_dir
        factory = self._sink_factory(target, f"attached-{safe_stem(queue_id)}")
        self._scheduler.track(job, factory, deadline=deadline, elapsed=None)
        return job

    # ------------------------------------------------------------------ resume

    async def resume(
        self,
        journal: str | os.PathLike[str] | Journal | None = None,
        *,
        requeue_unknown: bool = False,
        on_job: Callable[[Job], object] | None = None,
    ) -> ResumeReport:
        """Pick up every unfinished job of the journal (the session's, or ``journal``).

        A session opened without a journal adopts the one given here and keeps recording
        into it.

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
            JournalError: ``journal`` is missing, empty, damaged, read-only or owned by
                another process (nothing was sent), or a job could not be claimed before
                sending it (another owner took it; it was not sent).
        """
        self._check_open()
        self._check_key()
        if journal is not None:
            await self._ledger.adopt(journal)
        ledger = self._ledger
        jobs: list[Job] = []
        attached = queued = skipped = not_queued = 0
        unknown: list[JournalEntry] = []
        failed: list[JournalEntry] = []
        spend_error: SpendLimitExceeded | None = None

        def found(job: Job) -> None:
            jobs.append(job)
            if on_job is not None:
                on_job(job)

        entries = await ledger.entries()
        removed = await anyio.to_thread.run_sync(_remove_partial_downloads, entries)
        if removed:
            log.info("removed %d partial download(s) left by an earlier run", len(removed))
        for entry in entries:
            target = Path(entry.destination) if entry.destination else None
            state = entry.state
            if state in (JobState.SENDING, JobState.UNKNOWN):
                if not requeue_unknown:
                    unknown.append(entry)
                    continue
                if not await ledger.requeue(entry):
                    skipped += 1  # changed since it was read: not ours to send again
                    continue
                log.warning("re-queueing job %d whose first queue answer was lost", entry.id)
                state = JobState.INTENT
            if state is JobState.SUCCEEDED:
                skipped += 1
            elif state in (JobState.FAILED, JobState.REJECTED):
                failed.append(entry)
            elif state is JobState.QUEUED and entry.queue_id is not None:
                if self._scheduler.is_tracked(entry.queue_id):
                    skipped += 1
                    continue
                found(self._attach_entry(entry, target))
                attached += 1
            elif state is JobState.INTENT:
                if spend_error is not None:
                    not_queued += 1
                    continue
                try:
                    ticket = ledger.hold_recorded(entry)
                except SpendLimitExceeded as error:
                    spend_error = error
                    not_queued += 1
                    continue
                try:
                    job = await self._queue_and_track(
                        entry.request, ticket, target, entry.name, None
                    )
                except (QueueOutcomeUnknown, APIStatusError):
                    latest = await ledger.entry(entry.id)
                    if latest is not None and latest.state is JobState.UNKNOWN:
                        unknown.append(latest)
                    elif latest is not None:
                        failed.append(latest)
                    continue
                found(job)
                queued += 1
        return ResumeReport(
            jobs=tuple(jobs),
            attached=attached,
            queued=queued,
            skipped=skipped,
            unknown=tuple(unknown),
            failed=tuple(failed),
            not_queued=not_queued,
            spend_limit=spend_error,
            partial_files_removed=len(removed),
        )

    def _attach_entry(self, entry: JournalEntry, target: Path | None) -> Job:
        assert entry.queue_id is not None
        job = Job(model=entry.model, queue_id=entry.queue_id, request=entry.request)
        elapsed = None
        if entry.queued_at is not None:
            elapsed = max(0.0, self._clock.time() - entry.queued_at)
        stem = entry.name or f"{safe_stem(entry.request.prompt, max_length=40)}-{job.queue_id[:8]}"
        self._scheduler.track(job, self._sink_factory(target, stem), elapsed=elapsed)
        return job

    async def journal_requests(
        self,
        requests: Sequence[QueueRequest],
        *,
        keys: Sequence[str | None] | None = None,
        names: Sequence[str | None] | None = None,
        destination: Destination = None,
        all_or_nothing: bool = True,
    ) -> float:
        """Record ``requests`` in the journal as jobs to send, sending none; returns their
        estimated cost in USD. :meth:`resume` then queues them, oldest first.

        Recording a whole batch before the first job is sent means a crash at any point
        leaves a journal that ``resume`` finishes: nothing is queued twice, nothing is
        forgotten. ``keys`` identify the jobs in the journal (a repeated key is refused);
        ``names`` are their file name stems.

        Raises:
            SpendLimitExceeded: ``all_or_nothing`` and their estimated cost would take the
                session past ``max_spend_usd``; nothing was recorded.
            SessionStateError: the session is not open, or keeps no journal.
            JournalError: a job could not be recorded (those before it are).
        """
        self._check_open()
        count = len(requests)
        keys = keys if keys is not None else [None] * count
        names = names if names is not None else [None] * count
        if not len(keys) == len(names) == count:
            raise ValueError("keys and names must be as many as the requests")
        target = Path(destination) if destination is not None else self._output_dir
        intents = [
            Intent(
                request=request,
                estimate_usd=await self.estimate_cost(request),
                key=key,
                destination=str(target) if target is not None else None,
                name=name,
            )
            for request, key, name in zip(requests, keys, names, strict=True)
        ]
        return await self._ledger.intend_all(intents, all_or_nothing=all_or_nothing)

    @property
    def journal(self) -> Journal | None:
        """The job journal, when the session keeps one."""
        return self._ledger.journal

    def spending(self) -> tuple[float, float | None]:
        """(estimated USD spent, the limit or ``None``)."""
        return self._ledger.spending()

    # ------------------------------------------------------------------ results

    @asynccontextmanager
    async def results(self, jobs: Iterable[Job]) -> AsyncIterator[ResultStream]:
        """Outcomes of ``jobs`` as they finish, in finish order.

        ::

            async with session.results(jobs) as results:
                async for outcome in results:
                    match outcome:
                        case Succeeded(job, audio): ...
                        case Failed(job, error): ...

        One failed job does not end the iteration. Leaving the block early stops polling
        the jobs nobody else waits for; they stay listed by :meth:`unfinished`.

        Raises:
            ValueError: a job is not known to this session (submit or attach it first).
        """
        self._check_open()
        wanted = list(dict.fromkeys(jobs))
        for job in wanted:
            if not self._scheduler.is_tracked(job.queue_id):
                raise ValueError(f"job {job.queue_id} is not tracked by this session; attach it")
        send, receive = anyio.create_memory_object_stream[Outcome](max_buffer_size=len(wanted) or 1)
        try:
            for job in wanted:
                self._scheduler.subscribe(job, send)
            yield ResultStream(receive, len(wanted))
        finally:
            for job in wanted:
                self._scheduler.unsubscribe(job, send)
            send.close()
            receive.close()

    async def wait_for(self, job: Job, *, timeout: float | None = None) -> AudioResult:
        """The audio of one job, once it is finished.

        Raises:
            JobDeadlineExceeded: ``timeout`` seconds passed first (the job keeps running;
                wait again or attach it later).
            VeniceError: the job failed (its typed error).
        """
        outcome = await self.wait_outcome(job, timeout=timeout)
        if isinstance(outcome, Succeeded):
            return outcome.audio
        raise outcome.error

    async def wait_outcome(self, job: Job, *, timeout: float | None = None) -> Outcome:
        """Like :meth:`wait_for`, returning the outcome instead of raising the job's error."""
        self._check_open()
        if not self._scheduler.is_tracked(job.queue_id):
            raise ValueError(f"job {job.queue_id} is not tracked by this session; attach it")
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
        ``deadline`` and ``validate`` are as for :meth:`submit`.

        Raises:
            RequestValidationError, QueueOutcomeUnknown, APIStatusError: see :meth:`submit`.
            JobDeadlineExceeded: not finished within ``timeout``; the job keeps running.
            VeniceError: the job failed.
        """
        job = await self.submit(
            model, prompt, destination=destination, deadline=deadline, validate=validate, **options
        )
        return await self.wait_for(job, timeout=timeout)

    # ------------------------------------------------------------------ introspection

    def unfinished(self) -> list[Job]:
        """Jobs queued (and paid for) that have no outcome yet: keep their ids."""
        return self._scheduler.unfinished()

    def statistics(self) -> SessionStatistics:
        """A frozen snapshot of jobs, requests, 429s and time paused by rate limits."""
        counts = self._scheduler.counts()
        budget = self._budget.statistics()
        return SessionStatistics(
            jobs_in_flight=counts.in_flight,
            jobs_succeeded=counts.succeeded,
            jobs_failed=counts.failed,
            outcomes_untaken=counts.untaken,
            requests=dict(self._recorder.requests),
            rate_limited=budget.rate_limited,
            paused_seconds=budget.paused_seconds,
            media_released=counts.released,
            journal_write_failures=self._ledger.write_failures,
            journal_writes_pending=self._ledger.pending_writes,
        )


def _remove_partial_downloads(entries: Iterable[JournalEntry]) -> list[Path]:
    """Leftover temporary files in the output folders of ``entries``; blocking."""
    folders: set[Path] = set()
    files: set[Path] = set()
    for entry in entries:
        if entry.destination:
            target = Path(entry.destination)
            (folders if target.is_dir() else files).add(target)
    removed: list[Path] = []
    for folder in folders:
        removed.extend(remove_partial_downloads(folder))
    for file in files:
        removed.extend(remove_partial_downloads(file.parent, final_name=file.name))
    return removed


def _priced_by_characters(model: AudioModel | None) -> bool:
    return model is not None and isinstance(model.spec.pricing, PerThousandCharactersPricing)


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
