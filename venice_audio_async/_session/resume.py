"""Resume: pick up every unfinished job of a journal, one handler per journal state.

=========== ==================================================================
state       what resume does
=========== ==================================================================
intent      queue it (oldest first), each within the spending limit then
sending     report it as unknown: the process died mid-request, it may be billed
unknown     report it (its answer was lost); with ``requeue_unknown``, send again
queued      attach it and poll it (unless this session tracks it already); this
            includes jobs that ended unreachable, past their deadline or with the
            key refused, which the journal keeps "queued"
succeeded   skip it: its audio is stored
failed      report it with its error; but if the API never judged the job (storing
            its audio failed, or its polls failed in transit: a dropped connection, a
            timeout, a gateway's 502 / 504, a refused key, as earlier versions
            recorded) and its media was not released, attach it again, so its audio
            is fetched while the server still has it (:func:`may_fetch_again`)
rejected    report it with the API's refusal
=========== ==================================================================

:func:`step_for` says which of these a row gets, and :func:`has_work` whether any row
gets one that sends or polls: the CLI asks it before it connects, so both agree.

Running it twice does nothing the second time: what the first run queued or attached is
"queued" (tracked) or finished by then. Before anything else, the temporary files of
downloads an earlier run was killed in are removed from the journal's output folders.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import attrs

from .._core.audio import Destinations, remove_partial_downloads, safe_stem
from .._core.clock import Clock
from .._core.errors import (
    APIStatusError,
    AudioStorageError,
    AuthenticationError,
    ConnectError,
    ConnectionDropped,
    JobUnreachable,
    MalformedResponse,
    PaymentRequiredError,
    PermissionDeniedError,
    QueueOutcomeUnknown,
    RequestTimeout,
    SpendLimitExceeded,
    TransportError,
    TruncatedResponse,
)
from .._core.models import Job
from .._ledger.journal import JobState, JournalEntry
from .._ledger.ledger import Ledger
from .._polling.scheduler import Scheduler
from .submit import Destination, Submitter

__all__ = ["ResumeReport", "Resumer", "has_work", "may_fetch_again", "step_for"]

log = logging.getLogger("venice_audio_async")


#: Errors a job was marked failed with although the API never judged it: storing the
#: audio failed, or a poll failed in transit (earlier versions ended a job after a few
#: such polls), or the key was refused. The media may still wait on the server. (Not
#: ResponseTooLarge: the same answer would be as large again.)
_NO_VERDICT = frozenset(
    cls.__name__
    for cls in (
        AudioStorageError,
        TransportError,
        ConnectError,
        RequestTimeout,
        ConnectionDropped,
        TruncatedResponse,
        MalformedResponse,
        JobUnreachable,
        AuthenticationError,
        PaymentRequiredError,
        PermissionDeniedError,
    )
)
#: Statuses that are no verdict on the job either: a gateway's (any 5xx but the API's own
#: 500 / 503) and those inviting a poll again.
_NO_VERDICT_STATUSES = (408, 425)
_VERDICT_5XX = (500, 503)


def may_fetch_again(entry: JournalEntry) -> bool:
    """Whether a failed job was never judged by the API and its media may still be fetched.

    A 500 / 503 recorded by an earlier version with a proxy's HTML body cannot be told from
    the API's own and stays failed.
    """
    if entry.state is not JobState.FAILED or entry.queue_id is None or entry.released:
        return False
    if entry.error_type in _NO_VERDICT:
        return True
    status = entry.error_status
    if status is None:
        return False
    return status in _NO_VERDICT_STATUSES or (status >= 500 and status not in _VERDICT_5XX)


class Step(enum.Enum):
    """What ``resume`` does with one journal row (see the module docstring)."""

    SEND = "send"  # an intent: queue it
    SEND_AGAIN = "send again"  # sending / unknown, and the caller said to send those again
    ATTACH = "attach"  # queued: poll it
    FETCH_AGAIN = "fetch again"  # failed without the API's verdict: poll it again
    REPORT_LOST = "report lost"  # sending / unknown: may be billed, not sent again
    REPORT_FAILED = "report failed"  # failed or rejected by the API
    SKIP = "skip"  # succeeded

    @property
    def is_work(self) -> bool:
        """Whether the step sends or polls something."""
        return self in (Step.SEND, Step.SEND_AGAIN, Step.ATTACH, Step.FETCH_AGAIN)


def step_for(entry: JournalEntry, *, requeue_unknown: bool) -> Step:
    """The one rule for what ``resume`` does with ``entry``."""
    state = entry.state
    if state is JobState.INTENT:
        return Step.SEND
    if state in (JobState.SENDING, JobState.UNKNOWN):
        return Step.SEND_AGAIN if requeue_unknown else Step.REPORT_LOST
    if state is JobState.QUEUED:
        return Step.ATTACH
    if state is JobState.SUCCEEDED:
        return Step.SKIP
    return Step.FETCH_AGAIN if may_fetch_again(entry) else Step.REPORT_FAILED


def has_work(entries: Iterable[JournalEntry], *, requeue_unknown: bool) -> bool:
    """Whether ``resume`` would send or poll anything for these journal rows."""
    return any(step_for(e, requeue_unknown=requeue_unknown).is_work for e in entries)


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
    #: Of ``attached``, the jobs whose audio could not be stored earlier, fetched again.
    storage_retried: int = 0
    #: Of ``attached``, the jobs recorded as failed without the API's verdict (storage
    #: failures included, a poll's transport failure, a refused key), fetched again.
    fetched_again: int = 0


@attrs.define
class _Run:
    """What one resume found and did, as it goes."""

    on_job: Callable[[Job], object] | None
    requeue_unknown: bool
    jobs: list[Job] = attrs.field(factory=list)
    attached: int = 0
    queued: int = 0
    skipped: int = 0
    not_queued: int = 0
    unknown: list[JournalEntry] = attrs.field(factory=list)
    failed: list[JournalEntry] = attrs.field(factory=list)
    spend_limit: SpendLimitExceeded | None = None
    storage_retried: int = 0
    fetched_again: int = 0

    def found(self, job: Job) -> None:
        self.jobs.append(job)
        if self.on_job is not None:
            self.on_job(job)


class Resumer:
    """Finishes what a journal records (see the module docstring)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        submitter: Submitter,
        scheduler: Scheduler,
        destinations: Destinations,
        clock: Clock,
    ) -> None:
        self._ledger = ledger
        self._submitter = submitter
        self._scheduler = scheduler
        self._destinations = destinations
        self._clock = clock

    async def resume(
        self, *, requeue_unknown: bool, on_job: Callable[[Job], object] | None
    ) -> ResumeReport:
        """Handle every journaled job by its state; see ``AsyncSession.resume``.

        Raises:
            SessionStateError: no journal is kept.
            JournalError: the journal cannot be read, or a job could not be claimed.
        """
        entries = await self._ledger.entries()
        removed = await anyio.to_thread.run_sync(_remove_partial_downloads, entries)
        if removed:
            log.info("removed %d partial download(s) left by an earlier run", len(removed))
        run = _Run(on_job=on_job, requeue_unknown=requeue_unknown)
        handlers = {
            Step.SEND: self._queue,
            Step.SEND_AGAIN: self._send_again,
            Step.REPORT_LOST: self._report_lost,
            Step.ATTACH: self._attach,
            Step.SKIP: self._stored,
            Step.FETCH_AGAIN: self._fetch_again,
            Step.REPORT_FAILED: self._report_failed,
        }
        for entry in entries:
            await handlers[step_for(entry, requeue_unknown=requeue_unknown)](entry, run)
        return ResumeReport(
            jobs=tuple(run.jobs),
            attached=run.attached,
            queued=run.queued,
            skipped=run.skipped,
            unknown=tuple(run.unknown),
            failed=tuple(run.failed),
            not_queued=run.not_queued,
            spend_limit=run.spend_limit,
            partial_files_removed=len(removed),
            storage_retried=run.storage_retried,
            fetched_again=run.fetched_again,
        )

    def attach(
        self, model: str, queue_id: str, *, destination: Destination, deadline: float | None
    ) -> Job:
        """Poll a job queued elsewhere (another process, an earlier run).

        Raises:
            ValueError: ``model`` or ``queue_id`` is empty.
        """
        if not queue_id or not model:
            raise ValueError("attach needs a model and a queue_id")
        job = Job(model=model, queue_id=queue_id)
        target = self._destinations.target(destination)
        sinks = self._destinations.sinks(target, f"attached-{safe_stem(queue_id)}")
        self._scheduler.track(job, sinks, deadline=deadline, elapsed=None)
        return job

    async def _report_lost(self, entry: JournalEntry, run: _Run) -> None:
        """Sending or unknown: reported, not sent again."""
        run.unknown.append(entry)

    async def _send_again(self, entry: JournalEntry, run: _Run) -> None:
        """Sending or unknown, and ``requeue_unknown``: sent again."""
        if not await self._ledger.requeue(entry):
            run.skipped += 1  # changed since it was read: not ours to send again
            return
        log.warning("re-queueing job %d whose first queue answer was lost", entry.id)
        await self._queue(entry, run)

    async def _stored(self, entry: JournalEntry, run: _Run) -> None:
        """Succeeded: nothing to do."""
        run.skipped += 1

    async def _report_failed(self, entry: JournalEntry, run: _Run) -> None:
        """Failed or rejected by the API: reported with its error."""
        run.failed.append(entry)

    async def _fetch_again(self, entry: JournalEntry, run: _Run) -> None:
        """Failed without the API's verdict, media kept: polled again."""
        # The disk, the network or the key failed us, not the job. The media is still on
        # the server unless it expired: fetch it again (a MediaNotFoundError then fails it
        # for good).
        log.info(
            "fetching job %s again: it failed earlier without the API's verdict (%s)",
            entry.queue_id,
            entry.error_type,
        )
        attached = run.attached
        await self._attach(entry, run)
        if run.attached > attached:
            run.fetched_again += 1
            if entry.error_type == AudioStorageError.__name__:
                run.storage_retried += 1

    async def _queue(self, entry: JournalEntry, run: _Run) -> None:
        """An intent: queue it, unless the spending limit was reached."""
        if run.spend_limit is not None:
            run.not_queued += 1
            return
        try:
            hold = self._ledger.hold_recorded(entry)
        except SpendLimitExceeded as error:
            run.spend_limit = error
            run.not_queued += 1
            return
        try:
            job = await self._submitter.send(
                entry.request, hold, target=_target(entry), name=entry.name
            )
        except (QueueOutcomeUnknown, APIStatusError):
            latest = await self._ledger.entry(entry.id)
            if latest is not None and latest.state is JobState.UNKNOWN:
                run.unknown.append(latest)
            elif latest is not None:
                run.failed.append(latest)
            return
        run.found(job)
        run.queued += 1

    async def _attach(self, entry: JournalEntry, run: _Run) -> None:
        """Queued: poll it, counting the time it has run since it was queued."""
        if entry.queue_id is None:
            return  # (a queued row always has its id)
        if entry.queue_id in self._scheduler.jobs:
            run.skipped += 1
            return
        job = Job(model=entry.model, queue_id=entry.queue_id, request=entry.request)
        elapsed = None
        if entry.queued_at is not None:
            elapsed = max(0.0, self._clock.time() - entry.queued_at)
        stem = Destinations.stem(entry.request.prompt, job.queue_id, entry.name)
        sinks = self._destinations.sinks(_target(entry), stem)
        self._scheduler.track(job, sinks, elapsed=elapsed)
        self._ledger.charged(entry)
        run.found(job)
        run.attached += 1


def _target(entry: JournalEntry) -> Path | None:
    return Path(entry.destination) if entry.destination else None


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
