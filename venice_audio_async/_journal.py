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

Storage is SQLite from the standard library in WAL mode (one writer, crash-safe commits),
driven from a worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from ._clock import Clock, SystemClock
from ._converters import unstructure_request
from ._models import QueueRequest

__all__ = ["Journal", "JournalEntry", "JobState"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT UNIQUE,
    request       TEXT NOT NULL,
    model         TEXT NOT NULL,
    state         TEXT NOT NULL,
    queue_id      TEXT UNIQUE,
    destination   TEXT,
    name          TEXT,
    estimate_usd  REAL,
    path          TEXT,
    size          INTEGER,
    content_type  TEXT,
    error         TEXT,
    error_type    TEXT,
    error_status  INTEGER,
    released      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    queued_at     REAL,
    finished_at   REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


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
        """Whether money may have been spent on this job."""
        return self in (JobState.SENDING, JobState.QUEUED, JobState.UNKNOWN, JobState.SUCCEEDED)


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

    @property
    def model(self) -> str:
        return self.request.model


def _row_to_entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        id=row["id"],
        key=row["key"],
        request=QueueRequest(**json.loads(row["request"])),
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
    )


class Journal:
    """The SQLite job journal. Open with ``await Journal.open(path)``; close with ``aclose``.

    Every write is committed before the call returns.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, connection: sqlite3.Connection, path: Path, clock: Clock | None = None
    ) -> None:
        self._db = connection
        self.path = path
        # Timestamps come from the session's clock (Unix seconds, or scaled ones in tests),
        # so a resumed job's elapsed time is measured in the scheduler's own units.
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False

    def __repr__(self) -> str:
        return f"<Journal {str(self.path)!r}>"

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, clock: Clock | None = None) -> Journal:
        """Open (creating if needed) the journal at ``path``."""
        target = Path(path)

        def connect() -> sqlite3.Connection:
            target.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            return db

        return cls(await anyio.to_thread.run_sync(connect), target, clock)

    async def aclose(self) -> None:
        """Close the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._db.close)

    async def _run(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        # Shielded: a write that started must finish, or a paid job could go unrecorded.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(locked, limiter=self._limiter)
        return result  # noqa: RET504 (mypy: a cancel scope's __exit__ may swallow)

    async def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        args = tuple(params)
        return await self._run(lambda: self._db.execute(sql, args))

    # ------------------------------------------------------------------ writes

    async def add_intent(
        self,
        request: QueueRequest,
        *,
        key: str | None = None,
        destination: str | None = None,
        name: str | None = None,
        estimate_usd: float | None = None,
    ) -> int:
        """Record a job before anything is sent; returns its journal id."""
        body = json.dumps(unstructure_request(request), sort_keys=True)
        cursor = await self._execute(
            "INSERT INTO jobs (key, request, model, state, destination, name, estimate_usd,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                body,
                request.model,
                JobState.INTENT.value,
                destination,
                name,
                estimate_usd,
                self._clock.time(),
            ),
        )
        row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    async def _set_state(self, row_id: int, state: JobState, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET state = ?{', ' if fields else ''}{columns} WHERE id = ?"
        await self._execute(sql, (state.value, *fields.values(), row_id))

    async def mark_sending(self, row_id: int) -> None:
        """The queue request is about to leave: from now on it may be billed."""
        await self._set_state(row_id, JobState.SENDING)

    async def mark_queued(self, row_id: int, queue_id: str) -> None:
        """The API accepted the job."""
        await self._set_state(
            row_id, JobState.QUEUED, queue_id=queue_id, queued_at=self._clock.time()
        )

    async def mark_unknown(self, row_id: int, error: BaseException) -> None:
        """The queue answer was lost; the job may exist and be billed."""
        await self._set_state(
            row_id, JobState.UNKNOWN, error=str(error), error_type=type(error).__name__
        )

    async def mark_rejected(self, row_id: int, error: BaseException) -> None:
        """The API refused the job before creating it (nothing billed)."""
        await self._set_state(
            row_id,
            JobState.REJECTED,
            error=str(error),
            error_type=type(error).__name__,
            error_status=getattr(error, "status_code", None),
        )

    async def requeue(self, row_id: int) -> None:
        """Send an unknown or rejected job again (the user said so)."""
        await self._set_state(row_id, JobState.INTENT, error=None, error_type=None)

    async def mark_succeeded(
        self, queue_id: str, *, path: str | None, size: int, content_type: str
    ) -> None:
        """The audio is stored."""
        await self._execute(
            "UPDATE jobs SET state = ?, path = ?, size = ?, content_type = ?, finished_at = ?,"
            " error = NULL, error_type = NULL, error_status = NULL WHERE queue_id = ?",
            (JobState.SUCCEEDED.value, path, size, content_type, self._clock.time(), queue_id),
        )

    async def mark_failed(self, queue_id: str, error: BaseException) -> None:
        """The job ended with an error."""
        await self._execute(
            "UPDATE jobs SET state = ?, error = ?, error_type = ?, error_status = ?,"
            " finished_at = ? WHERE queue_id = ?",
            (
                JobState.FAILED.value,
                str(error),
                type(error).__name__,
                getattr(error, "status_code", None),
                self._clock.time(),
                queue_id,
            ),
        )

    async def mark_released(self, queue_id: str) -> None:
        """The server's copy of the media was released."""
        await self._execute("UPDATE jobs SET released = 1 WHERE queue_id = ?", (queue_id,))

    # ------------------------------------------------------------------ reads

    async def entries(self, *states: JobState) -> list[JournalEntry]:
        """All entries (or those in ``states``), oldest first."""
        if states:
            marks = ", ".join("?" for _ in states)
            sql = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id"
            params: tuple[Any, ...] = tuple(s.value for s in states)
        else:
            sql, params = "SELECT * FROM jobs ORDER BY id", ()
        rows = await self._run(lambda: self._db.execute(sql, params).fetchall())
        return [_row_to_entry(row) for row in rows]

    async def get(self, row_id: int) -> JournalEntry | None:
        """One entry by journal id."""
        rows = await self._run(
            lambda: self._db.execute("SELECT * FROM jobs WHERE id = ?", (row_id,)).fetchall()
        )
        return _row_to_entry(rows[0]) if rows else None

    async def by_key(self, key: str) -> JournalEntry | None:
        """The entry recorded with ``key`` (e.g. a batch line), if any."""
        rows = await self._run(
            lambda: self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchall()
        )
        return _row_to_entry(rows[0]) if rows else None

    async def estimated_spend_usd(self) -> float:
        """The estimated cost of every job that may have been billed."""
        billed = [s.value for s in JobState if s.maybe_billed]
        marks = ", ".join("?" for _ in billed)
        rows = await self._run(
            lambda: self._db.execute(
                f"SELECT COALESCE(SUM(estimate_usd), 0) FROM jobs WHERE state IN ({marks})",
                billed,
            ).fetchall()
        )
        return float(rows[0][0])
