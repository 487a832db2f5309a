"""The journal's high-water mark: a small file beside it saying how far the journal got.

``<journal>.mark`` holds ``{"rows": N, "last_claimed": M}``: the journal held at least ``N``
jobs, and job ``M`` (the highest id) was claimed to be sent, so it may be billed. It is
rewritten, atomically (a temporary file, ``fsync``, rename, ``fsync`` of the folder), after
each claim has reached the database file itself (a WAL checkpoint), before the request
leaves. The mark therefore never runs ahead of what the database file durably holds.

At open, a journal holding fewer jobs than its mark says, or none of the job it says was
claimed, or no jobs table at all, lost rows: its ``-wal`` file was lost after a crash, or
it was replaced by an older copy. It is refused (:func:`lost_rows`) before anything is
sent, since adopting it would queue (and bill) its lost jobs again.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import attrs

from .._core.errors import JournalError

# HighWaterMark is internal (not exported by the package); the functions are this module's API.
__all__ = ["lost_rows", "mark_path_for", "read_mark", "write_mark"]


@attrs.frozen
class HighWaterMark:
    """How far a journal got: at least ``rows`` jobs, job ``last_claimed`` claimed."""

    rows: int = 0
    last_claimed: int = 0

    def covers(self, other: HighWaterMark) -> bool:
        """Whether this mark is at or past ``other`` on both counts."""
        return self.rows >= other.rows and self.last_claimed >= other.last_claimed

    def joined(self, other: HighWaterMark) -> HighWaterMark:
        """The higher of the two marks, count by count."""
        return HighWaterMark(max(self.rows, other.rows), max(self.last_claimed, other.last_claimed))


def mark_path_for(journal: Path) -> Path:
    """The high-water mark file of ``journal``."""
    return journal.with_name(journal.name + ".mark")


def read_mark(journal: Path) -> HighWaterMark | None:
    """The journal's mark, or ``None`` when it has none. Blocking.

    Raises:
        JournalError: the mark cannot be read or is not a mark (nothing was sent).
    """
    path = mark_path_for(journal)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise JournalError(
            f"cannot read the journal's mark {path}: {error.strerror}. Nothing was sent; "
            "check the file's permissions and try again",
            path=str(journal),
        ) from error
    try:
        data = json.loads(text)
        rows, last = data["rows"], data["last_claimed"]
        if not all(type(n) is int and n >= 0 for n in (rows, last)):
            raise ValueError("counts must be whole numbers")
    except (ValueError, TypeError, KeyError) as error:
        raise JournalError(
            f"the journal's mark {path} is damaged ({error}). Nothing was sent. It records "
            "how many jobs the journal held, to notice a journal that lost some; if you know "
            "the journal is complete, move the mark away and try again",
            path=str(journal),
        ) from error
    return HighWaterMark(rows, last)


def write_mark(journal: Path, mark: HighWaterMark) -> None:
    """Replace the journal's mark with ``mark``, durably. Blocking.

    Raises:
        OSError: the mark could not be written (the old one is left as it was).
    """
    path = mark_path_for(journal)
    temp = path.with_name(path.name + ".part")
    data = json.dumps({"rows": mark.rows, "last_claimed": mark.last_claimed}) + "\n"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power loss (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its renames are journaled by NTFS
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def lost_rows(journal: Path, mark: HighWaterMark | None, found: str) -> JournalError:
    """The refusal of a journal that lost rows or tables: what was found, what to restore.

    ``found`` says what the file holds (``"it has no jobs table"``, ``"it holds 2 jobs"``).
    """
    said = ""
    if mark is not None:
        said = (
            f" Its mark ({mark_path_for(journal).name}) says it held {mark.rows} job(s)"
            + (f" and job {mark.last_claimed} was sent" if mark.last_claimed else "")
            + "."
        )
    paid = mark is None or mark.last_claimed > 0
    consequence = (
        "jobs it recorded may have been queued and billed, so starting over would pay for "
        "them again"
        if paid
        else "no job had been sent from it, so starting over pays for nothing twice"
    )
    return JournalError(
        f"the journal {journal} lost jobs it had recorded: {found}.{said} Its -wal file "
        f"({journal.name}-wal) was lost after a crash, or the file was replaced by an older "
        "copy. Nothing was sent. Restore the journal's latest copy together with its -wal "
        "file if you have them; a batch folder's manifest.jsonl lists the queue ids of its "
        f"jobs. To start a new journal anyway, move {journal.name} and "
        f"{mark_path_for(journal).name} away: {consequence}",
        path=str(journal),
    )
