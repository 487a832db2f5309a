"""The journal's SQLite file: opened safely, driven from a worker thread, written reliably.

:func:`connect` takes the owner lock (:mod:`._ledger.owner_lock`) and opens the database: a file
that is empty, damaged, not a journal or read-only raises :class:`JournalError` with a
message saying what to do (:func:`advice`), before anything is sent. :class:`JournalStore`
runs every statement in one worker thread (so the event loop never blocks on disk), turns
each ``sqlite3`` error into a :class:`JournalError`, and keeps the writes made after a paid
request that the database refused (:class:`DelayedWrite`), in order, retrying them until
they land. Claims and the writes after a send are checkpointed into the database file, and
the high-water mark (:mod:`._ledger.journal_mark`) is checked at open and kept after each claim.
The rows and their meaning are :mod:`._ledger.journal`'s.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import attrs

from .._core.errors import JournalError
from .journal_mark import HighWaterMark, lost_rows, mark_path_for, read_mark, write_mark
from .owner_lock import OwnerLock, lock_path_for

__all__ = ["DelayedWrite", "JournalStore", "advice", "connect"]

log = logging.getLogger("venice_audio_async")

T = TypeVar("T")

#: Written to ``PRAGMA user_version`` at each open: the schema's version, and a write that
#: proves the file and its folder are writable before anything is sent.
_SCHEMA_VERSION = 1

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
    finished_at   REAL,
    delayed_writes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""

#: Columns added after the first release, with their definitions (journals written by an
#: earlier version get them at open).
_ADDED_COLUMNS = {"delayed_writes": "INTEGER NOT NULL DEFAULT 0"}


def advice(error: sqlite3.Error) -> str:
    """What to do about a SQLite error, in a user's words."""
    text = str(error).lower()
    if "locked" in text or "busy" in text:
        return (
            "another program holds the database locked (an sqlite3 shell, a database "
            "browser, a backup tool?); close it and try again"
        )
    if "readonly" in text or "read-only" in text:
        return "the journal file or its folder is read-only; make both writable and try again"
    if "unable to open" in text:
        return (
            "its folder must be writable (SQLite keeps -wal and -shm files beside the "
            "journal); check the folder's permissions and try again"
        )
    if "full" in text:
        return "the disk is full; free some space and try again"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            "the file is damaged: keep a copy (the sqlite3 shell's .recover may save its "
            "rows), move it away and start a new journal"
        )
    return "check the file, its folder and the free disk space, then try again"


def _empty_journal(target: Path) -> JournalError:
    return JournalError(
        f"the journal {target} is empty (0 bytes): it was truncated, so the jobs it "
        "recorded cannot be read from it. Nothing was sent. Keep the folder's "
        "manifest.jsonl if there is one (it lists their queue ids); move the empty file "
        "away to start a new journal",
        path=str(target),
    )


def _open_error(target: Path, error: sqlite3.Error) -> JournalError:
    return JournalError(
        f"cannot use the journal {target}: {error}. Nothing was sent; {advice(error)}",
        path=str(target),
    )


def _checkpoint(db: sqlite3.Connection) -> bool:
    """Copy the committed writes from the ``-wal`` file into the database file. Blocking.

    In WAL mode a commit is written to the ``-wal`` file only; the database file gets it
    at a checkpoint, which (with ``synchronous=NORMAL``) syncs the ``-wal`` file first and
    the database file after. Once done, losing the ``-wal`` file loses none of it. Returns
    whether every write made it (a reader holding an old snapshot can hold some back).
    """
    busy, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return not busy and copied >= logged


def _high_water(db: sqlite3.Connection) -> HighWaterMark:
    """How far the database got: its job count, its highest claimed job. Blocking."""
    rows, last = db.execute(
        "SELECT COUNT(*), COALESCE(MAX(CASE WHEN state != 'intent' THEN id END), 0) FROM jobs"
    ).fetchone()
    return HighWaterMark(rows, last)


def _check_mark(target: Path, db: sqlite3.Connection, mark: HighWaterMark | None) -> HighWaterMark:
    """Refuse a journal holding less than its mark says; the mark to keep. Blocking.

    Rows are never deleted and ids only grow, so a journal with fewer rows, or without the
    last job claimed, lost some. (A claimed job may rightly be back to "intent": a ``queue``
    that created no job gives its claim back.)
    """
    if mark is not None:
        rows, top = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM jobs").fetchone()
        if rows < mark.rows:
            raise lost_rows(target, mark, f"it holds {rows} job(s)")
        if top < mark.last_claimed:
            raise lost_rows(target, mark, f"it has no job {mark.last_claimed}")
    found = _high_water(db)
    return found if mark is None else found.joined(mark)


def _open_database(
    target: Path, *, create: bool, used: bool, busy_timeout: float
) -> sqlite3.Connection:
    """Connect and check the schema and the high-water mark; the caller holds the owner
    lock. Blocking.

    ``used``: the journal was opened before (its lock file existed), so an empty file is
    one that lost its contents, not one just made with ``touch`` or ``mkstemp``. So is a
    file with no tables, or none, when the journal has a mark.
    """
    where = str(target)
    existed = target.exists()
    mark = read_mark(target)
    if existed and target.stat().st_size == 0 and (used or not create or mark is not None):
        raise _empty_journal(target)
    if not existed and mark is not None:
        raise lost_rows(target, mark, "the file is missing")
    try:
        db = sqlite3.connect(
            target, check_same_thread=False, isolation_level=None, timeout=busy_timeout
        )
    except sqlite3.Error as error:
        raise _open_error(target, error) from error
    try:
        db.row_factory = sqlite3.Row
        tables = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        # An empty database may become a journal when asked to create one, unless it was a
        # journal already (lost -wal): anything else without a jobs table is someone else's
        # file, or nothing to resume.
        if existed and "jobs" not in tables:
            if not tables and (used or mark is not None):
                raise lost_rows(target, mark, "it has no jobs table")
            if tables or not create:
                raise JournalError(
                    f"{target} is not a venice-audio journal (it has no jobs table), so there "
                    "is nothing to resume from it. Nothing was sent; check the path",
                    path=where,
                )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {max(version, _SCHEMA_VERSION)}")
        keep = _check_mark(target, db, mark)
        # The tables reach the database file now, and the mark says the file was used: a
        # lost -wal can no longer make this journal look new.
        _checkpoint(db)
        if keep != mark:
            write_mark(target, keep)
    except sqlite3.Error as error:
        db.close()
        raise _open_error(target, error) from error
    except OSError as error:
        db.close()
        raise JournalError(
            f"cannot write the journal's mark {mark_path_for(target)}: {error.strerror}. "
            "Nothing was sent; the folder must be writable",
            path=where,
        ) from error
    except BaseException:
        db.close()
        raise
    return db


def connect(
    target: Path, *, create: bool, busy_timeout: float
) -> tuple[sqlite3.Connection, OwnerLock]:
    """Take the owner lock, then open the database. Blocking."""
    where = str(target)
    if target.is_dir():
        raise JournalError(f"{target} is a folder, not a journal file", path=where)
    if not create and not target.exists():
        raise JournalError(f"there is no journal at {target}; nothing to resume", path=where)
    if not create and target.stat().st_size == 0:
        raise _empty_journal(target)  # refused before its lock file is made
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JournalError(
            f"cannot create the journal's folder {target.parent}: {error.strerror}",
            path=where,
        ) from error
    used = lock_path_for(target).exists()
    lock = OwnerLock.acquire(target)
    try:
        db = _open_database(target, create=create, used=used, busy_timeout=busy_timeout)
        return db, lock
    except BaseException:
        lock.release()
        raise


@attrs.define
class DelayedWrite:
    """A write made after a request left, kept until it lands."""

    sql: str
    params: tuple[Any, ...]
    what: str  # names the job for logs: "queue_id q-1 of job 3"
    column: str  # "id" or "queue_id": where to note that the row's record came late
    key: Any
    on_conflict: tuple[str, tuple[Any, ...]] | None = None
    #: Checkpointed once committed, so a lost ``-wal`` file cannot lose it.
    durable: bool = True


class JournalStore:
    """The journal's connection and its queue of delayed writes (see the module docstring)."""

    def __init__(self, connection: sqlite3.Connection, path: Path, lock: OwnerLock | None) -> None:
        self._db = connection
        self.path = path
        self._owner_lock = lock
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self.closed = False
        self._pending: collections.deque[DelayedWrite] = collections.deque()
        self._pending_event: anyio.Event | None = None
        #: Writes that could not be made when asked (each logged as a warning).
        self.write_failures = 0
        self._mark: HighWaterMark | None = None  # read from its file at the first claim

    async def aclose(self) -> None:
        """Try the delayed writes once more, close the connection and drop the lock.

        Idempotent. Writes that still cannot be made are logged with their queue ids.
        """
        if self.closed:
            return
        self.closed = True
        if await self.flush():
            log.error(
                "journal %s closed with %d write(s) it could not make: %s. Those jobs were "
                "queued and may be billed: keep these ids (AsyncSession.attach picks a job "
                "up again)",
                self.path,
                len(self._pending),
                "; ".join(write.what for write in self._pending),
            )

        def close() -> None:
            try:
                self._db.close()
            finally:
                if self._owner_lock is not None:
                    self._owner_lock.release()

        await self.run_raw(close)

    async def run_raw(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn()

        # Shielded: a write that started must finish, or a paid job could go unrecorded.
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(locked, limiter=self._limiter)
        return result  # noqa: RET504 (mypy: a cancel scope's __exit__ may swallow)

    async def run(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on the database; a SQLite error becomes a :class:`JournalError`."""
        if self.closed:
            raise JournalError(f"the journal {self.path} is closed", path=str(self.path))
        try:
            return await self.run_raw(fn)
        except sqlite3.Error as error:
            raise JournalError(
                f"journal {self.path}: could not {what} ({error}); {advice(error)}",
                path=str(self.path),
            ) from error

    async def execute(self, sql: str, params: Iterable[Any], what: str) -> sqlite3.Cursor:
        args = tuple(params)
        return await self.run(lambda: self._db.execute(sql, args), what)

    def _apply(self, write: DelayedWrite, *, late: bool) -> None:
        """One write in its own transaction (with its "came late" note). Blocking."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            try:
                db.execute(write.sql, write.params)
            except sqlite3.IntegrityError:
                if write.on_conflict is None:
                    raise
                log.error(
                    "journal %s: %s is already recorded for another job", self.path, write.what
                )
                db.execute(*write.on_conflict)
            if late:
                db.execute(
                    f"UPDATE jobs SET delayed_writes = delayed_writes + 1 WHERE {write.column} = ?",
                    (write.key,),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        if write.durable:
            self._checkpoint_landed(write.what)

    def _checkpoint_landed(self, what: str) -> None:
        """Checkpoint a committed write; a failure only costs its lost-``-wal`` safety."""
        try:
            done = _checkpoint(self._db)
        except sqlite3.Error as error:
            done = False
            log.debug("journal %s: checkpoint failed: %s", self.path, error)
        if not done:
            log.warning(
                "journal %s: the %s is committed but not yet in the database file (another "
                "program reading the journal holds it back): keep the journal's -wal file",
                self.path,
                what,
            )

    async def secure_claim(self, row_id: int) -> None:
        """Make the claim of ``row_id`` durable before its request leaves.

        The claim (and every write before it) is checkpointed into the database file, then
        the high-water mark beside it says so (see :mod:`._ledger.journal_mark`).

        Raises:
            JournalError: either could not be written; the request must not be sent.
        """

        def secure() -> None:
            if not _checkpoint(self._db):
                log.warning(
                    "journal %s: the claim of job %d is not yet in the database file "
                    "(another program reading the journal holds it back): keep the "
                    "journal's -wal file",
                    self.path,
                    row_id,
                )
            known = self._mark if self._mark is not None else read_mark(self.path)
            mark = _high_water(self._db).joined(known or HighWaterMark())
            if mark != known:
                write_mark(self.path, mark)
            self._mark = mark

        try:
            await self.run_raw(secure)
        except (sqlite3.Error, OSError) as error:
            reason = (
                advice(error)
                if isinstance(error, sqlite3.Error)
                else f"{error.strerror or error}; check the folder's permissions and free space"
            )
            raise JournalError(
                f"journal {self.path}: could not make the claim of job {row_id} durable "
                f"({error}), so it was not sent; {reason}",
                path=str(self.path),
            ) from error

    async def write_after_send(self, write: DelayedWrite) -> bool:
        """Write now if possible; else keep it, in order, for :meth:`flush`. Never raises."""
        if self.closed:
            self.write_failures += 1
            log.error(
                "journal %s is closed: could not record the %s; keep this id",
                self.path,
                write.what,
            )
            return False
        failure: list[sqlite3.Error] = []

        def attempt() -> bool:
            if self._pending:  # behind earlier writes still waiting, so rows stay consistent
                self._pending.append(write)
                return False
            try:
                self._apply(write, late=False)
            except sqlite3.Error as error:
                failure.append(error)
                self._pending.append(write)
                return False
            return True

        if await self.run_raw(attempt):
            return True
        self.write_failures += 1
        reason = str(failure[0]) if failure else "earlier writes are still waiting"
        log.warning(
            "journal %s: could not record the %s yet (%s); the job is tracked and polled, "
            "and the write is retried until it lands",
            self.path,
            write.what,
            reason,
        )
        if self._pending_event is not None:
            self._pending_event.set()
        return False

    @property
    def pending_writes(self) -> int:
        """Writes made after a paid request that have not landed yet."""
        return len(self._pending)

    async def flush(self) -> int:
        """Try the delayed writes again, oldest first; returns how many still wait.

        Never raises: a write that fails again stays queued with those behind it.
        """
        if not self._pending:
            return 0
        landed: list[DelayedWrite] = []

        def attempt() -> int:
            while self._pending:
                write = self._pending[0]
                try:
                    self._apply(write, late=True)
                except sqlite3.Error:
                    break
                self._pending.popleft()
                landed.append(write)
            return len(self._pending)

        remaining = await self.run_raw(attempt)
        for write in landed:
            log.info("journal %s: the %s is recorded (late)", self.path, write.what)
        return remaining

    async def wait_pending_writes(self) -> None:
        """Return once some write waits to be retried (for the owner's retry task)."""
        while not self._pending:
            event = self._pending_event = anyio.Event()
            await event.wait()

    async def fetch(self, sql: str, params: tuple[Any, ...], what: str) -> list[sqlite3.Row]:
        return await self.run(lambda: self._db.execute(sql, params).fetchall(), what)
