"""The ledger: the one owner of money and records.

It holds the spending limit (what was spent, what queue calls in flight hold) and the
journal, when there is one, and nothing else writes either. A paid job's record::

    intend ──► claim ──► queued ──► succeeded / failed ──► released
      │          ├─────► unknown    the answer was lost: counted as spent
      │          ├─────► rejected   refused before a job existed: given back
      │          └─────► unclaim    429 / 503 / never sent, to be sent again: the row is
      │                             "intent" during the wait, claimed again on re-send
      └── refused (over the limit): journaled as refused, for resume; nothing sent

Money is *held* when a job is intended, so two concurrent submits that each fit under the
limit but not together cannot both pass, and is settled when ``queue`` has answered: spent
(queued, unknown) or given back (rejected, or nothing was sent), and given back again if the
job's generation fails and is refunded (a 400 / 422 / 500 / 503 job failure, per the API
reference's error codes). Spending recorded in a journal by earlier runs counts from the moment
the journal is opened or adopted.

The ledger closes only a journal it opened itself (from a path); a :class:`Journal` handed
to it is brought up to date when the ledger closes, and left open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import attrs

from .._core.clock import Clock
from .._core.config import check_number
from .._core.errors import (
    APIStatusError,
    JournalError,
    QueueDeadlineExceeded,
    QueueOutcomeUnknown,
    SessionStateError,
    SpendLimitExceeded,
    VeniceError,
)
from .._core.models import Job, QueueRequest
from .._core.outcomes import Failed, Outcome, Succeeded
from .._rate.retry import leaves_job_resumable
from .journal import Journal, JournalEntry, is_refunded

__all__ = ["Intent", "JobHold", "JournalSource", "Ledger", "SpendBook"]

log = logging.getLogger("venice_audio_async")

#: Backoff (clock seconds) between retries of journal writes that failed after a payment.
_JOURNAL_RETRY_FIRST = 0.2
_JOURNAL_RETRY_MAX = 10.0
#: Rounding allowance when comparing sums of dollars with the limit.
_CENTS_EPSILON = 1e-9

JournalSource = str | os.PathLike[str] | Journal


@attrs.frozen(kw_only=True)
class Intent:
    """A job to record before it is sent: its request, estimated price and journal fields."""

    request: QueueRequest
    estimate_usd: float | None
    key: str | None = None
    destination: str | None = None
    name: str | None = None


@attrs.define(eq=False)
class JobHold:
    """The money held for one job on its way to ``queue``, and its journal row."""

    held_usd: float
    row: int | None
    #: The request may have left: from now on the job may exist and be billed.
    claimed: bool = False
    settled: bool = False


class SpendBook:
    """Money under the spending limit: held for jobs on their way to ``queue``, spent once
    they may be billed, given back when they were not (or were refunded). The ledger's."""

    def __init__(self, limit_usd: float | None) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.held_usd = 0.0
        #: What each job this session polls was counted as spending, by queue id, so a
        #: refunded failure gives it back (dropped when the job ends).
        self._charges: dict[str, float] = {}

    def over_limit(self, extra_usd: float) -> bool:
        limit = self.limit_usd
        total = self.spent_usd + self.held_usd + extra_usd
        return limit is not None and total > limit + _CENTS_EPSILON

    def hold(self, estimate_usd: float | None, *, what: str) -> float:
        """Hold ``estimate_usd`` (unknown counts as 0) or refuse it; returns the amount.

        Raises:
            SpendLimitExceeded: holding it would pass the limit; nothing was held.
        """
        amount = estimate_usd or 0.0
        limit = self.limit_usd
        if limit is not None and self.over_limit(amount):
            total = self.spent_usd + self.held_usd + amount
            raise SpendLimitExceeded(
                f"{what} would cost about ${amount:.4f}, taking the session to "
                f"${total:.4f} over its limit of ${limit:.2f} "
                f"(${self.spent_usd:.4f} spent, ${self.held_usd:.4f} being queued); "
                "nothing was sent",
                estimate_usd=amount,
                spent_usd=self.spent_usd,
                limit_usd=limit,
            )
        self.held_usd += amount
        return amount

    def check_batch(self, total_usd: float) -> None:
        """Refuse a whole batch that would pass the limit.

        Raises:
            SpendLimitExceeded: it would; nothing was held.
        """
        limit = self.limit_usd
        if limit is not None and self.over_limit(total_usd):
            raise SpendLimitExceeded(
                f"the estimate ${total_usd:.2f} exceeds the limit of ${limit:.2f} "
                f"(${self.spent_usd:.2f} spent already); nothing was spent",
                estimate_usd=total_usd,
                spent_usd=self.spent_usd,
                limit_usd=limit,
            )

    def settle(self, hold: JobHold, *, billed: bool) -> None:
        """Turn what ``hold`` holds into spending (``billed``) or give it back; once."""
        if hold.settled:
            return
        hold.settled = True
        self.held_usd = max(0.0, self.held_usd - hold.held_usd)
        if billed:
            self.spent_usd += hold.held_usd

    def charge(self, queue_id: str, amount_usd: float) -> None:
        """``queue_id``'s job is counted as ``amount_usd`` spent (given back if refunded)."""
        self._charges[queue_id] = amount_usd

    def job_ended(self, queue_id: str, *, refunded: bool) -> float:
        """The job ended; a refunded one gives its charge back. Returns what was given."""
        charge = self._charges.pop(queue_id, 0.0)
        if not refunded or not charge:
            return 0.0
        self.spent_usd = max(0.0, self.spent_usd - charge)
        return charge


class Ledger:
    """The spending limit and the journal of one session (see the module docstring).

    Raises:
        ValueError: ``limit_usd`` is negative or not a number.
    """

    def __init__(
        self, *, limit_usd: float | None, clock: Clock, journal: JournalSource | None = None
    ) -> None:
        if limit_usd is not None:
            check_number("max_spend_usd", limit_usd, inclusive=True)
        self._money = SpendBook(limit_usd)
        self._clock = clock
        self._source = journal
        self._journal: Journal | None = journal if isinstance(journal, Journal) else None
        self._owns_journal = False  # opened here, so closed here
        self._attached = anyio.Event()
        if self._journal is not None:
            self._attached.set()

    def __repr__(self) -> str:
        money = self._money
        return f"<Ledger spent=${money.spent_usd:.4f} limit={money.limit_usd!r} {self._journal!r}>"

    # ------------------------------------------------------------------ the journal

    @property
    def journal(self) -> Journal | None:
        """The journal, when one is kept."""
        return self._journal

    async def open(self) -> None:
        """Open the journal given as a path, and count what it records as spent.

        Raises:
            JournalError: the journal cannot be used (owned elsewhere, damaged, read-only);
                nothing was sent.
        """
        source = self._source
        if self._journal is None and source is not None:
            assert not isinstance(source, Journal)
            self._journal = await Journal.open(source, clock=self._clock)
            self._owns_journal = True
        if self._journal is None:
            return
        try:
            self._money.spent_usd += await self._journal.estimated_spend_usd()
        except BaseException:
            await self.aclose()
            raise
        self._attached.set()

    async def adopt(self, source: JournalSource) -> None:
        """Keep recording into ``source`` from now on (``resume`` of a journal's jobs).

        Its recorded spending is added to this session's. The same journal again is a
        no-op; a journal given as a path is opened without creating one, and closed with
        the ledger; a :class:`Journal` object stays the caller's to close.

        Raises:
            ValueError: the ledger already keeps another journal.
            JournalError: there is no journal at the path, or it cannot be used.
        """
        current = self._journal
        if isinstance(source, Journal):
            if current is source:
                return
            if current is not None:
                raise ValueError("this session already keeps another journal")
            journal, owned = source, False
        else:
            path = Path(source)
            if current is not None:
                same = await anyio.Path(current.path).resolve() == await anyio.Path(path).resolve()
                if not same:
                    raise ValueError(f"this session already keeps the journal {current.path}")
                return
            # Opened here, so closed here. An existing journal only: resuming from a path that
            # holds none (or an empty or damaged file) is a mistake to report.
            journal, owned = await Journal.open(path, clock=self._clock, create=False), True
        try:
            spent = await journal.estimated_spend_usd()
        except BaseException:
            if owned:
                await journal.aclose()
            raise
        self._journal, self._owns_journal = journal, owned
        self._money.spent_usd += spent
        self._attached.set()

    async def aclose(self) -> None:
        """Close the journal if it was opened here; else bring it up to date and leave it."""
        journal = self._journal
        if journal is None:
            return
        if self._owns_journal:
            await journal.aclose()  # tries delayed writes once more, logs what still failed
            return
        remaining = await journal.flush()
        if remaining:
            log.error(
                "session closed with %d journal write(s) still waiting in %r; they are "
                "retried when the journal is flushed or closed",
                remaining,
                journal,
            )

    async def keep_writes_landing(self) -> None:
        """Retry, with backoff, journal writes that failed after a job was paid for.

        Runs until cancelled (a task of the session); waits for a journal to be kept first.
        """
        await self._attached.wait()
        journal = self._journal
        assert journal is not None
        while True:
            await journal.wait_pending_writes()
            delay = _JOURNAL_RETRY_FIRST
            while True:
                await self._clock.sleep(delay)
                if not await journal.flush():
                    break
                delay = min(delay * 2, _JOURNAL_RETRY_MAX)

    @property
    def write_failures(self) -> int:
        """Journal writes that failed when made after a payment (each logged)."""
        return self._journal.write_failures if self._journal is not None else 0

    @property
    def pending_writes(self) -> int:
        """Of those, the ones not landed yet."""
        return self._journal.pending_writes if self._journal is not None else 0

    def _require_journal(self, what: str) -> Journal:
        if self._journal is None:
            raise SessionStateError(
                f"{what} needs a journal: AsyncSession(journal=path) or resume(path)"
            )
        return self._journal

    # ------------------------------------------------------------------ money

    @property
    def limit_usd(self) -> float | None:
        return self._money.limit_usd

    def spending(self) -> tuple[float, float | None]:
        """(estimated USD spent, the limit or ``None``)."""
        return self._money.spent_usd, self._money.limit_usd

    @property
    def needs_estimates(self) -> bool:
        """Whether a job's price must be estimated before it is sent (limit or journal)."""
        return self._money.limit_usd is not None or self._journal is not None

    # ------------------------------------------------------------------ one paid job

    async def intend(self, intent: Intent) -> JobHold:
        """Hold the job's price and record it in the journal, before anything is sent.

        A job refused by the limit is still recorded, as refused (an "intent" whose error
        is the refusal): ``resume`` sends it once the limit allows, exactly once, and so
        does submitting the same key again. An unkeyed refusal is its own job: submitting
        the same request again is another job, and ``resume`` sends both.

        Raises:
            SpendLimitExceeded: the job would pass the limit; nothing was held or sent.
            JournalError: the journal could not record it; nothing is held.
        """
        request = intent.request
        try:
            held = self._money.hold(intent.estimate_usd, what=f"a {request.model} job")
        except SpendLimitExceeded as refusal:
            if self._journal is not None:
                await self._keep_refused(intent, refusal)
            raise

        hold = JobHold(held_usd=held, row=None)
        if self._journal is not None:
            try:
                hold.row = await self._journal.add_intent(
                    request,
                    key=intent.key,
                    destination=intent.destination,
                    name=intent.name,
                    estimate_usd=intent.estimate_usd,
                )
            except BaseException:
                self._money.settle(hold, billed=False)  # nothing was sent
                raise
        return hold

    async def _keep_refused(self, intent: Intent, refusal: SpendLimitExceeded) -> None:
        """Journal a job the limit refused, for ``resume``; a failed write is only logged
        (nothing was sent, and the refusal is what the caller must hear)."""
        assert self._journal is not None
        label = repr(intent.key) if intent.key is not None else "(unkeyed)"
        try:
            row = await self._journal.add_intent(
                intent.request,
                key=intent.key,
                destination=intent.destination,
                name=intent.name,
                estimate_usd=intent.estimate_usd,
                refused=refusal,
            )
        except JournalError as error:
            log.warning("job %s refused by the spending limit; not journaled: %s", label, error)
            return
        log.info(
            "job %s refused by the spending limit; kept in the journal as job %d for resume",
            label,
            row,
        )

    def hold_recorded(self, entry: JournalEntry) -> JobHold:
        """Hold the price of a job the journal already records as to be sent (resume).

        Raises:
            SpendLimitExceeded: it would pass the limit; nothing was held.
        """
        held = self._money.hold(entry.estimate_usd, what=f"a {entry.model} job")
        return JobHold(held_usd=held, row=entry.id)

    async def claim(self, hold: JobHold) -> None:
        """Mark the job as leaving, right before its request is sent (once).

        Raises:
            JournalError: the journal row could not be claimed (another owner has it, or the
                write failed); it must not be sent.
        """
        if hold.claimed:
            return
        if self._journal is not None and hold.row is not None:
            await self._journal.mark_sending(hold.row)
        hold.claimed = True

    async def unclaim(self, hold: JobHold) -> None:
        """``queue`` answered that no job was created (429, 503, never sent) and the request
        will be sent again after a wait: give its journal row back ("intent"), so a crash
        during the wait leaves a job ``resume`` sends rather than one it calls unknown. The
        next attempt claims it again. Never raises: if the write fails the row stays
        "sending" and the job stays claimed (the safe side: never re-sent silently).
        """
        if not hold.claimed:
            return
        with anyio.CancelScope(shield=True):  # the row and the hold must agree
            if self._journal is not None and hold.row is not None:
                try:
                    given_back = await self._journal.unclaim(hold.row)
                except JournalError as error:
                    log.warning(
                        "job %d stays 'sending' while it waits to be sent again: %s",
                        hold.row,
                        error,
                    )
                    return
                if not given_back:
                    return
            hold.claimed = False

    async def holds_queue_id(self, queue_id: str) -> bool:
        """Whether the journal already has ``queue_id`` for some job (never raises)."""
        if self._journal is None:
            return False
        try:
            return await self._journal.holds_queue_id(queue_id)
        except VeniceError as error:
            log.warning("could not check queue_id %s in the journal: %s", queue_id, error)
            return False

    async def queued(self, hold: JobHold, queue_id: str) -> None:
        """``queue`` answered with ``queue_id``: the job is paid for. Never raises (a failed
        journal write is kept and retried)."""
        self._money.settle(hold, billed=True)
        self._money.charge(queue_id, hold.held_usd)
        if self._journal is not None and hold.row is not None:
            await self._journal.mark_queued(hold.row, queue_id)

    def charged(self, entry: JournalEntry) -> None:
        """A journaled job is polled again (its cost was counted when the journal was
        opened), so that a refunded failure gives it back."""
        if entry.queue_id is not None:
            self._money.charge(entry.queue_id, entry.estimate_usd or 0.0)

    async def failed(self, hold: JobHold, error: BaseException) -> None:
        """``queue`` did not answer with a job: record what that may have cost.

        A lost answer (:class:`QueueOutcomeUnknown`), or anything else once the request
        may have left (a cancellation, a bug), is "unknown" and counted as spent: the job
        may exist. A refusal by the API is "rejected" and given back, as is a failure
        before the request left.
        """
        journal, row = self._journal, hold.row
        if isinstance(error, QueueOutcomeUnknown) or (
            hold.claimed and not isinstance(error, APIStatusError)
        ):
            self._money.settle(hold, billed=True)  # assume the worst: it may have been billed
            if journal is not None and row is not None:
                cause = error.cause if isinstance(error, QueueOutcomeUnknown) else error
                await journal.mark_unknown(row, cause)
        elif isinstance(error, (APIStatusError, QueueDeadlineExceeded)):
            # Refused (by the API, or here for want of a token in time): never re-sent.
            self._money.settle(hold, billed=False)
            if journal is not None and row is not None:
                await journal.mark_rejected(row, error)
        else:
            self._money.settle(hold, billed=False)

    async def intend_all(self, intents: Sequence[Intent], *, all_or_nothing: bool) -> float:
        """Record every job of a batch as to be sent, sending nothing; returns their cost.

        The jobs are queued later (``resume``), oldest first, each within the limit then.

        Raises:
            SpendLimitExceeded: ``all_or_nothing`` and the whole batch would pass the limit;
                nothing was recorded.
            SessionStateError: no journal is kept.
            JournalError: a row could not be written (the rows before it stay recorded).
        """
        journal = self._require_journal("journal_requests")
        total = sum(intent.estimate_usd or 0.0 for intent in intents)
        if all_or_nothing:
            self._money.check_batch(total)
        for intent in intents:
            await journal.add_intent(
                intent.request,
                key=intent.key,
                destination=intent.destination,
                name=intent.name,
                estimate_usd=intent.estimate_usd,
            )
        return total

    # ------------------------------------------------------------------ after the queue

    async def record_outcome(self, outcome: Outcome) -> None:
        """A job ended: its stored audio (and release) or its error. Never raises.

        A failed generation Venice refunds (:func:`is_refunded`) is no longer counted as
        spent.
        """
        queue_id = outcome.job.queue_id
        refunded = isinstance(outcome, Failed) and is_refunded(outcome.error)
        given_back = self._money.job_ended(queue_id, refunded=refunded)
        if given_back:
            log.info("job %s failed and was refunded: $%.4f given back", queue_id, given_back)
        journal = self._journal
        if journal is None:
            return
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
        elif not leaves_job_resumable(outcome.error):
            # A deadline, an unreachable API or a refused key is no verdict on the job: it
            # stays "queued", for resume.
            await journal.mark_failed(queue_id, outcome.error)

    async def record_released(self, job: Job) -> None:
        """The server's copy of the job's media was released. Never raises."""
        if self._journal is not None:
            await self._journal.mark_released(job.queue_id)

    # ------------------------------------------------------------------ reading the records

    async def entries(self) -> list[JournalEntry]:
        """Every recorded job, oldest first.

        Raises:
            SessionStateError: no journal is kept.
            JournalError: the journal could not be read.
        """
        return await self._require_journal("resume").entries()

    async def entry(self, row: int) -> JournalEntry | None:
        """One recorded job by its journal id (``None`` without a journal)."""
        return await self._journal.get(row) if self._journal is not None else None

    async def by_key(self, key: str) -> JournalEntry | None:
        """The job recorded under ``key`` (e.g. a batch line), if any."""
        return await self._journal.by_key(key) if self._journal is not None else None

    async def requeue(self, entry: JournalEntry) -> bool:
        """Make an unknown or interrupted job sendable again, if it is still as read."""
        journal = self._require_journal("resume")
        return await journal.requeue(entry.id, was=entry.state)
