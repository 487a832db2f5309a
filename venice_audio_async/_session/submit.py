"""Paid submission: from a request to a polled job, without ever billing twice.

One submit is: validate against the catalogue, estimate the price (from the catalogue's
pricing; with a spending limit or a journal, ``quote`` when the catalogue cannot tell), hold
the money and record the intent in the ledger, then ``queue`` within the budget, then hand
the job to the scheduler::

    validate ─► estimate ─► ledger.intend ─► claim ─► queue ─► ledger.queued ─► track
                                               ▲        │ 429, 503, never sent: no job
                                               └────────┤ (ledger.unclaim, wait, claim again)
                                                        └─► ledger.failed: unknown / rejected

From the claim to the recorded answer the call is shielded from cancellation: once the
request may be on the wire, its answer (a paid ``queue_id``) is waited for and recorded even
if the caller is cancelled (Ctrl-C); the request timeout bounds the wait. A failure after
the request may have left becomes :class:`~venice_audio_async.QueueOutcomeUnknown`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import anyio
import attrs

from .._client import VeniceClient
from .._core.audio import Destinations
from .._core.clock import Clock
from .._core.config import RetryPolicy, check_number
from .._core.errors import (
    AudioStorageError,
    BatchSubmitError,
    MalformedResponse,
    QueueDeadlineExceeded,
    QueueOutcomeUnknown,
    RequestValidationError,
    ServerError,
    TransportError,
    VeniceError,
)
from .._core.models import AudioResult, FieldProblem, Job, QueueRequest, format_for_media_type
from .._core.outcomes import Failed, Succeeded
from .._core.validation import check_queue
from .._ledger.journal import JobState, JournalEntry
from .._ledger.ledger import Intent, JobHold, Ledger
from .._ledger.replay import derive_keys, journaled_error
from .._polling.release import ReleaseMedia
from .._polling.scheduler import Scheduler
from .._rate.limiter import RequestLimiter
from .._rate.retry import Retrier, TokenTooLate, queue_answer_lost, queue_not_created
from .catalogue import Catalogue

__all__ = ["Destination", "Submitter"]

log = logging.getLogger("venice_audio_async")

#: A file or folder for a job's audio (``None``: the session's ``output_dir``, else memory).
Destination = str | os.PathLike[str] | None


class Submitter:
    """Validates, prices, records and queues jobs, then has the scheduler poll them."""

    def __init__(
        self,
        *,
        client: VeniceClient,
        catalogue: Catalogue,
        ledger: Ledger,
        scheduler: Scheduler,
        retrier: Retrier,
        limiter: RequestLimiter,
        destinations: Destinations,
        clock: Clock,
    ) -> None:
        self._clock = clock
        #: Requests waiting here for a queue token, by ``id()`` (for ``session.status``).
        self.waiting: dict[int, QueueRequest] = {}
        self._client = client
        self._catalogue = catalogue
        self._ledger = ledger
        self._scheduler = scheduler
        self._retrier = retrier
        self._limiter = limiter
        self._destinations = destinations
        #: The jobs' own retry policy and release_media (a view's), else the session's.
        self._job_retry: RetryPolicy | None = None
        self._job_release: ReleaseMedia | None = None

    def for_jobs(
        self, *, retrier: Retrier, retry: RetryPolicy | None, release: ReleaseMedia | None
    ) -> Submitter:
        """A submitter sending through ``retrier`` whose jobs are polled and released per
        ``retry`` and ``release`` (``session.with_options``); everything else is shared,
        the requests waiting for a token included."""
        view = copy.copy(self)
        view._retrier = retrier
        view._job_retry = retry
        view._job_release = release
        return view

    async def submit(
        self,
        request: QueueRequest,
        *,
        destination: Destination = None,
        deadline: float | None = None,
        validate: bool | None = None,
        key: str | None = None,
        name: str | None = None,
        token_deadline_at: float | None = None,
    ) -> Job:
        """Validate, price, record, queue (billed here) and track one job.

        ``deadline`` (seconds from now) covers the whole job: the wait for a queue token
        too, and what is left of it bounds the job once queued. ``token_deadline_at`` (a
        ``clock.monotonic()`` reading) bounds only the wait for the token.

        Raises:
            ValueError: ``deadline`` is not a positive number.
            QueueDeadlineExceeded: no queue token before the deadline; nothing was sent.
            RequestValidationError, SpendLimitExceeded, JournalError: nothing was sent.
            QueueOutcomeUnknown: the request was sent but its answer lost.
            APIStatusError: the API refused the job.
        """
        deadline_at = None
        if deadline is not None:
            check_number("deadline (seconds)", deadline)
            deadline_at = self._clock.monotonic() + deadline
        key = key if key is not None else request.key
        model = await self._catalogue.rules_for(request.model, validate)
        check_queue(request, model)
        if key is not None and self._ledger.journal is not None:
            entry = await self._ledger.by_key(key)
            if entry is not None:
                return await self._known(entry, request, deadline=deadline)
        if self._ledger.needs_estimates:  # may ask quote when the catalogue cannot tell
            estimate = await self._catalogue.estimate_cost(request, model=model)
        else:
            # Reported as spent all the same (statistics().spent_usd), from the catalogue's
            # prices only: no request is added to the paid path for it.
            estimate = self._catalogue.catalogue_price(request, model)
        target = self._destinations.target(destination)
        hold = await self._ledger.intend(_intent(request, estimate, target, key, name))
        return await self.send(
            request,
            hold,
            target=target,
            name=name,
            deadline_at=deadline_at,
            token_deadline_at=token_deadline_at,
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
        """Validate every request, then submit them concurrently; see ``AsyncSession``.

        With a journal, each request without a key gets one derived from its content
        (:mod:`._ledger.replay`), so the same batch run again queues nothing twice.

        Raises:
            RequestValidationError: some requests are invalid (problems prefixed by index).
            BatchSubmitError: some queue calls failed with a :class:`VeniceError`.
            Exception: a bug, raised as itself (never inside an ``ExceptionGroup``).
        """
        if deadline is not None:
            check_number("deadline (seconds)", deadline)
        batch = await self.check_all(requests, validate)
        keys = await self.batch_keys(batch, destination=destination, take=take)
        jobs: list[Job | None] = [None] * len(batch)
        errors: dict[int, VeniceError] = {}
        unexpected: list[Exception] = []

        async def one(index: int, request: QueueRequest) -> None:
            # Errors are collected, not raised: a failing sibling must not cancel queue
            # calls in flight (a cancelled queue call could lose a billed job's id).
            try:
                jobs[index] = await self.submit(
                    request,
                    destination=destination,
                    deadline=deadline,
                    validate=False,
                    key=keys[index],
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

    async def check_all(
        self, requests: Iterable[QueueRequest], validate: bool | None
    ) -> list[QueueRequest]:
        """Validate every request, sending nothing; returns them as a list.

        Raises:
            RequestValidationError: every problem of every request, prefixed by index.
        """
        batch = list(requests)
        problems: list[FieldProblem] = []
        for index, request in enumerate(batch):
            try:
                check_queue(request, await self._catalogue.rules_for(request.model, validate))
            except RequestValidationError as error:
                problems.extend(
                    FieldProblem(f"[{index}].{p.field}", p.message) for p in error.problems
                )
        if problems:
            raise RequestValidationError(tuple(problems))
        return batch

    async def batch_keys(
        self,
        batch: Sequence[QueueRequest],
        *,
        destination: Destination,
        take: str | None,
        names: Sequence[str | None] | None = None,
    ) -> list[str | None]:
        """The journal key of each request of a batch (derived where it has none; see
        :mod:`._ledger.replay`), and an INFO line saying how many the journal already holds.

        Without a journal, the requests' own keys (nothing is deduplicated).

        Raises:
            JournalError: the journal could not be read; nothing was sent.
        """
        journal = self._ledger.journal
        if journal is None:
            return [request.key for request in batch]
        target = self._destinations.target(destination)
        keys = derive_keys(
            batch,
            targets=[target] * len(batch),
            names=list(names) if names is not None else [None] * len(batch),
            take=take,
        )
        if keys:
            recorded = {entry.key for entry in await journal.entries()}
            known = sum(1 for key in keys if key in recorded)
            log.info(
                "%d of %d request(s) of the batch already in the journal %s: those are not "
                "queued again (their recorded outcome is reported, or they are fetched)",
                known,
                len(keys),
                journal.path,
            )
        return list(keys)

    async def journal_requests(
        self,
        requests: Sequence[QueueRequest],
        *,
        keys: Sequence[str | None] | None,
        names: Sequence[str | None] | None,
        destination: Destination,
        all_or_nothing: bool,
        take: str | None = None,
    ) -> float:
        """Price every request and record it as a job to send; returns the total.

        A request without a key (in ``keys`` or its own) gets one derived from its content
        (:mod:`._ledger.replay`); one whose derived key the journal holds already is not recorded
        again (nor priced).

        Raises:
            RequestValidationError: some requests break their model's rules (checked as
                ``submit`` does, so ``resume`` never sends one the API would refuse).
            ValueError: ``keys`` or ``names`` are not as many as ``requests``.
            SpendLimitExceeded: ``all_or_nothing`` and the batch would pass the limit.
            SessionStateError: no journal is kept.
            JournalError: a row could not be written.
        """
        nothing: list[str | None] = [None] * len(requests)
        keys = nothing if keys is None else keys
        names = nothing if names is None else names
        if not len(keys) == len(names) == len(requests):
            raise ValueError("keys and names must be as many as the requests")
        await self.check_all(requests, None)
        target = self._destinations.target(destination)
        given = [
            key if key is not None else request.key
            for request, key in zip(requests, keys, strict=True)
        ]
        journal = self._ledger.journal
        recorded_already: set[int] = set()
        unkeyed = [i for i, key in enumerate(given) if key is None]
        if journal is not None and unkeyed:
            derived = await self.batch_keys(
                [requests[i] for i in unkeyed],
                destination=destination,
                take=take,
                names=[names[i] for i in unkeyed],
            )
            recorded = {entry.key for entry in await journal.entries()}
            for i, key in zip(unkeyed, derived, strict=True):
                given[i] = key
                if key in recorded:
                    recorded_already.add(i)
        intents = [
            _intent(request, await self._catalogue.estimate_cost(request), target, key, name)
            for i, (request, key, name) in enumerate(zip(requests, given, names, strict=True))
            if i not in recorded_already
        ]
        return await self._ledger.intend_all(intents, all_or_nothing=all_or_nothing)

    async def send(
        self,
        request: QueueRequest,
        hold: JobHold,
        *,
        target: Path | None,
        name: str | None,
        deadline_at: float | None = None,
        token_deadline_at: float | None = None,
    ) -> Job:
        """Queue a job the ledger holds money for, record the answer, start polling it.

        ``deadline_at`` (a ``clock.monotonic()`` reading) ends the job; no queue token is
        waited for past it or ``token_deadline_at``. The job is tracked in the same shielded
        step that records its ``queue_id``, so a cancellation can never leave a paid job
        unpolled.

        Raises:
            QueueDeadlineExceeded: no token in time; nothing was sent (the ledger gives the
                money back; the journal row is "rejected", not sent again).
            QueueOutcomeUnknown: the request was sent but its answer lost (recorded unknown).
            APIStatusError: the API refused the job (recorded rejected).
            JournalError: the job could not be claimed before sending; nothing was sent.
        """
        limits = [t for t in (deadline_at, token_deadline_at) if t is not None]
        tracked: list[Job] = []

        def track(job: Job) -> None:
            stem = Destinations.stem(request.prompt, job.queue_id, name)
            left = None if deadline_at is None else max(0.0, deadline_at - self._clock.monotonic())
            self._scheduler.track(
                job,
                self._destinations.sinks(target, stem),
                deadline=left,
                elapsed=0.0,
                retry=self._job_retry,
                release=self._job_release,
            )
            tracked.append(job)

        self.waiting[id(request)] = request
        try:
            return await self._queue(request, hold, track, min(limits) if limits else None)
        except BaseException as error:
            if not tracked:  # a job queued and tracked is paid for: nothing to undo
                await self._ledger.failed(hold, error)
            raise
        finally:
            self.waiting.pop(id(request), None)

    async def _known(
        self, entry: JournalEntry, request: QueueRequest, *, deadline: float | None
    ) -> Job:
        """A keyed request the journal already records: never queued a second time.

        What the journal recorded is reported as the first run reported it:

        - never sent (an intent: refused by the spending limit, interrupted before it was
          sent, or "rejected" for want of a queue token in time, which never left): sent now;
        - queued: attached (polled); failed only in storing its audio (its media kept on
          the server): attached and fetched again;
        - stored: its ``Succeeded`` comes from the journal (the file, or for audio kept in
          memory and taken earlier, neither data nor path);
        - failed: its ``Failed`` comes from the journal, with the error rebuilt
          (:func:`journaled_error`); the job is returned, its outcome kept for a caller;
        - refused by the API before a job existed: that error is raised again;
        - sent with its answer lost: :class:`QueueOutcomeUnknown`, as the first time.

        Raises:
            SpendLimitExceeded: a recorded, unsent job would still pass the limit.
            QueueOutcomeUnknown: it was sent before and its answer lost (maybe billed).
            APIStatusError: the API refused it before (rebuilt from the journal).
        """
        target = Path(entry.destination) if entry.destination else None
        # Refused here, before anything left (no queue token in time): nothing to pay twice.
        never_left = entry.error_type == QueueDeadlineExceeded.__name__
        if entry.state is JobState.REJECTED and never_left and await self._ledger.requeue(entry):
            entry = attrs.evolve(entry, state=JobState.INTENT)
        if entry.state is JobState.INTENT:
            hold = self._ledger.hold_recorded(entry)
            deadline_at = None if deadline is None else self._clock.monotonic() + deadline
            return await self.send(
                entry.request, hold, target=target, name=entry.name, deadline_at=deadline_at
            )
        if entry.state is JobState.REJECTED:
            raise journaled_error(entry)
        if entry.queue_id is None or entry.state in (JobState.SENDING, JobState.UNKNOWN):
            raise QueueOutcomeUnknown(
                request,
                MalformedResponse(
                    f"the journal records key {entry.key!r} as sent with its answer lost; it "
                    "is not sent again (resume(requeue_unknown=True) would)",
                    endpoint="queue",
                ),
            )
        job = Job(model=entry.model, queue_id=entry.queue_id, request=entry.request)
        stem = Destinations.stem(entry.request.prompt, job.queue_id, entry.name)
        sinks = self._destinations.sinks(target, stem)
        storage_only = (
            entry.state is JobState.FAILED
            and entry.error_type == AudioStorageError.__name__
            and not entry.released
        )
        if entry.state is JobState.QUEUED or storage_only:
            self._scheduler.track(
                job,
                sinks,
                deadline=deadline,
                elapsed=None,
                retry=self._job_retry,
                release=self._job_release,
            )
            self._ledger.charged(entry)
            return job
        if entry.state is JobState.SUCCEEDED:
            content_type = entry.content_type or ""
            audio = AudioResult(
                content_type=content_type,
                format=format_for_media_type(content_type) or "mp3",
                size=entry.size or 0,
                path=Path(entry.path) if entry.path else None,
                queue_id=job.queue_id,
                model=job.model,
            )
            self._scheduler.keep_outcome(Succeeded(job, audio, released=entry.released), sinks)
            return job
        self._scheduler.keep_outcome(Failed(job, journaled_error(entry)), sinks)
        return job

    async def _queue(
        self,
        request: QueueRequest,
        hold: JobHold,
        track: Callable[[Job], None],
        token_deadline_at: float | None,
    ) -> Job:
        async def send() -> Job:
            self.waiting.pop(id(request), None)  # has its token
            with anyio.CancelScope(shield=True):  # see the module docstring
                # Raises JournalError (nothing sent) if the row cannot be claimed: another
                # owner has it, or the write failed.
                await self._ledger.claim(hold)
                job = await self._client.queue(request)
                await self._refuse_repeated_id(request, job)
                await self._ledger.queued(hold, job.queue_id)  # never raises
                track(job)
            return job

        async def before_retry(error: VeniceError) -> None:
            # No job was created: the row is "intent" again while the retry waits, so a
            # crash during the wait leaves it for resume to send, not an "unknown".
            if queue_not_created(error):
                await self._ledger.unclaim(hold)

        try:
            return await self._retrier.call(
                "queue",
                send,
                limiter=self._limiter,
                deadline=token_deadline_at,
                before_retry=before_retry,
                model=request.model,
            )
        except TokenTooLate as late:
            raise QueueDeadlineExceeded(request, late.waited) from None
        except (ServerError, TransportError) as error:
            if queue_answer_lost(error):
                raise QueueOutcomeUnknown(request, error) from error
            raise

    async def _refuse_repeated_id(self, request: QueueRequest, job: Job) -> None:
        """Refuse a ``queue_id`` the server already gave to another job.

        A server repeating an id gives no way to tell this job from the other one: polling
        it would hand the other job's audio over as this request's. So this one is
        "unknown" (maybe billed, kept in the journal with the id in its error, never re-sent
        silently) and the caller gets the documented error for that.
        """
        queue_id = job.queue_id
        if queue_id in self._scheduler.jobs or await self._ledger.holds_queue_id(queue_id):
            raise QueueOutcomeUnknown(
                request,
                MalformedResponse(
                    f"the server answered queue_id {queue_id}, which it had already given "
                    "to another job; whether a second job was created (and billed) cannot "
                    "be told",
                    endpoint="queue",
                ),
            )


def _intent(
    request: QueueRequest,
    estimate: float | None,
    target: Path | None,
    key: str | None,
    name: str | None,
) -> Intent:
    destination = str(target) if target is not None else None
    key = key if key is not None else request.key
    return Intent(
        request=request, estimate_usd=estimate, key=key, destination=destination, name=name
    )
