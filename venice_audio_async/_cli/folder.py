"""A batch folder: the names of its files, and the checks before a batch or resume runs in it.

A folder holds the journal (what was queued and paid for), ``manifest.jsonl`` (one row per
line of the batch) and, for ``--fake`` batches, the fake server's jobs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .._ledger.journal import JournalEntry
from .console import say

__all__ = [
    "FAKE_STATE_NAME",
    "JOURNAL_NAME",
    "MANIFEST_NAME",
    "check_batch_folder",
    "fake_mismatch",
    "unwritable_folder",
]

JOURNAL_NAME = ".venice-journal.sqlite3"
MANIFEST_NAME = "manifest.jsonl"
#: Where ``--fake`` keeps its jobs in a batch folder, so a later ``resume --fake`` knows them.
FAKE_STATE_NAME = ".venice-fake-server.jsonl"


def fake_mismatch(args: argparse.Namespace, out: Path, entries: Sequence[JournalEntry]) -> bool:
    """Refuse to mix the real API and the built-in fake in one batch folder (True: refused).

    Queue ids of one are unknown to the other, which would answer them "invalid" and so
    mark jobs failed in the journal: real, paid jobs among them.
    """
    fake_folder = (out / FAKE_STATE_NAME).exists()
    if fake_folder and not args.fake:
        say(
            f"{out} holds a batch made with the built-in fake server: add --fake to go on "
            "with it (or use a new --out folder for the real API)"
        )
        return True
    if args.fake and not fake_folder and any(e.queue_id for e in entries):
        say(
            f"{out} holds a batch queued at the real API: the built-in fake server does not "
            "know its jobs. Leave out --fake to go on with it"
        )
        return True
    return False


def unwritable_folder(out: Path) -> str | None:
    """Why the audio and the manifest cannot be written into ``out`` (``None``: they can).

    Checked before anything is paid for: a folder that refuses them would otherwise be
    found out only after the jobs were queued. It writes and removes the manifest's own
    temporary file (see :func:`.manifest.write_manifest`). Blocking I/O.
    """
    probe = out / f".{MANIFEST_NAME}.part"
    try:
        with probe.open("w", encoding="utf-8") as handle:
            handle.write("\n")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        return (
            f"cannot write into {out} ({reason}): the audio files and {MANIFEST_NAME} go "
            "there. Nothing was sent; make the folder writable (and check the free space), "
            "then try again"
        )
    return None


def check_batch_folder(out: Path) -> bool:
    """Check ``--out`` of a batch before any server starts (False: refused, said why)."""
    if out.exists() and not out.is_dir():
        say(f"--out {out} is a file, not a folder")
        return False
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        say(f"cannot create the folder {out}: {error.strerror}")
        return False
    if (out / MANIFEST_NAME).exists() and not (out / JOURNAL_NAME).exists():
        say(
            f"{out} has a {MANIFEST_NAME} but no journal ({JOURNAL_NAME}): starting over "
            "would queue (and pay for) its jobs again. Use a new --out folder, or move the "
            "manifest away if you mean to start over"
        )
        return False
    problem = unwritable_folder(out)
    if problem is not None:
        say(problem)
        return False
    return True
