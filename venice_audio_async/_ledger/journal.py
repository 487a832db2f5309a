"""A durable record of every job, so a crash never loses a paid ``queue_id``.

Each job is written *before* ``queue`` is sent (an intent with its request), marked
"sending" right before the request leaves, then updated with its ``queue_id``, its outcome
(file, size, content type or error) and whether the media was released. The states::

    intent ──► sending ──► queued ──► succeeded ──► (released)
                  │           └─────► failed
                  ├──► unknown     the answer was lost: the job may exist and be billed
                  └──► rejected    refused by the API before any job existed (not billed)

A process killed between "sending" and "queued" leaves a row in "sending": like "unknown",
it is never queued again silently (see :meth:`~venice_audio_async.AsyncSession.resume`).
A ``queue`` answered with a sure "no job was created" (429, 503, a request that never
left) goes back from "sending" to "intent" while it waits to be sent again, so a crash
during that wait leaves a job ``resume`` sends. A job refused by the spending limit is an
"intent" whose error is the refusal (:attr:`JournalEntry.refused`).

Storage is SQLite from the standard library in WAL mode (one writer, crash-safe commits),
driven from a worker thread so the event loop never blocks on disk. The claim, and every
write made after a request left, is checkpointed into the database file, so losing the
``-wal`` file after a crash loses none of them; a high-water mark beside the journal
(:mod:`._ledger.journal_mark`) refuses a journal that lost rows anyway, at open.

The guarantees around it:

* **One owner.** Opening a journal takes its lock file (``<journal>.lock``, see
  :mod:`._ledger.owner_lock`); a second opener, in this process or another, gets a
  :class:`JournalError` naming the holder's pid. A row is claimed by the same single
  ``UPDATE`` that marks it "sending" (``WHERE state = 'intent'``), so even two owners that
  got past the lock could not both send it.
* **Refused at open, not mid-run.** A file that is empty, damaged, not a journal, or
  read-only (file or folder) raises :class:`JournalError` from :meth:`Journal.open`,
  before anything is sent, with a message saying what to do.
* **No id is lost to a failed write.** Writes made before a request leaves (the intent,
  the claim) raise :class:`JournalError` when they fail: nothing was sent. Writes made
  after (the ``queue_id``, outcomes, releases) never raise: a failed one is kept in order
  in memory, logged as a warning naming the job, counted in :attr:`Journal.write_failures`
  and retried by :meth:`flush` (the session does so in the background, with backoff)
  until it lands, when the row's ``delayed_writes`` says it came late; :meth:`aclose`
  tries once more and logs the ids of whatever still could not be written.
* No ``sqlite3`` exception leaves the journal: each is a :class:`JournalError`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .._core.clock import Clock, SystemClock
from .._core.converters import structure_queue_request, unstructure_request
from .._core.errors import JournalError
from .._core.models import QueueRequest
from .journal_db import DelayedWrite, JournalStore, connect
from .owner_lock import OwnerLock

__all__ = ["JobState", "Journal", "JournalEntry", "is_refunded"]

#: Statuses with which ``retrieve`` reports a failed generation, whose charge Venice gives back
#: (the API reference's error codes: provider validation 400, content policy 422, inference 500,
#: capacity 503). Such a job was queued but is not counted as spent.
_REFUNDED_STATUSES = (400, 422, 500, 503)
#: A 400 that says the queue id is unknown: no failed generation, so no refund to count on.
_NOT_A_REFUND = "InvalidQueueIdError"


def is_refunded(error: BaseException) -> bool:
    """Whether a job that ended with ``error`` had its charge refunded (see above)."""
    status = getattr(error, "status_code", None)
    return status in _REFUNDED_STATUSES and type(error).__name__ != _NOT_A_REFUND


class JobState(str, enum.Enum):
    """Where a journaled job stands."""

    INTENT = "intent"
    SENDING = "sending"
    QUEUED = "queued"
    UNKNOWN = "unknown"
    REJECTED = "rejected"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def maybe_billed(self) -> bool:
        """Whether money may have been spent on this job: every job that may have been
        created (queued, and whatever came after), not only those that succeeded."""
        return self not in (JobState.INTENT, JobState.REJECTED)


@attrs.frozen
class JournalEntry:
    """One journaled job.

    .. versionadded:: 0.1.0
    """

    id: int
    key: str | None
    request: QueueRequest
    state: JobState
    queue_id: str | None
    destination: str | None
    name: str | None
    estimate_usd: float | None
    path: str | None
    size: int | None
    content_type: str | None
    error: str | None
    error_type: str | None
    error_status: int | None
    released: bool
    created_at: float
    queued_at: float | None
    finished_at: float | None
    #: How many of this job's writes failed at first and landed later (a locked database,
    #: a full disk): its record was incomplete for a while, never lost.
    delayed_writes: int = 0

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def refused(self) -> bool:
        """Whether the job waits to be sent because the spending limit refused it (its
        ``error`` says so); ``resume`` sends it once the limit allows."""
        return self.state is JobState.INTENT and self.error_type == "SpendLimitExceeded"


def _row_to_entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        id=row["id"],
        key=row["key"],
        request=structure_queue_request(json.loads(row["request"])),
        state=JobState(row["state"]),
        queue_id=row["queue_id"],
        destination=row["destination"],
        name=row["name"],
        estimate_usd=row["estimate_usd"],
        path=row["path"],
        size=row["size"],
        content_type=row["content_type"],
        error=row["error"],
        error_type=row["error_type"],
        error_status=row["error_status"],
        released=bool(row["released"]),
        created_at=row["created_at"],
        queued_at=row["queued_at"],
        finished_at=row["finished_at"],
        delayed_writes=row["delayed_writes"],
    )


class Journal:
    """The SQLite job journal. Open with ``await Journal.open(path)``; close with ``aclose``
    (or use it as an async context manager).

    Every write is committed before the call returns, except a write made after a paid
    request whose database refused it: that one is kept, retried by :meth:`flush`, and
    counted in :attr:`write_failures` (see the module docstring).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        clock: Clock | None = None,
        *,
        lock: OwnerLock | None = None,
    ) -> None:
        self._store = JournalStore(connection, path, lock)
        self.path = path
        # Timestamps come from the session's clock (Unix seconds, or scaled ones in tests),
        # so a resumed job's elapsed time is measured in the scheduler's own units.
        self._clock: Clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"<Journal {str(self.path)!r}>"

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        create: bool = True,
        busy_timeout: float = 5.0,
    ) -> Journal:
        """Open the journal at ``path`` (creating it if ``create``) and become its owner.

        ``busy_timeout`` is how long (seconds) a write waits for another program that holds
        the database locked before it counts as failed.

        Raises:
            JournalError: another process (or session) owns the journal (its pid is in the
                message and ``holder_pid``); the file is empty, damaged, not a journal or
                read-only; its folder is not writable; ``create`` is false and there is no
                file. Nothing was written.
        """
        target = Path(path)

        def opening() -> tuple[sqlite3.Connection, OwnerLock]:
            return connect(target, create=create, busy_timeout=busy_timeout)

        # Shielded: an open abandoned half-way would keep the lock until the process exits.
        with anyio.CancelScope(shield=True):
            db, lock = await anyio.to_thread.run_sync(opening)
        return cls(db, target, clock, lock=lock)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Try the delayed writes once more, close the database and drop the lock.

        Idempotent. Writes that still cannot be made are logged with their queue ids.
        """
        await self._store.aclose()

    # ------------------------------------------------------------------ writes before sending

    async def add_intent(
        self,
        request: QueueRequest,
        *,
        key: str | None = None,
        destination: str | None = None,
        name: str | None = None,
        estimate_usd: float | None = None,
        refused: BaseException | None = None,
    ) -> int:
        """Record a job before anything is sent; returns its journal id.

        ``refused``: the job was refused (by the spending limit) and is kept to be sent by
        ``resume``; the refusal is its row's error until it is claimed.

        Raises:
            JournalError: the row could not be written (or ``key`` is already recorded);
                nothing was sent for it.
        """
        body = json.dumps(unstructure_request(request), sort_keys=True)
        try:
            cursor = await self._store.execute(
                "INSERT INTO jobs (key, request, model, state, destination, name,"
                " estimate_usd, created_at, error, error_type)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    body,
                    request.model,
                    JobState.INTENT.value,
                    destination,
                    name,
                    estimate_usd,
                    self._clock.time(),
                    None if refused is None else str(refused),
                    None if refused is None else type(refused).__name__,
                ),
                "record a new job",
            )
        except JournalError as error:
            if isinstance(error.__cause__, sqlite3.IntegrityError) and key is not None:
                raise JournalError(
                    f"the journal {self.path} already has a job with key {key!r}; it was not "
                    "recorded (or sent) again",
                    path=str(self.path),
                ) from error.__cause__
            raise
        row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    async def mark_sending(self, row_id: int) -> None:
        """Claim a job waiting to be sent: from now on it may be billed.

        The claim and the move to "sending" are one ``UPDATE ... WHERE state = 'intent'``,
        so of two owners racing for a row, one wins and the other sends nothing. It is then
        checkpointed into the database file and the high-water mark updated (see
        :mod:`._ledger.journal_mark`), so a lost ``-wal`` file cannot make it look unsent.

        Raises:
            JournalError: the job is no longer waiting (claimed by another owner, or sent
                already), or the write failed. Either way it must not be sent.
        """
        cursor = await self._store.execute(
            "UPDATE jobs SET state = ?, error = NULL, error_type = NULL, error_status = NULL"
            " WHERE id = ? AND state = ?",
            (JobState.SENDING.value, row_id, JobState.INTENT.value),
            f"claim job {row_id} before sending it",
        )
        if cursor.rowcount != 1:
            raise JournalError(
                f"job {row_id} of the journal {self.path} is no longer waiting to be sent "
                "(another owner claimed it, or it was sent already); it was not sent again",
                path=str(self.path),
            )
        # Shielded: a claim left half-way would stay "sending" though nothing was sent.
        with anyio.CancelScope(shield=True):
            try:
                await self._store.secure_claim(row_id)
            except JournalError:
                # Not sent: back to "intent", so resume sends it instead of calling it unknown.
                with contextlib.suppress(JournalError):
                    await self.unclaim(row_id)
                raise

    async def unclaim(self, row_id: int) -> bool:
        """Give a claimed job back: ``queue`` answered that it created no job (a 429, a
        503, a request that never left) and it is to be sent again after a wait.

        Back in "intent", a crash during the wait leaves a job that ``resume`` sends,
        not one it must call unknown. Returns whether the row was "sending" (and is now
        "intent"); the next attempt claims it again.

        Raises:
            JournalError: the write failed (the row stays "sending").
        """
        cursor = await self._store.execute(
            "UPDATE jobs SET state = ? WHERE id = ? AND state = ?",
            (JobState.INTENT.value, row_id, JobState.SENDING.value),
            f"give job {row_id} back to be sent again",
        )
        return cursor.rowcount == 1

    async def requeue(self, row_id: int, *, was: JobState | None = None) -> bool:
        """Make an unknown, interrupted or rejected job sendable again (the user said so).

        ``was`` is the state the caller saw: the row changes only if it is still in it, so a
        row another owner moved meanwhile is left alone. Returns whether it changed.

        Raises:
            JournalError: the write failed.
        """
        states = (
            (was,) if was is not None else (JobState.SENDING, JobState.UNKNOWN, JobState.REJECTED)
        )
        marks = ", ".join("?" for _ in states)
        cursor = await self._store.execute(
            "UPDATE jobs SET state = ?, error = NULL, error_type = NULL, error_status = NULL"
            f" WHERE id = ? AND state IN ({marks})",
            (JobState.INTENT.value, row_id, *(s.value for s in states)),
            f"mark job {row_id} to be sent again",
        )
        return cursor.rowcount == 1

    # ------------------------------------------------------------------ writes after sending

    async def mark_queued(self, row_id: int, queue_id: str) -> bool:
        """The API accepted the job. Returns whether it was written now (else: later).

        A ``queue_id`` the journal already holds for another job (a server repeating ids)
        is not written over it: this row is marked "unknown" instead, the repeated id in its
        error, so both rows stay in the money trail.
        """
        repeated = (
            f"the server answered queue_id {queue_id}, which the journal already holds for "
            "another job: whether this job exists (and was billed) cannot be told"
        )
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET state = ?, queue_id = ?, queued_at = ? WHERE id = ?",
                params=(JobState.QUEUED.value, queue_id, self._clock.time(), row_id),
                what=f"queue_id {queue_id} of job {row_id}",
                column="id",
                key=row_id,
                on_conflict=(
                    "UPDATE jobs SET state = ?, error = ?, error_type = ? WHERE id = ?",
                    (JobState.UNKNOWN.value, repeated, "MalformedResponse", row_id),
                ),
            )
        )

    async def mark_unknown(self, row_id: int, error: BaseException) -> bool:
        """The queue answer was lost; the job may exist and be billed."""
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET state = ?, error = ?, error_type = ? WHERE id = ?",
                params=(JobState.UNKNOWN.value, str(error), type(error).__name__, row_id),
                what=f"lost queue answer of job {row_id}",
                column="id",
                key=row_id,
            )
        )

    async def mark_rejected(self, row_id: int, error: BaseException) -> bool:
        """The API refused the job before creating it (nothing billed)."""
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET state = ?, error = ?, error_type = ?, error_status = ?"
                " WHERE id = ?",
                params=(
                    JobState.REJECTED.value,
                    str(error),
                    type(error).__name__,
                    getattr(error, "status_code", None),
                    row_id,
                ),
                what=f"refusal of job {row_id}",
                column="id",
                key=row_id,
            )
        )

    async def mark_succeeded(
        self, queue_id: str, *, path: str | None, size: int, content_type: str
    ) -> bool:
        """The audio is stored."""
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET state = ?, path = ?, size = ?, content_type = ?,"
                " finished_at = ?, error = NULL, error_type = NULL, error_status = NULL"
                " WHERE queue_id = ?",
                params=(
                    JobState.SUCCEEDED.value,
                    path,
                    size,
                    content_type,
                    self._clock.time(),
                    queue_id,
                ),
                what=f"stored audio of queue_id {queue_id}",
                column="queue_id",
                key=queue_id,
            )
        )

    async def mark_failed(self, queue_id: str, error: BaseException) -> bool:
        """The job ended with an error."""
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET state = ?, error = ?, error_type = ?, error_status = ?,"
                " finished_at = ? WHERE queue_id = ?",
                params=(
                    JobState.FAILED.value,
                    str(error),
                    type(error).__name__,
                    getattr(error, "status_code", None),
                    self._clock.time(),
                    queue_id,
                ),
                what=f"failure of queue_id {queue_id}",
                column="queue_id",
                key=queue_id,
            )
        )

    async def mark_released(self, queue_id: str) -> bool:
        """The server's copy of the media was released."""
        return await self._store.write_after_send(
            DelayedWrite(
                sql="UPDATE jobs SET released = 1 WHERE queue_id = ?",
                params=(queue_id,),
                what=f"media release of queue_id {queue_id}",
                column="queue_id",
                key=queue_id,
            )
        )

    # ------------------------------------------------------------------ delayed writes

    @property
    def write_failures(self) -> int:
        """Writes made after a paid request that failed when asked (each logged)."""
        return self._store.write_failures

    @property
    def pending_writes(self) -> int:
        """Writes made after a paid request that have not landed yet."""
        return self._store.pending_writes

    async def flush(self) -> int:
        """Try the delayed writes again, oldest first; returns how many still wait.

        Never raises: a write that fails again stays queued with those behind it.
        """
        return await self._store.flush()

    async def wait_pending_writes(self) -> None:
        """Return once some write waits to be retried (for the owner's retry task)."""
        await self._store.wait_pending_writes()

    # ------------------------------------------------------------------ reads

    async def entries(self, *states: JobState) -> list[JournalEntry]:
        """All entries (or those in ``states``), oldest first.

        Raises:
            JournalError: the journal could not be read.
        """
        if states:
            marks = ", ".join("?" for _ in states)
            sql = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id"
            params: tuple[Any, ...] = tuple(s.value for s in states)
        else:
            sql, params = "SELECT * FROM jobs ORDER BY id", ()
        rows = await self._store.fetch(sql, params, "read its jobs")
        return [_row_to_entry(row) for row in rows]

    async def get(self, row_id: int) -> JournalEntry | None:
        """One entry by journal id."""
        rows = await self._store.fetch("SELECT * FROM jobs WHERE id = ?", (row_id,), "read a job")
        return _row_to_entry(rows[0]) if rows else None

    async def by_key(self, key: str) -> JournalEntry | None:
        """The entry recorded with ``key`` (e.g. a batch line), if any."""
        rows = await self._store.fetch("SELECT * FROM jobs WHERE key = ?", (key,), "read a job")
        return _row_to_entry(rows[0]) if rows else None

    async def holds_queue_id(self, queue_id: str) -> bool:
        """Whether some job of the journal already has ``queue_id``."""
        rows = await self._store.fetch(
            "SELECT 1 FROM jobs WHERE queue_id = ?", (queue_id,), "look up a queue_id"
        )
        return bool(rows)

    async def estimated_spend_usd(self) -> float:
        """The estimated cost of every job that may have been billed: every job that may
        have been created, less those whose generation failed and was refunded."""
        billed = tuple(s.value for s in JobState if s.maybe_billed)
        marks = ", ".join("?" for _ in billed)
        statuses = ", ".join("?" for _ in _REFUNDED_STATUSES)
        rows = await self._store.fetch(
            f"SELECT COALESCE(SUM(estimate_usd), 0) FROM jobs WHERE state IN ({marks})"
            f" AND NOT (state = ? AND COALESCE(error_status, 0) IN ({statuses})"
            " AND COALESCE(error_type, '') != ?)",
            (*billed, JobState.FAILED.value, *_REFUNDED_STATUSES, _NOT_A_REFUND),
            "add up its spending",
        )
        return float(rows[0][0])
