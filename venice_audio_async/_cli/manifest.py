"""A batch folder's ``manifest.jsonl``: one row per line, rewritten from the journal.

The manifest is only ever replaced whole (a temporary file, then a rename), and never by
fewer rows than it has: it may be the only list left of queue ids a damaged journal lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .._core.errors import JournalError
from .batch_file import manifest_rows
from .folder import JOURNAL_NAME, MANIFEST_NAME

if TYPE_CHECKING:
    from .._session.session import AsyncSession

__all__ = ["check_manifest", "finish_manifest", "state_counts", "state_parts", "write_manifest"]


def _manifest_length(path: Path) -> int:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0


def check_manifest(out: Path, rows: int) -> None:
    """Refuse to go on when the journal has fewer lines than the folder's manifest lists.

    The journal only ever gains rows, so fewer means it lost some (replaced, truncated):
    the manifest may be the only list left of their queue ids, so it is never replaced.

    Raises:
        JournalError: the manifest lists more rows than ``rows``.
    """
    kept = _manifest_length(out / MANIFEST_NAME)
    if rows < kept:
        raise JournalError(
            f"refusing to replace {out / MANIFEST_NAME} ({kept} rows) with {rows} rows: "
            f"the journal {out / JOURNAL_NAME} has fewer jobs than the manifest lists, so it "
            "was damaged or replaced. The manifest was kept as it was (it lists the queue "
            "ids of the jobs the journal no longer has); move the journal away and use the "
            "manifest to see what was paid for",
            path=str(out / JOURNAL_NAME),
        )


def write_manifest(out: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the folder's manifest with ``rows`` (after :func:`check_manifest`).

    Raises:
        JournalError: the manifest lists more rows than ``rows``.
    """
    check_manifest(out, len(rows))
    temp = out / f".{MANIFEST_NAME}.part"
    with temp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    temp.replace(out / MANIFEST_NAME)


def state_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many manifest rows are in each state."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


def state_parts(counts: Mapping[str, int]) -> str:
    """The counts as the summary says them: ``"3 succeeded, 1 failed"`` (states sorted)."""
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


async def finish_manifest(session: AsyncSession, out: Path) -> dict[str, int]:
    """Write the manifest from the session's journal (even while cancelled); the counts."""
    journal = session.journal
    assert journal is not None
    with anyio.CancelScope(shield=True):
        await journal.flush()  # writes delayed by a busy database, if any, land first
        rows = manifest_rows(await journal.entries())
        await anyio.to_thread.run_sync(write_manifest, out, rows)
    return state_counts(rows)
