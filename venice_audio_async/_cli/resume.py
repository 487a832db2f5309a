"""``resume DIR``: finish a batch folder an earlier run left unfinished.

The folder's journal is opened before any server (without creating one), so an empty,
damaged, read-only or busy journal is refused before anything is sent or rewritten. A
folder with nothing left to do only has its manifest rewritten and its state told.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import anyio

from .._ledger.journal import JobState, Journal, JournalEntry
from .._session.resume import has_work
from .batch_file import manifest_rows
from .connect import command_clock, endpoint, folder_session, need_key
from .console import say
from .drive import drive, emit_lines, report_resume
from .exits import ExitCode, code_for_failures
from .folder import FAKE_STATE_NAME, JOURNAL_NAME, MANIFEST_NAME, fake_mismatch
from .manifest import state_counts, state_parts, write_manifest

__all__ = ["cmd_resume"]


async def _nothing_to_resume(
    args: argparse.Namespace, journal: Journal, out: Path, entries: Sequence[JournalEntry]
) -> int:
    rows = manifest_rows(entries)
    await anyio.to_thread.run_sync(write_manifest, out, rows)
    counts = state_counts(rows)
    if not rows:
        say(f"nothing to resume: the batch in {out} has no lines")
        await emit_lines(args, journal, out, counts, ExitCode.OK)
        return ExitCode.OK
    say(f"nothing to resume: every line of the batch in {out} is finished ({state_parts(counts)})")
    report_resume(
        [e for e in entries if e.state in (JobState.SENDING, JobState.UNKNOWN)],
        [e for e in entries if e.state in (JobState.FAILED, JobState.REJECTED)],
    )
    say(f"manifest: {out / MANIFEST_NAME}")
    code = ExitCode.OK
    if counts.get("succeeded", 0) != len(rows):  # why not: the failures' own causes
        ended = [e for e in entries if e.state in (JobState.FAILED, JobState.REJECTED)]
        code = code_for_failures((e.error_type, e.error_status) for e in ended)
        code = ExitCode.FAILED if code is ExitCode.OK else code
    await emit_lines(args, journal, out, counts, code)
    return code


async def cmd_resume(args: argparse.Namespace) -> int:
    """``resume``: queue what the folder's journal has not sent and fetch what is running."""
    out = Path(args.dir)
    journal_path = out / JOURNAL_NAME
    if not await anyio.Path(out).is_dir():
        say(f"{out} is not a folder: nothing to resume")
        return ExitCode.INVALID_INPUT
    if not await anyio.Path(journal_path).exists():
        say(
            f"nothing to resume: {out} holds no batch (it has no {JOURNAL_NAME}). "
            f"Start one with: venice-audio batch FILE --out {out}"
        )
        return ExitCode.INVALID_INPUT
    # Opened before any server, without creating: an empty, damaged, read-only or busy
    # journal is refused (JournalError, exit 2) before anything is sent or rewritten.
    async with await Journal.open(journal_path, clock=command_clock(args), create=False) as journal:
        entries = await journal.entries()
        if fake_mismatch(args, out, entries):
            return ExitCode.INVALID_INPUT
        # The library's own rule, so the CLI never calls a folder done that resume would finish.
        if not has_work(entries, requeue_unknown=args.requeue_unknown):
            return await _nothing_to_resume(args, journal, out, entries)
        async with endpoint(args, fake_state=out / FAKE_STATE_NAME) as (url, key, clock):
            if not need_key(key):
                return ExitCode.AUTHENTICATION
            async with folder_session(args, url, key, clock, out, journal) as session:
                return await drive(args, session, out, total=len(entries))
