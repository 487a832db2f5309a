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
from ._budget import LocalBudget, RequestBudget
from ._client import VeniceClient
from ._clock import Clock, SystemClock
from ._config import DEFAULT_BASE_URL, Limits, RateLimits, RetryPolicy, Timeouts
from ._errors import (
    APIStatusError,
    BatchSubmitError,
    ConnectError,
    JobDeadlineExceeded,
    MalformedResponse,
    MissingAPIKeyError,
    QueueOutcomeUnknown,
    RateLimitError,
    RequestValidationError,
    ServerError,
    ServiceUnavailableError,
    SessionStateError,
    SpendLimitExceeded,
    TransportError,
    VeniceError,
)
from ._estimator import DurationEstimator, PollingBounds
from ._journal import JobState, Journal, JournalEntry
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
from ._rates import endpoint_rates, pooled_rate
from ._retry import call_idempotent
from ._scheduler import Scheduler, SinkFactory
from ._spending import SpendTracker
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


@attrs.define
class _Sending:
    """Whether a queue request may have left (its job may then exist and be billed)."""

    claimed: bool = False


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
            pool=pooled_rate(self._rate_limits),
            pooled_endpoints=self._rate_limits.pooled_endpoints,
            max_retry_after=self._retry.max_retry_after,
            failure_window=(
                self._rate_limits.failures_per_window,
                self._rate_limits.failure_window,
            ),
        )
        self._client.transport.set_observer(self._observe)
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
            on_outcome=self._record_outcome,
            on_released=self._record_released,
        )
        self._requests: dict[str, int] = {}
        self._spend = SpendTracker(max_spend_usd)
        self._quotes: dict[QuoteRequest, QuoteResult] = {}
        self._journal_arg = journal
        self._journal: Journal | None = journal if isinstance(journal, Journal) else None
        self._owns_journal = False  # opened by the session, so closed by it
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
        if self._journal is None and self._journal_arg is not None:
            assert not isinstance(self._journal_arg, Journal)
            # Raises JournalError (owned elsewhere, damaged, read-only) before anything is sent.
            self._journal = await Journal.open(self._journal_arg, clock=self._clock)
            self._owns_journal = True
        if self._journal is not None:
            try:
                # A resumed run counts what earlier runs already spent against the limit.
                self._spend.spent_usd = await self._journal.estimated_spend_usd()
            except BaseException:
                await self._close_journal()
                raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._scheduler.run)
            if self._journal is not None:
                tg.start_soon(self._retry_journal_writes, self._journal)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            await self._client.aclose()
            await self._close_journal()
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
                await self._close_journal()
                await _close_budget(self._budget)
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

    async def _close_journal(self) -> None:
        journal = self._journal
        if journal is None:
            return
        if self._owns_journal:
            await journal.aclose()  # tries delayed writes once more, logs what still failed
            return
        remaining = await journal.flush()  # the caller's journal: left open, but brought up to date
        if remaining:
            log.error(
                "session closed with %d journal write(s) still waiting in %r; they are "
                "retried when the journal is flushed or closed",
                remaining,
                journal,
            )

    async def _retry_journal_writes(self, journal: Journal) -> None:
        """Retry, with backoff, journal writes that failed after a job was paid for."""
        while True:
            await journal.wait_pending_writes()
            delay = _JOURNAL_RETRY_FIRST
            while True:
                await self._clock.sleep(delay)
                if not await journal.flush():
                    break
                delay = min(delay * 2, _JOURNAL_RETRY_MAX)

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

    async def _observe(self, endpoint: str, status: int, headers: Mapping[str, str]) -> None:
        self._requests[endpoint] = self._requests.get(endpoint, 0) + 1
        learned = self._budget.record_response(endpoint, status, headers)  # 0: no answer
        if learned is not None:
            await learned  # a shared budget tells the other processes first

    async def _idempotent(self, endpoint: str, send: Callable[[], Awaitable[T]]) -> T:
        return await call_idempotent(
            endpoint,
            send,
            budget=self._budget,
            limiter=self._limiter,
            policy=self._retry,
            clock=self._clock,
        )

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

    async def _record_outcome(self, outcome: Outcome) -> None:
        journal = self._journal
        if journal is None:
            return
        queue_id = outcome.job.queue_id
        if isinstance(outcome, Succeeded):
            audio = outcome.audio
            await journal.mark_succeeded(
                queue_id,
                path=str(audio.path) if audio.path is not None else None,
                size=audio.size,
                content_type=audio.content_type,
            )
            if outcome.released:
                await journal.mark_released(queue_id)
        elif not isinstance(outcome.error, JobDeadlineExceeded):
            # A deadline is ours, not the job's: it still runs and stays "queued" for resume.
            await journal.mark_failed(queue_id, outcome.error)

    async def _record_released(self, job: Job) -> None:
        if self._journal is not None:
            await self._journal.mark_released(job.queue_id)

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
        if deadline is not None and not deadline > 0:
            raise ValueError(f"deadline must be a positive number of seconds, got {deadline!r}")
        model = await self._model_for(request.model) if self._should_validate(validate) else None
        check_queue(request, model)
        # Estimates cost requests (catalogue, quote): only when a limit or journal needs them.
        estimate = None
        if self._spend.limit_usd is not None or self._journal is not None:
            estimate = await self.estimate_cost(request, model=model)
        held = self._spend.reserve(estimate, what=f"a {request.model} job")
        target = Path(destination) if destination is not None else self._output_dir
        row = None
        if self._journal is not None:
            try:
                row = await self._journal.add_intent(
                    request,
                    key=key,
                    destination=str(target) if target is not None else None,
                    name=name,
                    estimate_usd=estimate,
                )
            except BaseException:
                self._spend.settle(held, billed=False)  # nothing was sent
                raise
        return await self._queue_and_track(request, row, held, target, name, deadline)

    async def _queue_and_track(
        self,
        request: QueueRequest,
        row: int | None,
        held: float,
        target: Path | None,
        name: str | None,
        deadline: float | None,
    ) -> Job:
        journal = self._journal
        billed = False
        sending = _Sending()
        try:
            job = await self._queue(request, row, sending)
            billed = True
        except QueueOutcomeUnknown as error:
            billed = True  # assume the worst: it may have been created and billed
            if journal is not None and row is not None:
                await journal.mark_unknown(row, error.cause)
            raise
        except APIStatusError as error:
            if journal is not None and row is not None:
                await journal.mark_rejected(row, error)
            raise
        except BaseException as error:
            # Anything else after the claim (a cancellation, a bug) leaves the job's fate
            # open: "unknown", never silently sent again. Before the claim nothing left.
            if sending.claimed and journal is not None and row is not None:
                billed = True
                await journal.mark_unknown(row, error)
            raise
        finally:
            self._spend.settle(held, billed=billed)
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

    async def _queue(
        self, request: QueueRequest, row: int | None = None, sending: _Sending | None = None
    ) -> Job:
        sending = sending or _Sending()
        journal = self._journal if row is not None else None
        attempt = 0
        while True:
            attempt += 1
            await self._budget.acquire("queue")
            try:
                async with self._limiter:
                    # Shielded from "sending" to "queued": once the request may be on the
                    # wire, its answer (a paid queue_id) is waited for and recorded even if
                    # we are being cancelled (Ctrl-C); the request timeout bounds the wait.
                    with anyio.CancelScope(shield=True):
                        if not sending.claimed:
                            if journal is not None and row is not None:
                                # Raises JournalError (nothing sent) if the row cannot be
                                # claimed: another owner has it, or the write failed.
                                await journal.mark_sending(row)
                            sending.claimed = True
                        job = await self._client.queue(request)
                        await self._record_queued(request, job, journal, row)
                    return job
            except ServerError as error:
                if error.status_code in (502, 504):
                    # A gateway's error may come after the origin created (and billed) it.
                    raise QueueOutcomeUnknown(request, error) from error
                if not isinstance(error, ServiceUnavailableError) or (
                    attempt >= self._retry.attempts
                ):
                    raise
                await self._backoff(attempt, error)  # 503: at capacity, nothing was created
            except (ConnectError, RateLimitError) as error:
                # Certainly not accepted: nothing was sent, or the server refused it
                # before creating a job. Safe to try again.
                if attempt >= self._retry.attempts:
                    raise
                await self._backoff(attempt, error)
            except TransportError as error:
                if not error.request_sent:
                    if attempt >= self._retry.attempts:
                        raise
                    await self._backoff(attempt, error)
                    continue
                if self._retry.retry_queue_on_ambiguous_failure and attempt < self._retry.attempts:
                    log.warning("queue answer lost; retrying as configured (may double-bill)")
                    await self._backoff(attempt, error)
                    continue
                raise QueueOutcomeUnknown(request, error) from error

    async def _record_queued(
        self, request: QueueRequest, job: Job, journal: Journal | None, row: int | None
    ) -> None:
        """Keep the paid ``queue_id``; never raise over a failed write (see the journal)."""
        repeated = self._scheduler.is_tracked(job.queue_id)
        if not repeated and journal is not None:
            try:
                repeated = await journal.holds_queue_id(job.queue_id)
            except VeniceError as error:
                log.warning("could not check queue_id %s in the journal: %s", job.queue_id, error)
        if repeated:
            # A server repeating an id gives us no way to tell this job from the other one:
            # polling it would hand the other job's audio over as this request's. So this
            # one is "unknown" (maybe billed, kept in the journal with the id in its error,
            # never re-sent silently) and the caller gets the documented error for that.
            raise QueueOutcomeUnknown(
                request,
                MalformedResponse(
                    f"the server answered queue_id {job.queue_id}, which it had already given "
                    "to another job; whether a second job was created (and billed) cannot "
                    "be told",
                    endpoint="queue",
                ),
            )
        if journal is not None and row is not None:
            await journal.mark_queued(row, job.queue_id)  # a failed write is retried, not raised

    async def _backoff(self, attempt: int, error: VeniceError) -> None:
        if isinstance(error, RateLimitError):
            return  # the budget already pauses the whole session for Retry-After
        await self._clock.sleep(self._retry.backoff(attempt, random.random()))

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
            await self._adopt_journal(journal)
        journal = self._journal
        if journal is None:
            raise SessionStateError(
                "resume needs a journal: AsyncSession(journal=path) or resume(path)"
            )
        jobs: list[Job] = []
        attached = queued = skipped = not_queued = 0
        unknown: list[JournalEntry] = []
        failed: list[JournalEntry] = []
        spend_error: SpendLimitExceeded | None = None

        def found(job: Job) -> None:
            jobs.append(job)
            if on_job is not None:
                on_job(job)

        entries = await journal.entries()
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
                if not await journal.requeue(entry.id, was=state):
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
                    held = self._spend.reserve(entry.estimate_usd, what=f"a {entry.model} job")
                except SpendLimitExceeded as error:
                    spend_error = error
                    not_queued += 1
                    continue
                try:
                    job = await self._queue_and_track(
                        entry.request, entry.id, held, target, entry.name, None
                    )
                except (QueueOutcomeUnknown, APIStatusError):
                    latest = await journal.get(entry.id)
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

    async def _adopt_journal(self, journal: str | os.PathLike[str] | Journal) -> None:
        if isinstance(journal, Journal):
            if self._journal is not None and self._journal is not journal:
                raise ValueError("this session already keeps another journal")
            if self._journal is None:
                self._journal = journal
                self._spend.spent_usd = await journal.estimated_spend_usd()
                if self._tg is not None:
                    self._tg.start_soon(self._retry_journal_writes, journal)
            return
        path = Path(journal)
        if self._journal is not None:
            same = (
                await anyio.Path(self._journal.path).resolve() == await anyio.Path(path).resolve()
            )
            if not same:
                raise ValueError(f"this session already keeps the journal {self._journal.path}")
            return
        # Opened here, so closed with the session. An existing journal only: resuming from
        # a path that holds none (or an empty or damaged file) is a mistake to report.
        opened = await Journal.open(path, clock=self._clock, create=False)
        try:
            spent = await opened.estimated_spend_usd()
        except BaseException:
            await opened.aclose()
            raise
        self._journal_arg = path
        self._journal, self._owns_journal = opened, True
        self._spend.spent_usd = spent
        if self._tg is not None:
            self._tg.start_soon(self._retry_journal_writes, opened)

    def _attach_entry(self, entry: JournalEntry, target: Path | None) -> Job:
        assert entry.queue_id is not None
        job = Job(model=entry.model, queue_id=entry.queue_id, request=entry.request)
        elapsed = None
        if entry.queued_at is not None:
            elapsed = max(0.0, self._clock.time() - entry.queued_at)
        stem = entry.name or f"{safe_stem(entry.request.prompt, max_length=40)}-{job.queue_id[:8]}"
        self._scheduler.track(job, self._sink_factory(target, stem), elapsed=elapsed)
        return job

    @property
    def journal(self) -> Journal | None:
        """The job journal, when the session keeps one."""
        return self._journal

    def spending(self) -> tuple[float, float | None]:
        """(estimated USD spent, the limit or ``None``)."""
        return self._spend.spent_usd, self._spend.limit_usd

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
        journal = self._journal
        return SessionStatistics(
            jobs_in_flight=counts.in_flight,
            jobs_succeeded=counts.succeeded,
            jobs_failed=counts.failed,
            outcomes_untaken=counts.untaken,
            requests=dict(self._requests),
            rate_limited=budget.rate_limited,
            paused_seconds=budget.paused_seconds,
            media_released=counts.released,
            journal_write_failures=journal.write_failures if journal is not None else 0,
            journal_writes_pending=journal.pending_writes if journal is not None else 0,
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


async def _close_budget(budget: RequestBudget) -> None:
    """Close a shared budget's connections (``RedisBudget``; it reopens them if used again)."""
    close = getattr(budget, "aclose", None)
    if close is not None:
        await close()


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
