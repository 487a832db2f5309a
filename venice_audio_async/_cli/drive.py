"""Run a batch folder to its end: queue what the journal has not sent, follow every job.

Shared by ``batch`` (after it journaled the file's lines) and ``resume``: the session's
``resume`` sends and attaches the journal's jobs, a watcher follows each to its outcome
with the progress display (and its ETA), and the manifest is written however the run ends.
With ``--json`` every line of the folder is printed once, as a ``line`` object: as it
finishes, or at the end for those that finished earlier or were not sent; then a
``summary``. The exit code tells why jobs failed (:func:`.exits.code_for_failures`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .._core.models import Job
from .._core.outcomes import Failed, Succeeded
from .._ledger.journal import Journal, JournalEntry
from .batch_file import manifest_rows
from .connect import clock_scale
from .console import on_interrupt, say
from .exits import ExitCode, code_for_failures
from .folder import MANIFEST_NAME, unwritable_folder
from .manifest import check_manifest, finish_manifest, state_parts
from .output import emit, json_mode
from .progress import BatchProgress

if TYPE_CHECKING:
    from .._session.resume import ResumeReport
    from .._session.session import AsyncSession

__all__ = ["drive", "emit_lines", "report_resume"]

#: How often (real seconds) the ETA asks the session how long its running jobs have left.
_ETA_EVERY = 1.0


class _LineEvents:
    """``--json``: one ``line`` object per line of the folder, each printed once."""

    def __init__(self, journal: Journal, *, enabled: bool) -> None:
        self._journal = journal
        self._enabled = enabled
        self._rows: dict[str, int] = {}  # queue_id -> journal row id
        self._printed: set[int] = set()

    async def finished(self, queue_id: str) -> None:
        """The job ``queue_id`` ended: print its line (as the journal now records it)."""
        if not self._enabled:
            return
        if queue_id not in self._rows:  # queued since the last look: read them all once
            entries = await self._journal.entries()
            self._rows = {e.queue_id: e.id for e in entries if e.queue_id is not None}
        row = self._rows.get(queue_id)
        entry = await self._journal.get(row) if row is not None else None
        if entry is not None:
            self._print(entry)

    async def rest(self) -> None:
        """Print every line not printed yet (finished earlier, refused, not sent)."""
        if self._enabled:
            for entry in await self._journal.entries():
                self._print(entry)

    def _print(self, entry: JournalEntry) -> None:
        rows = manifest_rows([entry])  # no row: not a batch line
        if rows and entry.id not in self._printed:
            self._printed.add(entry.id)
            emit("line", name=entry.name, **rows[0])


class _Watcher:
    """Follows jobs to their outcome and keeps the progress display current."""

    def __init__(
        self, session: AsyncSession, progress: BatchProgress, lines: _LineEvents, scale: float
    ) -> None:
        self.session = session
        self.progress = progress
        self.lines = lines
        self.failures: list[str] = []
        self.errors: list[BaseException] = []
        self._running: dict[str, Job] = {}
        self._scale = scale  # real seconds per session clock second
        self._eta_at = -_ETA_EVERY

    def _update(self) -> None:
        self.progress.requests = sum(self.session.statistics().requests.values())
        self.progress.spent_usd = self.session.spending()[0]
        now = time.monotonic()
        if now - self._eta_at >= _ETA_EVERY:
            self._eta_at = now
            self.progress.jobs_left = self._slowest_left()
        self.progress.refresh()

    def _slowest_left(self) -> float | None:
        """Real seconds until the slowest running job ends, by the session's estimates."""
        left = [self.session.status(job).estimated_seconds_left for job in self._running.values()]
        known = [seconds for seconds in left if seconds is not None]
        return max(known) * self._scale if known else None

    async def watch(self, job: Job, label: str) -> None:
        self.progress.running += 1
        self._running[job.queue_id] = job
        self._update()
        try:
            outcome = await self.session.wait_outcome(job)
        finally:
            self.progress.running -= 1
            self._running.pop(job.queue_id, None)
        if isinstance(outcome, Succeeded):
            self.progress.done += 1
        elif isinstance(outcome, Failed):
            self.progress.failed += 1
            self.failures.append(f"{label}: {outcome.error}")
            self.errors.append(outcome.error)
        self._update()
        await self.lines.finished(job.queue_id)


def report_resume(unknown: Sequence[JournalEntry], failed: Sequence[JournalEntry]) -> None:
    """Name the jobs not sent again (their queue answer was lost) and those failed earlier."""
    for entry in unknown:
        label = entry.key or f"job {entry.id}"
        say(
            f"  {label}: its queue answer was lost; it may exist and be billed, so it is not "
            "sent again (pass --requeue-unknown to send it anyway)"
        )
    for entry in failed:
        say(f"  {entry.key or entry.queue_id}: failed earlier: {entry.error}")


def _exit_code(counts: Mapping[str, int], watcher: _Watcher, report: ResumeReport) -> ExitCode:
    """0 when every line succeeded; else why the others did not (see ``code_for_failures``)."""
    if counts.get("succeeded", 0) == sum(counts.values()):
        return ExitCode.OK
    # Lines whose queue answer was lost are not failures of a known cause: they stay 1.
    rows = [(e.error_type, e.error_status) for e in report.failed]
    code = code_for_failures([*watcher.errors, *rows])
    return code if code is not ExitCode.OK else ExitCode.FAILED


async def emit_lines(
    args: argparse.Namespace, journal: Journal, out: Path, counts: Mapping[str, int], code: int
) -> None:
    """``--json``: the folder's lines not printed yet, then the ``summary`` object."""
    if not json_mode(args):
        return
    await _LineEvents(journal, enabled=True).rest()
    await _emit_summary(journal, out, counts, code)


async def _emit_summary(journal: Journal, out: Path, counts: Mapping[str, int], code: int) -> None:
    emit(
        "summary",
        folder=str(out),
        manifest=str(out / MANIFEST_NAME),
        lines=sum(counts.values()),
        states=dict(sorted(counts.items())),
        spent_usd=round(await journal.estimated_spend_usd(), 6),
        exit_code=int(code),
    )


async def _summary(
    args: argparse.Namespace,
    session: AsyncSession,
    out: Path,
    counts: Mapping[str, int],
    watcher: _Watcher,
    code: ExitCode,
) -> int:
    for failure in watcher.failures:
        say(f"  failed: {failure}")
    say(f"manifest: {out / MANIFEST_NAME} ({state_parts(counts)})")
    if json_mode(args):
        journal = session.journal
        assert journal is not None
        await watcher.lines.rest()
        await _emit_summary(journal, out, counts, code)
    return code


async def _follow(
    args: argparse.Namespace, session: AsyncSession, watcher: _Watcher
) -> ResumeReport:
    """Resume the session's journal, watching each job it hands over; the resume report.

    An error of ``resume`` is raised as itself, not inside an ExceptionGroup.
    """
    failure: Exception | None = None
    report: ResumeReport | None = None
    with watcher.progress:
        async with anyio.create_task_group() as tg:

            def follow(job: Job) -> None:
                label = job.request.prompt[:40] if job.request else job.queue_id
                tg.start_soon(watcher.watch, job, label)

            try:
                report = await session.resume(requeue_unknown=args.requeue_unknown, on_job=follow)
            except Exception as exc:
                failure = exc
                tg.cancel_scope.cancel()
            else:
                watcher.progress.done += report.skipped
                watcher.progress.failed += len(report.failed) + len(report.unknown)
                watcher.progress.refresh()
    if failure is not None:
        raise failure
    assert report is not None
    return report


async def drive(args: argparse.Namespace, session: AsyncSession, out: Path, *, total: int) -> int:
    """Queue what the journal has not sent, fetch what is running, write the manifest."""
    journal = session.journal
    assert journal is not None
    lines = len(manifest_rows(await journal.entries()))
    await anyio.to_thread.run_sync(check_manifest, out, lines)  # before anything is sent
    problem = await anyio.to_thread.run_sync(unwritable_folder, out)
    if problem is not None:  # found now, not when the manifest is written after paying
        say(problem)
        return ExitCode.INVALID_INPUT
    again = f"venice-audio resume {out}" + (" --fake" if args.fake else "")
    on_interrupt(
        f"interrupted. Every queued job is recorded in the journal; finish it with: {again}"
    )
    progress = BatchProgress(total, plain=args.plain)
    events = _LineEvents(journal, enabled=json_mode(args))
    watcher = _Watcher(session, progress, events, clock_scale(args))
    try:
        report = await _follow(args, session, watcher)
    finally:
        counts = await finish_manifest(session, out)
    report_resume(report.unknown, report.failed)
    if report.spend_limit is not None:
        say(
            f"spending limit reached: {report.spend_limit}. Stopped queueing; "
            f"{report.not_queued} line(s) not queued (raise --max-spend and resume)."
        )
        return await _summary(args, session, out, counts, watcher, ExitCode.SPEND_LIMIT)
    code = _exit_code(counts, watcher, report)
    return await _summary(args, session, out, counts, watcher, code)
